"""The stages the three transfer entry points share, so that classify, detect and segment have one shape:

    def main(argv=None):
        return stages.run_main(get_args_parser(), argv, "classify", _run, check=run.check_config)

    def _run(cfg, rt, log, started):
        data = ...                                            # every file checked before any output exists
        backbone, info = stages.backbone_from_flags(cfg, input_size)
        paths = stages.output_paths(cfg, "classify", stages.init_label(cfg, info))
        with stages.run_outputs(paths, cfg, rt):              # the previous run stays aside until this one succeeds
            rescaling = stages.rescale_once(cfg, paths, rt, log, compute)
            fit = stages.fit(task, model, cfg, rt, paths, log, stages.data_workers(cfg, cached))
            record = stages.transfer_record(task=..., cfg=cfg, info=info, label=paths["label"],
                                            protocol=dict(stages.init_protocol(cfg, info, rescaling, fit), ...))

The configuration is the resolved dict `cfg` (defaults < profile < command line): nothing below reads or writes
the argparse namespace.
"""

import json
import time
from contextlib import contextmanager
from pathlib import Path

from cebench.config import parse_config
from cebench.errors import CebenchError
from cebench.files import atomic_write_json, make_dirs, refuse_overwrite
from cebench.locks import hold_outputs
from cebench.names import check_name
from cebench.records import default_record_path, make_record
from cebench.runs import keep_previous_run
from cebench.runtime import barrier, cleanup_distributed, default_num_workers, start_run
from evaluation.metrics import interval_description
from pretrain.weights import trunk_of
from transfer import engine
from transfer.backbone import build_backbone


def run_main(parser, argv, stage, body, check=None, fixed_shapes=False):
    """Every transfer `main`: config (parser defaults < benchmarks.yaml profile < command line), checked ->
    distributed, precision, threads, seed, a logger named after the stage -> body(cfg, rt, log, started) -> cleanup.
    `fixed_shapes`: every training batch has one shape (cudnn.benchmark on CUDA)."""
    started = time.time()
    cfg = parse_config(parser, argv, stage)
    rt, log = start_run(cfg, stage, check, fixed_shapes)
    try:
        return body(cfg, rt, log, started)
    finally:
        cleanup_distributed()


def check_positive(cfg, names):
    """One line naming the first of `names` (flag dests) that is not positive."""
    for name in names:
        if cfg[name] < 1:
            raise CebenchError(f"--{name.replace('_', '-')} must be positive")


def init_label(cfg, info):
    """The initialisation's name in the record and file names: --init-label, else what the weights turned out to be
    (a name, never a path: cebench.files.check_name)."""
    if cfg["init_label"] is not None:
        return check_name(cfg["init_label"], "--init-label")
    return info["init"]


def check_ids(ids, where):
    """Image ids from a split list or a COCO file become file names of the outputs (prediction and example PNGs):
    each must be a name, checked before any work is done."""
    for image_id in ids:
        check_name(str(image_id), f"{where}: image id")


def backbone_from_flags(cfg, input_size, train_images=None):
    """The Backbone of --weights (the trunk flags apply to `random` and `kmeans` only; a weights file brings its
    own); `train_images` (paths) are what `kmeans` clusters."""
    return build_backbone(cfg["weights"], arch=trunk_of(cfg), input_size=input_size, fc_dim=cfg["fc_dim"],
                          dropout=cfg["dropout"], seed=cfg["seed"], train_images=train_images)


def data_workers(cfg, cached):
    """--workers, else 0 for data cached in memory and one per spare core otherwise."""
    if cfg["workers"] is not None:
        return cfg["workers"]
    return 0 if cached else default_num_workers()


def train_config(cfg, workers):
    """The engine's TrainConfig from the optimisation and run flags (momentum SGD, the task's schedule)."""
    return engine.TrainConfig(
        steps=cfg["steps"], batch_size=cfg["batch_size"], lr=cfg["lr"], optimizer="sgd", momentum=cfg["momentum"],
        weight_decay=cfg["weight_decay"], schedule=cfg["lr_schedule"], lr_step=cfg["lr_step"],
        lr_gamma=cfg["lr_gamma"], max_steps=cfg["max_steps"], accum_steps=cfg["accum_steps"],
        clip_grad_norm=cfg["clip_grad"] or None, eval_every=cfg["eval_every"] or None,
        checkpoint_every=cfg["ckpt_every"], log_every=cfg["log_every"], num_workers=workers, seed=cfg["seed"])


def fit(task, model, cfg, rt, paths, log, workers):
    """Fine-tune `model` on `task` with the one engine, in the run folder (resumed with --resume)."""
    return engine.fit(task, model, train_config(cfg, workers), paths["run_dir"], rt, resume=cfg["resume"],
                      logger=log, run_config=cfg, tensorboard=cfg["tensorboard"])


