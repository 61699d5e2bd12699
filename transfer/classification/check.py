"""Classification's hooks for `bash run_all.sh PROFILE --check` (evaluation.check; the stage table's `check` column):
the engine's step on its views, timed alone and in the loop, and its test pass over the crops (the names every
stage's hooks share: evaluation.experiments.stage_checks)."""

from transfer import check, driver
from transfer.classification.data import CACHE_LIMIT_BYTES
from transfer.classification.device_views import DeviceImages
from transfer.classification.hooks import ClassificationHooks
from transfer.classification.task import ClassificationTask

SPLITS = ("train_split", "test_split")
IMAGE_SETS = "Main"


def counts(cfg):
    return check.counts(cfg, SPLITS)


min_train_images = check.min_train_images


def cache_fits(cfg, counts, size):
    """Whether the full run's two splits, decoded at longer side `size`, fit classification's --cache auto."""
    if counts is None:
        return None
    return sum(counts) * check.image_bytes(size) < CACHE_LIMIT_BYTES


def bench(cfg, rt, log, n_train, n_test):
    hooks = ClassificationHooks(cfg)
    train, test = hooks.load_data(rt, log)
    cached = train._cache is not None
    workers = driver.data_workers(cfg, cached=cached)
    backbone, _ = driver.backbone_from_flags(cfg, cfg["input_size"])
    model = hooks.classifier(backbone)
    task = ClassificationTask(train, test, device=rt.device, test_crops=cfg["test_crops"], seed=cfg["seed"],
                              num_workers=workers)

    def choose(name):
        return ClassificationHooks(dict(cfg, data_path=name)).choose_data_path(task, (train, test), rt, None)
    return check.engine_check(task, model, cfg, rt, train=train, test=test,
                              what=f"test pass, {cfg['test_crops']} crops per image", workers=workers, cached=cached,
                              n_train=n_train, n_test=n_test, nbytes=DeviceImages.nbytes(train), choose=choose)
