"""Detection's hooks for `bash run_all.sh PROFILE --check` (evaluation.check; the stage table's `check` column):
the engine's step on its proposals, timed alone and in the loop, its test pass, and selective search timed on a
few images (the names every stage's hooks share: evaluation.experiments.stage_checks)."""

import dataclasses
import os
import time
from functools import partial

from transfer import check, driver
from transfer.detection.device_data import DeviceImages, choose_data_path
from transfer.detection.hooks import DetectionHooks
from transfer.detection.task import DetectionTask

SPLITS = ("train_split", "test_split")
IMAGE_SETS = "Main"
CHECK_TRAIN, CHECK_TEST = 64, 16  # images checked on (of larger splits): proposals are computed for them


def counts(cfg):
    return check.counts(cfg, SPLITS)


min_train_images = check.min_train_images


def max_image_side(cfg):
    """Detection's cap on the longer side: where a profile's data is absent it tells a profile of reduced images
    (voc-mini: 224 px), which the stand-in is drawn at."""
    return cfg["max_size"]


def check_flags(out_dir):
    """The check's proposals stay with the check, not in the runs' shared cache."""
    return ["--proposals-cache", str(out_dir / "proposals")]


def _head(split, n):
    """The first `n` images of a DetectionSplit (its per-image lists cut alike)."""
    per_image = ("ids", "image_paths", "sizes", "boxes", "labels", "difficult")
    return dataclasses.replace(split, **{k: getattr(split, k)[:n] for k in per_image})


def _selective_search_s(paths, settings):
    """Mean seconds of selective search per image over `paths`, in this process (as one worker of the run's)."""
    import cv2

    from transfer.detection.proposals import selective_search
    start = time.perf_counter()
    for path in paths:
        selective_search(cv2.imread(str(path)), settings)
    return (time.perf_counter() - start) / len(paths)


def bench(cfg, rt, log, n_train, n_test):
    # the check's share of each split (selective search of whole splits would take the check's minutes)
    hooks = DetectionHooks(cfg)
    splits = [_head(split, n) for split, n in zip(hooks.load_splits(log), (CHECK_TRAIN, CHECK_TEST), strict=True)]
    proposals, _ = hooks.load_proposals(splits, rt, log)
    extra = []
    if not cfg["proposals"]:  # timed apart from the cache, on a few images in this one process
        per_image, workers = _selective_search_s(splits[0].image_paths[:4], hooks.proposal_settings()), \
            cfg["ss_workers"] or os.cpu_count() or 1
        extra.append({"what": "selective search of both splits (CPU; once: cached for every later run)",
                      "seconds": per_image * (n_train + n_test) / workers, "once": True,
                      "how": f"measured: {per_image:.3f} s per image on 4 of the check's images (their content, "
                             f"not the real photos'), times the full splits' images, over {workers} processes"})
    train, test = hooks.datasets(splits, proposals)
    workers = driver.data_workers(cfg, cached=False)
    model, _ = hooks.fast_rcnn(len(splits[0].classes) + 1)
    task = DetectionTask(train, test, device=rt.device, num_workers=workers,
                         test_settings={"score_thresh": cfg["score_thresh"], "nms_iou": cfg["nms"],
                                        "max_per_image": cfg["max_dets"]})
    return check.engine_check(task, model, cfg, rt, train=train, test=test,
                              what="test pass (every proposal scored, per-class NMS)", workers=workers, cached=False,
                              n_train=n_train, n_test=n_test, nbytes=DeviceImages.estimate_nbytes(train),
                              choose=partial(choose_data_path, task, train, device=rt.device), extra=extra)
