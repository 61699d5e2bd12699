"""FCN semantic segmentation transfer: mean IU on PASCAL VOC (PAPER.md Table 2, "Segmentation" column).

An FCN-32s (or 16s/8s) on the AlexNet trunk of --weights, fine-tuned on ImageSets/Segmentation/<train-split>,
scored on every <test-split> image at its own resolution; writes one result record, the predictions as palette
PNGs and a PNG of a few colour-coded examples next to the record.

    python -m transfer.segment --profile voc-mini --weights results/voc-mini/ce.pt
    python -m transfer.segment --profile voc-mini --weights random --max-steps 20 --out /tmp/seg.json
"""

import argparse
import time
from pathlib import Path

from cebench.config import parse_with_profile, resolved_config
from cebench.errors import run_cli
from cebench.logs import get_logger
from cebench.records import default_record_path, schedule_fields, write_record
from cebench.runs import keep_previous_run
from cebench.runtime import barrier, cleanup_distributed, default_num_workers, init_distributed, seed_everything
from transfer.backbone import build_backbone
from transfer.engine import TrainConfig, checkpoint_path, fit
from transfer.flags import add_init_args, add_run_args, add_sgd_args, set_threads
from transfer.segmentation.data import SegTransform, VOCSegmentation
from transfer.segmentation.model import VARIANTS
from transfer.segmentation.stages import (check_outputs, run_outputs, run_paths, save_examples, segmentation_protocol,
                                          segmentation_record)
from transfer.segmentation.stages import build_model
from transfer.segmentation.task import LOSS_NORMALIZATIONS, SegmentationTask
from voc.devkit import dataset_name


def get_args_parser():
    p = argparse.ArgumentParser("transfer.segment", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter, allow_abbrev=False)
    g = p.add_argument_group("data")
    g.add_argument("--voc-root", default="data/VOCdevkit", help="VOCdevkit folder holding VOC2012/ and/or VOC2007/")
    g.add_argument("--year", default="auto", choices=["auto", "2012", "2011", "2010", "2009", "2008", "2007"],
                   help="auto: VOC2012 when the root has the split (the paper's protocol), else VOC2007")
    g.add_argument("--train-split", default="train", help="ImageSets/Segmentation/<name>.txt to fine-tune on")
    g.add_argument("--test-split", default="val", help="split to score (add seg11valid.txt there for FCN's list)")
    g.add_argument("--crop-size", type=int, default=0, help="random square training crops; 0 = whole images "
                   "(then keep one image per micro-batch or they are padded with void)")
    g.add_argument("--min-scale", type=float, default=1.0, help="random rescaling of training images (1 = none)")
    g.add_argument("--max-scale", type=float, default=1.0)
    g.add_argument("--flip-prob", type=float, default=0.0, help="probability of a horizontal flip in training")
    g.add_argument("--skip-bad", action="store_true", help="leave out images with a missing or unreadable image "
                   "or mask (listed in the record) instead of stopping")
    g.add_argument("--cache", default="auto", choices=["auto", "on", "off"],
                   help="keep decoded images in memory (auto: when the splits fit in about 1 GB)")
    g.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: 0 with the cache)")
    g = p.add_argument_group("model")
    add_init_args(g, rescale_images=32, rescale_what="training crops")
    g.add_argument("--variant", default="32s", choices=VARIANTS, help="FCN-32s (the paper), or 16s/8s skips")
    g.add_argument("--fc-dim", type=int, default=4096, help="width of fc6 and fc7 (AlexNet: 4096)")
    g.add_argument("--backbone-size", type=int, default=227, help="input size whose pool5 gives fc6's kernel "
                   "(227 -> 6x6, as voc-fcn-alexnet); also the size of the rescaling crops")
    g.add_argument("--pad", type=int, default=100, help="conv1 padding of voc-fcn-alexnet (>= 82 for FCN-32s)")
    g.add_argument("--upsampling", default="fixed", choices=["fixed", "learned"],
                   help="bilinear up-sampling, frozen (voc-fcn-alexnet; fast) or trained from bilinear")
    g.add_argument("--dropout", type=float, default=0.5, help="dropout after fc6 and fc7")
    g = p.add_argument_group("optimisation (defaults: voc-fcn-alexnet's solver)")
    g.add_argument("--steps", type=int, default=100_000, help="length of the schedule in iterations")
    g.add_argument("--max-steps", type=int, default=None, help="stop after this many iterations in total (a cap "
                   "for quick runs; the schedule keeps --steps)")
    g.add_argument("--batch-size", type=int, default=20, help="images per iteration, over all processes")
    g.add_argument("--accum-steps", type=int, default=20, help="micro-batches per iteration (Caffe's iter_size)")
    g.add_argument("--lr", type=float, default=1.0e-4, help="base learning rate (score biases learn at 2x)")
    g.add_argument("--lr-schedule", default="constant", choices=["constant", "step", "cosine"])
    g.add_argument("--lr-step", type=int, default=10_000, help="iterations between steps of the step schedule")
    g.add_argument("--lr-gamma", type=float, default=0.1, help="factor of each step of the step schedule")
    add_sgd_args(g, weight_decay=5.0e-4, clip_grad=0.0)
    g.add_argument("--loss-normalization", default="batch", choices=LOSS_NORMALIZATIONS, help="batch: pixel "
                   "sum per image (Caffe's normalize: false, as FCN; pair with a tiny lr); valid: mean per pixel")
    g = p.add_argument_group("run")
    add_run_args(g, out_help="result record (default results/<profile>/segment_<init>.json); the run folder "
                 "<record>.run/ and <record>.examples.png go beside it", ckpt_every=4000)
    g.add_argument("--save-predictions", default=None, help="folder for every test prediction as a palette PNG "
                   "(default <record>.predictions/)")
    g.add_argument("--n-examples", type=int, default=4, help="test images shown in <record>.examples.png")
    g.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples of the test images for ci95")
    return p


