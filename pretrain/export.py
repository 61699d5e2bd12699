"""Export a ce.pt's encoder for timm, torchvision or plain PyTorch, so its features leave the suite.

    python -m pretrain.export results/voc-mini/ce.pt --format timm --out ce_caffenet.safetensors
    python -m pretrain.export ce.pt --format torchvision --out alexnet_features.pth   # torchvision-shaped trunks
    python -m pretrain.export ce.pt --format pt2 --out ce_caffenet.pt2       # torch.export: no cebench, no timm

`--format timm` loads with strict=True into `timm.create_model("cebench_caffenet", width=..., pool_free=...)`
(`cebench_alexnet` for a torchvision-shaped trunk; `import pretrain` registers both); `--format torchvision`
into `torchvision.models.alexnet().features`; `--format pt2` is a `torch.export` program of the trunk (normalised
images (N, 3, S, S) -> pool5 (N, C, h, w), any batch size), run with `torch.export.load(path).module()`.

Every export carries its configuration (architecture, timm model name, width, pool-free, input size, mean/std
of the normalisation, pool5 shape, source): in `<name>.config.json` beside it, in a `.safetensors`' metadata
(key "cebench"), and in a `.pt2`'s extra file `config.json`. Given `pretrained_cfg_overlay=dict(file=...)`, the
timm models read it, so no width or input size needs repeating.
"""

import argparse
import json
from pathlib import Path

import torch

from cebench.errors import CebenchError, run_cli
from cebench.files import atomic_torch_save, atomic_write_bytes, atomic_write_text
from pretrain.data import IMAGE_MEAN, IMAGE_STD
from pretrain.model import AlexNetEncoder
from pretrain.timm_models import CONFIG_KEY, MODEL_NAMES, config_path
from pretrain.weights import load_encoder, read_checkpoint

CAFFENET_SHAPE = "96-channel conv1, grouped conv2/4/5, LRN"


def get_args_parser():
    p = argparse.ArgumentParser("python -m pretrain.export", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter, allow_abbrev=False)
    p.add_argument("ce", help="ce.pt written by python -m pretrain.train")
    p.add_argument("--format", required=True, choices=["timm", "torchvision", "pt2"], help="timm: keys of "
                   "timm.create_model('cebench_caffenet'/'cebench_alexnet'); torchvision: keys of "
                   "torchvision.models.alexnet().features (torchvision-shaped trunks at width 1 only); pt2: a "
                   "torch.export program of the trunk that runs with torch alone")
    p.add_argument("--out", required=True, help="file to write (.pth or .safetensors; .pt2 for --format pt2); its "
                   "configuration goes to <name>.config.json beside it")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    return p


def timm_usage(arch, out):
    """The line that loads an exported --format timm file."""
    return (f"timm.create_model({MODEL_NAMES[arch['arch']]!r}, width={arch['width']:g}, "
            f"pool_free={arch['pool_free']}, checkpoint_path={str(out)!r})")


def export_state_dict(ckpt, fmt, source):
    """ce.pt dict -> plain state_dict in the keys of `fmt`; refuses trunks that do not fit torchvision's shape."""
    arch, encoder = ckpt["arch"], ckpt["encoder"]
    if fmt == "timm":
        return {k: v.contiguous() for k, v in encoder.items()}
    if arch["arch"] != "torchvision":
        raise CebenchError(f"{source}: a CaffeNet trunk ({CAFFENET_SHAPE}) has no torchvision AlexNet shape; "
                           "use --format timm (timm.create_model('cebench_caffenet'))")
    if arch["width"] != 1.0 or arch["pool_free"]:
        raise CebenchError(f"{source}: a torchvision-shaped trunk at width {arch['width']:g}"
                           f"{', pool-free' if arch['pool_free'] else ''} does not fit torchvision's AlexNet "
                           "(width 1, max-pooling); use --format timm")
    return {k.removeprefix("features."): v.contiguous() for k, v in encoder.items()}


