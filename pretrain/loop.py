"""The pretraining loop behind `python -m pretrain.train`: model, data, one step, checkpoints and exact resume."""

import hashlib
import math
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from cebench.errors import CebenchError
from cebench.files import atomic_torch_save, safe_torch_load
from cebench.logs import append_jsonl, progress
from pretrain.data import (IMAGE_MEAN, IMAGE_STD, ImageCache, InpaintingStream, check_images, list_images,
                           make_loader, normalize)
from pretrain.losses import discriminator_loss, generator_adversarial_loss, masked_l2
from pretrain.masks import AUTOENCODER, context_of, load_region_shapes
from pretrain.model import AlexNetEncoder, ContextEncoder, Discriminator

# Settings that shape the trajectory: a resumed run must agree on all of them to replay the same steps.
REPLAY_KEYS = ("arch", "pool_free", "width", "input_size", "load_size", "dropout", "decoder_width", "mask",
               "overlap", "overlap_weight", "adv_weight", "steps", "batch_size", "lr", "beta1", "weight_decay",
               "lr_schedule", "seed", "region_shapes")


def check_args(args):
    """Refuse inconsistent flags with one line; expands --image-split into --image-list."""
    if not args.images:
        raise CebenchError("no image folder: pass --images DIR or pick a --profile that sets one")
    if args.image_split == "all":
        args.image_split = None
    if args.image_split and args.image_list:
        raise CebenchError("give --image-list or --image-split, not both")
    if args.image_split:
        args.image_list = str(Path(args.images).resolve().parent / "ImageSets" / "Main" / f"{args.image_split}.txt")
        if not Path(args.image_list).is_file():
            raise CebenchError(f"{args.image_list}: no such split list (--image-split {args.image_split} expects "
                               "--images to be a VOC JPEGImages folder; pass --image-split all to use every image)")
    if args.load_size < args.input_size:
        raise CebenchError(f"--load-size {args.load_size} is smaller than --input-size {args.input_size}")
    for name in ("steps", "batch_size", "ckpt_every", "log_every"):
        if getattr(args, name) < 1:
            raise CebenchError(f"--{name.replace('_', '-')} must be positive")
    if args.max_steps is not None and args.max_steps < 0:
        raise CebenchError("--max-steps must be 0 (write the untrained weights) or more")
    if any(s < 0 for s in args.save_at or ()):
        raise CebenchError("--save-at takes step numbers of 0 or more")
    if not 0 <= args.adv_weight < 1:
        raise CebenchError("--adv-weight must be in [0, 1)")


def run_paths(out):
    """Files of a run, all next to --out: run checkpoint, metrics, figures, resolved config."""
    out = Path(out)
    stem = out.with_suffix("") if out.suffix else out
    return {"out": out, "last": Path(f"{stem}.last.pt"), "metrics": Path(f"{stem}.metrics.jsonl"),
            "loss_png": Path(f"{stem}.loss.png"), "samples_png": Path(f"{stem}.samples.png"),
            "config": Path(f"{stem}.config.json")}


def snapshot_path(out, step):
    """The ce.pt that --save-at writes at `step`, next to --out: <stem>.step<N>.pt."""
    out = Path(out)
    return Path(f"{out.with_suffix('') if out.suffix else out}.step{step}.pt")


def stop_step(cfg):
    """The last step of this run: --steps, or --max-steps when it is smaller (0 = the untrained weights)."""
    return cfg["steps"] if cfg["max_steps"] is None else min(cfg["steps"], cfg["max_steps"])


def build_model(cfg):
    """The context encoder of the configuration, initialised from the run's seed."""
    torch.manual_seed(cfg["seed"])
    encoder = AlexNetEncoder(arch=cfg["arch"], pool_free=cfg["pool_free"], width=cfg["width"])
    return ContextEncoder(encoder, input_size=cfg["input_size"], dropout=cfg["dropout"],
                          decoder_width=cfg["decoder_width"])


