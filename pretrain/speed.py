"""Throughput of pretraining per precision: the model step alone vs end to end with data loading, in one run.

    python -m pretrain.speed --profile voc-mini                 # fp32 and bf16 (on a CPU with native bfloat16)
    python -m pretrain.speed --profile paper --device cuda      # fp32/fp16(/bf16), JPEGs decoded on the GPU
Data loading keeps up when the end-to-end images/s is at least 95% of the model-step-only images/s.
"""

import time

from cebench.config import command_line_dests, parse_with_profile, resolved_config
from cebench.errors import run_cli
from cebench.flags import add_benchmark_args
from cebench.runtime import Runtime, configure_backends, resolve_device, set_threads
from cebench.speed import Bench, benchmark_precisions, measure, report
from pretrain import loop
from pretrain.train import check_args, get_args_parser


def get_speed_parser():
    p = get_args_parser(run_files=False)
    p.prog = "python -m pretrain.speed"
    add_benchmark_args(p)
    return p


def _data_cpu_per_batch(dataset, cfg, runtime, first_step, n):
    """CPU seconds to prepare one batch in this thread (workers=0): the data pipeline's whole cost.

    CPU time, unlike wall time, does not grow when other jobs share the machine. This thread's time only: the
    process's would add the idle OpenMP threads of the model step spinning on the other cores.
    """
    batches = iter(loop.make_train_loader(dataset, dict(cfg, workers=0), runtime, first_step, first_step + n + 1))
    next(batches)  # the first batch also builds the epoch's permutation
    start = time.thread_time()
    for _ in range(n):
        next(batches)
    return (time.thread_time() - start) / n


def trainer_bench(cfg, runtime, dataset, batch):
    """(Bench of the pretraining step, its Trainer): a fresh model from the run's seed, the step on `batch`."""
    trainer = loop.Trainer(cfg, runtime)  # same seed: every precision starts from the same weights
    return Bench(step=lambda b, step: trainer.step(b[0], b[1], step), batch=batch,  # b: images, masks, replaced
                 batches=lambda start, n: loop.make_train_loader(dataset, cfg, runtime, start, start + n)), trainer


def main(argv=None):
    parser = get_speed_parser()
    args = parse_with_profile(parser, argv, "pretrain")
    check_args(args, given=command_line_dests(parser, argv))
    set_threads(args.threads)
    cfg = resolved_config(args)
    device = resolve_device(args.device)
    configure_backends(device, fixed_shapes=True)  # as pretrain.train: TF32 and cudnn.benchmark on CUDA
    precisions = args.precisions or benchmark_precisions(device)
    dataset, _ = loop.build_dataset(cfg, device=device)
    cfg["data_path"] = loop.data_path(cfg, dataset, device)
    runtimes = {p: Runtime(device=device, precision=p, compile=cfg["compile"]) for p in precisions}
    batch = next(iter(loop.make_train_loader(dataset, cfg, runtimes[precisions[0]], 0, 1)))
    benches = {p: trainer_bench(cfg, rt, dataset, batch)[0] for p, rt in runtimes.items()}
    per_precision = measure(benches, images_per_step=cfg["batch_size"], device=device, rounds=args.rounds,
                            warmup=args.warmup, steps=args.bench_steps)
    decode = loop.decode_mode(cfg, dataset, device)
    extra = {}
    if decode == "cpu" or cfg["data_path"] == "device":  # GPU decoding's CPU cost is reading file bytes
        extra["data_cpu_s_per_batch"] = _data_cpu_per_batch(dataset, cfg, runtimes[precisions[0]], 0, 8)
    return report(per_precision, cfg, device, args.json, stage="pretrain", mask=cfg["mask"], decode=decode,
                  cached=dataset.cache is not None, workers=cfg["workers"], data_path=cfg["data_path"],
                  runtime=runtimes[precisions[0]].settings(), **extra)


if __name__ == "__main__":
    run_cli(main)
