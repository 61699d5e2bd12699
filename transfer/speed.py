"""Throughput of fine-tuning per precision: the engine's step alone vs end to end with its loader, in one run.

Classification is measured (every layer of AlexNet fine-tuned, the paper's augmentation), through the one engine's
micro-step and optimiser step, so detection and segmentation share its arithmetic and precision handling.

    python -m transfer.speed --profile voc-mini                 # fp32 and bf16 (on a CPU with native bfloat16)
    python -m transfer.speed --profile paper --device cuda
Data loading keeps up when the end-to-end images/s is at least 95% of the step-only images/s.
"""

from types import SimpleNamespace

import torch

from cebench.config import parse_with_profile, resolved_config
from cebench.errors import run_cli
from cebench.logs import get_logger
from cebench.runtime import Runtime, configure_backends, resolve_device, set_threads
from cebench.speed import Bench, add_benchmark_args, benchmark_precisions, measure, report
from transfer import engine, stages
from transfer.classification import stages as run
from transfer.classification.model import Classifier
from transfer.classification.task import ClassificationTask
from transfer.classify import get_args_parser


def get_speed_parser():
    p = get_args_parser()
    p.prog = "python -m transfer.speed"
    p.description = __doc__.split("\n")[0]
    add_benchmark_args(p)
    return p


def engine_bench(task, model, config, runtime):
    """The engine's step on any transfer task: one micro-batch forward and backward per call, the optimiser step on
    every `accum_steps`-th call, as in training; batches(start, n) yields the micro-batches of calls start..start+n."""
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


def _bench(cfg, runtime, train, test, config, device_batches):
    """A fresh classifier (same seed for every precision) and the engine's step on it."""
    backbone, _ = stages.backbone_from_flags(cfg, cfg["input_size"])
    model = runtime.place(Classifier(backbone, generator=torch.Generator().manual_seed(cfg["seed"] + 2)))
    task = ClassificationTask(train, test, device=runtime.device, seed=cfg["seed"], num_workers=config.num_workers)
    task.device_batches = device_batches  # the data path's, shared by every precision (one copy of the images)
    return engine_bench(task, model, config, runtime)


def main(argv=None):
    cfg = resolved_config(parse_with_profile(get_speed_parser(), argv, "classify"))
    run.check_config(cfg)
    set_threads(cfg["threads"])
    device = resolve_device(cfg["device"])
    configure_backends(device, fixed_shapes=True)  # as transfer.classify: TF32 and cudnn.benchmark on CUDA
    precisions = cfg["precisions"] or benchmark_precisions(device)
    train, test = run.load_data(cfg, get_logger("speed"))
    config = stages.train_config(cfg, stages.data_workers(cfg, cached=train._cache is not None))
    holder = SimpleNamespace(device_batches=None)  # choose_data_path gives it the device path's batches
    data_path = run.choose_data_path(holder, train, cfg, device)
    runtimes = {p: Runtime(device=device, precision=p, compile=cfg["compile"]) for p in precisions}
    benches = {p: _bench(cfg, rt, train, test, config, holder.device_batches) for p, rt in runtimes.items()}
    per_precision = measure(benches, images_per_step=cfg["batch_size"], device=device, rounds=cfg["rounds"],
                            warmup=cfg["warmup"], steps=cfg["bench_steps"])
    return report(per_precision, cfg, device, cfg["json"], stage="finetune (classification)", fc_dim=cfg["fc_dim"],
                  cached=train._cache is not None, workers=config.num_workers,
                  data_path=data_path, runtime=runtimes[precisions[0]].settings())


if __name__ == "__main__":
    run_cli(main)
