"""Segmentation's hooks for `bash run_all.sh PROFILE --check` (evaluation.check; the stage table's `check` column):
the engine's step on its crops, timed alone and in the loop, and its test pass over whole images (the names every
stage's hooks share: evaluation.experiments.stage_checks)."""

from functools import partial

from transfer import check, driver
from transfer.segmentation.data import CACHE_LIMIT_BYTES, find_year
from transfer.segmentation.device_data import DeviceImages, choose_data_path
from transfer.segmentation.hooks import SegmentationHooks
from transfer.segmentation.task import SegmentationTask
from voc.devkit import read_image_set

SPLITS = ("train_split", "test_split")
IMAGE_SETS = "Segmentation"


def counts(cfg):
    year = find_year(cfg["voc_root"], cfg["train_split"], cfg["year"])
    return tuple(len(read_image_set(cfg["voc_root"], year, cfg[k], kind=IMAGE_SETS)) for k in SPLITS)


min_train_images = check.min_train_images


def cache_fits(cfg, counts, size):
    """Whether the larger split, decoded at longer side `size`, fits segmentation's --cache auto (per split)."""
    if counts is None:
        return None
    return max(counts) * check.image_bytes(size) < CACHE_LIMIT_BYTES


def bench(cfg, rt, log, n_train, n_test):
    hooks = SegmentationHooks(cfg)
    train, test, _ = hooks.load_data(rt, log)
    cached = train.cached
    workers = driver.data_workers(cfg, cached=cached)
    backbone, _ = driver.backbone_from_flags(cfg, cfg["input_size"])
    model = hooks.fcn(backbone)
    task = SegmentationTask(train, test, loss_normalization=cfg["loss_normalization"], prediction_dir=None,
                            n_examples=0, show_progress=False)
    return check.engine_check(task, model, cfg, rt, train=train, test=test,
                              what="test pass, whole images one at a time", workers=workers, cached=cached,
                              n_train=n_train, n_test=n_test,
                              nbytes=DeviceImages.estimate_nbytes(train),
                              choose=partial(choose_data_path, task, train, device=rt.device))
