"""Pretrain a context encoder by inpainting (Pathak et al. 2016, §3) — the features behind Table 2.

    python -m pretrain.train --profile voc-mini --out results/voc-mini/ce.pt
    torchrun --nproc_per_node=4 -m pretrain.train --profile paper --device cuda --images /data/imagenet/train
"""

import argparse
import time
from pathlib import Path


from cebench.config import (add_skip_bad_flag, command_line_dests, entry_parser, non_negative_float, non_negative_int,
                            parse_config, positive_float, positive_int)
from cebench.curves import tensorboard_dir
from cebench.errors import CebenchError, run_cli
from cebench.files import atomic_write_json, refuse_overwrite, truncate_jsonl
from cebench.locks import hold_outputs
from cebench.flags import (HEALTH_IMAGES, add_compile_flag, add_data_path_flag, add_precision_flag,
                           add_tensorboard_flag, add_threads_flag)
from cebench.runs import keep_previous_run
from cebench.runtime import barrier, cleanup_distributed, start_run
from pretrain import loop
from pretrain.health import health_views
from pretrain.masks import MASK_KINDS
from pretrain.model import min_input_size
from pretrain.weights import save_checkpoint


EPILOG = """Defaults shown are the parser's; a --profile replaces them (see benchmarks.yaml), and flags replace
both. Start with `--profile smoke` (minutes) or `--profile voc-mini` (~20 min on 2 CPU cores); `--profile paper`
is the paper's 100K-step run for a GPU. Interrupted? Rerun the same command with --resume: on CPU the result
equals an uninterrupted run weight for weight. Outputs: --out (ce.pt) plus <stem>.last.pt, <stem>.loss.png,
<stem>.samples.png, <stem>.metrics.jsonl, <stem>.config.json (and <stem>.tensorboard/) next to it."""


