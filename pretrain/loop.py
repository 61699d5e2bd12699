"""The pretraining loop behind `python -m pretrain.train`: model, data, one step, checkpoints and exact resume."""

import hashlib
import logging
import math
import time
from contextlib import closing
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from cebench.curves import RunLog, tensorboard_dir
from cebench.errors import CebenchError, one_line
from cebench.files import append_jsonl, atomic_torch_save, safe_torch_load
from cebench.logs import get_logger, progress
from cebench.runtime import resolve_data_path
from pretrain.data import (IMAGE_MEAN, IMAGE_STD, ImageCache, InpaintingStream, check_images, list_images,
                           make_loader, normalize)
from pretrain.device_data import DeviceBatches
from pretrain.health import feature_health
from pretrain.losses import discriminator_loss, generator_adversarial_loss, masked_l2
from pretrain.masks import AUTOENCODER, context_of, load_region_shapes
from pretrain.model import AlexNetEncoder, ContextEncoder, Discriminator

# Settings that shape the trajectory: a resumed run must agree on all of them to replay the same steps.
REPLAY_KEYS = ("arch", "pool_free", "width", "input_size", "load_size", "dropout", "decoder_width", "mask",
               "overlap", "overlap_weight", "adv_weight", "steps", "batch_size", "lr", "beta1", "weight_decay",
               "lr_schedule", "seed", "region_shapes", "region_shapes_split", "precision", "data_path")
REPLAY_DEFAULTS = {"data_path": "loader"}


def run_paths(out):
    """Files of a run, all next to --out: run checkpoint, metrics, figures, resolved config, TensorBoard events."""
    out = Path(out)
    stem = out.with_suffix("") if out.suffix else out
    return {"out": out, "last": Path(f"{stem}.last.pt"), "metrics": Path(f"{stem}.metrics.jsonl"),
            "loss_png": Path(f"{stem}.loss.png"), "samples_png": Path(f"{stem}.samples.png"),
            "config": Path(f"{stem}.config.json"), "tensorboard": Path(f"{stem}.tensorboard")}


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


def planned_data_path(cfg, n_images, device):
    """--data-path resolved for `n_images` on `device` ('loader' or 'device'); the device path needs the cache."""
    path = resolve_data_path(cfg.get("data_path", "auto"), device,
                             ImageCache.estimated_bytes(n_images, cfg["load_size"]))
    if path == "device" and cfg["cache"] == "off":
        if cfg.get("data_path") == "device":
            raise CebenchError("--data-path device keeps the decoded images on the device: it needs --cache auto/on")
        return "loader"
    return path


def data_path(cfg, dataset, device):
    """The data path that runs: 'device' when planned and the images are cached, else 'loader'."""
    return "device" if dataset.cache is not None and planned_data_path(cfg, len(dataset), device) == "device" \
        else "loader"


def build_dataset(cfg, logger=None, device="cpu"):
    """The replayable sample stream over --images (cached in memory when small enough, asked to, or for the device
    data path), and the names of the files skipped as unreadable so far (header check; full decode when cached)."""
    paths, skipped = check_images(list_images(cfg["images"], cfg.get("image_list")), cfg["skip_bad"], cfg["load_size"])
    use_cache = cfg["cache"] == "on" or (cfg["cache"] == "auto" and (
        ImageCache.fits(len(paths), cfg["load_size"]) or planned_data_path(cfg, len(paths), device) == "device"))
    cache = ImageCache(paths, cfg["load_size"], skip_bad=cfg["skip_bad"]) if use_cache else None
    skipped = [image_name(p, cfg) for p in skipped + (cache.skipped if cache is not None else [])]
    shapes = None
    if cfg["mask"] == "random-region" and cfg.get("region_shapes"):
        shapes = load_region_shapes(cfg["region_shapes"], ids=region_shape_ids(cfg))
        if not shapes:
            raise CebenchError(f"{cfg['region_shapes']}: no segmentation PNGs with object shapes found")
    dataset = InpaintingStream(paths, cfg["input_size"], cfg["load_size"], cfg["mask"], cfg["seed"], cache, shapes,
                               skip_bad=cfg["skip_bad"])
    if logger:
        logger.info("%d images from %s (%d skipped as unreadable), %s, data path %s", len(dataset), cfg["images"],
                    len(skipped), "cached in memory" if use_cache else "decoded on the fly",
                    data_path(cfg, dataset, device))
        for name in skipped:
            logger.warning("skipped unreadable image %s", name)
    return dataset, skipped


