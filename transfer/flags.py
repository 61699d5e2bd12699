"""The flags of the transfer entry points (classify, detect, segment): one parser shape, the same groups in the
same order, and one name and one default for every flag that means the same thing. What differs on purpose (the
task protocol's schedule, batch, splits, scales) is an argument of the adder, and the optimisation group's title
names the protocol the defaults come from.

    p, g = task_parser("python -m transfer.segment", __doc__, "voc-fcn-alexnet's solver")
    add_data_args(g["data"], year="auto", train_split="train", test_split="val", ...)
    add_init_args(g["model"], ...); add_optimisation_args(g["optimisation"], ...); add_test_args(g["test"])
    add_run_args(g["run"], out_help=...)
"""


from cebench.config import (add_skip_bad_flag, entry_parser, non_negative_float, non_negative_int,
                            positive_float, positive_int)
from cebench.flags import (HEALTH_IMAGES, N_BOOT_TYPE, RANDOM, add_compile_flag, add_precision_flag,
                           add_tensorboard_flag, add_threads_flag, weights_spec)

GROUPS = ("data", "model", "optimisation", "test", "run")
LR_SCHEDULES = ("step", "cosine", "constant")
PROBE_LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5")  # the frozen layers a probe reads (after their ReLU)
# VISSL's VOC07 AlexNet config (SVM.costs.costs_list; its `base` power terms are off there): the grid each class's
# 3-fold cross-validation chooses from (Goyal et al. 2019), the --svm-costs default of evaluation.probe
SVM_COSTS = (0.01, 0.1, 1.0, 2.0, 5.0, 10.0, 15.0, 20.0, 50.0, 100.0, 1000.0)


def task_parser(prog, doc, protocol):
    """The parser of a transfer entry point and its groups by name: the same groups, in the same order, for every
    task; `protocol` names where the optimisation defaults come from."""
    p = entry_parser(prog, doc)
    titles = ("data", "model", f"optimisation (defaults: the profile's, else {protocol})", "test", "run")
    return p, dict(zip(GROUPS, map(p.add_argument_group, titles), strict=True))


def add_voc_args(group, what="the splits", year="2007", years=None, year_help="VOC year folder to read"):
    """--voc-root and --year: the VOCdevkit that holds `what`."""
    group.add_argument("--voc-root", default="data/VOCdevkit", help=f"VOCdevkit folder (holding VOC<year>/) of {what}")
    group.add_argument("--year", default=year, choices=years, help=year_help)


def add_data_args(group, *, train_split, test_split, train_help, test_help, skip_bad_help, cache_help=None,
                  workers_help="DataLoader workers (default: 0 with the cache, else one per spare core)", **voc):
    """The labelled data of a task: VOCdevkit and year, the two splits, bad files, the image cache and workers."""
    add_voc_args(group, **voc)
    group.add_argument("--train-split", default=train_split, help=train_help)
    group.add_argument("--test-split", default=test_split, help=test_help)
    add_skip_bad_flag(group, skip_bad_help)
    if cache_help:
        group.add_argument("--cache", default="auto", choices=["auto", "on", "off"], help=cache_help)
    group.add_argument("--workers", type=non_negative_int, default=None, help=workers_help)


def add_flip_flag(group, default, what="training images"):
    """--flip-prob: the probability of a horizontal flip of each of the `what`."""
    group.add_argument("--flip-prob", type=float, default=default, help=f"probability of a horizontal flip of "
                       f"each of the {what}")


def add_init_args(group, *, rescale_images, rescale_what):
    """--weights and the trunk of 'random', then Krähenbühl et al.'s rescaling (on by default)."""
    group.add_argument("--weights", default=RANDOM, type=weights_spec, help="ce.pt from pretrain, a torchvision "
                       "AlexNet state_dict, 'random' (the paper's Gaussian baseline) or 'kmeans' (Krähenbühl et al.'s "
                       "k-means init on the training images, seeded)")
    group.add_argument("--init-label", default=None, help="name of this initialisation in the record and file "
                       "names (default: ce, random or supervised, from the weights)")
    group.add_argument("--arch", default="caffenet", choices=["caffenet", "torchvision"],
                       help="trunk for --weights random/kmeans; a weights file brings its own (the record says "
                       "which ran)")
    group.add_argument("--width", type=positive_float,
                       default=1.0, help="channel multiplier for --weights random (match "
                       "the ce.pt you compare with)")
    group.add_argument("--pool-free", action="store_true", help="pool-free trunk for --weights random")
    group.add_argument("--rescale", dest="rescale", action="store_true", help="Krähenbühl et al.'s data-dependent "
                       "init and between-layer rescaling before fine-tuning (the paper's protocol; default on)")
    group.add_argument("--no-rescale", dest="rescale", action="store_false", help="fine-tune from the raw init")
    group.add_argument("--rescale-images", type=positive_int, default=rescale_images, help=f"{rescale_what} used for "
                       "rescaling")
    group.add_argument("--rescale-iterations", type=non_negative_int,
                       default=10, help="between-layer rescaling iterations")
    add_health_arg(group)
    group.set_defaults(rescale=True)