def get_args_parser(run_files=True):
    """The parser of pretraining; `run_files=False` leaves out what only a training run's files need (--resume,
    --no-figures), for pretrain.speed."""
    p = entry_parser("python -m pretrain.train", __doc__.split("\n")[0], epilog=EPILOG)
    g = p.add_argument_group("data")
    g.add_argument("--images", default=None, help="folder of unlabelled images, searched recursively for "
                   "JPEG/PNG (a VOC JPEGImages or an ImageNet train folder both work)")
    g.add_argument("--image-list", default=None, help="optional file of image ids (one per line, e.g. VOC "
                   "ImageSets/Main/train.txt): pretrain only on those, keeping transfer test images unseen")
    g.add_argument("--image-split", default=None, help="shorthand for --image-list when --images is a VOC "
                   "JPEGImages folder: use <images>/../ImageSets/Main/<SPLIT>.txt (e.g. train; 'all' = every image). "
                   "A profile's split is not applied to a plain folder given with --images")
    add_skip_bad_flag(g, "skip unreadable files instead of stopping at the first one: a bad header is left out up "
                      "front; a file that fails to decode mid-run (cache off) gives its place to the next readable "
                      "image. Each is named in the log and in ce.pt's meta")
    g.add_argument("--cache", default="auto", choices=["auto", "on", "off"], help="keep pre-resized images "
                   "in memory (auto: when they fit in 2 GB) so decoding never slows the step")
    g.add_argument("--workers", type=non_negative_int, default=None, help="DataLoader workers (default: one per spare "
                   "core; 0 prepares batches in the training process)")
    g.add_argument("--decode", default="auto", choices=["auto", "cpu", "gpu"], help="where JPEGs are decoded: "
                   "cpu = PIL in the loader's workers; gpu = the workers read file bytes and the GPU decodes the "
                   "batch (nvJPEG; same crops, flips and masks); auto = gpu on CUDA unless the images are cached")
    add_data_path_flag(g)
    g = p.add_argument_group("model")
    g.add_argument("--arch", default="caffenet", choices=["caffenet", "torchvision"],
                   help="encoder trunk: the paper's CaffeNet shape, or torchvision's AlexNet")
    g.add_argument("--pool-free", action="store_true", help="replace max-pooling by strided convolutions")
    g.add_argument("--width", type=positive_float, default=1.0, help="encoder channel multiplier (1.0 = paper; "
                   "smaller only for quick CPU checks)")
    g.add_argument("--input-size", type=positive_int, default=227, help="square crop fed to the network (paper: 227)")
    g.add_argument("--load-size", type=positive_int, default=256, help="shorter image side before the random crop")
    g.add_argument("--dropout", type=float, default=0.5, help="dropout after the channel-wise FC layer")
    g.add_argument("--decoder-width", type=positive_float, default=1.0, help="decoder channel multiplier")
    g = p.add_argument_group("masks and loss")
    g.add_argument("--mask", default="random-region", choices=list(MASK_KINDS), help="region to drop; the "
                   "paper's features use random-region (central-region features latch onto the hole's border)")
    g.add_argument("--region-shapes", default=None, help="folder of VOC segmentation PNGs (e.g. VOC2012/"
                   "SegmentationObject): random-region masks then paste their object shapes, as the paper; "
                   "without it, the released code's noise pattern")
    g.add_argument("--region-shapes-split", default=None, metavar="SPLIT", help="only the PNGs listed in "
                   "ImageSets/Segmentation/SPLIT.txt beside --region-shapes (e.g. the pretraining split, so that no "
                   "test image lends its shapes); default every PNG of the folder")
    g.add_argument("--overlap", type=non_negative_int,
                   default=0, help="px of context around the hole also reconstructed "
                   "(paper: 7 for its central-region inpainting model; 0 for feature learning)")
    g.add_argument("--overlap-weight", type=non_negative_float, default=10.0, help="L2 weight of the overlap band")
    g.add_argument("--adv-weight", type=float, default=0.0, help="adversarial loss weight (paper: 0.001 for "
                   "inpainting quality); 0 = off, as for every feature-learning run")
    g = p.add_argument_group("optimisation")
    g.add_argument("--steps", type=positive_int, default=100_000, help="total steps of the schedule (paper: ~100K)")
    g.add_argument("--max-steps", type=non_negative_int, default=None, help="stop after this many steps in total "
                   "(a cap for quick runs; the schedule still follows --steps); 0 writes the untrained weights, "
                   "labelled ce-untrained (the paper's init scheme without what pretraining learns)")
    g.add_argument("--batch-size", type=positive_int, default=64, help="images per step per process")
    g.add_argument("--lr", type=positive_float, default=1.0e-4, help="Adam learning rate (paper: 1e-4 random region, "
                   "1e-3 central)")
    g.add_argument("--beta1", type=float, default=0.5, help="Adam beta1 (released code: 0.5)")
    g.add_argument("--weight-decay", type=non_negative_float, default=0.0, help="Adam weight decay (paper: none)")
    g.add_argument("--lr-schedule", default="constant", choices=["constant", "cosine"],
                   help="constant as the paper, or cosine decay to zero over --steps")
    _add_run_args(p.add_argument_group("run"), run_files)
    return p


def _add_run_args(g, run_files):
    """Seed, device, precision, threads, the checkpoint and the run's files, health measurements."""
    g.add_argument("--seed", type=int, default=0, help="seeds weights, sample order, crops, masks, dropout")
    g.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="auto = CUDA if present")
    add_precision_flag(g)
    add_compile_flag(g)
    add_threads_flag(g)
    g.add_argument("--out", default="ce.pt", help="checkpoint to write; run files (<stem>.last.pt, metrics, "
                   "loss curve, sample grid) go next to it")
    if run_files:
        g.add_argument("--resume", action="store_true", help="continue from <stem>.last.pt if present")
    g.add_argument("--overwrite", action="store_true", help="start afresh even if --out exists; the previous run's "
                   "files stay aside (hidden .NAME.previous) and come back if the new run fails, until it succeeds")
    g.add_argument("--ckpt-every", type=positive_int, default=500, help="steps between run checkpoints")
    g.add_argument("--log-every", type=positive_int, default=20, help="steps between metrics.jsonl lines")
    add_tensorboard_flag(g, "<stem>.tensorboard/ next to --out")
    g.add_argument("--save-at", type=non_negative_int, nargs="*",
                   default=[], metavar="STEP", help="also write the encoder "
                   "and decoder after these steps as <stem>.step<STEP>.pt (0 = before the first step), e.g. for "
                   "a pretraining curve (python -m evaluation.curve does this itself)")
    if run_files:
        g.add_argument("--no-figures", action="store_true", help="skip the loss curve and sample grid")
    g.add_argument("--health-images", type=non_negative_int,
                   default=HEALTH_IMAGES, help="fixed seeded centre crops of the "
                   "training images on which dead units and pool5's effective rank are measured at every checkpoint "
                   "(metrics.jsonl, ce.pt meta); 0 = off")