def image_name(path, cfg):
    """How records and logs name an image: its path under --images."""
    return Path(path).relative_to(cfg["images"]).as_posix()


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
        self.model = runtime.place(build_model(cfg))  # channels_last on CUDA
        self.opt = torch.optim.Adam(self.model.parameters(), lr=cfg["lr"], betas=(cfg["beta1"], 0.999),
                                    weight_decay=cfg["weight_decay"])
        self.disc = self.disc_opt = None
        if cfg["adv_weight"] > 0:
            self.disc = runtime.place(Discriminator())
            # paper §3.2 (Table 1 model): the generator's learning rate is 10x the discriminator's
            self.disc_opt = torch.optim.Adam(self.disc.parameters(), lr=cfg["lr"] / 10, betas=(cfg["beta1"], 0.999))
        self.scaler = runtime.grad_scaler()  # float16 only; weights and Adam's moments stay float32
        self.net, self.disc_net = self.model, self.disc
        if runtime.distributed:
            self.net = DistributedDataParallel(self.model)
            self.disc_net = DistributedDataParallel(self.disc) if self.disc is not None else None
        self.net = runtime.compiled(self.net)  # --compile; state() reads the uncompiled self.model
        self.disc_net = runtime.compiled(self.disc_net) if self.disc_net is not None else None

    def step(self, images, masks, step):
        """One optimisation step on a uint8 batch (N, 3, H, W) and its masks (N, 1, H, W); returns the loss."""
        cfg, dev = self.cfg, self.rt.device
        torch.manual_seed(step_seed(cfg["seed"], step, self.rt.rank))
        for group in self.opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        target = normalize(images, dev)  # (N, 3, H, W)
        masks = masks.to(dev, non_blocking=True)
        with self.rt.autocast():
            pred = self.net(context_of(target, masks, cfg["mask"]))
        # the loss outside autocast, in float32: a bf16/fp16 squared error would round away small residuals
        pred = pred.float()
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
        with self.rt.autocast():
            real_logits, fake_logits = self.disc_net(target), self.disc_net(completed.detach())
        d_loss = discriminator_loss(real_logits.float(), fake_logits.float())
        self.disc_opt.zero_grad(set_to_none=True)
        self.scaler.scale(d_loss).backward()
        self.scaler.step(self.disc_opt)
        with self.rt.autocast():
            fake_logits = self.disc_net(completed)
        adv = generator_adversarial_loss(fake_logits.float())
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


def replay_settings(cfg, trainer, fingerprint):
    """What a resume must agree on: the trajectory's settings, the world size, the images, the LRN convention."""
    return {k: cfg[k] for k in REPLAY_KEYS} | {"world_size": trainer.rt.world_size, "images": fingerprint,
                                               "lrn": trainer.model.encoder.lrn}


def save_run(paths, trainer, progress_state, cfg, fingerprint):
    """Atomic run checkpoint: weights, optimiser, scaler, counters, loss history, replay settings."""
    replay = replay_settings(cfg, trainer, fingerprint)
    atomic_torch_save(trainer.state() | progress_state | {"replay": replay}, paths["last"])


def load_run(paths, trainer, cfg, fingerprint):
    """Restore a run checkpoint after checking it replays the same trajectory; returns its counters."""
    ckpt = safe_torch_load(paths["last"], "run checkpoint")
    if not isinstance(ckpt, dict) or "replay" not in ckpt:
        raise CebenchError(f"{paths['last']}: not a pretraining run checkpoint")
    now = replay_settings(cfg, trainer, fingerprint)
    was_set = REPLAY_DEFAULTS | ckpt["replay"]  # a checkpoint from before a key existed ran its default
    diff = sorted(k for k in now if was_set.get(k) != now[k])
    if diff:
        was = {k: was_set.get(k) for k in diff}
        raise CebenchError(f"{paths['last']}: cannot resume, settings differ from the run's: {was} vs "
                           f"{ {k: now[k] for k in diff} } (use the same flags, or --overwrite to start afresh)")
    trainer.load_state(ckpt)
    # the files skipped mid-run so far: a resumed run reports the same ones as an uninterrupted run
    return {k: ckpt[k] for k in ("step", "history", "wall_time_s")} | {"skipped": ckpt.get("skipped", [])}


