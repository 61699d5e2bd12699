"""Classification's hooks for `bash run_all.sh PROFILE --check` (evaluation.check; the stage table's `check` column):
the engine's step on its views, timed alone and in the loop, and its test pass over the crops (the names every
stage's hooks share: evaluation.experiments.stage_checks)."""

from transfer import check, stages
from transfer.classification import stages as run
from transfer.classification.device_views import DeviceImages
from transfer.classification.task import ClassificationTask

SPLITS = ("train_split", "test_split")
IMAGE_SETS = "Main"


def counts(cfg):
    return check.counts(cfg, SPLITS)


def min_train_images(cfg):
    """Images the stand-in's training split needs: one batch (the sampler refuses fewer)."""
    return cfg["batch_size"]


def cache_fits(cfg, counts, size):
    """Whether the full run's two splits, decoded at longer side `size`, fit classification's --cache auto."""
    if counts is None:
        return None
    return sum(counts) * check.image_bytes(size) < run.CACHE_LIMIT_BYTES


def bench(cfg, rt, log, n_train, n_test):
    train, test = run.load_data(cfg, log)
    cached = train._cache is not None
    workers = stages.data_workers(cfg, cached=cached)
    backbone, _ = stages.backbone_from_flags(cfg, cfg["input_size"])
    model = run.classifier(backbone, cfg)
    task = ClassificationTask(train, test, device=rt.device, test_crops=cfg["test_crops"], seed=cfg["seed"],
                              num_workers=workers)

    def choose(name):
        return run.choose_data_path(task, train, dict(cfg, data_path=name), rt.device)
    return check.engine_check(task, model, cfg, rt, train=train, test=test,
                              what=f"test pass, {cfg['test_crops']} crops per image", workers=workers, cached=cached,
                              n_train=n_train, n_test=n_test, nbytes=DeviceImages.nbytes(train), choose=choose)
