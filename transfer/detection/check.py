"""Detection's hooks for `bash run_all.sh PROFILE --check` (evaluation.check; the stage table's `check` column):
the engine's step on its proposals, timed alone and in the loop, its test pass, and selective search timed on a
few images (the names every stage's hooks share: evaluation.experiments.stage_checks).

Where OpenCV's contrib module is missing (a GPU image ships opencv-python-headless, which lacks cv2.ximgproc), the
check still times the GPU's work: it gives each image drawn boxes in place of selective search's (`drawn_proposals`),
as many as the profile's cap, and says so in its row. Selective search itself is CPU work, timed where OpenCV's
contrib module is installed."""

import dataclasses
import os
import time
from functools import partial

import numpy as np

from transfer import check, driver
from transfer.detection.data import proposals_for
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


def drawn_proposals(split, n, seed=0):
    """{image id: `n` boxes [n, 4]} drawn for each image of `split`, in place of selective search's where OpenCV's
    contrib module is missing, so that the GPU's work is checked at the full run's shapes: the RoI sampler's batch
    (foreground and background RoIs near the objects) and the test pass's `n` proposals per image (the profile's cap,
    which selective search reaches on VOC's photos). Half are the image's objects shifted and scaled (IoU with them
    from about 0.1 to 1), half anywhere in the image; in the module's continuous pixel coordinates; seeded."""
    rng = np.random.default_rng(seed)
    out = {}
    for image_id, (w, h), objects in zip(split.ids, split.sizes, split.boxes, strict=True):
        size = np.array([w, h, w, h], dtype=np.float64)
        n_near = n // 2 if len(objects) else 0
        anchor = objects[rng.integers(len(objects), size=n_near)] if n_near else np.zeros((0, 4))
        centre, extent = (anchor[:, :2] + anchor[:, 2:]) / 2, anchor[:, 2:] - anchor[:, :2]
        centre = centre + rng.uniform(-0.5, 0.5, (n_near, 2)) * extent
        extent = extent * np.exp(rng.uniform(-0.7, 0.7, (n_near, 2)))
        near = np.concatenate([centre - extent / 2, centre + extent / 2], axis=1)
        corners = rng.uniform(0, 1, (n - n_near, 4)) * size
        anywhere = np.concatenate([np.minimum(corners[:, :2], corners[:, 2:]),
                                   np.maximum(corners[:, :2], corners[:, 2:])], axis=1)
        boxes = np.clip(np.concatenate([near, anywhere]), 0, size)
        # at least 2 px a side (selective search's min_size), inside the image
        boxes[:, :2] = np.minimum(boxes[:, :2], size[2:] - 2)
        boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 2)
        out[image_id] = boxes.astype(np.float32)
    return out


def bench(cfg, rt, log, n_train, n_test):
    # the check's share of each split (selective search of whole splits would take the check's minutes)
    from transfer.detection.proposals import opencv_with_contrib
    hooks = DetectionHooks(cfg)
    splits = [_head(split, n) for split, n in zip(hooks.load_splits(log), (CHECK_TRAIN, CHECK_TEST), strict=True)]
    extra, not_projected = [], []
    if cfg["proposals"] or opencv_with_contrib() is not None:
        proposals, _ = hooks.load_proposals(splits, rt, log)
    else:
        n = cfg["max_proposals"]
        proposals = [proposals_for(s, drawn_proposals(s, n, seed=cfg["seed"] + k), "the check's drawn boxes")
                     for k, s in enumerate(splits)]
        log.warning("OpenCV's contrib module (cv2.ximgproc) is not installed: the detection check gives each image "
                    "%d drawn boxes in place of selective search's, and does not time selective search", n)
        not_projected.append(f"selective search (OpenCV's contrib module, cv2.ximgproc, is not installed here: the "
                             f"check gave each image {n} drawn boxes, the --max-proposals cap, in place of selective "
                             f"search's; it is CPU work, timed by this check where opencv-contrib-python-headless is "
                             f"installed)")
    if not cfg["proposals"] and not not_projected:  # timed apart from the cache, on a few images in this one process
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
    built = check.engine_check(task, model, cfg, rt, train=train, test=test,
                               what="test pass (every proposal scored, per-class NMS)", workers=workers, cached=False,
                               n_train=n_train, n_test=n_test, nbytes=DeviceImages.estimate_nbytes(train),
                               choose=partial(choose_data_path, task, train, device=rt.device), extra=extra)
    built["not_projected"] += not_projected
    return built