def _train_config(args, workers):
    return TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, momentum=args.momentum,
                       weight_decay=args.weight_decay, schedule=args.lr_schedule, lr_step=args.lr_step,
                       lr_gamma=args.lr_gamma, max_steps=args.max_steps, accum_steps=args.accum_steps,
                       clip_grad_norm=args.clip_grad or None, eval_every=args.eval_every or None,
                       checkpoint_every=args.ckpt_every, log_every=args.log_every, num_workers=workers,
                       seed=args.seed)


def main(argv=None):
    # config
    args = parse_with_profile(get_args_parser(), argv, "segment")
    config, started = resolved_config(args), time.time()
    set_threads(args.threads)
    # distributed + seed
    runtime = init_distributed(args.device, args.precision)
    config["precision"] = runtime.precision  # 'auto' resolved: the record says what ran
    seed_everything(args.seed)
    logger = get_logger("cebench.segment", runtime.is_main)
    try:
        return _run(args, config, runtime, logger, started)
    finally:
        cleanup_distributed()


def _run(args, config, runtime, logger, started):
    # data first (a bad file fails before any output exists): augmented crops for training, whole test images
    transform = SegTransform(scale_range=(args.min_scale, args.max_scale), crop_size=args.crop_size,
                             flip_prob=args.flip_prob)
    train_ds, test_ds = (VOCSegmentation(args.voc_root, split, args.year, transform=t, cache=args.cache,
                                         skip_bad=args.skip_bad)
                         for split, t in ((args.train_split, transform), (args.test_split, SegTransform())))
    logger.info("VOC%s %s: %d images; VOC%s %s: %d images", train_ds.year, args.train_split, len(train_ds),
                test_ds.year, args.test_split, len(test_ds))
    # backbone from --weights; the output paths follow the init it turned out to be
    arch = {"arch": args.arch, "width": args.width, "pool_free": args.pool_free}
    backbone, info = build_backbone(args.weights, arch=arch, input_size=args.backbone_size, fc_dim=args.fc_dim,
                                    dropout=args.dropout, seed=args.seed)
    label = args.init_label or info["init"]
    out = Path(args.out or default_record_path(args.profile, "segment", label))
    run_dir, pred_dir, examples_png = run_paths(out, args.save_predictions)
    check_outputs(out, run_dir, resume=args.resume, overwrite=args.overwrite)
    # the previous run stays whole until this one has written its record (cebench.runs)
    fresh = not (args.resume and checkpoint_path(run_dir).is_file())
    with keep_previous_run(run_outputs(out, run_dir, pred_dir, examples_png, not args.save_predictions),
                           fresh=fresh, checkpoint=checkpoint_path(run_dir), enabled=runtime.is_main):
        barrier(runtime)  # no rank looks for a checkpoint before rank 0 has moved a previous run aside
        # model: rescaled backbone, fc6/fc7 as convolutions, FCN head
        model = build_model(args, backbone, info, train_ds)
        # optimiser, schedule, resume and loop: the one engine (it resumes from run_dir's checkpoint)
        task = SegmentationTask(train_ds, test_ds, loss_normalization=args.loss_normalization,
                                prediction_dir=pred_dir, n_examples=args.n_examples, show_progress=runtime.is_main)
        workers = args.workers if args.workers is not None else 0 if train_ds.cached else default_num_workers()
        train_config = _train_config(args, workers)
        result = fit(task, model, train_config, run_dir, runtime, resume=True, logger=logger, run_config=config,
                     tensorboard=args.tensorboard)
        if not runtime.is_main:
            return {}
        # final evaluation (fit's, on the main rank; predictions already written) -> record, examples PNG
        save_examples(examples_png, test_ds, task.last["examples"])
        protocol = segmentation_protocol(model, info, train_ds, transform, train_config, args.loss_normalization)
        record = segmentation_record(
            task.last, n_boot=args.n_boot, seed=args.seed, init=label,
            dataset=dataset_name(args.voc_root, test_ds.year), split=args.test_split,
            wall_time_s=time.time() - started, config=config, protocol=protocol,
            feature_health=info["feature_health"], steps_done=result.step,
            predictions=str(pred_dir), examples=str(examples_png), run_dir=str(run_dir),
            skipped=train_ds.skipped + test_ds.skipped,
            **schedule_fields(result.step, args.steps, weights_meta=info["meta"]))
        write_record(out, record)
    logger.info("%s: mIoU %.2f%% [%.2f, %.2f], pixel accuracy %.2f%%, wrote %s", label, record["value"],
                *record["ci95"], record["pixel_acc"], out)
    return dict(result.metrics, out=str(out), value=record["value"], ci95=record["ci95"])


if __name__ == "__main__":
    run_cli(main)
