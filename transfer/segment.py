"""FCN semantic segmentation transfer: mean IU on PASCAL VOC (PAPER.md Table 2, "Segmentation" column).

An FCN-32s (or 16s/8s) on the AlexNet trunk of --weights, fine-tuned on ImageSets/Segmentation/<train-split>,
scored on every <test-split> image at its own resolution; writes one result record, the predictions as palette
PNGs and a PNG of a few colour-coded examples next to the record.

    python -m transfer.segment --profile voc-mini --weights results/voc-mini/ce.pt
    python -m transfer.segment --profile voc-mini --weights random --max-steps 20 --out /tmp/seg.json
"""

import time

from cebench.config import parse_config
from cebench.errors import run_cli
from cebench.flags import add_data_path_flag
from transfer.flags import (add_data_args, add_flip_flag, add_head_args, add_init_args, add_optimisation_args,
                            add_run_args, add_test_args, task_parser)
from transfer.segmentation.choices import LOSS_NORMALIZATIONS, VARIANTS


def get_args_parser():
    p, g = task_parser("python -m transfer.segment", __doc__, "voc-fcn-alexnet's solver")
    data = g["data"]
    add_data_args(data, year="auto", years=["auto", "2012", "2011", "2010", "2009", "2008", "2007"],
                  year_help="auto: VOC2012 when the root has the split (the paper's protocol), else VOC2007",
                  train_split="train", test_split="val",
                  train_help="ImageSets/Segmentation/<name>.txt to fine-tune on",
                  test_help="split to score (add seg11valid.txt there for FCN's list)",
                  skip_bad_help="leave out images with a missing or unreadable image or mask (listed in the "
                  "record) instead of stopping",
                  cache_help="keep decoded images in memory (auto: when the splits fit in about 1 GB)")
    data.add_argument("--sbd-root", default=None, help="SBD's dataset/ folder (Hariharan et al.: cls/*.mat, train.txt, "
                      "val.txt): its masks join --train-split, less the images of --test-split (FCN's training set)")
    data.add_argument("--sbd-splits", nargs="+", default=["train", "val"], choices=["train", "val"],
                      help="SBD lists to add with --sbd-root")
    data.add_argument("--crop-size", type=int, default=0, help="random square training crops; 0 = whole images "
                      "(then keep one image per micro-batch or they are padded with void)")
    data.add_argument("--min-scale", type=float, default=1.0, help="random rescaling of training images (1 = none)")
    data.add_argument("--max-scale", type=float, default=1.0)
    add_flip_flag(data, 0.0)
    add_data_path_flag(data)
    add_init_args(g["model"], rescale_images=32, rescale_what="training crops")
    add_head_args(g["model"], input_size_help="input size whose pool5 gives fc6's kernel (227 -> 6x6, as "
                  "voc-fcn-alexnet); also the size of the rescaling crops")
    g["model"].add_argument("--variant", default="32s", choices=VARIANTS, help="FCN-32s (the paper), or 16s/8s "
                            "skips")
    g["model"].add_argument("--pad", type=int, default=100, help="conv1 padding of voc-fcn-alexnet (>= 82 for "
                            "FCN-32s)")
    g["model"].add_argument("--upsampling", default="fixed", choices=["fixed", "learned"],
                            help="bilinear up-sampling, frozen (voc-fcn-alexnet; fast) or trained from bilinear")
    add_optimisation_args(g["optimisation"], steps=100_000, batch_size=20, accum_steps=20, lr=1.0e-4,
                          lr_schedule="constant", lr_step=10_000, lr_gamma=0.1, weight_decay=5.0e-4, clip_grad=0.0,
                          lr_help="base learning rate (score biases learn at 2x)")
    g["optimisation"].add_argument("--loss-normalization", default="batch", choices=LOSS_NORMALIZATIONS,
                                   help="batch: pixel sum per image (Caffe's normalize: false, as FCN; pair with "
                                   "a tiny lr); valid: mean per pixel")
    add_test_args(g["test"], "in <record>.examples.png")
    g["test"].add_argument("--save-predictions", default=None, help="folder for every test prediction as a "
                           "palette PNG (default <record>.predictions/)")
    add_run_args(g["run"], out_help="result record (default results/<profile>/segment_<init>.json); the run folder "
                 "<record>.run/ and <record>.examples.png go beside it")
    return p


def main(argv=None):
    started = time.time()
    # config: parser defaults < benchmarks.yaml profile < command line (--help and --print-config exit here)
    cfg = parse_config(get_args_parser(), argv, "segment")
    from cebench.runtime import start_run
    from transfer import driver
    from transfer.segmentation.hooks import SegmentationHooks

    # checked config -> distributed, precision, threads, seed -> the driver's steps with the task's hooks
    rt, log = start_run(cfg, "segment", SegmentationHooks.check_config, SegmentationHooks.fixed_shapes)
    return driver.run(SegmentationHooks(cfg), cfg, rt, log, started)


if __name__ == "__main__":
    run_cli(main)
