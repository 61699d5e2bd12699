"""Throughput of pretraining: model step alone vs end to end with data loading, measured back to back.

    python -m pretrain.speed --profile voc-mini --bench-steps 8
Data loading keeps up when the end-to-end images/s is at least 85% of the model-step-only images/s.
"""

import json
import statistics
import time

import torch

from cebench.config import command_line_dests, parse_with_profile, resolved_config
from cebench.errors import run_cli
from cebench.runtime import Runtime, resolve_device
from pretrain import loop
from pretrain.train import get_args_parser


def get_speed_parser():
    p = get_args_parser()
    p.prog = "python -m pretrain.speed"
    g = p.add_argument_group("benchmark")
    g.add_argument("--bench-steps", type=int, default=8, help="timed steps per measurement")
    g.add_argument("--warmup", type=int, default=2, help="untimed steps before each measurement")
    g.add_argument("--rounds", type=int, default=2, help="alternating (model-only, end-to-end) rounds; "
                   "alternation keeps other load on the machine from favouring one side")
    g.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    return p


def _time_model_only(trainer, images, masks, first_step, n, cpu=None):
    """Per-step seconds of the optimisation step alone, on a batch already in memory (CPU seconds to `cpu`)."""
    times = []
    for step in range(first_step, first_step + n):
        start, start_cpu = time.perf_counter(), time.process_time()
        trainer.step(images, masks, step)
        times.append(time.perf_counter() - start)
        if cpu is not None:
            cpu.append(time.process_time() - start_cpu)
    return times


def _time_end_to_end(trainer, dataset, cfg, runtime, first_step, warmup, n):
    """Per-step seconds of fetching the next batch from the loader and stepping on it, as in training."""
    loader = iter(loop.make_train_loader(dataset, cfg, runtime, first_step, first_step + warmup + n))
    for step, (images, masks, _) in zip(range(first_step, first_step + warmup), loader, strict=False):
        trainer.step(images, masks, step)  # warm-up also lets the workers fill their prefetch queue
    times = []
    for step in range(first_step + warmup, first_step + warmup + n):
        start = time.perf_counter()
        images, masks, _ = next(loader)
        trainer.step(images, masks, step)
        times.append(time.perf_counter() - start)
    return times


def _data_cpu_per_batch(dataset, cfg, runtime, first_step, n):
    """CPU seconds to prepare one batch in this process (workers=0): the data pipeline's whole cost.

    CPU time, unlike wall time, does not grow when other jobs share the machine, so model CPU / (model CPU +
    data CPU) bounds the end-to-end ratio from below on a dedicated machine even if nothing overlapped.
    """
    loader = iter(loop.make_loader(dataset, first_step, first_step + n, cfg["batch_size"], workers=0))
    start = time.process_time()
    for _ in range(n):
        next(loader)
    return (time.process_time() - start) / n


def main(argv=None):
    parser = get_speed_parser()
    args = parse_with_profile(parser, argv, "pretrain")
    loop.check_args(args, given=command_line_dests(parser, argv))
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = resolved_config(args)
    runtime = Runtime(device=resolve_device(args.device))
    dataset, _ = loop.build_dataset(cfg)
    trainer = loop.Trainer(cfg, runtime)
    images, masks, _ = next(iter(loop.make_train_loader(dataset, cfg, runtime, 0, 1)))
    model_t, e2e_t, model_cpu, step = [], [], [], 0
    for _ in range(args.rounds):
        _time_model_only(trainer, images, masks, step, args.warmup)
        model_t += _time_model_only(trainer, images, masks, step + args.warmup, args.bench_steps, model_cpu)
        step += args.warmup + args.bench_steps
        e2e_t += _time_end_to_end(trainer, dataset, cfg, runtime, step, args.warmup, args.bench_steps)
        step += args.warmup + args.bench_steps
    batch = cfg["batch_size"]
    data_cpu = _data_cpu_per_batch(dataset, cfg, runtime, step, args.bench_steps)
    cpu_step = statistics.median(model_cpu)
    result = {"profile": cfg["profile"], "device": str(runtime.device), "threads": torch.get_num_threads(),
              "batch_size": cfg["batch_size"], "input_size": cfg["input_size"], "arch": cfg["arch"],
              "width": cfg["width"], "mask": cfg["mask"], "cached": dataset.cache is not None,
              "workers": cfg["workers"], "steps_timed": len(model_t),
              # means are what a run gets; medians resist load spikes from other jobs on a shared machine
              "model_only_images_per_s": batch * len(model_t) / sum(model_t),
              "end_to_end_images_per_s": batch * len(e2e_t) / sum(e2e_t), "ratio": sum(model_t) / sum(e2e_t),
              "model_only_images_per_s_median": batch / statistics.median(model_t),
              "end_to_end_images_per_s_median": batch / statistics.median(e2e_t),
              "ratio_median": statistics.median(model_t) / statistics.median(e2e_t),
              "model_cpu_s_per_step": cpu_step, "data_cpu_s_per_batch": data_cpu,
              "cpu_bound_ratio": cpu_step / (cpu_step + data_cpu)}
    print(json.dumps(result, indent=2))
    if args.json:
        from cebench.files import atomic_write_json
        atomic_write_json(args.json, result)
    return result


if __name__ == "__main__":
    run_cli(main)