def export_config(ckpt, fmt, source):
    """What a user of the export needs besides its tensors: the trunk, the input it was trained at, the
    normalisation, the feature it gives."""
    arch = ckpt["arch"]
    size = ckpt["meta"].get("input_size")
    size = size if isinstance(size, int) else (227 if arch["arch"] == "caffenet" else 224)
    channels, height, width = AlexNetEncoder(**arch).feature_shape(size)
    return {"format": "cebench.export", "export_format": fmt, "timm_model": MODEL_NAMES[arch["arch"]],
            "arch": arch["arch"], "width": arch["width"], "pool_free": arch["pool_free"], "lrn": arch.get("lrn"),
            "input_size": [3, size, size], "mean": list(IMAGE_MEAN), "std": list(IMAGE_STD),
            "input": "RGB in [0, 1], normalised with mean/std, (N, 3, H, W)",
            "output": f"pool5 (N, {channels}, {height}, {width}) at the input size", "source": Path(source).name,
            "steps": ckpt["meta"].get("steps")}


def save_state_dict(state, out, config=None):
    """torch.save, or safetensors (with the configuration in its metadata) for a .safetensors path; atomically."""
    if Path(out).suffix == ".safetensors":
        from safetensors.torch import save

        metadata = {CONFIG_KEY: json.dumps(config, sort_keys=True)} if config else None
        return atomic_write_bytes(out, save(state, metadata=metadata))
    return atomic_torch_save(state, out)


class _Pool5(torch.nn.Module):
    """The trunk as a module that returns pool5 (forward_features): what the .pt2 program computes."""

    def __init__(self, encoder):
        super().__init__()
        self.encoder = encoder

    def forward(self, x):
        return self.encoder.forward_features(x)  # (N, C, h, w)


def save_pt2(ckpt_path, out, config):
    """torch.export the trunk (batch size dynamic) and save it with the configuration as an extra file."""
    encoder, _ = load_encoder(ckpt_path)
    example = torch.zeros(2, *config["input_size"])
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.export.export(_Pool5(encoder.eval()), (example,), dynamic_shapes=({0: batch},))
    text = json.dumps(config, indent=1, sort_keys=True)
    return atomic_write_bytes(out, _pt2_bytes(program, text))


def _pt2_bytes(program, config_text):
    import io

    buffer = io.BytesIO()
    torch.export.save(program, buffer, extra_files={"config.json": config_text})
    return buffer.getvalue()


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    source, out = Path(args.ce), Path(args.out)
    if out.exists() and out.resolve() == source.resolve():
        raise CebenchError(f"{out}: --out is the ce.pt itself; choose another file")
    for path in (out, config_path(out)):
        if path.exists() and not args.overwrite:
            raise CebenchError(f"{path} exists; pass --overwrite to replace it")
    ckpt = read_checkpoint(source)
    if args.format == "pt2" and out.suffix != ".pt2":
        raise CebenchError(f"{out}: --format pt2 writes a torch.export program; name it *.pt2")
    config = export_config(ckpt, args.format, source)
    if args.format == "pt2":
        save_pt2(source, out, config)
        state = {}
        usage = (f"torch.export.load({str(out)!r}).module()(x)   # x: (N, 3, {config['input_size'][1]}, "
                 f"{config['input_size'][2]}) normalised; no cebench or timm needed")
    else:
        state = export_state_dict(ckpt, args.format, source)
        save_state_dict(state, out, config)
        usage = (timm_usage(ckpt["arch"], out) if args.format == "timm" else
                 f"torchvision.models.alexnet().features.load_state_dict(torch.load({str(out)!r}, "
                 "weights_only=True))")
    atomic_write_text(config_path(out), json.dumps(config, indent=1, sort_keys=True) + "\n")
    what = "a torch.export program" if args.format == "pt2" else f"{len(state)} tensors"
    print(f"wrote {out} ({what}) and {config_path(out).name}; load it with\n  {usage}")
    return {"out": str(out), "format": args.format, "arch": ckpt["arch"], "keys": sorted(state), "usage": usage,
            "config": config}


if __name__ == "__main__":
    run_cli(main)
