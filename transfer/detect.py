"""Fast R-CNN detection transfer: mAP@0.5 on PASCAL VOC 2007 (Table 2, "Detection"; VOC07 11-point AP).

Selective-search proposals are computed once per image and cached (results/cache/proposals by default); the
AlexNet trunk comes from --weights, fc6/fc7 and the heads start afresh; every layer is fine-tuned by the shared
engine; the record also holds per-class AP, a bootstrap interval over test images and COCO-style AP.

    python -m transfer.detect --profile voc-mini --weights results/voc-mini/ce.pt
    python -m transfer.detect --profile voc-mini --weights random --max-steps 20 --out /tmp/det.json
    python -m transfer.detect --profile paper --weights random --device cuda --write-devkit results/paper/devkit
"""

import time

from cebench.config import benchmarks_path, parse_config
from cebench.errors import run_cli
from cebench.flags import add_data_path_flag
from transfer.flags import (add_data_args, add_flip_flag, add_head_args, add_init_args, add_optimisation_args,
                            add_run_args, add_test_args, task_parser)


def get_args_parser():
    p, g = task_parser("python -m transfer.detect", __doc__, "Fast R-CNN's")
    data = g["data"]
    add_data_args(data, train_split="trainval", test_split="test",
                  train_help="ImageSets/Main split to train on (paper: trainval)",
                  test_help="split to score (paper: test; voc-mini: val, a dev split)",
                  skip_bad_help="leave out unreadable images and images with a ground-truth box wholly outside "
                  "them (listed and counted in the record); boxes partly outside are clipped either way",
                  workers_help="DataLoader workers (default: one per spare core)")
    data.add_argument("--coco-json", default=None, help="COCO instances file to train on instead of VOC (read "
                      "with pycocotools); needs --coco-test-json and --coco-images")
    data.add_argument("--coco-test-json", default=None, help="COCO instances file to score")
    data.add_argument("--coco-images", default=None, help="folder that the file_name entries of both files are in")
    data.add_argument("--scale", type=int, default=600, help="shorter image side (Fast R-CNN: 600, single scale)")
    data.add_argument("--max-size", type=int, default=1000, help="cap on the longer side (Fast R-CNN: 1000)")
    add_flip_flag(data, 0.5)
    add_data_path_flag(data)
    data.add_argument("--proposals", default=None, help="precomputed proposals instead of selective search: .npz "
                      "with one [K, 4] array per image id, or .pkl of {id: array} or {'boxes': [...], 'ids': [...]}; "
                      "boxes (x1, y1, x2, y2) in the image's pixels, 1-based inclusive as VOC annotations; keys are "
                      "VOC ids or COCO image ids as text, one entry per image of both splits")
    data.add_argument("--proposals-zero-based", action="store_true", help="--proposals boxes are 0-based pixels")
    data.add_argument("--proposals-cache", default=str(benchmarks_path().parent / "results" / "cache" / "proposals"),
                      help="selective-search cache folder (entries are keyed by image content and settings, "
                      "verified on load)")
    data.add_argument("--ss-mode", default="fast", choices=["fast", "quality"], help="selective-search mode")
    data.add_argument("--ss-max-side", type=int, default=500, help="search a copy of each image with at most this "
                      "longer side, for speed (boxes are mapped back); VOC images are <= 500 px")
    data.add_argument("--ss-workers", type=int, default=0, help="processes computing proposals (0 = one per core)")
    data.add_argument("--max-proposals", type=int, default=2000, help="proposals kept per image (paper: ~2000)")
    add_init_args(g["model"], rescale_images=16, rescale_what="training images (with their RoIs)")
    add_head_args(g["model"])
    opt = g["optimisation"]
    add_optimisation_args(opt, steps=40_000, batch_size=2, lr=1.0e-3, lr_schedule="step", lr_step=30_000,
                          lr_gamma=0.1, weight_decay=5.0e-4, clip_grad=0.0)
    opt.add_argument("--rois-per-image", type=int, default=64, help="sampled RoIs per image (Fast R-CNN: 64)")
    opt.add_argument("--fg-fraction", type=float, default=0.25, help="share of foreground RoIs")
    opt.add_argument("--fg-iou", type=float, default=0.5, help="IoU for foreground; background is below it")
    opt.add_argument("--bg-iou-low", type=float, default=0.1, help="least IoU of background RoIs")
    test = g["test"]
    add_test_args(test, "with their detections as PNGs next to the record")
    test.add_argument("--nms", type=float, default=0.3, help="per-class NMS IoU threshold")
    test.add_argument("--score-thresh", type=float, default=0.0, help="drop detections scoring below this (Fast "
                      "R-CNN kept every class's 100 best boxes; py-faster-rcnn used 0.05, which costs weak models "
                      "mAP)")
    test.add_argument("--max-dets", type=int, default=100, help="detections kept per image")
    test.add_argument("--write-devkit", default=None, help="folder for the detections as the devkit's results "
                      "files comp4_det_<split>_<class>.txt (default: devkit/ in the run folder next to the record)")
    add_run_args(g["run"], out_help="result record (default results/<profile>/detect_<init>.json); checkpoints and "
                 "metrics.jsonl go to a folder next to it")
    return p


def main(argv=None):
    started = time.time()
    # config: parser defaults < benchmarks.yaml profile < command line (--help and --print-config exit here)
    cfg = parse_config(get_args_parser(), argv, "detect")
    from cebench.runtime import start_run
    from transfer import driver
    from transfer.detection.hooks import DetectionHooks

    # checked config -> distributed, precision, threads, seed -> the driver's steps with the task's hooks
    rt, log = start_run(cfg, "detect", DetectionHooks.check_config, DetectionHooks.fixed_shapes)
    return driver.run(DetectionHooks(cfg), cfg, rt, log, started)


if __name__ == "__main__":
    run_cli(main)
