"""The stages of the benchmark, one row each: the one place that names them (plain data, no model code imported).

A stage is one entry point of the pipeline that `bash run_all.sh` runs in this order: its row says which module
runs it, what it writes, which of run_all's flags it takes and how its records reach the tables. Every list of
stages elsewhere (the profile sections of benchmarks.yaml, the suite's jobs, record tasks, Table 2's columns, the
report's example groups, run_all's --help) is read from `STAGES`. Adding a stage is adding a row (README, Layout).
"""

from dataclasses import dataclass

# run_all's options that it passes on to the stages that take them, in the order they appear on a command line
PASS_THROUGH_KEYS = ("voc_root", "images", "sbd_root", "device", "seed", "threads", "max_steps")
_SOURCES = ("voc_root", "device", "seed", "threads")  # what every stage reading VOC with --weights takes


@dataclass(frozen=True)
class Stage:
    """One row of the table: a stage of the pipeline."""

    name: str  # the stage: its section of a profile, its key under run.stages, its records' file prefix
    module: str  # the entry point, `python -m <module>`
    runs: str = "per-init"  # per-init: one record per initialisation; pretrain: one weights file per init;
    #                         once: one run over the records of the others (its `output`)
    task: str | None = None  # the `task` its records carry (cebench.records)
    trains: bool = False  # optimises a network: runs under torchrun with --nproc-per-node (DDP)
    takes: tuple = ()  # PASS_THROUGH_KEYS it receives from run_all
    hog: bool = False  # takes HOG features as an init (--features hog); such runs honour --center
    table2: str | None = None  # its column of Table 2 (evaluation.reporting.paper_tables), None: not in Table 2
    examples: str | None = None  # file-name prefix of the example figures it writes beside its records
    example_title: str | None = None  # their heading in report.html
    null_reason: str | None = None  # why one of its per-class scores can be undefined (stored as null)
    output: str | None = None  # what a `once` stage writes, relative to the results folder
    rebuilt: bool = False  # cheap, from the records: rerun every time instead of skipped by its stamp
    packages: tuple = ()  # optional libraries (import names, cebench.deps) that every run of it needs
    check: str | None = None  # its hooks for run_all's --check (evaluation.check): a module, or `module:object`


STAGES = (
    Stage("pretrain", "pretrain.train", runs="pretrain", trains=True,
          takes=("images", "device", "seed", "threads", "max_steps"), examples="ce",
          example_title="Pretraining samples", check="pretrain.check"),
    Stage("classify", "transfer.classify", task="classification", trains=True, takes=(*_SOURCES, "max_steps"),
          table2="classification", examples="classify", example_title="Classification",
          check="transfer.classification.check",
          null_reason="AP undefined: the class has no non-difficult positive image in the test split; left out of "
                      "the mean"),
    Stage("detect", "transfer.detect", task="detection", trains=True, takes=(*_SOURCES, "max_steps"),
          packages=("pycocotools",), check="transfer.detection.check",
          table2="detection", examples="detect", example_title="Detection",
          null_reason="AP undefined: the class has no non-difficult object in the test split; left out of the mean"),
    Stage("segment", "transfer.segment", task="segmentation", trains=True, takes=(*_SOURCES, "sbd_root", "max_steps"),
          table2="segmentation", examples="segment", example_title="Segmentation",
          check="transfer.segmentation.check",
          null_reason="IoU undefined: the class is in neither the ground truth nor the predictions; left out of the "
                      "mean"),
    Stage("retrieval", "evaluation.retrieval", task="retrieval", takes=_SOURCES, hog=True, table2="retrieval",
          packages=("faiss",), check="evaluation.experiments.feature_checks:RETRIEVAL",
          examples="retrieval", example_title="Retrieval", null_reason="undefined: no query holds the class"),
    Stage("inpainting", "evaluation.inpainting", task="inpainting", takes=_SOURCES, hog=True, packages=("faiss",),
          check="evaluation.experiments.feature_checks:INPAINTING",
          examples="inpainting", example_title="Inpainting",
          null_reason="undefined: no held-out image holds the class"),
    Stage("probe", "evaluation.probe", task="probe", takes=_SOURCES,
          check="evaluation.experiments.feature_checks:PROBE"),
    Stage("curve", "evaluation.curve", runs="once", output="curve.csv"),  # in results/<profile>-curve/ (suite)
    Stage("tables", "evaluation.tables", runs="once", output="table2.md", rebuilt=True),
    Stage("report", "evaluation.report", runs="once", output="report.html", rebuilt=True),
)
BY_NAME = {stage.name: stage for stage in STAGES}
NAMES = tuple(BY_NAME)
RECORD_TASKS = tuple(stage.task for stage in STAGES if stage.task)  # the tasks of cebench.records
# The stages with a `check`, in the order run_all's --check measures them: those that train, then those of frozen
# features, the ones without a HOG baseline (the probe, on the classification's splits) first; else pipeline order.
CHECKED = tuple(s.name for s in sorted((s for s in STAGES if s.check), key=lambda s: (not s.trains, s.hog)))


def stage(name):
    """The row of a stage by its name (KeyError for an unknown one)."""
    return BY_NAME[name]


def names(**where):
    """The stages, in pipeline order, whose fields equal `where` (e.g. names(trains=True))."""
    return tuple(s.name for s in STAGES if all(getattr(s, k) == v for k, v in where.items()))


def spoken(stage_names):
    """'a, b, c and d', as the help of run_all writes a list of stages."""
    stage_names = list(stage_names)
    return ", ".join(stage_names[:-1]) + f" and {stage_names[-1]}" if len(stage_names) > 1 else "".join(stage_names)
