"""Fine-tune a backbone for PASCAL VOC 2007 classification (Table 2, "Classification": mAP over 20 classes).

    python -m transfer.classify --profile voc-mini --weights results/voc-mini/ce.pt
    python -m transfer.classify --profile paper --weights random --device cuda       # 80K iterations, as the paper
    python -m transfer.classify --profile voc-mini --weights random --probe          # frozen pool5, minutes
"""

import argparse
import time

from cebench.config import add_profile_flag, benchmarks_path, parse_with_profile, resolved_config
from cebench.errors import run_cli
from cebench.files import atomic_write_json, make_dirs, refuse_overwrite
from cebench.logs import get_logger
from cebench.records import write_record
from cebench.runs import keep_previous_run
from cebench.runtime import barrier, cleanup_distributed, init_distributed, seed_everything
from transfer.backbone import health_of_init
from transfer.classification import stages as run
from transfer.flags import add_init_args, add_run_args, add_sgd_args, set_threads


def get_args_parser():
    p = argparse.ArgumentParser("python -m transfer.classify", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter, allow_abbrev=False)
    add_profile_flag(p)
    g = p.add_argument_group("data")
    g.add_argument("--voc-root", default="data/VOCdevkit", help="VOCdevkit folder that holds VOC2007/")
    g.add_argument("--year", default="2007", help="VOC year folder to read")
    g.add_argument("--train-split", default="trainval", help="ImageSets/Main split to train on (paper: trainval)")
    g.add_argument("--test-split", default="test", help="split to score (paper: test; voc-mini: val, a dev split)")
    g.add_argument("--skip-bad", action="store_true", help="leave out images with a bad XML, a missing or a "
                   "truncated JPEG (counted in the record) instead of stopping at the first one")
    g.add_argument("--cache", default="auto", choices=["auto", "on", "off"], help="keep decoded images in memory "
                   "(auto: when they fit in 2 GB)")
    g.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: 0 with the cache, "
                   "else one per spare core)")
    g = p.add_argument_group("model")
    add_init_args(g, rescale_images=160, rescale_what="training views")
    g.add_argument("--input-size", type=int, default=227, help="square crop fed to the network (paper: 227)")
    g.add_argument("--fc-dim", type=int, default=4096, help="width of fc6 and fc7 (AlexNet: 4096)")
    g.add_argument("--dropout", type=float, default=0.5, help="dropout after fc6 and fc7")
    g = p.add_argument_group("optimisation (defaults: the paper's)")
    g.add_argument("--probe", action="store_true", help="frozen pool5 + logistic regression instead of "
                   "fine-tuning every layer: a fast comparison, not the paper's protocol")
    g.add_argument("--steps", type=int, default=80_000, help="length of the schedule in iterations")
    g.add_argument("--max-steps", type=int, default=None, help="stop after this many iterations in total (the "
                   "schedule still follows --steps); rerun with --resume to continue")
    g.add_argument("--batch-size", type=int, default=16, help="images per iteration, over all processes")
    g.add_argument("--lr", type=float, default=1.0e-3, help="base learning rate (biases learn at 2x)")
    g.add_argument("--lr-schedule", default="step", choices=["step", "cosine", "constant"])
    g.add_argument("--lr-step", type=int, default=10_000, help="halve the rate every this many iterations")
    g.add_argument("--lr-gamma", type=float, default=0.5, help="factor of each step of the step schedule")
    add_sgd_args(g, weight_decay=1.0e-6, clip_grad=10.0)
    g = p.add_argument_group("views")
    g.add_argument("--base-size", type=int, default=500, help="longer image side at scale 1 (VOC: 500)")
    g.add_argument("--min-scale", type=float, default=0.5)
    g.add_argument("--max-scale", type=float, default=2.0)
    g.add_argument("--test-crops", type=int, default=10, help="random views averaged per test image (paper: 10)")
    g.add_argument("--probe-views", type=int, default=2, help="random views per training image for --probe")
    g.add_argument("--probe-c", type=float, default=0.01, help="inverse L2 strength of the probe's regression")
    g = p.add_argument_group("run")
    add_run_args(g, out_help="result record (default results/<profile>/classify_<init>.json); checkpoints "
                 "and metrics.jsonl go to a folder next to it", ckpt_every=1000)
    return p


def main(argv=None):
    # config: parser defaults < benchmarks.yaml profile < command line
    args = parse_with_profile(get_args_parser(), argv, "classify")
    run.check_args(args)
    cfg = resolved_config(args)
    started = time.time()
    # distributed + seed
    rt = init_distributed(args.device, args.precision)
    cfg["precision"] = rt.precision  # 'auto' resolved: the record says what ran
    set_threads(args.threads)
    seed_everything(args.seed)
    log = get_logger("classify", rt.is_main)
    try:
        return _run(cfg, rt, log, started)
    finally:
        cleanup_distributed()


def _run(cfg, rt, log, started):
    # data: every file of both splits is checked here (bad input fails now, not mid-run)
    train, test = run.load_data(cfg, log)
    # model: backbone from --weights; output paths follow the init it turned out to be
    backbone, info = run.build(cfg)
    paths = run.output_paths(cfg, info, benchmarks_path().parent)
    if not cfg["resume"] and not cfg["overwrite"]:
        refuse_overwrite(paths["out"])
        refuse_overwrite(paths["checkpoint"])
    # the previous run stays whole until this one has written its record (cebench.runs)
    fresh = not (cfg["resume"] and paths["checkpoint"].is_file())
    with keep_previous_run([paths["out"], paths["run_dir"]], fresh=fresh, checkpoint=paths["checkpoint"],
                           enabled=rt.is_main):
        if rt.is_main:
            make_dirs(paths["run_dir"])
        barrier(rt)  # no rank looks for a checkpoint before rank 0 has moved a previous run aside
        # fc8 on top; rescaling (skipped when resuming: the checkpoint holds the rescaled, trained weights)
        model = run.classifier(backbone, cfg)
        rescaling = run.rescale(model, info, train, cfg, rt, paths, log)
        health = health_of_init(rescaling, lambda rescaled: run.health(model, train, cfg, rt, rescaled))
        # fine-tune via the one engine (or the frozen-feature probe), then score the test split
        if cfg["probe"]:
            scores, fit = run.probe(backbone, train, test, cfg, rt), None
            if rt.is_main:
                atomic_write_json(paths["run_dir"] / "config.json", cfg)
        else:
            scores, fit = run.finetune(model, train, test, cfg, rt, paths, log)
        if not rt.is_main:
            return {}
        # result record
        record = run.make_classification_record(cfg, info, rescaling, train, test, scores, fit,
                                                time.time() - started, feature_health=health)
        record["scores_file"] = str(run.save_scores(paths, test, scores))
        write_record(paths["out"], record)
    log.info("%s: mAP %.2f [%.2f, %.2f] (11-point %.2f), wrote %s", record["init"], record["value"],
             *record["ci95"], record["map_voc07"], paths["out"])
    return {"out": str(paths["out"]), "value": record["value"], "ci95": record["ci95"],
            "map_voc07": record["map_voc07"], "n_skipped": record["n_skipped"],
            "wall_time_s": record["wall_time_s"], "steps": fit.step if fit else 0}


if __name__ == "__main__":
    run_cli(main)
