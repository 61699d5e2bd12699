"""The stages of `python -m evaluation.curve`: the pretraining that writes a checkpoint at every fraction of the
budget, and one row of the curve per checkpoint (its per-layer probes and its masked L2 inpainting loss)."""

import numpy as np
import torch

from cebench.errors import CebenchError
from cebench.records import read_record
from evaluation import probe
from pretrain import train
from pretrain.data import InpaintingStream, normalize
from pretrain.loop import snapshot_path
from pretrain.losses import masked_l2
from pretrain.masks import context_of
from pretrain.weights import load_context_encoder


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
