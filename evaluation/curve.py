"""A pretraining curve: per-layer probes and the val inpainting loss at checkpoints along one pretraining run.

Does more pretraining help, and at which layers? One command pretrains with the profile's settings, saving the
weights at fractions of the budget (0, 1/16, 1/8, 1/4, 1/2, 1 by default), then at each checkpoint runs the
per-layer linear probes (python -m evaluation.probe, the profile's probe section) and the masked L2 inpainting loss
on the test split's images (the pretraining loss and masks, one seeded crop and mask per image, the same at every
checkpoint). Writes curve.csv and curve.png; finished pieces are reused when the command is run again.

    python -m evaluation.curve --profile voc-mini
    python -m evaluation.curve --profile voc-mini --max-steps 400 --out-dir results/voc-mini/curve-400
"""

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cebench.config import benchmarks_path, entry_parser, parse_with_profile, positive_int, resolved_config
from cebench.errors import CebenchError, run_cli
from cebench.files import atomic_write_text
from cebench.locks import hold_outputs
from cebench.logs import get_logger
from cebench.records import read_record
from cebench.flags import add_threads_flag
from cebench.runtime import resolve_device, set_threads
from evaluation import probe
from evaluation.reporting.figures import curve_plot
from pretrain import train
from pretrain.data import InpaintingStream, normalize
from pretrain.loop import snapshot_path
from pretrain.losses import masked_l2
from pretrain.masks import context_of
from pretrain.weights import load_context_encoder
from transfer.flags import add_voc_args
from voc.devkit import load_split

FRACTIONS = (0.0, 1 / 16, 1 / 8, 1 / 4, 1 / 2, 1.0)


def get_args_parser():
    p = entry_parser("python -m evaluation.curve", __doc__.split("\n")[0])
    g = p.add_argument_group("data")
    add_voc_args(g, "the probes and the loss images")
    g.add_argument("--loss-split", default="val", help="split whose images score the inpainting loss (never "
                   "pretrained on)")
    g = p.add_argument_group("curve")
    g.add_argument("--fractions", type=float, nargs="+", default=list(FRACTIONS), help="checkpoints as fractions "
                   "of the pretraining budget")
    g.add_argument("--max-steps", type=positive_int, default=None, help="pretraining budget in steps (default: the "
                   "profile's pretrain steps); the fractions are of this")
    g.add_argument("--loss-images", type=positive_int,
                   default=None, help="at most this many loss images (default: all)")
    g.add_argument("--batch-size", type=positive_int, default=64, help="images per batch of the loss")
    g = p.add_argument_group("run")
    g.add_argument("--seed", type=int, default=0, help="pretraining, probes, loss crops and masks")
    g.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    add_threads_flag(g, "torch and BLAS threads of the pretraining and the probes")
    g.add_argument("--out-dir", default=None, help="folder of the run, its checkpoints, probe records, curve.csv and "
                   "curve.png (default results/<profile>-curve: apart from results/<profile>, so that its "
                   "checkpoints are not rows of Tables 2 and 3)")
    return p


def budget_steps(cfg, pretrain_cfg):
    """(steps of the budget, sorted checkpoint steps)."""
    steps = pretrain_cfg["steps"]
    budget = min(steps, cfg["max_steps"]) if cfg["max_steps"] is not None else steps
    if budget < 1 or any(not 0 <= f <= 1 for f in cfg["fractions"]):
        raise CebenchError("the budget must be at least one step and --fractions within [0, 1]")
    return budget, sorted({int(round(f * budget)) for f in cfg["fractions"]})


def pretrain_with_snapshots(cfg, out_dir, budget, steps, log):
    """Run (or finish) the pretraining that writes every checkpoint; returns their paths."""
    ce = out_dir / "ce.pt"
    paths = [snapshot_path(ce, s) for s in steps]
    if all(p.is_file() for p in paths):
        log.info("checkpoints found in %s: pretraining skipped", out_dir)
        return paths
    argv = ["--profile", cfg["profile"], "--out", str(ce), "--max-steps", str(budget), "--seed", str(cfg["seed"]),
            "--device", cfg["device"], "--save-at", *map(str, steps), "--resume"]
    train.main(argv + (["--threads", str(cfg["threads"])] if cfg["threads"] else []))
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:  # a resumed run does not go back to steps it had passed
        raise CebenchError(f"{out_dir}: checkpoints {missing} are missing; remove the run's files to redo it")
    return paths