def ranks_identical(trainer):
    """All-gather the weight checksums of every rank; returns (identical, per-rank checksums)."""
    local = trainer.weights_checksum()
    if not trainer.rt.distributed:
        return True, [local.tolist()]
    gathered = [torch.zeros_like(local) for _ in range(trainer.rt.world_size)]
    dist.all_gather(gathered, local)
    return all(torch.equal(g, gathered[0]) for g in gathered), [g.tolist() for g in gathered]


def log_feature_health(trainer, views, counters, paths):
    """Feature health of the encoder now (main rank): kept in `counters`, a metrics.jsonl line and a log line."""
    health = feature_health(trainer.model.encoder, views, trainer.rt.device)
    counters["feature_health"] = health
    append_jsonl(paths["metrics"], {"step": counters["step"], "feature_health": health})
    dead = ", ".join(f"{k} {100 * v:.0f}%" for k, v in health["dead_units"].items())
    get_logger("pretrain").info("step %d: dead units %s; pool5 effective rank %.1f (top component %.0f%%)",
                                counters["step"], dead, health["pool5_effective_rank"],
                                100 * (health["pool5_top_pc_share"] or 0))
    return health


def train_steps(trainer, loader, counters, cfg, paths, fingerprint, stop, health_views=None, snapshot=None):
    """Run steps counters['step'] .. stop-1, saving the run checkpoint (and logging feature health on
    `health_views`, uint8 images, when given) every --ckpt-every steps.

    `snapshot(counters)`, when given, is called before the first step and after every step (for --save-at)."""
    rt, per_step = trainer.rt, cfg["batch_size"] * trainer.rt.world_size
    trainer.model.train()
    bar = progress(total=stop, initial=counters["step"], enabled=rt.is_main, desc="pretrain", unit="step")
    tick, window = time.perf_counter(), []
    runlog = RunLog(paths["metrics"], tensorboard_dir(cfg["tensorboard"], paths["tensorboard"]),
                    enabled=rt.is_main, start_step=counters["step"])
    if snapshot is not None:
        snapshot(counters)
    with closing(runlog):  # metrics.jsonl and TensorBoard (main rank)
        for images, masks, replaced in _batches(loader):
            step = counters["step"]
            note_skipped(replaced, loader.dataset, counters, cfg, step)
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
            if (step + 1) % cfg["log_every"] == 0:
                runlog.write({"step": step + 1, "loss": loss, "lr": lr_at(step, cfg),
                              "images_seen": (step + 1) * per_step, "wall_time_s": round(counters["wall_time_s"], 3)})
            if (step + 1) % cfg["ckpt_every"] == 0 or step + 1 == stop:
                counters["skipped"] = gather_skipped(counters["skipped"], rt)
                if rt.is_main:
                    if health_views is not None:
                        log_feature_health(trainer, health_views, counters, paths)
                        trainer.model.train()
                        tick = time.perf_counter()  # wall_time_s counts training, not this measurement
                    save_run(paths, trainer, counters, cfg, fingerprint)
            if snapshot is not None:
                snapshot(counters)
    bar.close()
    return counters


def note_skipped(replaced, dataset, counters, cfg, step):
    """Log and remember the images of a batch that failed to decode (replaced in the stream, --skip-bad)."""
    for index in sorted(set(replaced.tolist()) - {-1}):
        name = image_name(dataset.paths[index], cfg)
        if name not in counters["skipped"]:
            counters["skipped"] = sorted(counters["skipped"] + [name])
            logging.getLogger("pretrain").warning(
                "step %d: skipped unreadable image %s (the next readable image took its place; %d skipped so far)",
                step, name, len(counters["skipped"]))


def gather_skipped(names, runtime):
    """The union of every rank's skipped files (each rank decodes its own share of the stream)."""
    if not runtime.distributed:
        return names
    gathered = [None] * runtime.world_size
    dist.all_gather_object(gathered, names)
    return sorted(set().union(*gathered))


def _batches(loader):
    """Iterate the loader, turning a worker's wrapped CebenchError back into its one-line message."""
    try:
        yield from loader
    except CebenchError as err:
        raise CebenchError(one_line(err)) from None


