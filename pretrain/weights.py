"""ce.pt writing/reading (DESIGN.md contract) and turning any weights spec into an AlexNet encoder.

A weights spec (`--weights` of every stage that loads an encoder) is a path to a ce.pt, a path to a torchvision
AlexNet state_dict, the keyword `random` (the paper's Gaussian initialisation, seeded) or the keyword `kmeans`
(Krähenbühl et al.'s data-dependent k-means initialisation on the stage's training images, seeded:
pretrain.kmeans). This module is the only one that tells them apart: a command-line value goes through
`weights_spec` (its argparse type, whose `keywords` the profile loader leaves as they are instead of resolving them
as paths) to `load_encoder`.
"""

from pathlib import Path

import torch

from cebench.errors import CebenchError
from cebench.files import atomic_torch_save, safe_torch_load
from cebench.flags import KMEANS, RANDOM
from cebench.names import check_name
from pretrain.model import AlexNetEncoder, ContextEncoder, gaussian_init_

FORMAT = "cebench.context-encoder"
VERSION = 1
ENCODER_KEYS = {"arch", "pool_free", "width", "lrn"}
LEGACY_LRN = "unscaled"  # what a ce.pt without arch["lrn"] was trained with (LRN has no weights: it loads as is)
DECODER_KEYS = {"input_size", "dropout", "decoder_width"}
_TV_FC = {"classifier.1.weight": "fc6.weight", "classifier.1.bias": "fc6.bias",
          "classifier.4.weight": "fc7.weight", "classifier.4.bias": "fc7.bias"}


def checkpoint_payload(model, meta, include_decoder=True):
    """The ce.pt dict for a ContextEncoder: only tensors and plain values (weights_only=True loads it)."""
    model = getattr(model, "module", model)  # unwrap DistributedDataParallel
    payload = {"format": FORMAT, "version": VERSION, "arch": model.encoder.constructor_args(),
               "encoder": {k: v.detach().cpu().clone() for k, v in model.encoder.state_dict().items()},
               "meta": dict(meta)}
    if include_decoder:
        payload["decoder_arch"] = model.decoder_args()
        payload["decoder"] = {k: v.detach().cpu().clone() for k, v in model.decoder_state_dict().items()}
    return payload


def save_checkpoint(path, model, meta, include_decoder=True):
    """Write ce.pt atomically (temp file + os.replace)."""
    return atomic_torch_save(checkpoint_payload(model, meta, include_decoder), path)


def read_checkpoint(path):
    """Load and validate a ce.pt; anything else is refused with one line naming the file."""
    return check_checkpoint(safe_torch_load(path, "ce.pt checkpoint"), path)


def check_checkpoint(ckpt, path):
    """Validate an already loaded ce.pt dict (e.g. the one timm's loader read); returns it."""
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        found = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CebenchError(f"{path}: not a cebench ce.pt (format {found!r}, expected {FORMAT!r})")
    if not isinstance(ckpt.get("version"), int) or ckpt["version"] > VERSION:
        raise CebenchError(f"{path}: ce.pt version {ckpt.get('version')!r} is not supported (reads <= {VERSION})")
    for key, kind in (("arch", dict), ("encoder", dict), ("meta", dict)):
        if not isinstance(ckpt.get(key), kind):
            raise CebenchError(f"{path}: ce.pt lacks a valid {key!r} entry")
    bad = set(ckpt["arch"]) - ENCODER_KEYS
    if bad:
        raise CebenchError(f"{path}: ce.pt arch has unknown keys {sorted(bad)}")
    return ckpt


class NoDecoderError(CebenchError):
    """A ce.pt written with its encoder only (inpainting may then score NN-inpainting alone)."""


def check_finite(state, path, what):
    """Refuse weights holding NaN or Inf (a diverged run, a damaged file): they give meaningless numbers."""
    for key, value in state.items():
        if torch.is_tensor(value) and value.is_floating_point():
            bad = int((~torch.isfinite(value)).sum())
            if bad:
                raise CebenchError(f"{path}: {what} weight {key} holds {bad} NaN/Inf of its {value.numel()} values "
                                   "(a diverged run or a damaged file); refusing to use it")
    return state


def _load_strict(module, state, path, what):
    """load_state_dict with exact keys and shapes; mismatches become one line naming the file."""
    expected = module.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CebenchError(f"{path}: {what} weights do not fit: missing {missing[:4]}, unexpected {unexpected[:4]}")
    for k, v in state.items():
        if not torch.is_tensor(v) or tuple(v.shape) != tuple(expected[k].shape):
            shape = tuple(v.shape) if torch.is_tensor(v) else type(v).__name__
            raise CebenchError(f"{path}: {what} weight {k} has shape {shape}, expected {tuple(expected[k].shape)}")
    check_finite(state, path, what)
    module.load_state_dict(state, strict=True)
    return module


def _encoder_from_ce(path, ckpt):
    try:
        encoder = AlexNetEncoder(**{"lrn": LEGACY_LRN, **ckpt["arch"]})
    except (TypeError, ValueError) as err:
        raise CebenchError(f"{path}: ce.pt arch {ckpt['arch']} is invalid ({err})") from None
    return _load_strict(encoder, ckpt["encoder"], path, "encoder")


