"""Throughput of a training step per precision: the step alone on a batch in memory vs end to end with the loader.

Shared by `python -m pretrain.speed` and `python -m transfer.speed`: a stage supplies, per precision, a `Bench`
(its step function, one batch already in memory, and a factory of loader iterators), and gets back images/s side
by side. Precisions and the two measurements alternate within every round, so load from other jobs on a shared
machine spreads over all of them instead of favouring whichever ran in a quiet minute.
"""

import json
import resource
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch

from cebench.files import atomic_write_json
from cebench.runtime import cpu_has_native_bf16

# The loader keeps up when the whole loop reaches this share of the step-only rate (issue 16's bar).
KEEPS_UP = 0.95


@dataclass
class Bench:
    """One precision's measurable step: step(batch, step_index), a batch in memory, batches(start, n) -> iterator."""

    step: Callable[[Any, int], Any]
    batch: Any
    batches: Callable[[int, int], Any]


def benchmark_precisions(device):
    """The precisions worth comparing on `device`: fp32 and what the hardware runs natively."""
    device = torch.device(device)
    if device.type == "cuda":
        return ["fp32", "fp16"] + (["bf16"] if torch.cuda.is_bf16_supported() else [])
    return ["fp32", "bf16"] if cpu_has_native_bf16() else ["fp32"]


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def _time_model_only(bench, first_step, n, device, cpu=None):
    """Per-step seconds of the step alone on the batch in memory (this process's CPU seconds appended to `cpu`)."""
    times = []
    for step in range(first_step, first_step + n):
        start, start_cpu = time.perf_counter(), time.process_time()
        bench.step(bench.batch, step)
        _sync(device)
        times.append(time.perf_counter() - start)
        if cpu is not None:
            cpu.append(time.process_time() - start_cpu)
    return times


def _time_end_to_end(bench, first_step, warmup, n, device):
    """Per-step seconds of fetching the next batch from a fresh loader and stepping on it, as in training."""
    batches = iter(bench.batches(first_step, warmup + n))
    for step in range(first_step, first_step + warmup):
        bench.step(next(batches), step)  # warm-up also lets the workers fill their prefetch queue
    times = []
    for step in range(first_step + warmup, first_step + warmup + n):
        start = time.perf_counter()
        bench.step(next(batches), step)
        _sync(device)
        times.append(time.perf_counter() - start)
    return times


def measure(benches, *, images_per_step, device, rounds=2, warmup=2, steps=8):
    """{precision: images/s model-only and end-to-end (mean and median), ratio}, rounds interleaved."""
    timed = {p: {"model": [], "e2e": [], "cpu": []} for p in benches}
    step = 0
    for _ in range(rounds):
        for precision, bench in benches.items():
            _time_model_only(bench, step, warmup, device)
            timed[precision]["model"] += _time_model_only(bench, step + warmup, steps, device, timed[precision]["cpu"])
            step += warmup + steps
            timed[precision]["e2e"] += _time_end_to_end(bench, step, warmup, steps, device)
            step += warmup + steps
    out = {}
    for precision, t in timed.items():
        model, e2e = t["model"], t["e2e"]
        # means are what a run gets; medians resist load spikes from other jobs on a shared machine
        out[precision] = {"model_only_images_per_s": images_per_step * len(model) / sum(model),
                          "end_to_end_images_per_s": images_per_step * len(e2e) / sum(e2e),
                          "ratio": sum(model) / sum(e2e),
                          "model_only_images_per_s_median": images_per_step / statistics.median(model),
                          "end_to_end_images_per_s_median": images_per_step / statistics.median(e2e),
                          "ratio_median": statistics.median(model) / statistics.median(e2e),
                          # CPU seconds do not grow when other jobs take turns on the cores: with --threads 1
                          # their ratio between precisions is the speed-up a quiet machine would see
                          "model_only_cpu_s_per_step_median": statistics.median(t["cpu"]),
                          "steps_timed": len(model)}
    return out


_RSS_PEAK_RESET = {"done": False}


def reset_peak_memory(device):
    """Start counting peak memory now: the CUDA allocator's statistics, or on Linux this process's RSS high-water
    mark (VmHWM, reset by writing 5 to /proc/self/clear_refs)."""
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        _RSS_PEAK_RESET["done"] = True
    except OSError:
        _RSS_PEAK_RESET["done"] = False


def peak_memory(device):
    """(MiB, how it was measured) of the peak since reset_peak_memory: CUDA allocator's on a GPU, else RSS."""
    if torch.device(device).type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "torch.cuda.max_memory_allocated"
    if _RSS_PEAK_RESET["done"]:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):  # kB
                return int(line.split()[1]) / 1024, ("peak RSS of the process since the stage began (VmHWM), torch "
                                                     "itself included, loader workers not")
    # Linux and most Unixes report ru_maxrss in KiB: the whole process since it started
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "peak RSS of the process since it started (ru_maxrss), loader workers not counted")


def seconds_per_call(fn, device, calls=1):
    """Mean wall seconds of `fn()` over `calls` calls; on CUDA after one untimed call (kernel selection, autotuning:
    a CPU has no such first-call cost worth a second pass)."""
    if torch.device(device).type == "cuda":
        fn()
        _sync(device)
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    _sync(device)
    return (time.perf_counter() - start) / calls


def summarize(per_precision):
    """The fastest precision (model-only), its speed-up over fp32 and whether the loader keeps up with it."""
    fastest = max(per_precision, key=lambda p: per_precision[p]["model_only_images_per_s_median"])
    row = per_precision[fastest]
    summary = {"fastest": fastest, "loader_keeps_up": row["ratio_median"] >= KEEPS_UP}
    if "fp32" in per_precision:
        base = per_precision["fp32"]
        summary["speedup_over_fp32"] = {
            p: {"model_only": r["model_only_images_per_s_median"] / base["model_only_images_per_s_median"],
                "end_to_end": r["end_to_end_images_per_s_median"] / base["end_to_end_images_per_s_median"],
                "model_only_cpu_time": base["model_only_cpu_s_per_step_median"] / r["model_only_cpu_s_per_step_median"]}
            for p, r in per_precision.items()}
    return summary


def table(per_precision):
    """A Markdown table of images/s per precision (medians over steps, means in brackets) and CPU s per step."""
    lines = ["| precision | model-only img/s | end-to-end img/s | end-to-end / model-only | model-only CPU s/step |",
             "|---|---|---|---|---|"]
    for p, r in per_precision.items():
        lines.append(f"| {p} | {r['model_only_images_per_s_median']:.1f} ({r['model_only_images_per_s']:.1f}) | "
                     f"{r['end_to_end_images_per_s_median']:.1f} ({r['end_to_end_images_per_s']:.1f}) | "
                     f"{r['ratio_median']:.3f} ({r['ratio']:.3f}) | {r['model_only_cpu_s_per_step_median']:.3f} |")
    return "\n".join(lines)


def report(per_precision, cfg, device, json_path=None, **fields):
    """A speed command's result (settings, one row per precision, summary): printed, written to `json_path`."""
    result = {"profile": cfg["profile"], "device": str(device), "threads": torch.get_num_threads(),
              **{k: cfg[k] for k in ("batch_size", "input_size", "arch", "width")}, **fields,
              "precisions": per_precision, **summarize(per_precision)}
    print(table(per_precision))
    print(json.dumps(result, indent=2))
    if json_path:
        atomic_write_json(json_path, result)
    return result
