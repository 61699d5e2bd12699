"""Fast R-CNN detection transfer: mAP@0.5 on PASCAL VOC 2007 (Table 2, "Detection"; VOC07 11-point AP).

Selective-search proposals are computed once per image and cached (results/cache/proposals by default); the
AlexNet trunk comes from --weights, fc6/fc7 and the heads start afresh; every layer is fine-tuned by the shared
engine; the record also holds per-class AP, a bootstrap interval over test images and COCO-style AP.

    python -m transfer.detect --profile voc-mini --weights results/voc-mini/ce.pt
    python -m transfer.detect --profile voc-mini --weights random --max-steps 20 --out /tmp/det.json
    python -m transfer.detect --profile paper --weights random --device cuda --write-devkit results/paper/devkit
"""

import argparse
import time

from cebench.config import add_profile_flag, benchmarks_path, parse_with_profile, resolved_config
from cebench.errors import run_cli
from cebench.files import make_dirs, refuse_overwrite
from cebench.logs import get_logger
from cebench.runs import keep_previous_run
from cebench.runtime import barrier, cleanup_distributed, init_distributed, seed_everything
from transfer.backbone import health_of_init
from transfer.detection import stages as run
from transfer.flags import add_init_args, add_run_args, add_sgd_args, set_threads


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults in the help, and the docstring's usage lines kept as written."""


def get_args_parser():
    p = argparse.ArgumentParser("python -m transfer.detect", description=__doc__, formatter_class=_HelpFormatter,
                                allow_abbrev=False)
    add_profile_flag(p)
    g = p.add_argument_group("data (VOC, or COCO files)")
    g.add_argument("--voc-root", default="data/VOCdevkit", help="VOCdevkit folder that holds VOC2007/")
    g.add_argument("--year", default="2007", help="VOC year folder to read")
    g.add_argument("--train-split", default="trainval", help="ImageSets/Main split to train on (paper: trainval)")
    g.add_argument("--test-split", default="test", help="split to score (paper: test; voc-mini: val, a dev split)")
    g.add_argument("--coco-json", default=None, help="COCO instances file to train on instead of VOC (read with "
                   "pycocotools); needs --coco-test-json and --coco-images")
    g.add_argument("--coco-test-json", default=None, help="COCO instances file to score")
    g.add_argument("--coco-images", default=None, help="folder that the file_name entries of both files are in")
    g.add_argument("--skip-bad", action="store_true", help="leave out unreadable images and images with a "
                   "ground-truth box wholly outside them (listed and counted in the record); boxes partly outside "
                   "are clipped either way")
    g.add_argument("--scale", type=int, default=600, help="shorter image side (Fast R-CNN: 600, single scale)")
    g.add_argument("--max-size", type=int, default=1000, help="cap on the longer side (Fast R-CNN: 1000)")
    g.add_argument("--no-flip", dest="flip", action="store_false", help="no horizontal flips in training")
    g.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    g = p.add_argument_group("proposals")
    g.add_argument("--proposals", default=None, help="precomputed proposals instead of selective search: .npz "
                   "with one [K, 4] array per image id, or .pkl of {id: array} or {'boxes': [...], 'ids': [...]}; "
                   "boxes (x1, y1, x2, y2) in the image's pixels, 1-based inclusive as VOC annotations; keys are "
                   "VOC ids or COCO image ids as text, one entry per image of both splits")
    g.add_argument("--proposals-zero-based", action="store_true", help="--proposals boxes are 0-based pixels")
    g.add_argument("--proposals-cache", default=None, help="selective-search cache folder (default: "
                   "results/cache/proposals; entries are keyed by image content and settings, verified on load)")
    g.add_argument("--ss-mode", default="fast", choices=["fast", "quality"], help="selective-search mode")
    g.add_argument("--ss-max-side", type=int, default=500, help="search a copy of each image with at most this "
                   "longer side, for speed (boxes are mapped back); VOC images are <= 500 px")
    g.add_argument("--ss-workers", type=int, default=0, help="processes computing proposals (0 = one per core)")
    g.add_argument("--max-proposals", type=int, default=2000, help="proposals kept per image (paper: ~2000)")
    g = p.add_argument_group("model")
    add_init_args(g, rescale_images=16, rescale_what="training images (with their RoIs)")
    g.add_argument("--fc-dim", type=int, default=4096, help="width of fc6 and fc7 (AlexNet: 4096)")
    g.add_argument("--dropout", type=float, default=0.5, help="dropout after fc6 and fc7")
    g = p.add_argument_group("optimisation (defaults: Fast R-CNN's)")
    g.add_argument("--steps", type=int, default=40_000, help="length of the schedule in iterations")
    g.add_argument("--max-steps", type=int, default=None, help="stop after this many iterations in total (the "
                   "schedule still follows --steps); rerun with --resume to continue")
    g.add_argument("--batch-size", type=int, default=2, help="images per iteration, over all processes")
    g.add_argument("--rois-per-image", type=int, default=64, help="sampled RoIs per image (Fast R-CNN: 64)")
    g.add_argument("--fg-fraction", type=float, default=0.25, help="share of foreground RoIs")
    g.add_argument("--fg-iou", type=float, default=0.5, help="IoU for foreground; background is below it")
    g.add_argument("--bg-iou-low", type=float, default=0.1, help="least IoU of background RoIs")
    g.add_argument("--lr", type=float, default=1.0e-3, help="base learning rate (biases learn at 2x)")
    g.add_argument("--lr-step", type=int, default=30_000, help="multiply the rate by --lr-gamma every this often")
    g.add_argument("--lr-gamma", type=float, default=0.1)
    add_sgd_args(g, weight_decay=5.0e-4, clip_grad=0.0)
    g = p.add_argument_group("test")
    g.add_argument("--nms", type=float, default=0.3, help="per-class NMS IoU threshold")
    g.add_argument("--score-thresh", type=float, default=0.0, help="drop detections scoring below this (Fast "
                   "R-CNN kept every class's 100 best boxes; py-faster-rcnn used 0.05, which costs weak models mAP)")
    g.add_argument("--max-dets", type=int, default=100, help="detections kept per image")
    g.add_argument("--write-devkit", default=None, help="folder for the detections as the devkit's results files "
                   "comp4_det_<split>_<class>.txt (default: devkit/ in the run folder next to the record)")
    g.add_argument("--draw", type=int, default=0, help="draw this many test images with their detections as PNGs "
                   "next to the record")
    g = p.add_argument_group("run")
    add_run_args(g, out_help="result record (default results/<profile>/detect_<init>.json); checkpoints and "
                 "metrics.jsonl go to a folder next to it", ckpt_every=1000)
    p.set_defaults(flip=True)
    return p