@torch.no_grad()
def inpainting_loss(weights, image_paths, cfg, load_size, device):
    """Mean per-image masked L2 (normalised pixels, the pretraining loss) of a checkpoint on fixed crops and masks."""
    model, info = load_context_encoder(weights)
    model.to(device).eval()
    kind = info["meta"]["mask"]
    stream = InpaintingStream(image_paths, model.input_size, load_size, kind, cfg["seed"])  # crops as in training
    loader = torch.utils.data.DataLoader(stream, batch_size=cfg["batch_size"], shuffle=False)
    losses = []
    for images, masks, _ in loader:  # _: replaced images (none: --skip-bad is a training option)
        target = normalize(images, device)
        pred = model(context_of(target, masks.to(device), kind))
        losses += [float(masked_l2(p[None], t[None], m[None])) for p, t, m in zip(pred, target, masks, strict=True)]
    return float(np.mean(losses)), len(losses)


def checkpoint_row(weights, step, budget, cfg, out_dir, loss_paths, load_size, device, log):
    """One row of the curve: the probe record (run or reused) and the inpainting loss at one checkpoint."""
    record_path = out_dir / f"probe_step{step}.json"
    if not record_path.is_file():
        argv = ["--profile", cfg["profile"], "--weights", str(weights), "--voc-root", cfg["voc_root"], "--year",
                cfg["year"], "--seed", str(cfg["seed"]), "--device", cfg["device"], "--init-label", f"ce-step{step}",
                "--out", str(record_path)]
        probe.main(argv + (["--threads", str(cfg["threads"])] if cfg["threads"] else []))
    record = read_record(record_path)
    loss, n = inpainting_loss(weights, loss_paths, cfg, load_size, device)
    meta = record.get("weights_meta") or {}
    row = {"step": step, "fraction": step / budget, "images_seen": meta.get("images_seen"),
           "val_inpainting_l2": loss, "loss_images": n}
    for name, cell in record["layers"].items():
        row.update({name: cell["value"], f"{name} low": cell["ci95"][0], f"{name} high": cell["ci95"][1]})
    log.info("step %d: loss %.4f, probe %s", step, loss, {n: c["value"] for n, c in record["layers"].items()})
    return row


def main(argv=None):
    # config: parser defaults < benchmarks.yaml profile < command line
    cfg = resolved_config(parse_with_profile(get_args_parser(), argv, "curve"))
    pretrain_cfg = vars(parse_with_profile(train.get_args_parser(), ["--profile", cfg["profile"]], "pretrain"))
    set_threads(cfg["threads"])
    log = get_logger("curve")
    out_dir = Path(cfg["out_dir"] or benchmarks_path().parent / "results" / f"{cfg['profile']}-curve")
    budget, steps = budget_steps(cfg, pretrain_cfg)
    with hold_outputs([out_dir]):  # a second curve into the same folder is refused (cebench.locks)
        # pretraining with a checkpoint at every fraction of the budget
        weights = pretrain_with_snapshots(cfg, out_dir, budget, steps, log)
        # data: the held-out images of the inpainting loss
        loss_paths = load_split(cfg["voc_root"], cfg["year"], cfg["loss_split"], check_images=False).image_paths
        loss_paths = loss_paths[:cfg["loss_images"]] if cfg["loss_images"] else loss_paths
        # probes and loss at each checkpoint
        device = resolve_device(cfg["device"])
        rows = [checkpoint_row(w, s, budget, cfg, out_dir, loss_paths, pretrain_cfg["load_size"], device, log)
                for w, s in zip(weights, steps, strict=True)]
        table = pd.DataFrame(rows)
        csv = out_dir / "curve.csv"
        atomic_write_text(csv, table.to_csv(index=False, float_format="%.6g"))
        layers = [c for c in table.columns if c.startswith("conv") and " " not in c]
        png = curve_plot(out_dir / "curve.png", table, layers, f"pretraining curve ({cfg['profile']}, {budget} steps)")
        log.info("wrote %s and %s", csv, png)
        return {"csv": str(csv), "png": str(png), "table": table}


if __name__ == "__main__":
    run_cli(main)
