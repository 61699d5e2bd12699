"""Throughput of fine-tuning per precision: the engine's step alone vs end to end with its loader, in one run.

Classification is measured (every layer of AlexNet fine-tuned, the paper's augmentation), through the one engine's
micro-step and optimiser step, so detection and segmentation share its arithmetic and precision handling.

    python -m transfer.speed --profile voc-mini                 # fp32 and bf16 (on a CPU with native bfloat16)
    python -m transfer.speed --profile paper --device cuda
Data loading keeps up when the end-to-end images/s is at least 95% of the step-only images/s.
"""

from cebench.config import parse_config
from cebench.errors import run_cli
from cebench.flags import add_benchmark_args
from transfer import classify


def get_speed_parser():
    p = classify.get_args_parser()
    p.prog = "python -m transfer.speed"
    p.description = __doc__.split("\n")[0]
    add_benchmark_args(p)
    return p


def engine_bench(task, model, config, runtime):
    """The engine's step on any transfer task: one micro-batch forward and backward per call, the optimiser step on
    every `accum_steps`-th call, as in training; batches(start, n) yields the micro-batches of calls start..start+n."""
    from cebench.speed import Bench
    from transfer import engine

    model.to(runtime.device).train()
    optimizer = engine.build_optimizer(task, model, config)
    scaler = runtime.grad_scaler(config.amp)
    net = runtime.compiled(model)  # --compile, as engine.fit
    accum = config.accum_steps

    def step(batch, index):
        last = (index + 1) % accum == 0
        engine._micro_step(task, net, batch, scaler, runtime, config, last=last)
        if last:
            engine._optimizer_step(model, optimizer, scaler, config, index // accum)

    def batches(start, n):  # the engine's loader counts optimiser steps, each of `accum` micro-batches
        first = start // accum
        return engine._make_loader(task, config, runtime, first, first + -(-n // accum) + 1)

    return Bench(step=step, batch=next(iter(engine._make_loader(task, config, runtime, 0, 1))), batches=batches)


def main(argv=None):
    cfg = parse_config(get_speed_parser(), argv, "classify")  # --help and --print-config exit here
    from types import SimpleNamespace

    from cebench.logs import get_logger
    from cebench.runtime import Runtime, configure_backends, resolve_device, set_threads
    from cebench.speed import benchmark_precisions, measure, report
    from transfer import driver
    from transfer.classification.hooks import ClassificationHooks

    hooks = ClassificationHooks(cfg)
    hooks.check_config(cfg)
    set_threads(cfg["threads"])
    device = resolve_device(cfg["device"])
    configure_backends(device, fixed_shapes=hooks.fixed_shapes)  # as transfer.classify: TF32, cudnn.benchmark
    precisions = cfg["precisions"] or benchmark_precisions(device)
    runtimes = {p: Runtime(device=device, precision=p, compile=cfg["compile"]) for p in precisions}
    data = hooks.load_data(runtimes[precisions[0]], get_logger("speed"))
    workers = driver.data_workers(cfg, hooks.in_memory(data))
    config = driver.train_config(cfg, workers)
    holder = SimpleNamespace(device_batches=None)  # choose_data_path gives it the device path's batches
    data_path = hooks.choose_data_path(holder, data, runtimes[precisions[0]], None)
    benches = {}
    for precision, rt in runtimes.items():  # a fresh classifier (same seed for every precision)
        model, _ = hooks.build_model(data)
        task = hooks.engine_task(data, rt, None, workers)
        task.device_batches = holder.device_batches  # the data path's, shared by every precision (one copy)
        benches[precision] = engine_bench(task, rt.place(model), config, rt)
    per_precision = measure(benches, images_per_step=cfg["batch_size"], device=device, rounds=cfg["rounds"],
                            warmup=cfg["warmup"], steps=cfg["bench_steps"])
    return report(per_precision, cfg, device, cfg["json"], stage="finetune (classification)", fc_dim=cfg["fc_dim"],
                  cached=hooks.in_memory(data), workers=workers, data_path=data_path,
                  runtime=runtimes[precisions[0]].settings())


if __name__ == "__main__":
    run_cli(main)
