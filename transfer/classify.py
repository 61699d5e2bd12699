"""Fine-tune a backbone for PASCAL VOC 2007 classification (Table 2, "Classification": mAP over 20 classes).

    python -m transfer.classify --profile voc-mini --weights results/voc-mini/ce.pt
    python -m transfer.classify --profile paper --weights random --device cuda       # 80K iterations, as the paper
    python -m transfer.classify --profile voc-mini --weights random --probe          # frozen pool5, minutes
"""

import time

from cebench.config import parse_config
from cebench.errors import run_cli
from cebench.flags import add_data_path_flag
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


def main(argv=None):
    started = time.time()
    # config: parser defaults < benchmarks.yaml profile < command line (--help and --print-config exit here)
    cfg = parse_config(get_args_parser(), argv, "classify")
    from cebench.runtime import start_run
    from transfer import driver
    from transfer.classification.hooks import ClassificationHooks

    # checked config -> distributed, precision, threads, seed -> the driver's steps with the task's hooks
    rt, log = start_run(cfg, "classify", ClassificationHooks.check_config, ClassificationHooks.fixed_shapes)
    return driver.run(ClassificationHooks(cfg), cfg, rt, log, started)


if __name__ == "__main__":
    run_cli(main)
