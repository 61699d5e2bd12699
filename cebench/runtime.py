"""Device choice, seeding and torchrun-aware distributed set-up (gloo on CPU, NCCL on CUDA)."""

import os
import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from cebench.errors import CebenchError


@dataclass(frozen=True)
class Runtime:
    """Where this process runs and its place among the torchrun processes."""

    device: torch.device
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self):
        return self.world_size > 1

    @property
    def is_main(self):
        return self.rank == 0

    @property
    def amp(self):
        """Mixed precision only where it pays and is safe: CUDA."""
        return self.device.type == "cuda"


def resolve_device(name="auto", local_rank=0):
    """'auto' picks CUDA when present; 'cuda' without a GPU is a clear error."""
    if name not in ("auto", "cpu", "cuda"):
        raise CebenchError(f"unknown device {name!r}; use auto, cpu or cuda")
    if name == "cuda" and not torch.cuda.is_available():
        raise CebenchError("--device cuda was asked for but no CUDA device is available")
    if name == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", local_rank)


def init_distributed(device="auto"):
    """Read torchrun's environment; fall back to one process on CPU or GPU."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return Runtime(device=dev, rank=rank, world_size=world_size, local_rank=local_rank)


def cleanup_distributed():
    """Tear the process group down at the end of a run (no-op for one process)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def barrier(runtime):
    if runtime.distributed:
        dist.barrier()


def seed_everything(seed):
    """Seed Python, NumPy and torch; returns a torch.Generator seeded the same way for explicit use."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def worker_seed_init(worker_id):
    """DataLoader worker_init_fn: derive NumPy/random seeds from torch's per-worker seed."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def default_num_workers():
    """Leave one core for the model step; 0 workers on a 1-core machine."""
    return max(0, min(8, (os.cpu_count() or 1) - 1))
