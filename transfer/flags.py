"""Flags shared by the three transfer commands (classify, detect, segment), so that every initialisation is
described, rescaled, optimised and run the same way whatever the task."""

from cebench.curves import add_tensorboard_flag
from cebench.runtime import add_precision_flag
from pretrain.health import HEALTH_IMAGES
from pretrain.weights import RANDOM, weights_spec


def add_voc_args(group, what="the splits"):
    """--voc-root and --year: the VOCdevkit that holds `what`."""
    group.add_argument("--voc-root", default="data/VOCdevkit", help=f"VOCdevkit folder (holding VOC<year>/) of {what}")
    group.add_argument("--year", default="2007", help="VOC year folder to read")


def add_init_args(group, *, rescale_images, rescale_what):
    """--weights and the trunk of 'random', then Krähenbühl et al.'s rescaling (on by default)."""
    group.add_argument("--weights", default=RANDOM, type=weights_spec, help="ce.pt from pretrain, a torchvision "
                       "AlexNet state_dict, or 'random' (the paper's Gaussian baseline)")
    group.add_argument("--init-label", default=None, help="name of this initialisation in the record and file "
                       "names (default: ce, random or supervised, from the weights)")
    group.add_argument("--arch", default="caffenet", choices=["caffenet", "torchvision"],
                       help="trunk for --weights random; a weights file brings its own (the record says which ran)")
    group.add_argument("--width", type=float, default=1.0, help="channel multiplier for --weights random (match "
                       "the ce.pt you compare with)")
    group.add_argument("--pool-free", action="store_true", help="pool-free trunk for --weights random")
    group.add_argument("--rescale", dest="rescale", action="store_true", help="Krähenbühl et al.'s data-dependent "
                       "init and between-layer rescaling before fine-tuning (the paper's protocol; default on)")
    group.add_argument("--no-rescale", dest="rescale", action="store_false", help="fine-tune from the raw init")
    group.add_argument("--rescale-images", type=int, default=rescale_images, help=f"{rescale_what} used for "
                       "rescaling")
    group.add_argument("--rescale-iterations", type=int, default=10, help="between-layer rescaling iterations")
    add_health_arg(group)
    group.set_defaults(rescale=True)


def add_health_arg(group):
    """--health-images: the record's feature health (dead units, pool5 effective rank) of the init it used."""
    group.add_argument("--health-images", type=int, default=HEALTH_IMAGES, help="fixed seeded centre crops of the "
                       "training images on which the record measures the init's dead units and pool5 effective rank "
                       "(after rescaling when it rescales); 0 = off")


def add_sgd_args(group, *, weight_decay, clip_grad):
    """Momentum SGD's remaining knobs (the learning rate and its schedule differ per task)."""
    group.add_argument("--momentum", type=float, default=0.9)
    group.add_argument("--weight-decay", type=float, default=weight_decay)
    group.add_argument("--clip-grad", type=float, default=clip_grad, help="clip the gradients' global L2 norm "
                       "(0 = off)")


def add_run_args(group, *, out_help, ckpt_every):
    """Seed, device, precision, CPU threads, the record's path, resuming, checkpoint/log intervals and TensorBoard."""
    group.add_argument("--seed", type=int, default=0)
    group.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    add_precision_flag(group)
    group.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default; use 1 when "
                       "other jobs share the cores, as over-subscribed threads stall each other)")
    group.add_argument("--out", default=None, help=out_help)
    group.add_argument("--resume", action="store_true", help="continue the run in the folder next to --out")
    group.add_argument("--overwrite", action="store_true", help="start afresh even if the record or run exists; the "
                       "previous run stays aside (hidden .NAME.previous), comes back if the new run fails and is "
                       "deleted once it succeeds")
    group.add_argument("--ckpt-every", type=int, default=ckpt_every, help="iterations between run checkpoints")
    group.add_argument("--eval-every", type=int, default=0, help="iterations between test evaluations "
                       "(0 = end only)")
    group.add_argument("--log-every", type=int, default=20, help="iterations between metrics.jsonl lines")
    add_tensorboard_flag(group, "tensorboard/ in the run folder beside the record")


def set_threads(threads):
    """Apply --threads (0 or None: leave torch's default)."""
    if threads:
        import torch

        torch.set_num_threads(threads)
