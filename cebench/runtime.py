"""Device and precision choice, seeding and torchrun-aware distributed set-up (gloo on CPU, NCCL on CUDA)."""

import os
import random
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from cebench.errors import CebenchError
from cebench.flags import DATA_PATHS, DEVICE_DATA_FRACTION, PRECISIONS
from cebench.logs import get_logger


@dataclass(frozen=True)
class Runtime:
    """Where this process runs and its place among the torchrun processes."""

    device: torch.device
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    precision: str = "fp32"  # resolved: fp32, bf16 or fp16 (see resolve_precision)
    compile: bool = False  # --compile: torch.compile the training forward (see `compiled`)

    @property
    def channels_last(self):
        """Convolution nets in channels_last on CUDA (cuDNN's fast NHWC kernels, tensor cores); NCHW on the CPU."""
        return self.device.type == "cuda"

    @property
    def distributed(self):
        return self.world_size > 1

    @property
    def is_main(self):
        return self.rank == 0

    def autocast(self, enabled=True):
        """Context of the forward pass: torch.autocast at this run's precision (a no-op for fp32)."""
        return autocast(self.device, self.precision if enabled else "fp32")

    def grad_scaler(self, enabled=True):
        """Loss scaling, needed by float16 only (bfloat16 has float32's exponent range)."""
        return torch.amp.GradScaler(self.device.type, enabled=enabled and self.precision == "fp16")

    def place(self, model):
        """`model` on this run's device, in channels_last where that is faster (CUDA): an input in NCHW then runs
        in NHWC too, as cuDNN follows the weights' memory format."""
        model = model.to(self.device)
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def compiled(self, module):
        """torch.compile(module) with --compile, else the module itself. Compile the module that is called (the
        DDP wrapper, when distributed); state dicts are taken from the unwrapped model, so their keys do not change."""
        return torch.compile(module) if self.compile else module

    def settings(self):
        """What ran, for records: precision, memory format, compile, and the CUDA backend switches."""
        on_cuda = self.device.type == "cuda"
        return {"device": str(self.device), "precision": self.precision,
                "memory_format": "channels_last" if self.channels_last else "contiguous", "compile": self.compile,
                "cudnn_benchmark": bool(on_cuda and torch.backends.cudnn.benchmark),
                "tf32": bool(on_cuda and torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32)}


AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# /proc/cpuinfo flags of CPUs that compute bfloat16 in hardware: x86 AVX512-BF16 and AMX-BF16, Arm's BF16.
_BF16_CPU_FLAGS = {"avx512_bf16", "amx_bf16", "bf16"}


def autocast(device, precision):
    """torch.autocast on `device` at a resolved precision (fp32: a no-op context)."""
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(torch.device(device).type, dtype=AUTOCAST_DTYPES[precision])