def build_dataset(cfg, logger=None):
    """The replayable sample stream over --images (cached in memory when small enough or asked to)."""
    paths, skipped = check_images(list_images(cfg["images"], cfg.get("image_list")), cfg["skip_bad_images"])
    use_cache = cfg["cache"] == "on" or (cfg["cache"] == "auto" and ImageCache.fits(len(paths), cfg["load_size"]))
    cache = ImageCache(paths, cfg["load_size"], skip_bad=cfg["skip_bad_images"]) if use_cache else None
    skipped += cache.skipped if cache is not None else 0
    shapes = None
    if cfg["mask"] == "random-region" and cfg.get("region_shapes"):
        shapes = load_region_shapes(cfg["region_shapes"])
        if not shapes:
            raise CebenchError(f"{cfg['region_shapes']}: no segmentation PNGs with object shapes found")
    dataset = InpaintingStream(paths, cfg["input_size"], cfg["load_size"], cfg["mask"], cfg["seed"], cache, shapes)
    if logger:
        logger.info("%d images from %s (%d skipped as unreadable), %s", len(dataset), cfg["images"], skipped,
                    "cached in memory" if use_cache else "decoded on the fly")
    return dataset, skipped


def dataset_fingerprint(dataset):
    """Short hash of the image list, so a resume on a different folder is refused."""
    names = "\n".join(p.name for p in dataset.paths).encode()
    return hashlib.sha1(names).hexdigest()[:16]


def lr_at(step, cfg):
    """Learning rate at `step`: constant (paper §5.2) or cosine to zero over the profile's --steps."""
    if cfg["lr_schedule"] == "cosine":
        return cfg["lr"] * 0.5 * (1.0 + math.cos(math.pi * min(step, cfg["steps"]) / cfg["steps"]))
    return cfg["lr"]


def step_seed(seed, step, rank):
    """Seed of the global RNG (dropout) at one step: a pure function, so resumed runs replay it."""
    return (seed * 1_000_003 + step * 1_009 + rank) % (2**63 - 1)


class Trainer:
    """Model, optimiser(s), AMP scaler and the one training step, on one rank."""

    def __init__(self, cfg, runtime):
        self.cfg, self.rt = cfg, runtime
        self.model = build_model(cfg).to(runtime.device)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=cfg["lr"], betas=(cfg["beta1"], 0.999),
                                    weight_decay=cfg["weight_decay"])
        self.disc = self.disc_opt = None
        if cfg["adv_weight"] > 0:
            self.disc = Discriminator().to(runtime.device)
            # paper §3.2 (Table 1 model): the generator's learning rate is 10x the discriminator's
            self.disc_opt = torch.optim.Adam(self.disc.parameters(), lr=cfg["lr"] / 10, betas=(cfg["beta1"], 0.999))
        self.scaler = torch.amp.GradScaler("cuda", enabled=runtime.amp)
        self.net, self.disc_net = self.model, self.disc
        if runtime.distributed:
            self.net = DistributedDataParallel(self.model)
            self.disc_net = DistributedDataParallel(self.disc) if self.disc is not None else None

    def step(self, images, masks, step):
        """One optimisation step on a uint8 batch (N, 3, H, W) and its masks (N, 1, H, W); returns the loss."""
        cfg, dev = self.cfg, self.rt.device
        torch.manual_seed(step_seed(cfg["seed"], step, self.rt.rank))
        for group in self.opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        target = normalize(images, dev)  # (N, 3, H, W)
        masks = masks.to(dev, non_blocking=True)
        with torch.autocast(dev.type, dtype=torch.float16, enabled=self.rt.amp):
            pred = self.net(context_of(target, masks, cfg["mask"]))
            loss = masked_l2(pred, target, masks, cfg["overlap"], cfg["overlap_weight"])
        if self.disc is not None:
            loss = self._with_adversarial(loss, pred, target, masks)
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.opt)
        self.scaler.update()
        return loss.detach()

    def _with_adversarial(self, rec_loss, pred, target, masks):
        """Update the discriminator on (real, completed) images, then mix its verdict into the loss (λ_adv)."""
        completed = torch.where(masks, pred, target)  # the prediction fills the hole only
        with torch.autocast(self.rt.device.type, dtype=torch.float16, enabled=self.rt.amp):
            d_loss = discriminator_loss(self.disc_net(target), self.disc_net(completed.detach()))
        self.disc_opt.zero_grad(set_to_none=True)
        self.scaler.scale(d_loss).backward()
        self.scaler.step(self.disc_opt)
        with torch.autocast(self.rt.device.type, dtype=torch.float16, enabled=self.rt.amp):
            adv = generator_adversarial_loss(self.disc_net(completed))
        weight = self.cfg["adv_weight"]
        return (1 - weight) * rec_loss + weight * adv

    def state(self):
        """Everything a resume needs besides the loop counters (tensors and plain values only)."""
        state = {"model": self.model.state_dict(), "opt": self.opt.state_dict(), "scaler": self.scaler.state_dict()}
        if self.disc is not None:
            state |= {"disc": self.disc.state_dict(), "disc_opt": self.disc_opt.state_dict()}
        return state

    def load_state(self, state):
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["opt"])
        self.scaler.load_state_dict(state["scaler"])
        if self.disc is not None:
            self.disc.load_state_dict(state["disc"])
            self.disc_opt.load_state_dict(state["disc_opt"])

    def weights_checksum(self):
        """(sum, sum of squares, position-weighted sum) of all weights in float64: equal iff ranks agree."""
        flat = torch.cat([p.detach().double().flatten().cpu() for p in self.model.parameters()])
        ramp = torch.linspace(1.0, 2.0, len(flat), dtype=torch.float64)
        return torch.stack([flat.sum(), flat.pow(2).sum(), (flat * ramp).sum()])