def check_args(args, given=()):
    """Refuse inconsistent flags with one line; expands --image-split into --image-list.

    `given`: the dests set on the command line. A profile's image_split (a VOC split) applies to a VOC
    JPEGImages folder (ImageSets/Main beside it); for a plain folder given with --images (an ImageNet-style
    train/ folder) every image is used, and an --image-list given on the command line replaces it. Returns a
    note for the log when the profile's split was set aside, else None.
    """
    if not args.images:
        raise CebenchError("no image folder: pass --images DIR or pick a --profile that sets one")
    note = None
    if args.image_split == "all":
        args.image_split = None
    if args.image_split and "image_split" not in given:  # the split comes from the profile
        if "image_list" in given:
            note = f"--image-list {args.image_list} replaces the profile's image_split {args.image_split!r}"
            args.image_split = None
        elif "images" in given and not (Path(args.images).resolve().parent / "ImageSets" / "Main").is_dir():
            note = (f"--images {args.images} is not a VOC JPEGImages folder (no ImageSets/Main beside it): the "
                    f"profile's image_split {args.image_split!r} does not apply, every image under it is used")
            args.image_split = None
    if args.image_split and args.image_list:
        raise CebenchError("give --image-list or --image-split, not both")
    if args.image_split:
        args.image_list = str(Path(args.images).resolve().parent / "ImageSets" / "Main" / f"{args.image_split}.txt")
        if not Path(args.image_list).is_file():
            raise CebenchError(f"{args.image_list}: no such split list (--image-split {args.image_split} expects "
                               "--images to be a VOC JPEGImages folder; pass --image-split all to use every image)")
    if args.load_size < args.input_size:
        raise CebenchError(f"--load-size {args.load_size} is smaller than --input-size {args.input_size}")
    smallest = min_input_size(args.arch, args.pool_free)  # the numbers' signs: their flag types (cebench.config)
    if args.input_size < smallest:
        raise CebenchError(f"--input-size {args.input_size} is too small for the {args.arch} trunk"
                           f"{' (pool-free)' if args.pool_free else ''}: pool5 would be empty; use {smallest} or more")
    if not 0 <= args.adv_weight < 1:
        raise CebenchError("--adv-weight must be in [0, 1)")
    tensorboard_dir(args.tensorboard, ".")  # an explicit --tensorboard DIR without the package: refused now
    return note


def check_config(cfg, given=()):
    """check_args on the resolved config (a dict, updated in place: --image-split becomes --image-list)."""
    args = argparse.Namespace(**cfg)
    note = check_args(args, given)
    cfg.update(vars(args))
    return note


def main(argv=None):
    # config (parser defaults < benchmarks.yaml profile < command line, checked), distributed, threads, seed,
    # logger: cebench.runtime.start_run, as every entry point (every random choice of a step is also a function
    # of (seed, step), see pretrain.data); 'auto' precision resolved: config, replay check and ce.pt say what ran
    parser, notes = get_args_parser(), []
    cfg = parse_config(parser, argv, "pretrain")
    rt, log = start_run(cfg, "pretrain", fixed_shapes=True,  # every crop is S x S
                        check=lambda cfg: notes.append(check_config(cfg, command_line_dests(parser, argv))))
    paths = loop.run_paths(cfg["out"])
    if notes[0]:
        log.info(notes[0])
    try:
        # the run's files are locked for its life (cebench.locks: a second run on them is refused), then the
        # previous run stays whole until this one succeeds (cebench.runs)
        with hold_outputs([paths["out"], paths["last"]], rt):
            if not cfg["resume"] and not cfg["overwrite"]:
                refuse_overwrite(paths["out"])
                refuse_overwrite(paths["last"])
            fresh = not (cfg["resume"] and paths["last"].exists())
            with keep_previous_run(paths.values(), fresh=fresh, checkpoint=paths["last"], enabled=rt.is_main):
                return _run(cfg, rt, paths, log)
    finally:
        cleanup_distributed()


