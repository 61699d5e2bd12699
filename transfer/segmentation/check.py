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
from voc.sbd import extra_training_ids

SPLITS = ("train_split", "test_split")
IMAGE_SETS = "Segmentation"
# What SBD adds to VOC2012 train where SBD is absent: the widely used 10,582-image training set (VOC2012 train plus
# SBD train + val, less VOC2012 val) less VOC2012 train's 1,464. This protocol drops only the scored split's images
# (seg11valid, half of VOC2012 val), so a full run adds somewhat more: an estimate, and labelled as one.
SBD_EXTRA_ESTIMATE = 10582 - 1464


def counts(cfg):
    """(training, test) images of the full run: with --sbd-root, VOC's training split plus SBD's extra images
    (FCN's merge, as the run makes it; an error where SBD's lists are absent)."""
    year = find_year(cfg["voc_root"], cfg["train_split"], cfg["year"])
    train, test = (read_image_set(cfg["voc_root"], year, cfg[k], kind=IMAGE_SETS) for k in SPLITS)
    extra = extra_training_ids(cfg["sbd_root"], cfg["sbd_splits"], train, test)[0] if cfg["sbd_root"] else []
    return len(train) + len(extra), len(test)


def devkit_extra(cfg):
    """(training images, words) that the full run adds to the devkit's count of its training split, where the
    profile's data is absent: SBD's extra images, estimated."""
    if not cfg["sbd_root"]:
        return 0, ""
    return SBD_EXTRA_ESTIMATE, (f", plus about {SBD_EXTRA_ESTIMATE:,} SBD images (an estimate: the 10,582-image "
                                "VOC2012 train + SBD set less VOC2012 train)")


def standin_flags(devkit, cfg):
    """Its two splits on the stand-in devkit, as train and val, without SBD's extra masks (the stand-in has none:
    the paper profile's --sbd-root would be looked for and refused)."""
    return ["--voc-root", str(devkit), "--year", "2007", "--train-split", "train", "--test-split", "val",
            "--sbd-root", ""]


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
