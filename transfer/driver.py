"""The one transfer driver: the steps every transfer runs, written once, with the task's hooks for what differs.

    def main(argv=None):                                       # transfer/classify.py, detect.py, segment.py
        cfg = parse_config(get_args_parser(), argv, "classify")  # --help and --print-config exit here
        from transfer import driver
        from transfer.classification.hooks import ClassificationHooks
        rt, log = start_run(cfg, "classify", ClassificationHooks.check_config, ClassificationHooks.fixed_shapes)
        return driver.run(ClassificationHooks(cfg), cfg, rt, log, started)

`run` takes these steps, in this order: refuse an existing record (before any data is loaded) -> data -> model
(backbone from --weights + the task's head) -> output paths -> run_outputs (locked, the previous run kept aside)
-> rescaling (once per run) -> the init's feature health -> fit with the one engine (or the task's frozen-feature
probe) -> record (and the files beside it) -> summary. `TransferHooks` names what a task supplies for each step;
each task package subclasses it once (transfer/<task>/hooks.py).

Names: a *stage* is a row of the suite's table (cebench.stages: classify, detect, segment, ...); a *step* is one
line of the sequence above; a *hook* is a task's method for a step. The driver and the hooks read the resolved
configuration `cfg` (defaults < profile < command line): they are the entry layer. The code below them (backbone,
rescale, engine, the task packages' data/model/task/probe modules) takes explicit values.
"""

import json
import time
from abc import ABC, abstractmethod
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cebench.errors import CebenchError
from cebench.files import atomic_write_json, make_dirs, refuse_overwrite
from cebench.flags import trunk_of
from cebench.locks import hold_outputs
from cebench.names import check_name
from cebench.records import default_record_path, make_record, write_record
from cebench.runs import keep_previous_run
from cebench.runtime import barrier, cleanup_distributed, default_num_workers
from evaluation.metrics import interval_description
from transfer import engine
from transfer.backbone import build_backbone, health_of_init


@dataclass
class RunState:
    """What the steps of one run produced, handed to the record, outputs and summary hooks."""

    data: Any  # what the task's load_data returned (its splits, datasets, proposals)
    model: Any  # what was rescaled, then (TransferHooks.trainable) what was fine-tuned
    info: dict  # the init: build_backbone's info
    paths: dict  # output_paths and the task's own
    rescaling: dict  # rescale_once's summary
    feature_health: Any  # the init's feature health (main rank), or None
    task: Any = None  # the engine task (None for a probe)
    fit: Any = None  # engine.FitResult (None for a probe)
    output: Any = None  # the test split's predictions (TransferHooks.test_output; the probe's scores)
    workers: int = 0  # DataLoader workers of the fit
    wall_time_s: float = 0.0  # since main started, when the record is made


class TransferHooks(ABC):
    """What a transfer task supplies to `run`, one method per step. A task package subclasses it once; the abstract
    methods have a body in every task, the others are defaults a task overrides where it differs.
    The hooks read `self.cfg`, the resolved configuration, and call the code below them with explicit values."""

    stage = None  # the suite's row (cebench.stages): names the record, the logger and the profile section
    fixed_shapes = False  # every training batch has one shape (cudnn.benchmark on CUDA)

    def __init__(self, cfg):
        self.cfg = cfg

    @staticmethod
    @abstractmethod
    def check_config(cfg):
        """One line naming the first flag whose value cannot run (before any data is loaded)."""

    @property
    def variant(self):
        """The suffix of the record's name (classify_<init>_probe.json); '' for the task's protocol."""
        return ""

    @property
    def probes(self):
        """Whether this run fits a frozen-feature probe (`probe`) instead of fine-tuning with the engine."""
        return False

    @abstractmethod
    def load_data(self, rt, log):
        """The task's training and test data, every file checked (bad input fails before any output exists)."""

    @abstractmethod
    def build_model(self, data):
        """(model, info): the backbone of --weights with the task's head, as the rescaling sees it."""

    def output_paths(self, paths):
        """The common paths (`output_paths`) with the task's own files added."""
        return paths

    def previous_outputs(self, paths):
        """Files of a previous run besides its record and run folder, kept aside with them until this run succeeds."""
        return []

    def guarded_outputs(self, paths, data):
        """Files outside the run's own folders that a new run would replace: refused without --overwrite."""
        return []

    @abstractmethod
    def rescale(self, model, info, data, rt):
        """Krähenbühl's rescaling of `model` on training data (once per run: `rescale_once` calls it); its summary
        holds the init's feature health measured right after it."""

    @abstractmethod
    def health(self, model, info, data, rt, rescaled):
        """The record's feature_health of the init (main rank; None elsewhere)."""

    def trainable(self, model):
        """The network the engine fine-tunes, from the rescaled model (segmentation: fc6/fc7 as convolutions)."""
        return model

    def in_memory(self, data):
        """Whether the training images are cached in memory (then the loader needs no workers by default)."""
        return False

    @abstractmethod
    def engine_task(self, data, rt, paths, workers):
        """The engine's task (transfer.engine.Task): training step, prediction and metric."""

    def choose_data_path(self, task, data, rt, log):
        """'loader' or 'device': how the training batches are made (--data-path resolved for the training set on
        rt.device; 'device' gives `task` its device_batches). Without a device path: the loader."""
        return "loader"

    def test_output(self, task):
        """What the record is computed from, out of the engine's last evaluation (None on other ranks)."""
        return (task.last or {}).get("scores")

    def probe(self, model, data, rt):
        """The test split's predictions of a frozen-feature probe (main rank), for tasks that have one."""
        raise CebenchError(f"{self.stage} has no frozen-feature probe")

    @abstractmethod
    def record(self, run):
        """The result record (DESIGN.md) of the run."""

    def write_outputs(self, run):
        """The files beside the record (scores, devkit files, drawn examples); returns the record fields naming them."""
        return {}

    @abstractmethod
    def headline(self, record):
        """The log line's numbers."""

    def summary(self, record, run):
        """What main() returns besides out, value, ci95, steps and wall_time_s."""
        return {}