def cpu_flags(path="/proc/cpuinfo"):
    """The CPU feature flags the kernel reports (x86 'flags', Arm 'Features'); empty where there is no such file."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return set()
    return {f for line in lines if line.split(":")[0].strip() in ("flags", "Features")
            for f in line.split(":", 1)[1].split()}


def cpu_has_native_bf16():
    """Whether this CPU runs bfloat16 matmuls/convolutions natively, so that bf16 autocast is faster than fp32.

    torch's own CPUID probe (cpuinfo, via torch.cpu._is_avx512_bf16_supported / _is_amx_tile_supported) when this
    torch has it, else the kernel's /proc/cpuinfo flags. Not torch.backends.cpu.get_cpu_capability(): it says
    "AVX512" with or without BF16, and oneDNN's bf16 check accepts any AVX512 CPU, where bf16 is emulated (slower).
    """
    probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    if any(probe is not None and probe() for probe in probes):
        return True
    return bool(_BF16_CPU_FLAGS & cpu_flags())


def cuda_has_native_bf16(device):
    """Whether the GPU computes bfloat16 in its tensor cores: compute capability 8.0 or more (Ampere and later).
    Older GPUs emulate it (torch.cuda.is_bf16_supported() may still say True there), far slower than fp16."""
    return torch.cuda.get_device_capability(device) >= (8, 0)


def resolve_precision(name, device):
    """--precision for a device: 'auto' = bf16 on a CPU with native bfloat16 and on a GPU of compute capability
    8.0 or more (no loss scaler needed), fp16 with a loss scaler on older GPUs, else fp32."""
    if name not in PRECISIONS:
        raise CebenchError(f"unknown precision {name!r}; use one of {', '.join(PRECISIONS)}")
    device = torch.device(device)
    if name == "auto":
        if device.type == "cuda":
            return "bf16" if cuda_has_native_bf16(device) else "fp16"
        return "bf16" if device.type == "cpu" and cpu_has_native_bf16() else "fp32"
    if name == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise CebenchError("--precision bf16 was asked for but this GPU has no bfloat16 support; use fp16 or auto")
    return name


def configure_backends(device, fixed_shapes):
    """The CUDA switches GPU users expect: TF32 tensor cores for float32 matmuls and convolutions (10-bit
    mantissa, as autocast's own matmuls), and cudnn.benchmark when every batch has the same shapes (each new
    shape is benchmarked once: variable-size detection and segmentation inputs would re-benchmark every batch).
    A no-op on the CPU, so no CPU result changes."""
    if torch.device(device).type != "cuda":
        return
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = bool(fixed_shapes)


def resolve_data_path(name, device, nbytes, fraction=DEVICE_DATA_FRACTION):
    """'loader' or 'device' for --data-path `name`, given the bytes the decoded uint8 images take."""
    if name not in DATA_PATHS:
        raise CebenchError(f"unknown --data-path {name!r}; use one of {', '.join(DATA_PATHS)}")
    device = torch.device(device)
    if name != "auto":
        return name
    if device.type != "cuda":
        return "loader"
    return "device" if nbytes <= fraction * torch.cuda.get_device_properties(device).total_memory else "loader"


def resolve_device(name="auto", local_rank=0):
    """'auto' picks CUDA when present; 'cuda' without a GPU is a clear error."""
    if name not in ("auto", "cpu", "cuda"):
        raise CebenchError(f"unknown device {name!r}; use auto, cpu or cuda")
    if name == "cuda" and not torch.cuda.is_available():
        raise CebenchError("--device cuda was asked for but no CUDA device is available")
    if name == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", local_rank)


def init_distributed(device="auto", precision="auto", compile=False, fixed_shapes=False):
    """Read torchrun's environment; fall back to one process on CPU or GPU. Resolves --precision for the device and
    sets the CUDA backends (`configure_backends`; `fixed_shapes`: every training batch has the same shapes)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    configure_backends(dev, fixed_shapes)
    return Runtime(device=dev, rank=rank, world_size=world_size, local_rank=local_rank,
                   precision=resolve_precision(precision, dev), compile=bool(compile))


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


def set_threads(threads):
    """Apply --threads (0 or None: leave torch's default)."""
    if threads:
        torch.set_num_threads(threads)


def start_run(cfg, stage, check=None, fixed_shapes=False):
    """The start of every entry point that computes, given its configuration `cfg` (cebench.config.parse_config,
    called before the heavy imports): `check(cfg)`, the distributed runtime with its resolved precision (and CUDA
    backends: `fixed_shapes` for stages whose training batches all have one shape), threads, seed, and a logger
    named after the stage. Returns (rt, log); cfg gains the resolved precision and the runtime's settings."""
    if check:
        check(cfg)
    rt = init_distributed(cfg["device"], cfg["precision"], cfg.get("compile", False), fixed_shapes)
    cfg["precision"] = rt.precision  # 'auto' resolved: the record says what ran
    cfg["runtime"] = rt.settings()
    set_threads(cfg["threads"])
    seed_everything(cfg["seed"])
    return rt, get_logger(stage, rt.is_main)