def main(argv=None):
    # config: parser defaults < benchmarks.yaml profile < command line
    args = parse_with_profile(get_args_parser(), argv, "detect")
    run.check_args(args)
    repo = benchmarks_path().parent
    args.proposals_cache = args.proposals_cache or str(repo / "results" / "cache" / "proposals")
    cfg = resolved_config(args)
    started = time.time()
    # distributed + seed
    rt = init_distributed(args.device, args.precision)
    cfg["precision"] = rt.precision  # 'auto' resolved: the record says what ran
    set_threads(args.threads)
    seed_everything(args.seed)
    log = get_logger("detect", rt.is_main)
    try:
        return _run(cfg, rt, log, repo, started)
    finally:
        cleanup_distributed()


def _run(cfg, rt, log, repo, started):
    # data: annotations checked up front, then proposals (cached selective search or --proposals)
    splits = run.load_splits(cfg, log)
    proposals, proposal_info = run.load_proposals(cfg, splits, rt, log)
    train, test = run.datasets(cfg, splits, proposals)
    # model: backbone from --weights + Fast R-CNN heads; output paths follow the init it turned out to be
    model, info = run.build(cfg, num_classes=len(splits[0].classes) + 1)
    paths = run.output_paths(cfg, info, repo)
    for path in run.guarded_outputs(cfg, paths, splits[1].classes):
        refuse_overwrite(path, cfg["resume"] or cfg["overwrite"])
    # the previous run stays whole until this one has written its record (cebench.runs)
    fresh = not (cfg["resume"] and paths["checkpoint"].is_file())
    with keep_previous_run([paths["out"], paths["run_dir"], paths["examples"]], fresh=fresh,
                           checkpoint=paths["checkpoint"], enabled=rt.is_main):
        if rt.is_main:
            make_dirs(paths["run_dir"])
        barrier(rt)  # no rank looks for a checkpoint before rank 0 has moved a previous run aside
        # rescaling (skipped when resuming: the checkpoint holds the rescaled, trained weights)
        rescaling = run.rescale(model, info, train, cfg, rt, paths, log)
        health = health_of_init(rescaling, lambda rescaled: run.health(model, info, train.split, cfg, rt, rescaled))
        # fine-tune via the one engine, which scores the test split at the end
        detections, fit = run.finetune(model, train, test, cfg, rt, paths, log)
        if not rt.is_main:
            return {}
        # result record, devkit results files, drawn examples
        record = run.write_outputs(cfg, info, rescaling, splits, detections, proposal_info, fit, paths,
                                   time.time() - started, feature_health=health)
    log.info("%s: mAP@0.5 %s %s, COCO AP %s / AP50 %s, wrote %s", record["init"], record["value"],
             record["ci95"], record["coco_ap"], record["coco_ap50"], paths["out"])
    return run.summary(record, fit, proposal_info, paths)


if __name__ == "__main__":
    run_cli(main)
