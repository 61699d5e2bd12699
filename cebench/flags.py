"""The flags that several entry points share, and the constants their defaults and bounds come from: a module
that imports neither torch nor any model code, so that an entry point's parser (and with it `--help` and
`--print-config`) is built in a fraction of a second; the code that acts on these values imports them from here.
"""

from cebench.config import at_least, non_negative_int

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DATA_PATHS = ("auto", "loader", "device")
# --data-path auto keeps the images on the GPU when they take at most this share of its memory: the rest is left
# to the model (AlexNet at batch 64 and 227 px needs ~3 GB in bf16), the index tensors of a batch and cuDNN.
DEVICE_DATA_FRACTION = 0.25


def add_precision_flag(group):
    """--precision, shared by every entry point that trains or extracts features."""
    group.add_argument("--precision", default="auto", choices=list(PRECISIONS), help="arithmetic of forward and "
                       "backward passes (autocast; weights, optimiser state, losses and metrics stay float32): auto = "
                       "bf16 on a CPU with native bfloat16 (AVX512-BF16/AMX) and on GPUs of compute capability >= 8.0 "
                       "(A100, H100, RTX 30xx on), fp16 with loss scaling on older GPUs, else fp32. float32 work on "
                       "CUDA may use TF32 tensor cores. Use fp32 to reproduce a float32 run exactly")


def add_compile_flag(group):
    """--compile, shared by the training entry points."""
    group.add_argument("--compile", action="store_true", help="torch.compile the training step's model (minutes "
                       "of compilation at the start; worth it for long GPU runs: measure with pretrain.speed / "
                       "transfer.speed --compile). The record says whether it ran")


def add_data_path_flag(group):
    """--data-path, shared by pretraining and the transfers."""
    group.add_argument("--data-path", default="auto", choices=list(DATA_PATHS), help="how training batches are "
                       "made: loader = DataLoader workers crop, flip and mask on the CPU; device = the images are "
                       "decoded once into one uint8 tensor on the device and every batch is drawn there (no "
                       "workers; same sample distribution, other random draws); auto = device on CUDA when the "
                       f"images take at most {100 * DEVICE_DATA_FRACTION:.0f}%% of the GPU's memory, else loader (on a "
                       "CPU always loader, so CPU results do not change)")


def add_threads_flag(group, what="torch CPU threads"):
    """--threads, shared by every entry point where torch computes (0 = torch's default)."""
    group.add_argument("--threads", type=non_negative_int,
                       default=0, help=f"{what} (0: torch's default; use 1 when other jobs "
                       "share the cores, as over-subscribed threads stall each other)")


def add_tensorboard_flag(group, where):
    """--tensorboard, shared by every training entry point; `where` names the default folder in the help."""
    group.add_argument("--tensorboard", default="auto", metavar="DIR", help="TensorBoard event files of loss, "
                       f"learning rate and evaluations (auto: {where}, when the tensorboard package is installed, "
                       "pip install 'cebench[tensorboard]'; off: none). metrics.jsonl and a PNG are written anyway")


def add_benchmark_args(parser):
    """--bench-steps/--warmup/--rounds/--precisions/--json of both speed commands (pretrain.speed, transfer.speed)."""
    g = parser.add_argument_group("benchmark")
    g.add_argument("--bench-steps", type=int, default=8, help="timed steps per measurement")
    g.add_argument("--warmup", type=int, default=2, help="untimed steps before each measurement")
    g.add_argument("--rounds", type=int, default=2, help="rounds of (model-only, end-to-end) per precision, "
                   "interleaved so that other load on the machine does not favour one side")
    g.add_argument("--precisions", nargs="+", default=None, choices=["fp32", "bf16", "fp16"],
                   help="precisions to compare (default: fp32 and what the device runs natively)")
    g.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    return g


RANDOM = "random"  # the weights spec of the Gaussian initialisation (the paper's "Random Gaussian" row)
KMEANS = "kmeans"  # the weights spec (--weights kmeans) of Krähenbühl et al.'s init and the label of its records
HEALTH_IMAGES = 400  # views of the fixed feature-health set (issue 15); tests and the smoke profile use fewer
# The fewest resamples an entry point accepts (--n-boot). BCa's endpoints are order statistics of the resamples at
# levels moved by z0 and the acceleration, typically 0.5-5%, and z0 itself is clipped to Phi^-1(0.5/B): with 10
# resamples a 2.5% endpoint is an extreme of 10 draws and the interval can miss its own estimate. 200 keeps 5
# resamples in each 2.5% tail (an endpoint inside the cloud, not its edge); Efron & Tibshirani (1993, §19.3) ask
# for 1,000 or more for intervals one reports, the default.
MIN_BOOT = 200
N_BOOT_TYPE = at_least(MIN_BOOT, " (too few resamples for BCa's tail quantiles; 1000 is the default)")


def weights_spec(value):
    """The argparse type of every --weights: the value as given (a path, or one of `weights_spec.keywords`)."""
    return value


weights_spec.keywords = (RANDOM, KMEANS)  # not paths: a profile's value is not resolved against its folder

TRUNK_FLAGS = ("arch", "width", "pool_free")  # the trunk of `random` on the command line (--arch, --width, ...)


def trunk_of(cfg):
    """The AlexNetEncoder kwargs (pretrain.model) that a config's trunk flags ask for (those the entry point has):
    the entry layer resolves them, pretrain.weights.load_encoder takes them as `arch`."""
    return {k: cfg[k] for k in TRUNK_FLAGS if k in cfg}