def save_run(paths, trainer, progress_state, cfg, fingerprint):
    """Atomic run checkpoint: weights, optimiser, scaler, counters, loss history, replay settings."""
    replay = {k: cfg[k] for k in REPLAY_KEYS} | {"world_size": trainer.rt.world_size, "images": fingerprint}
    atomic_torch_save(trainer.state() | progress_state | {"replay": replay}, paths["last"])


def load_run(paths, trainer, cfg, fingerprint):
    """Restore a run checkpoint after checking it replays the same trajectory; returns its counters."""
    ckpt = safe_torch_load(paths["last"], "run checkpoint")
    if not isinstance(ckpt, dict) or "replay" not in ckpt:
        raise CebenchError(f"{paths['last']}: not a pretraining run checkpoint")
    now = {k: cfg[k] for k in REPLAY_KEYS} | {"world_size": trainer.rt.world_size, "images": fingerprint}
    diff = sorted(k for k in now if ckpt["replay"].get(k) != now[k])
    if diff:
        was = {k: ckpt["replay"].get(k) for k in diff}
        raise CebenchError(f"{paths['last']}: cannot resume, settings differ from the run's: {was} vs "
                           f"{ {k: now[k] for k in diff} } (use the same flags, or --overwrite to start afresh)")
    trainer.load_state(ckpt)
    return {k: ckpt[k] for k in ("step", "history", "wall_time_s")}


def ranks_identical(trainer):
    """All-gather the weight checksums of every rank; returns (identical, per-rank checksums)."""
    local = trainer.weights_checksum()
    if not trainer.rt.distributed:
        return True, [local.tolist()]
    gathered = [torch.zeros_like(local) for _ in range(trainer.rt.world_size)]
    dist.all_gather(gathered, local)
    return all(torch.equal(g, gathered[0]) for g in gathered), [g.tolist() for g in gathered]