def add_head_args(group, input_size_help=None):
    """--input-size (when the task has one), --fc-dim and --dropout of the backbone's fully-connected layers."""
    if input_size_help:
        group.add_argument("--input-size", type=positive_int, default=227, help=input_size_help)
    group.add_argument("--fc-dim", type=positive_int, default=4096, help="width of fc6 and fc7 (AlexNet: 4096)")
    group.add_argument("--dropout", type=float, default=0.5, help="dropout after fc6 and fc7")


def add_health_arg(group):
    """--health-images: the record's feature health (dead units, pool5 effective rank) of the init it used."""
    group.add_argument("--health-images", type=non_negative_int,
                       default=HEALTH_IMAGES, help="fixed seeded centre crops of the "
                       "training images on which the record measures the init's dead units and pool5 effective rank "
                       "(after rescaling when it rescales); 0 = off")


def add_max_steps_flag(group, unit="iterations"):
    """--max-steps: a cap for quick runs; the schedule keeps its length."""
    group.add_argument("--max-steps", type=positive_int,
                       default=None, help=f"stop after this many {unit} in total (the "
                       "schedule still follows --steps); rerun with --resume to continue")


def add_optimisation_args(group, *, steps, batch_size, lr, lr_schedule, lr_step, lr_gamma, weight_decay, clip_grad,
                          accum_steps=1, lr_help="base learning rate (biases learn at 2x)"):
    """Momentum SGD over a schedule of --steps iterations (the defaults are the task protocol's)."""
    group.add_argument("--steps", type=positive_int, default=steps, help="length of the schedule in iterations")
    add_max_steps_flag(group)
    group.add_argument("--batch-size", type=positive_int,
                       default=batch_size, help="images per iteration, over all processes")
    group.add_argument("--accum-steps", type=positive_int,
                       default=accum_steps, help="micro-batches per iteration (Caffe's "
                       "iter_size)")
    group.add_argument("--lr", type=positive_float, default=lr, help=lr_help)
    group.add_argument("--lr-schedule", default=lr_schedule, choices=LR_SCHEDULES)
    group.add_argument("--lr-step", type=positive_int,
                       default=lr_step, help="iterations between steps of the step schedule")
    group.add_argument("--lr-gamma", type=float, default=lr_gamma, help="factor of each step of the step schedule")
    group.add_argument("--momentum", type=non_negative_float, default=0.9)
    group.add_argument("--weight-decay", type=non_negative_float, default=weight_decay)
    group.add_argument("--clip-grad", type=non_negative_float,
                       default=clip_grad, help="clip the gradients' global L2 norm "
                       "(0 = off)")


def add_n_boot_flag(group, what="the test images"):
    """--n-boot: bootstrap resamples of the record's 95% interval."""
    group.add_argument("--n-boot", type=N_BOOT_TYPE, default=1000, help=f"bootstrap resamples of {what} for ci95")


def add_examples_flag(group, what, default=4):
    """--examples: how many test images are drawn (`what`)."""
    group.add_argument("--examples", type=non_negative_int,
                       default=default, help=f"test images drawn {what} (0 = none)")


def add_test_args(group, examples_what):
    """The test: bootstrap resamples of the interval and the test images drawn."""
    add_n_boot_flag(group)
    add_examples_flag(group, examples_what)


def add_run_args(group, *, out_help):
    """Seed, device, precision, CPU threads, the record's path, resuming, checkpoint/log intervals and TensorBoard."""
    group.add_argument("--seed", type=int, default=0)
    group.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    add_precision_flag(group)
    add_compile_flag(group)
    add_threads_flag(group)
    group.add_argument("--out", default=None, help=out_help)
    group.add_argument("--resume", action="store_true", help="continue the run in the folder next to --out")
    group.add_argument("--overwrite", action="store_true", help="start afresh even if the record or run exists; the "
                       "previous run stays aside (hidden .NAME.previous), comes back if the new run fails and is "
                       "deleted once it succeeds")
    group.add_argument("--ckpt-every", type=positive_int, default=1000, help="iterations between run checkpoints")
    group.add_argument("--eval-every", type=non_negative_int, default=0, help="iterations between test evaluations "
                       "(0 = end only)")
    group.add_argument("--log-every", type=positive_int, default=20, help="iterations between metrics.jsonl lines")
    add_tensorboard_flag(group, "tensorboard/ in the run folder beside the record")
