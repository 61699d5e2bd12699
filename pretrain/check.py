"""Pretraining's hooks for `bash run_all.sh PROFILE --check` (evaluation.check; the stage table's `check` column).

The same names as every stage's check hooks (evaluation.experiments.stage_checks says what each is): the trainer's
step timed alone and in its loop, and the feature-health passes of its checkpoints.
"""

from pathlib import Path

from cebench.runtime import default_num_workers
from cebench.speed import seconds_per_call
from pretrain import loop, train
from pretrain.data import ImageCache, list_images
from pretrain.health import feature_health, health_views
from pretrain.speed import trainer_bench
from voc.devkit import DEVKIT_SIZES

SPLITS = None  # no VOC splits: its schedule's steps, not a split's images, set what the full run costs
IMAGE_SETS = None


def parser():
    """pretrain.train's flags, without the run files' (the check writes no run folder)."""
    return train.get_args_parser(run_files=False)


def check_args(args, given):
    """pretrain.train's checks of the flags (expands --image-split), as a run makes them."""
    train.check_args(args, given=given)


def counts(cfg):
    return 0, 0


def standin_flags(devkit, cfg):
    """Pretraining on the stand-in's training images (and its masks, where the profile draws region shapes)."""
    flags = ["--images", str(devkit / "VOC2007" / "JPEGImages"), "--image-split", "train"]
    if cfg["region_shapes"]:
        flags += ["--region-shapes", str(devkit / "VOC2007" / "SegmentationClass"), "--region-shapes-split", "train"]
    return flags


def cache_fits(cfg, counts, size):
    """Whether the full run's images fit pretraining's --cache auto (counts and size: unused, the images decide)."""
    split = cfg["image_split"]
    n = DEVKIT_SIZES.get(("Main", "2007", split)) if split else None
    if n is None and cfg["images"] and Path(cfg["images"]).is_dir():
        n = len(list_images(cfg["images"]))
    return n is not None and ImageCache.fits(n, cfg["load_size"])


def bench(cfg, rt, log, n_train, n_test):
    """The trainer's step on a batch in memory and in its loop; the health passes of every checkpoint."""
    dataset, _ = loop.build_dataset(cfg, log)
    batch = next(iter(loop.make_train_loader(dataset, cfg, rt, 0, 1)))
    bench, trainer = trainer_bench(cfg, rt, dataset, batch)
    decode = loop.decode_mode(cfg, dataset, rt.device)
    cached = "images cached in memory" if dataset.cache is not None else "images read from disk"
    workers = cfg["workers"] if cfg.get("workers") is not None else default_num_workers()
    path = f"loader (workers: {workers}), JPEGs decoded on the {decode}, {cached}"

    def evaluations():
        if not cfg["health_images"]:
            return []
        views = health_views(dataset.paths, cfg["health_images"], cfg["input_size"], cfg["seed"])
        checks = -(-cfg["steps"] // cfg["ckpt_every"])
        s = seconds_per_call(lambda: feature_health(trainer.model.encoder, views, rt.device), rt.device)
        return [{"what": f"feature health on {len(views)} views at each of {checks} checkpoints", "seconds": s * checks,
                 "how": f"measured: {s:.2f} s per checkpoint"}]

    return {"bench": bench, "images_per_step": cfg["batch_size"], "steps": cfg["steps"], "data_path": path,
            "evaluations": evaluations, "not_projected": ["figures and ce.pt writing at the end (seconds)"]}