def region_shape_ids(cfg):
    """The image ids of --region-shapes-split (ImageSets/Segmentation/<split>.txt beside the shapes' folder), or
    None: every PNG of the folder."""
    split = cfg.get("region_shapes_split")
    if not split:
        return None
    listing = Path(cfg["region_shapes"]).parent / "ImageSets" / "Segmentation" / f"{split}.txt"
    try:
        return listing.read_text().split()
    except OSError as err:
        raise CebenchError(f"{listing}: cannot read the --region-shapes-split list ({err.strerror})") from None


def mask_source(cfg):
    """Which random-region variant ran (PAPER.md: the paper's VOC shapes or the released code's noise)."""
    if cfg["mask"] == AUTOENCODER:
        return "none: autoencoder control (paper Table 2), the whole image in, every pixel reconstructed"
    if cfg["mask"] != "random-region":
        return cfg["mask"]
    if cfg.get("region_shapes"):
        split = f" (split {cfg['region_shapes_split']})" if cfg.get("region_shapes_split") else ""
        return f"paper: VOC segmentation shapes from {cfg['region_shapes']}{split}"
    return "released code: thresholded bicubic noise (train_random.lua)"


def init_label(mask, steps):
    """The name of the weights in records and tables: ce, autoencoder (mask none) or ce-untrained (step 0)."""
    if steps == 0:  # the initialisation the pretraining starts from, whatever its mask
        return "ce-untrained"
    return "autoencoder" if mask == AUTOENCODER else "ce"


def final_meta(cfg, trainer, counters, n_images, skipped, identical, checksums, health=None):
    """The plain-dict `meta` of ce.pt; `skipped`: files left out up front (names under --images)."""
    from cebench.records import versions  # git calls: only when the run ends

    skipped = sorted(set(skipped) | set(counters["skipped"]))  # and those that failed to decode mid-run
    per_step = cfg["batch_size"] * trainer.rt.world_size
    return {"init_label": init_label(cfg["mask"], counters["step"]),
            "images_seen": counters["step"] * per_step, "steps": counters["step"], "total_steps": cfg["steps"],
            "wall_time_s": round(counters["wall_time_s"], 3), "device": str(trainer.rt.device),
            "precision": trainer.rt.precision, "data_path": cfg.get("data_path", "loader"),
            "runtime": trainer.rt.settings(),
            "world_size": trainer.rt.world_size, "mask": cfg["mask"],
            "mask_source": mask_source(cfg),
            "seed": cfg["seed"], "batch_size": cfg["batch_size"], "lr": cfg["lr"], "optimizer": "adam",
            "input_size": cfg["input_size"], "normalize": {"mean": list(IMAGE_MEAN), "std": list(IMAGE_STD)},
            "n_images": n_images, "skipped_images": len(skipped), "skipped_image_files": skipped,
            "images": str(cfg["images"]),
            "profile": cfg.get("profile"), "ddp_ranks_identical": identical, "ddp_rank_checksums": checksums,
            "lrn": trainer.model.encoder.lrn, "feature_health": health, "versions": versions()}


def decode_mode(cfg, dataset, device):
    """Where JPEGs are decoded: 'gpu' (auto on CUDA when the images are not cached in memory) or 'cpu'."""
    mode = cfg.get("decode", "auto")
    if mode == "auto":
        return "gpu" if torch.device(device).type == "cuda" and dataset.cache is None else "cpu"
    if mode == "gpu" and torch.device(device).type != "cuda":
        raise CebenchError("--decode gpu needs --device cuda (on a CPU, --decode cpu decodes in the loader's workers)")
    return mode


def make_train_loader(dataset, cfg, runtime, start, stop):
    """Batches of steps [start, stop) of this rank: drawn on the device from its copy of the images (data path
    device), decoded by CPU workers, or as file bytes decoded on the GPU."""
    if data_path(cfg, dataset, runtime.device) == "device":
        return DeviceBatches(dataset, dataset.cache.on_device(runtime.device), start, stop, cfg["batch_size"],
                             runtime.rank, runtime.world_size)
    if decode_mode(cfg, dataset, runtime.device) == "gpu":
        from pretrain.decode import make_decoding_loader  # torchvision.io only for the GPU path

        return make_decoding_loader(dataset, start, stop, cfg["batch_size"], runtime.device, runtime.rank,
                                    runtime.world_size, workers=cfg["workers"])
    return make_loader(dataset, start, stop, cfg["batch_size"], runtime.rank, runtime.world_size,
                       workers=cfg["workers"], pin_memory=runtime.device.type == "cuda")