def run(hooks, cfg, rt, log, started):
    """Every transfer, after start_run: the steps in order with `hooks` (a TransferHooks) for the task's part; returns
    the summary (main rank; {} elsewhere)."""
    try:
        return _steps(hooks, cfg, rt, log, started)
    finally:
        cleanup_distributed()


def _steps(hooks, cfg, rt, log, started):
    refuse_existing(cfg, hooks.stage, hooks.variant)  # before minutes of loading
    # data: every file checked here (bad input fails now, not mid-run)
    data = hooks.load_data(rt, log)
    # model: backbone from --weights + the task's head; the output paths follow the init it turned out to be
    model, info = hooks.build_model(data)
    paths = hooks.output_paths(output_paths(cfg, hooks.stage, init_label(cfg, info), hooks.variant))
    with run_outputs(paths, cfg, rt, extra=hooks.previous_outputs(paths), guarded=hooks.guarded_outputs(paths, data)):
        rescaling = rescale_once(cfg, paths, rt, log, lambda: hooks.rescale(model, info, data, rt))
        health = health_of_init(rescaling, lambda rescaled: hooks.health(model, info, data, rt, rescaled))
        state = RunState(data, model, info, paths, rescaling, health)
        # fine-tune via the one engine, which scores the test split at the end (or the frozen-feature probe)
        (_probe if hooks.probes else _fine_tune)(hooks, state, cfg, rt, log)
        if not rt.is_main:
            return {}
        # result record, and the files beside it
        state.wall_time_s = time.time() - started
        record = hooks.record(state)
        record.update(hooks.write_outputs(state))
        write_record(paths["out"], record)
    log.info("%s: %s, wrote %s", record["init"], hooks.headline(record), paths["out"])
    return {"out": str(paths["out"]), "value": record["value"], "ci95": record["ci95"],
            "steps": state.fit.step if state.fit else 0, "wall_time_s": record["wall_time_s"],
            **hooks.summary(record, state)}


def _fine_tune(hooks, state, cfg, rt, log):
    state.model = hooks.trainable(state.model)
    state.workers = data_workers(cfg, hooks.in_memory(state.data))
    state.task = hooks.engine_task(state.data, rt, state.paths, state.workers)
    path = hooks.choose_data_path(state.task, state.data, rt, log)
    if "data_path" in cfg:  # resolved, for the record (the task has a --data-path)
        cfg["data_path"] = path
    state.fit = fit(state.task, state.model, cfg, rt, state.paths, log, state.workers)
    state.output = hooks.test_output(state.task)


def _probe(hooks, state, cfg, rt, log):
    if "data_path" in cfg:
        cfg["data_path"] = "loader"  # nothing trains: the features are extracted from the loader's views
    state.output = hooks.probe(state.model, state.data, rt)
    if rt.is_main:  # engine.fit writes it for a run that trains
        atomic_write_json(state.paths["run_dir"] / "config.json", cfg)


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
