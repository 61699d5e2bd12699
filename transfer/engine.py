"""The one fine-tuning loop of classification, detection and segmentation (MAE's engine, airbench's train()).

A task supplies only its data, its loss and its evaluation; everything else lives here: optimiser, learning-rate
schedule (a pure function of the step), gradient accumulation and clipping, mixed precision (the runtime's
--precision: bf16 autocast on CPUs and GPUs that have it, fp16 AMP on older GPUs; test-time evaluation stays
float32), channels_last and an optional torch.compile on CUDA (cebench.runtime), DDP
under torchrun, a tqdm bar, ``metrics.jsonl``, periodic evaluation, atomic checkpoints and exact resume.

Usage::

    config = TrainConfig(steps=80_000, batch_size=16, lr=1.0e-3, lr_step=10_000, lr_gamma=0.5,
                         weight_decay=1.0e-6, clip_grad_norm=10.0, seed=0)
    result = fit(task, model, config, run_dir="results/paper/classify_ce", runtime=init_distributed("auto"))
    result.metrics                      # task.evaluate(model) after the last step (main rank; {} elsewhere)

The task (duck-typed; see ``Task``):
- ``task.train_dataset``: a map-style dataset of training items. Its ``__getitem__`` may draw augmentation
  randomness from the *global* ``torch``/``numpy``/``random`` generators: the engine seeds them for every item
  from (seed, epoch, index), so the data of a step does not depend on workers, ranks or restarts.
- ``task.collate_fn`` (optional attribute, default torch's ``default_collate``) for variable-size items.
- ``task.device_batches`` (optional attribute; None or absent: a DataLoader): a function of the engine's
  ``StepBatchSampler`` returning an iterable of batches already on the device, one per micro-batch of
  ``(index, item_seed)`` pairs: the device data path (--data-path device), with no loader workers.
- ``task.training_step(model, batch) -> loss``: a scalar tensor, the mean loss of the micro-batch. ``batch`` is
  already on the device (tensors inside tuples/lists/dicts are moved); ``model`` is DDP-wrapped when
  distributed. The engine seeds the global generators from (seed, step) before each call (dropout etc.).
- ``task.evaluate(model) -> dict`` of float metrics (fractions), called on the main rank only, with the
  unwrapped model in eval mode under ``torch.no_grad()``. Feed predictions to a metric object with
  ``update()``/``compute()`` (e.g. ``evaluation.metrics.ConfusionMatrix``).
- ``task.param_groups(model)`` (optional) -> list of dicts with ``params`` and optional ``lr_mult`` and
  ``weight_decay`` (Caffe's lr_mult/decay_mult); default: one group of the parameters with requires_grad.

Steps are optimiser steps. ``batch_size`` is images per optimiser step summed over ranks and accumulated
micro-batches, so the paper's batch sizes hold under any number of GPUs (each rank sees
``batch_size / (world_size * accum_steps)`` items per forward). ``max_steps`` stops early without changing the
schedule, and a later call with a larger cap resumes from the run folder. Epochs are permutations of the
dataset seeded by (seed, epoch); an epoch is ``len(dataset) // batch_size`` steps (``epochs_to_steps``).

Run folder: ``checkpoint.pt`` (model, optimiser, scaler, step, config, precision, data path; tensors and plain
values only, loaded with weights_only=True), ``metrics.jsonl`` (a line per log interval and evaluation; a resume
drops those after its checkpoint), ``config.json`` (``run_config``, written once a resume is accepted: a refused
one keeps the run's), ``curves.png`` (drawn from metrics.jsonl at the end) and, when the tensorboard package is
installed, ``tensorboard/`` (``fit(tensorboard=DIR|"off")``).
"""

import math
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, default_collate

from cebench.curves import RunLog, tensorboard_dir
from cebench.errors import CebenchError
from cebench.files import atomic_torch_save, atomic_write_json, make_dirs, safe_torch_load, truncate_jsonl
from cebench.logs import get_logger, progress
from cebench.runtime import barrier, worker_seed_init
from transfer.sampling import SeededItems, StepBatchSampler, derive_seed, seed_globals

CHECKPOINT_FORMAT = "cebench.transfer-run"
CHECKPOINT_NAME = "checkpoint.pt"
METRICS_NAME = "metrics.jsonl"
CURVES_NAME, TENSORBOARD_NAME = "curves.png", "tensorboard"
# Fields that may change between a run and its resumption without changing what is computed.
_RESUMABLE_CHANGES = {"max_steps", "eval_every", "checkpoint_every", "log_every", "num_workers"}


