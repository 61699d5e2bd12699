"""Export a ce.pt's encoder as a plain state_dict for timm or torchvision, so its features leave the suite.

    python -m pretrain.export results/voc-mini/ce.pt --format timm --out ce_caffenet.pth
    python -m pretrain.export ce.pt --format torchvision --out alexnet_features.pth   # torchvision-shaped trunks

`--format timm` loads with strict=True into `timm.create_model("cebench_caffenet", width=..., pool_free=...)`
(`cebench_alexnet` for a torchvision-shaped trunk; `import pretrain` registers both); `--format torchvision`
into `torchvision.models.alexnet().features`. A `.safetensors` --out is written with safetensors.
"""

import argparse
from pathlib import Path

from cebench.errors import CebenchError, run_cli
from cebench.files import atomic_torch_save, atomic_write_bytes
from pretrain.timm_models import MODEL_NAMES
from pretrain.weights import read_checkpoint

CAFFENET_SHAPE = "96-channel conv1, grouped conv2/4/5, LRN"


def get_args_parser():
    p = argparse.ArgumentParser("python -m pretrain.export", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter, allow_abbrev=False)
    p.add_argument("ce", help="ce.pt written by python -m pretrain.train")
    p.add_argument("--format", required=True, choices=["timm", "torchvision"], help="timm: keys of "
                   "timm.create_model('cebench_caffenet'/'cebench_alexnet'); torchvision: keys of "
                   "torchvision.models.alexnet().features (torchvision-shaped trunks at width 1 only)")
    p.add_argument("--out", required=True, help="file to write (.pth, or .safetensors)")
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


def save_state_dict(state, out):
    """torch.save, or safetensors for a .safetensors path; atomically either way."""
    if Path(out).suffix == ".safetensors":
        from safetensors.torch import save

        return atomic_write_bytes(out, save(state))
    return atomic_torch_save(state, out)


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    source, out = Path(args.ce), Path(args.out)
    if out.exists() and out.resolve() == source.resolve():
        raise CebenchError(f"{out}: --out is the ce.pt itself; choose another file")
    if out.exists() and not args.overwrite:
        raise CebenchError(f"{out} exists; pass --overwrite to replace it")
    ckpt = read_checkpoint(source)
    state = export_state_dict(ckpt, args.format, source)
    save_state_dict(state, out)
    usage = (timm_usage(ckpt["arch"], out) if args.format == "timm" else
             f"torchvision.models.alexnet().features.load_state_dict(torch.load({str(out)!r}, weights_only=True))")
    print(f"wrote {out} ({len(state)} tensors); load it with\n  {usage}")
    return {"out": str(out), "format": args.format, "arch": ckpt["arch"], "keys": sorted(state), "usage": usage}


if __name__ == "__main__":
    run_cli(main)