def _unwrap_state_dict(obj, path):
    """Accept a bare state_dict, {'state_dict': ...} or {'model': ...}, with or without DDP's 'module.'."""
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not obj or not all(isinstance(k, str) for k in obj):
        raise CebenchError(f"{path}: not a state_dict (expected a dict of tensors)")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def _encoder_from_state_dict(path, state, arch):
    features = {k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")}
    other = sorted(set(state) - {f"features.{k}" for k in features} - set(_TV_FC) - {"classifier.6.weight",
                                                                                        "classifier.6.bias"})
    if not features or other:
        raise CebenchError(f"{path}: not an AlexNet state_dict (unexpected keys {other[:4]}; "
                           "expected features.* and classifier.*)")
    if arch is None:
        first = features.get("0.weight")
        arch = {"arch": "caffenet" if first is not None and first.shape[0] == 96 else "torchvision"}
    encoder = AlexNetEncoder(**arch)
    _load_strict(encoder.features, features, path, "AlexNet features")
    fc = check_finite({name: state[k].clone() for k, name in _TV_FC.items() if k in state}, path, "AlexNet classifier")
    return encoder, (fc if len(fc) == 4 else None)


def ce_label(ckpt, path):
    """The init label a ce.pt gives its records: meta's init_label (ce, autoencoder, ce-untrained), else ce. It
    names the record's file, so a label that is no name (a path such as '../../tmp/x') refuses the file."""
    label = ckpt["meta"].get("init_label")
    if label is None or label == "":
        return "ce"
    return check_name(label, f"{path}: meta.init_label")


def weights_label(spec):
    """The label load_encoder gives a weights spec (random, kmeans, supervised, or a ce.pt's own), without building
    the network: entry points name their outputs by it before they load any data."""
    spec = str(spec)
    if spec in (RANDOM, KMEANS):
        return spec
    path = Path(spec)
    obj = safe_torch_load(path, "weights file")
    return ce_label(read_checkpoint(path), path) if isinstance(obj, dict) and "format" in obj else "supervised"


def holds_decoder(spec):
    """Whether a weights spec is a ce.pt that holds its decoder (what evaluation.inpainting's --decoder auto scores),
    without building the network."""
    spec = str(spec)
    if spec in (RANDOM, KMEANS):
        return False
    path = Path(spec)
    obj = safe_torch_load(path, "weights file")
    return isinstance(obj, dict) and "format" in obj and isinstance(check_checkpoint(obj, path).get("decoder"), dict)


def load_encoder(spec, *, arch=None, seed=0, train_images=None, image_size=227):
    """Weights spec -> (AlexNetEncoder, info) with info keys init, arch, source, meta, fc (and ce_pt for a ce.pt).

    info['init'] is the label of the weights: random, kmeans, supervised, or for a ce.pt the label its
    pretraining wrote (ce; autoencoder for --mask none; ce-untrained for the weights at step 0). `arch`
    (AlexNetEncoder kwargs) is the trunk of `random` and `kmeans`; a weights file brings its own, and when that
    differs from `arch`, info['arch_requested'] = arch (the weights decide; the record says what ran).
    `train_images` (paths of the stage's training images, at `image_size`) are what `kmeans` clusters."""
    spec = str(spec)
    if spec in (RANDOM, KMEANS):
        encoder = gaussian_init_(AlexNetEncoder(**(arch or {"arch": "caffenet"})),
                                 generator=torch.Generator().manual_seed(seed))
        info = {"init": RANDOM, "source": RANDOM, "meta": {"gaussian_std": 0.01, "seed": seed}, "fc": None}
        if spec == KMEANS:
            if train_images is None:
                raise CebenchError("--weights kmeans: this entry point gives the k-means init no training images")
            from pretrain.kmeans import kmeans_encoder  # scikit-learn: only for the k-means init

            encoder, meta = kmeans_encoder(encoder, train_images, image_size, seed=seed)
            info = {"init": KMEANS, "source": KMEANS, "meta": meta, "fc": None}
    else:
        path = Path(spec)
        obj = safe_torch_load(path, "weights file")
        if isinstance(obj, dict) and "format" in obj:
            ckpt = read_checkpoint(path)
            encoder = _encoder_from_ce(path, ckpt)
            info = {"init": ce_label(ckpt, path), "source": str(path), "meta": ckpt["meta"], "fc": None, "ce_pt": True}
        else:
            encoder, fc = _encoder_from_state_dict(path, _unwrap_state_dict(obj, path), None)
            info = {"init": "supervised", "source": str(path), "meta": {}, "fc": fc}
    info["arch"] = encoder.constructor_args()
    if arch and spec not in (RANDOM, KMEANS) and any(info["arch"].get(k) != v for k, v in arch.items()):
        info["arch_requested"] = dict(arch)
    return encoder, info


def load_context_encoder(path):
    """A ce.pt with its decoder -> (ContextEncoder, info), for inpainting evaluation."""
    ckpt = read_checkpoint(path)
    if not isinstance(ckpt.get("decoder"), dict) or not isinstance(ckpt.get("decoder_arch"), dict):
        raise NoDecoderError(f"{path}: this ce.pt holds no decoder (written with the encoder only)")
    bad = set(ckpt["decoder_arch"]) - DECODER_KEYS
    if bad:
        raise CebenchError(f"{path}: ce.pt decoder_arch has unknown keys {sorted(bad)}")
    model = ContextEncoder(_encoder_from_ce(path, ckpt), **ckpt["decoder_arch"])
    state = {f"encoder.{k}": v for k, v in ckpt["encoder"].items()} | ckpt["decoder"]
    _load_strict(model, state, path, "context encoder")
    info = {"init": ce_label(ckpt, path), "source": str(path), "meta": ckpt["meta"], "fc": None, "ce_pt": True,
            "arch": model.encoder.constructor_args(), "decoder_arch": ckpt["decoder_arch"]}
    return model.eval(), info