class Task(Protocol):
    """What a transfer task supplies to the engine (see the module docstring)."""

    train_dataset: Dataset

    def training_step(self, model: torch.nn.Module, batch: Any) -> torch.Tensor: ...

    def evaluate(self, model: torch.nn.Module) -> dict: ...

    # what the latest evaluate() predicted, for the entry point's record (a dict; None before any evaluation)
    last: dict | None


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings of one fine-tuning run; `steps` is the schedule's length in optimiser steps."""

    steps: int
    batch_size: int  # images per optimiser step, over all ranks and accumulated micro-batches
    lr: float
    optimizer: str = "sgd"  # "sgd" (momentum) or "adam"
    momentum: float = 0.9
    betas: tuple = (0.9, 0.999)
    weight_decay: float = 0.0
    schedule: str = "step"  # "step" (lr * gamma every lr_step), "cosine" or "constant"
    lr_step: int = 10_000
    lr_gamma: float = 0.5
    warmup_steps: int = 0
    max_steps: int | None = None  # stop here (a cap for quick runs); the schedule still spans `steps`
    accum_steps: int = 1
    clip_grad_norm: float | None = None  # Caffe's clip_gradients: rescale the global L2 norm to this
    amp: bool = True  # allow the runtime's mixed precision (--precision) for the training steps
    eval_every: int | None = None
    checkpoint_every: int = 1000
    log_every: int = 20
    num_workers: int = 0
    seed: int = 0
    find_unused_parameters: bool = False


@dataclass
class FitResult:
    """What a run produced: final metrics (main rank), steps done, timing (train_time_s spans resumptions)."""

    metrics: dict
    step: int
    wall_time_s: float
    images_per_s: float
    resumed_from: int = 0
    history: list = field(default_factory=list)
    train_time_s: float = 0.0
    precision: str = "fp32"  # what the training steps ran in (Runtime.precision)
    data_path: str = "loader"  # how training batches were made: DataLoader, or the task's device_batches


