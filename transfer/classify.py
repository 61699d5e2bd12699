"""Fine-tune a backbone for PASCAL VOC 2007 classification (Table 2, "Classification": mAP over 20 classes).

    python -m transfer.classify --profile voc-mini --weights results/voc-mini/ce.pt
    python -m transfer.classify --profile paper --weights random --device cuda       # 80K iterations, as the paper
    python -m transfer.classify --profile voc-mini --weights random --probe          # frozen pool5, minutes
"""

import time

from cebench.errors import run_cli
from cebench.flags import add_data_path_flag
from cebench.files import atomic_write_json
from cebench.records import write_record
from transfer import stages
from transfer.backbone import health_of_init
from transfer.classification import stages as run
from transfer.flags import (add_data_args, add_flip_flag, add_head_args, add_init_args, add_n_boot_flag,
                            add_optimisation_args, add_run_args, task_parser)


def get_args_parser():
    p, g = task_parser("python -m transfer.classify", __doc__, "the paper's")
    add_data_args(g["data"], train_split="trainval", test_split="test",
                  train_help="ImageSets/Main split to train on (paper: trainval)",
                  test_help="split to score (paper: test; voc-mini: val, a dev split)",
                  skip_bad_help="leave out images with a bad XML, a missing or a truncated JPEG (counted in the "
                  "record) instead of stopping at the first one",
                  cache_help="keep decoded images in memory (auto: when they fit in 2 GB)")
    g["data"].add_argument("--base-size", type=int, default=500, help="longer image side at scale 1 (VOC: 500)")
    g["data"].add_argument("--min-scale", type=float, default=0.5)
    g["data"].add_argument("--max-scale", type=float, default=2.0)
    add_flip_flag(g["data"], 0.5, "training and test views")
    add_data_path_flag(g["data"])
    add_init_args(g["model"], rescale_images=160, rescale_what="training views")
    add_head_args(g["model"], input_size_help="square crop fed to the network (paper: 227)")
    add_optimisation_args(g["optimisation"], steps=80_000, batch_size=16, lr=1.0e-3, lr_schedule="step",
                          lr_step=10_000, lr_gamma=0.5, weight_decay=1.0e-6, clip_grad=10.0)
    g["optimisation"].add_argument("--probe", action="store_true", help="frozen pool5 + logistic regression "
                                   "instead of fine-tuning every layer: a fast comparison, not the paper's protocol")
    g["optimisation"].add_argument("--probe-views", type=int, default=2, help="random views per training image "
                                   "for --probe")
    g["optimisation"].add_argument("--probe-c", type=float, default=0.01, help="inverse L2 strength of the "
                                   "probe's regression")
    add_n_boot_flag(g["test"])
    g["test"].add_argument("--test-crops", type=int, default=10, help="random views averaged per test image "
                           "(paper: 10)")
    add_run_args(g["run"], out_help="result record (default results/<profile>/classify_<init>.json); checkpoints "
                 "and metrics.jsonl go to a folder next to it")
    return p


def _run(cfg, rt, log, started):
    stages.refuse_existing(cfg, "classify", "probe" if cfg["probe"] else "")  # before minutes of loading
    # data: every file of both splits is checked here (bad input fails now, not mid-run)
    train, test = run.load_data(cfg, log)
    # model: backbone from --weights + fc8; output paths follow the init it turned out to be
    backbone, info = stages.backbone_from_flags(cfg, cfg["input_size"], train.split.image_paths)
    paths = stages.output_paths(cfg, "classify", stages.init_label(cfg, info), "probe" if cfg["probe"] else "")
    with stages.run_outputs(paths, cfg, rt):
        model = run.classifier(backbone, cfg)
        rescaling = stages.rescale_once(cfg, paths, rt, log, lambda: run.rescale(model, info, train, cfg, rt))
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
        record = run.make_classification_record(cfg, info, paths["label"], rescaling, train, test, scores, fit,
                                                time.time() - started, feature_health=health)
        record["scores_file"] = str(run.save_scores(paths, test, scores))
        write_record(paths["out"], record)
    log.info("%s: mAP %.2f [%.2f, %.2f] (11-point %.2f), wrote %s", record["init"], record["value"],
             *record["ci95"], record["map_voc07"], paths["out"])
    return {"out": str(paths["out"]), "value": record["value"], "ci95": record["ci95"],
            "map_voc07": record["map_voc07"], "n_skipped": record["n_skipped"],
            "wall_time_s": record["wall_time_s"], "steps": fit.step if fit else 0}


def main(argv=None):
    return stages.run_main(get_args_parser(), argv, "classify", _run, check=run.check_config, fixed_shapes=True)


if __name__ == "__main__":
    run_cli(main)