def train_steps(trainer, loader, counters, cfg, paths, fingerprint, stop, snapshot=None):
    """Run steps counters['step'] .. stop-1, saving the run checkpoint every --ckpt-every steps.

    `snapshot(counters)`, when given, is called before the first step and after every step (for --save-at)."""
    rt, per_step = trainer.rt, cfg["batch_size"] * trainer.rt.world_size
    trainer.model.train()
    bar = progress(total=stop, initial=counters["step"], enabled=rt.is_main, desc="pretrain", unit="step")
    tick, window = time.perf_counter(), []
    if snapshot is not None:
        snapshot(counters)
    for images, masks in _batches(loader):
        step = counters["step"]
        loss = float(trainer.step(images, masks, step))
        if not math.isfinite(loss):
            raise CebenchError(f"loss became {loss} at step {step}; lower --lr (now {cfg['lr']})")
        now = time.perf_counter()
        counters["wall_time_s"] += now - tick
        window = (window + [now - tick])[-20:]
        tick = now
        counters["step"] = step + 1
        counters["history"].append((step + 1, loss))
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}", img_s=f"{per_step * len(window) / sum(window):.1f}")
        if rt.is_main and (step + 1) % cfg["log_every"] == 0:
            append_jsonl(paths["metrics"], {"step": step + 1, "loss": loss, "lr": lr_at(step, cfg),
                                            "images_seen": (step + 1) * per_step,
                                            "wall_time_s": round(counters["wall_time_s"], 3)})
        if rt.is_main and ((step + 1) % cfg["ckpt_every"] == 0 or step + 1 == stop):
            save_run(paths, trainer, counters, cfg, fingerprint)
        if snapshot is not None:
            snapshot(counters)
    bar.close()
    return counters


def _batches(loader):
    """Iterate the loader, turning a worker's wrapped CebenchError back into its one-line message."""
    try:
        yield from loader
    except CebenchError as err:
        lines = [ln for ln in str(err).strip().splitlines() if ln.strip()]
        raise CebenchError(lines[-1].split("CebenchError: ", 1)[-1]) from None


def mask_source(cfg):
    """Which random-region variant ran (PAPER.md: the paper's VOC shapes or the released code's noise)."""
    if cfg["mask"] == AUTOENCODER:
        return "none: autoencoder control (paper Table 2), the whole image in, every pixel reconstructed"
    if cfg["mask"] != "random-region":
        return cfg["mask"]
    if cfg.get("region_shapes"):
        return f"paper: VOC segmentation shapes from {cfg['region_shapes']}"
    return "released code: thresholded bicubic noise (train_random.lua)"


def init_label(mask, steps):
    """The name of the weights in records and tables: ce, autoencoder (mask none) or ce-untrained (step 0)."""
    if steps == 0:  # the initialisation the pretraining starts from, whatever its mask
        return "ce-untrained"
    return "autoencoder" if mask == AUTOENCODER else "ce"


def final_meta(cfg, trainer, counters, n_images, skipped, identical, checksums):
    """The plain-dict `meta` of ce.pt."""
    from cebench.records import versions  # git calls: only when the run ends

    per_step = cfg["batch_size"] * trainer.rt.world_size
    return {"init_label": init_label(cfg["mask"], counters["step"]),
            "images_seen": counters["step"] * per_step, "steps": counters["step"], "total_steps": cfg["steps"],
            "wall_time_s": round(counters["wall_time_s"], 3), "device": str(trainer.rt.device),
            "world_size": trainer.rt.world_size, "mask": cfg["mask"],
            "mask_source": mask_source(cfg),
            "seed": cfg["seed"], "batch_size": cfg["batch_size"], "lr": cfg["lr"], "optimizer": "adam",
            "input_size": cfg["input_size"], "normalize": {"mean": list(IMAGE_MEAN), "std": list(IMAGE_STD)},
            "n_images": n_images, "skipped_images": skipped, "images": str(cfg["images"]),
            "profile": cfg.get("profile"), "ddp_ranks_identical": identical, "ddp_rank_checksums": checksums,
            "versions": versions()}


def make_train_loader(dataset, cfg, runtime, start, stop):
    return make_loader(dataset, start, stop, cfg["batch_size"], runtime.rank, runtime.world_size,
                       workers=cfg["workers"], pin_memory=runtime.device.type == "cuda")