def epochs_to_steps(epochs, n_items, batch_size):
    """Optimiser steps in `epochs` passes over `n_items`, `batch_size` items a step (last partial batch dropped)."""
    return max(1, int(round(epochs * (n_items // batch_size))))


def learning_rate(step, config):
    """Learning rate of optimiser step `step` (0-based): a pure function of the step and the config."""
    if config.warmup_steps and step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    if config.schedule == "step":
        return config.lr * config.lr_gamma ** (step // config.lr_step)
    if config.schedule == "cosine":
        progress_ = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
        return 0.5 * config.lr * (1.0 + math.cos(math.pi * min(1.0, progress_)))
    if config.schedule == "constant":
        return config.lr
    raise CebenchError(f"unknown learning-rate schedule {config.schedule!r}; use step, cosine or constant")


def to_device(batch, device):
    """Move tensors nested in tuples, lists and dicts to `device`."""
    if torch.is_tensor(batch):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        moved = [to_device(v, device) for v in batch]
        return type(batch)(*moved) if hasattr(batch, "_fields") else type(batch)(moved)
    return batch


def checkpoint_path(run_dir):
    """Where `fit` keeps the run's resumable checkpoint."""
    return Path(run_dir) / CHECKPOINT_NAME


def unwrap(model):
    """The module inside a torch.compile and/or DDP wrapper (or the model itself)."""
    model = getattr(model, "_orig_mod", model)  # torch.compile's OptimizedModule
    return model.module if isinstance(model, DistributedDataParallel) else model


def build_optimizer(task, model, config):
    """SGD with momentum or Adam over the task's parameter groups; groups remember their lr multiplier."""
    groups = task.param_groups(model) if hasattr(task, "param_groups") else [
        {"params": [p for p in model.parameters() if p.requires_grad]}]
    for group in groups:
        group.setdefault("lr_mult", 1.0)
        group.setdefault("weight_decay", config.weight_decay)
    if not any(len(list(g["params"])) for g in groups):
        raise CebenchError("nothing to train: no parameter requires a gradient")
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum)
    if config.optimizer == "adam":
        return torch.optim.Adam(groups, lr=config.lr, betas=tuple(config.betas))
    raise CebenchError(f"unknown optimizer {config.optimizer!r}; use sgd or adam")


def _config_changes(saved, config):
    now = asdict(config)
    return sorted(k for k in set(saved) | set(now)
                  if k not in _RESUMABLE_CHANGES and _plain(saved.get(k)) != _plain(now.get(k)))


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


def _load_checkpoint(path, model, optimizer, scaler, config, precision="fp32", path_of_data="loader"):
    """Restore a run's state; a checkpoint of another run (different schedule, model, precision or data path: the
    other path draws other batches, so the run would not resume exactly) is refused."""
    state = safe_torch_load(path, "run checkpoint")
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CebenchError(f"{path}: not a cebench fine-tuning checkpoint")
    changed = _config_changes(state["config"], config)
    if state.get("precision", "fp32") != precision:  # checkpoints before --precision ran float32 on CPU
        changed.append(f"precision {state.get('precision', 'fp32')} -> {precision}")
    if state.get("data_path", "loader") != path_of_data:  # checkpoints before --data-path drew on the loader
        changed.append(f"--data-path {state.get('data_path', 'loader')} -> {path_of_data}")
    if changed:
        raise CebenchError(f"{path}: was written with different settings ({', '.join(changed)}); "
                           "use another run folder or --overwrite to start again")
    try:
        unwrap(model).load_state_dict(state["model"])
    except RuntimeError as err:
        raise CebenchError(f"{path}: model does not match ({str(err).splitlines()[0]})") from None
    optimizer.load_state_dict(state["optimizer"])
    if state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    return int(state["step"]), float(state.get("train_time_s", 0.0))


def _save_checkpoint(path, model, optimizer, scaler, config, step, train_time_s=0.0, precision="fp32",
                     path_of_data="loader"):
    atomic_torch_save({"format": CHECKPOINT_FORMAT, "version": 1, "step": step, "config": asdict(config),
                       "train_time_s": train_time_s, "precision": precision, "data_path": path_of_data,
                       "model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
                       "scaler": scaler.state_dict() if scaler.is_enabled() else {}}, path)


def evaluate_main(task, model, runtime):
    """task.evaluate on the main rank (eval mode, no grad); other ranks wait and get {}."""
    metrics = {}
    if runtime.is_main:
        inner = unwrap(model)
        was_training = inner.training
        inner.eval()
        with torch.no_grad():
            metrics = {k: float(v) for k, v in task.evaluate(inner).items()}
        inner.train(was_training)
    barrier(runtime)
    return metrics


def data_path(task):
    """'device' when the task draws its training batches on the device (``task.device_batches``), else 'loader'."""
    return "device" if getattr(task, "device_batches", None) is not None else "loader"


def _make_loader(task, config, runtime, start, end):
    sampler = StepBatchSampler(len(task.train_dataset), config, runtime, start, end)
    if data_path(task) == "device":  # the same (index, item seed) micro-batches, drawn on the device
        return task.device_batches(sampler)
    return DataLoader(SeededItems(task.train_dataset), batch_sampler=sampler,
                      collate_fn=getattr(task, "collate_fn", None) or default_collate,
                      num_workers=config.num_workers, worker_init_fn=worker_seed_init,
                      pin_memory=runtime.device.type == "cuda", persistent_workers=False)


def _optimizer_step(model, optimizer, scaler, config, step):
    for group in optimizer.param_groups:
        group["lr"] = learning_rate(step, config) * group["lr_mult"]
    scaler.unscale_(optimizer)
    grad_norm = None
    if config.clip_grad_norm:
        grad_norm = float(torch.nn.utils.clip_grad_norm_(
            [p for g in optimizer.param_groups for p in g["params"]], config.clip_grad_norm))
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm


def _micro_step(task, model, batch, scaler, runtime, config, last):
    """Forward and backward of one micro-batch; DDP syncs gradients only on the last one of a step."""
    ctx = nullcontext() if last or not runtime.distributed else model.no_sync()
    with ctx:
        with runtime.autocast(config.amp):  # autocast runs the losses (cross-entropy, BCE, smooth L1) in float32;
            loss = task.training_step(model, to_device(batch, runtime.device)).float()  # .float(): any other too
        if not torch.isfinite(loss):
            raise CebenchError(f"training diverged: loss is {loss.item()} (lower the learning rate?)")
        scaler.scale(loss / config.accum_steps).backward()
    return float(loss.detach())


def _item_count(batch):
    first = batch[0] if isinstance(batch, (list, tuple)) else next(iter(batch.values())) if isinstance(
        batch, dict) else batch
    return len(first) if hasattr(first, "__len__") else 1


def fit(task, model, config, run_dir, runtime, *, resume=True, logger=None, run_config=None, tensorboard="auto"):
    """Train `model` on `task` for config.steps (or up to config.max_steps), checkpointing into `run_dir`."""
    logger = logger or get_logger("engine", runtime.is_main)
    run_dir, started = make_dirs(run_dir), time.time()
    events = tensorboard_dir(tensorboard, run_dir / TENSORBOARD_NAME)
    runtime.place(model).train()  # channels_last on CUDA
    optimizer = build_optimizer(task, model, config)
    scaler = runtime.grad_scaler(config.amp)  # float16 only; weights and optimiser state stay float32
    ckpt, start, before = checkpoint_path(run_dir), 0, 0.0
    if resume and ckpt.is_file():
        start, before = _load_checkpoint(ckpt, model, optimizer, scaler, config, runtime.precision, data_path(task))
        logger.info("resumed from %s at step %d", ckpt, start)
    end = min(config.steps, config.max_steps or config.steps)
    if runtime.is_main and start:  # lines of replayed steps go (and a final evaluation that is redone)
        truncate_jsonl(run_dir / METRICS_NAME, lambda row: row["step"] < start or row["step"] == start and not (
            row.get("final") and end <= start))
    if run_config is not None and runtime.is_main:
        atomic_write_json(run_dir / "config.json", run_config)
    if runtime.distributed:
        model = DistributedDataParallel(model, find_unused_parameters=config.find_unused_parameters,
                                        device_ids=[runtime.device.index] if runtime.device.type == "cuda" else None)
    model = runtime.compiled(model)  # --compile: the training steps' forward; evaluation runs the unwrapped model
    runlog = RunLog(run_dir / METRICS_NAME, events, enabled=runtime.is_main, start_step=start,
                    curves=run_dir / CURVES_NAME)
    try:
        result = _train_loop(task, model, optimizer, scaler, config, runtime, run_dir, start, end, logger, before,
                             runlog)
        result.train_time_s = before + result.wall_time_s
        if end > start or not ckpt.is_file():
            if runtime.is_main:
                _save_checkpoint(ckpt, model, optimizer, scaler, config, max(start, end), result.train_time_s,
                                 runtime.precision, data_path(task))
            barrier(runtime)
        result.metrics = evaluate_main(task, model, runtime)
        runlog.write({"step": max(start, end), "final": True, **result.metrics})
    finally:
        runlog.close()  # also draws curves.png, of a failed run too
    result.wall_time_s, result.resumed_from = time.time() - started, start
    return result


def _train_loop(task, model, optimizer, scaler, config, runtime, run_dir, start, end, logger, before, runlog):
    """Steps [start, end): micro-batches, optimiser steps, logging, periodic evaluation and checkpoints."""
    loader = _make_loader(task, config, runtime, start, end) if end > start else []
    bar = progress(total=end, initial=start, enabled=runtime.is_main, desc="fine-tune", unit="step")
    history, losses, seen, t0 = [], [], 0, time.time()
    micro, step = 0, start
    for batch in loader:
        if micro == 0:
            seed_globals(derive_seed(config.seed, 3, step, runtime.rank))
        micro += 1
        losses.append(_micro_step(task, model, batch, scaler, runtime, config, micro == config.accum_steps))
        seen += _item_count(batch) * runtime.world_size
        if micro < config.accum_steps:
            continue
        micro = 0
        grad_norm = _optimizer_step(model, optimizer, scaler, config, step)
        step += 1
        rate = seen / max(1e-9, time.time() - t0)
        bar.update(1)
        bar.set_postfix(loss=f"{np.mean(losses[-config.accum_steps * 10:]):.4f}", img_s=f"{rate:.1f}")
        if step % config.log_every == 0 or step == end:
            row = {"step": step, "lr": learning_rate(step - 1, config), "loss": float(np.mean(losses)),
                   "images_per_s": rate, "grad_norm": grad_norm}
            history.append(row)
            runlog.write(row)
            losses = []
        if config.eval_every and step % config.eval_every == 0 and step < end:
            metrics = evaluate_main(task, model, runtime)
            runlog.write({"step": step, "eval": True, **metrics})
            if runtime.is_main:
                logger.info("step %d: %s", step, ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
        if step % config.checkpoint_every == 0 and step < end:
            if runtime.is_main:
                _save_checkpoint(checkpoint_path(run_dir), model, optimizer, scaler, config, step,
                                 before + time.time() - t0, runtime.precision, data_path(task))
            barrier(runtime)
    bar.close()
    elapsed = time.time() - t0
    return FitResult(metrics={}, step=step, wall_time_s=elapsed, images_per_s=seen / max(1e-9, elapsed),
                     precision=runtime.precision if config.amp else "fp32", history=history, data_path=data_path(task))


__all__ = ["Task", "TrainConfig", "FitResult", "fit", "learning_rate", "epochs_to_steps", "derive_seed",
           "seed_globals", "StepBatchSampler", "SeededItems", "to_device", "checkpoint_path", "unwrap",
           "build_optimizer", "evaluate_main"]