def output_paths(cfg, stage, label, variant=""):
    """The record (--out, else results/<profile>/<stage>_<label>[_<variant>].json), its run folder beside it, the
    run's checkpoint and rescale.json, and the label."""
    out = Path(cfg["out"]) if cfg["out"] else default_record_path(cfg["profile"], stage, label, variant)
    run_dir = out.parent / f"{out.stem}.run"
    return {"out": out, "run_dir": run_dir, "checkpoint": engine.checkpoint_path(run_dir), "label": label,
            "rescale": run_dir / "rescale.json"}


def refuse_existing(cfg, stage, variant=""):
    """Before any data is loaded: an existing record or checkpoint of this run is refused (unless --resume or
    --overwrite), named by the label its --weights will get; run_outputs checks again once they are built."""
    if cfg["resume"] or cfg["overwrite"]:
        return
    from pretrain.weights import weights_label

    paths = output_paths(cfg, stage, cfg["init_label"] or weights_label(cfg["weights"]), variant)
    for path in (paths["out"], paths["checkpoint"]):
        refuse_overwrite(path)


@contextmanager
def run_outputs(paths, cfg, rt, extra=(), guarded=()):
    """The outputs of a run: locked for its life against a second run writing them (cebench.locks); an existing
    record or checkpoint (and the `guarded` files) is refused unless --resume or --overwrite; the previous run
    (record, run folder, `extra`) stays aside until this one has written its record (cebench.runs); the run folder
    exists on rank 0 before any rank looks for a checkpoint in it."""
    with hold_outputs([paths["out"], paths["run_dir"]], rt):
        if not (cfg["resume"] or cfg["overwrite"]):
            for path in (paths["out"], paths["checkpoint"], *guarded):
                refuse_overwrite(path)
        fresh = not (cfg["resume"] and paths["checkpoint"].is_file())
        with keep_previous_run([paths["out"], paths["run_dir"], *extra], fresh=fresh,
                               checkpoint=paths["checkpoint"], enabled=rt.is_main):
            if rt.is_main:
                make_dirs(paths["run_dir"])
            barrier(rt)  # no rank looks for a checkpoint before rank 0 has moved a previous run aside
            yield


def rescale_once(cfg, paths, rt, log, compute):
    """Krähenbühl's rescaling, once per run: {"applied": False} with --no-rescale; on --resume what the run did
    before (the checkpoint holds the rescaled, trained weights); else `compute()`, kept in the run's rescale.json."""
    if not cfg["rescale"]:
        return {"applied": False}
    if cfg["resume"] and paths["checkpoint"].is_file() and paths["rescale"].is_file():
        return json.loads(paths["rescale"].read_text())
    summary = dict(compute(), applied=True)
    log.info("rescaled (%d layers normalised on data; gradient/weight ratio spread %.1f -> %.2f)",
             summary["normalised_layers"], summary["ratio_spread_before"], summary["ratio_spread_after"])
    if rt.is_main:
        atomic_write_json(paths["rescale"], summary)
    return summary


def init_protocol(cfg, info, rescaling, fit=None):
    """The protocol fields every transfer shares: the init, its trunk and rescaling, the interval and, after
    fine-tuning (`fit`), the optimisation."""
    protocol = {"architecture": info["arch"], "fc_dim": cfg["fc_dim"], "fc_init": info["fc_init"],
                "init": info["init"], "weights": info["source"], "rescaling": rescaling,
                "interval": interval_description(cfg["n_boot"])}
    if fit is not None:
        protocol.update(
            layers_trained="all", iterations=fit.step, schedule_steps=cfg["steps"], batch_size=cfg["batch_size"],
            accum_steps=cfg["accum_steps"], optimizer="SGD", lr=cfg["lr"], bias_lr_mult=2.0,
            lr_schedule=cfg["lr_schedule"], lr_step=cfg["lr_step"], lr_gamma=cfg["lr_gamma"],
            momentum=cfg["momentum"], weight_decay=cfg["weight_decay"], clip_grad=cfg["clip_grad"],
            images_per_s=round(fit.images_per_s, 2), train_time_s=round(fit.train_time_s, 1),
            data_path=fit.data_path)
    return protocol


def transfer_record(*, task, cfg, info, label, protocol, **fields):
    """A transfer's result record (DESIGN.md): the task's fields plus what every transfer records of its init."""
    extra = {"arch_requested": info["arch_requested"]} if "arch_requested" in info else {}
    return make_record(task=task, init=label, seed=cfg["seed"], config=cfg, protocol=protocol,
                       weights_meta=info["meta"], **fields, **extra)