def _run(cfg, rt, paths, log):
    # data
    dataset, skipped = loop.build_dataset(cfg, log if rt.is_main else None, rt.device)
    cfg["data_path"] = loop.data_path(cfg, dataset, rt.device)  # 'auto' resolved, as precision
    fingerprint = loop.dataset_fingerprint(dataset)
    # model + optimiser
    trainer = loop.Trainer(cfg, rt)
    # resume
    counters = {"step": 0, "history": [], "wall_time_s": 0.0, "skipped": []}
    if cfg["resume"] and paths["last"].exists():
        counters = loop.load_run(paths, trainer, cfg, fingerprint)
        log.info("resumed from %s at step %d", paths["last"], counters["step"])
        if rt.is_main:  # steps logged after the checkpoint are replayed: their lines go
            truncate_jsonl(paths["metrics"], lambda row: row.get("step", 0) <= counters["step"])
    stop = loop.stop_step(cfg)
    if rt.is_main:
        atomic_write_json(paths["config"], cfg)
        log.info("steps %d..%d of %d, batch %d x %d processes, mask %s, device %s, precision %s", counters["step"],
                 stop, cfg["steps"], cfg["batch_size"], rt.world_size, cfg["mask"], rt.device, rt.precision)
    # loop
    start = time.perf_counter()
    loader = loop.make_train_loader(dataset, cfg, rt, counters["step"], stop)
    views = health_views(dataset.paths, cfg["health_images"], cfg["input_size"], cfg["seed"]) if (
        rt.is_main and cfg["health_images"] > 0) else None
    save_at = set(cfg["save_at"] or ())

    def snapshot(counters):  # --save-at: a ce.pt of the weights after this many steps, written atomically
        if rt.is_main and counters["step"] in save_at:
            meta = loop.final_meta(cfg, trainer, counters, len(dataset), skipped, None, None)
            save_checkpoint(loop.snapshot_path(paths["out"], counters["step"]), trainer.model, meta)

    counters = loop.train_steps(trainer, loader, counters, cfg, paths, fingerprint, stop, views, snapshot)
    identical, checksums = loop.ranks_identical(trainer)
    # feature health of the final weights (measured at the last checkpoint, or now after a resume with no steps)
    health = counters.get("feature_health")
    if views is not None and health is None:
        health = loop.log_feature_health(trainer, views, counters, paths)
    # ce.pt + figures, from rank 0 only
    meta = loop.final_meta(cfg, trainer, counters, len(dataset), skipped, identical, checksums, health)
    if rt.is_main:
        save_checkpoint(paths["out"], trainer.model, meta)
        if not cfg["no_figures"]:
            from pretrain.figures import write_figures  # matplotlib only when figures are wanted
            write_figures(trainer.model, dataset, counters["history"], paths, rt.device)
        log.info("wrote %s (%s: %d steps, %d images seen, %.1f s)", paths["out"], meta["init_label"], meta["steps"],
                 meta["images_seen"], meta["wall_time_s"])
    barrier(rt)
    elapsed, steps_run = time.perf_counter() - start, len(loader)
    return {"out": str(paths["out"]), "steps": counters["step"], "images_seen": meta["images_seen"],
            "snapshots": [str(loop.snapshot_path(paths["out"], s)) for s in sorted(save_at) if s <= stop],
            "final_loss": counters["history"][-1][1] if counters["history"] else None,
            "images_per_s": steps_run * cfg["batch_size"] * rt.world_size / elapsed if steps_run else None,
            "wall_time_s": meta["wall_time_s"], "ddp_ranks_identical": identical,
            "skipped_images": meta["skipped_image_files"]}


if __name__ == "__main__":
    run_cli(main)
