"""Result records (one JSON file per run, DESIGN.md contract) and run provenance.

Records are strict JSON: never NaN or Infinity. A per-class score that is undefined by design (DESIGN.md: the AP
of a class without a positive is nan) is stored as null, and `null_reasons` says why; an undefined headline
value, or any other NaN/Inf, is an error that names the file (a run that diverged must not become a number).
"""

import math
import platform
import subprocess
import time
from importlib import metadata
from pathlib import Path

from cebench.config import benchmarks_path
from cebench.errors import CebenchError
from cebench.files import atomic_write_json, read_json, refuse_non_finite
from cebench.names import check_name
from cebench.stages import RECORD_TASKS, STAGES

TASKS = RECORD_TASKS  # one per stage that writes records (cebench.stages)
REQUIRED = ("task", "init", "dataset", "split", "metric", "value", "ci95", "per_class", "n_images",
            "seed", "wall_time_s", "config", "protocol", "versions")
_PACKAGES = ("torch", "torchvision", "numpy", "scikit-learn", "faiss-cpu", "opencv-contrib-python-headless",
             "scikit-image", "pandas", "pycocotools", "timm")


def record_name(stage, init, variant=""):
    """The one naming scheme of records, `<stage>_<init>[_<variant>].json`, whoever runs the stage (the suite or
    a user): `stage` is the entry point's section of benchmarks.yaml (classify, detect, segment, retrieval,
    inpainting), `init` the initialisation's label, `variant` a second record of one run (e.g. decoder). Labels
    come from flags and weights files: each must be a name (cebench.files.check_name), never a path."""
    check_name(init, "init label")
    if variant:
        check_name(variant, "record variant")
    return f"{stage}_{init}" + (f"_{variant}" if variant else "") + ".json"


def results_dir(profile):
    """results/<profile>/ beside benchmarks.yaml: where records go when no --out or --results says otherwise."""
    return benchmarks_path().parent / "results" / check_name(profile, "profile")


def default_record_path(profile, stage, init, variant=""):
    """An entry point's default --out: results/<profile>/<stage>_<init>.json, as run_all.sh names it too."""
    return results_dir(profile) / record_name(stage, init, variant)


def schedule_fields(steps_run, steps, unit="iterations", weights_meta=None):
    """`complete` and `schedule` of a record: a run stopped before its schedule's end (--max-steps), or built
    on pretraining that stopped before its own, says so, and the tables keep it apart from complete runs."""
    schedule = {"unit": unit, "steps_run": int(steps_run), "steps": int(steps)}
    complete = steps_run >= steps
    meta = weights_meta or {}
    if meta.get("total_steps") is not None and meta.get("steps") is not None:  # a ce.pt's own schedule
        schedule["pretraining"] = {"steps_run": int(meta["steps"]), "steps": int(meta["total_steps"])}
        if meta.get("init_label") != "ce-untrained":  # the untrained control stops at step 0 by design
            complete = complete and meta["steps"] >= meta["total_steps"]
    return {"complete": bool(complete), "schedule": schedule}


def versions():
    """Library versions and the git commit of this checkout, for provenance."""
    out = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    out.update(git_info())
    return out


def git_info():
    """Commit SHA and dirty flag of the checkout holding this package, or empty when not a checkout."""
    root = Path(__file__).resolve().parents[1]
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"git_commit": sha, "git_dirty": bool(dirty)} if sha else {}


# Why a per-class score can be undefined, per task (its null in per_class and in per_class_* extra fields).
PER_CLASS_NULL = {s.task: s.null_reason for s in STAGES if s.null_reason}
CI95_NULL = "bootstrap interval undefined on this test split (too few images with a defined score)"


def _is_nan(x):
    return x is not None and math.isnan(float(x))


def percent(x):
    """A fraction as percent, rounded to 4 decimals; None and NaN (undefined by design) become None."""
    return None if x is None or _is_nan(x) else round(100.0 * float(x), 4)


def device_ran(requested="auto"):
    """The device a run computed on, as resolved from its --device: 'cpu', or 'cuda (GPU name)', with the number
    of processes under torchrun, e.g. 'cuda (NVIDIA H200) x 4 processes'."""
    import os

    import torch  # the entry points that make records have it loaded already

    from cebench.runtime import resolve_device

    try:
        device = resolve_device(requested or "auto", int(os.environ.get("LOCAL_RANK", "0")))
    except CebenchError:
        return str(requested)
    name = f"cuda ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "cpu"
    processes = int(os.environ.get("WORLD_SIZE", "1"))
    return name + (f" x {processes} processes" if processes > 1 else "")


def make_record(*, task, init, dataset, split, metric, value, ci95, per_class, n_images, seed,
                wall_time_s, config, protocol, **extra):
    """Build a record; metric values come in as fractions and are stored as percent.

    A NaN per-class score or interval bound becomes null with its reason in `null_reasons`; a NaN or Inf
    `value` stays, so that `write_record` refuses it (None is a value that was not measured, e.g. retrieval
    without labels).
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}")
    per_class = {str(k): v for k, v in (per_class or {}).items()}
    record = {
        "task": task, "init": init, "dataset": dataset, "split": split, "metric": metric,
        "value": None if value is None else round(100.0 * float(value), 4),
        "ci95": [percent(ci95[0]), percent(ci95[1])] if ci95 is not None else None,
        "per_class": {k: percent(v) for k, v in per_class.items()},
        "n_images": int(n_images), "seed": seed, "wall_time_s": round(float(wall_time_s), 2),
        "config": config, "protocol": protocol, "versions": versions(),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),  # the newest run wins ties in tables
        # arithmetic of the run's forward passes (entry points store the resolved --precision in their config)
        "precision": (config or {}).get("precision", "fp32"),
        # how training batches were made: 'loader' (DataLoader) or 'device' (drawn on the device, --data-path)
        "data_path": (config or {}).get("data_path", "loader"),
        "device": device_ran((config or {}).get("device", "auto")),  # what ran, where config says what was asked
    }
    reasons = {}
    if any(_is_nan(v) for v in per_class.values()):
        reasons["per_class"] = PER_CLASS_NULL[task]
    if ci95 is not None and any(_is_nan(v) for v in ci95):
        reasons["ci95"] = CI95_NULL
    if reasons:
        record["null_reasons"] = reasons
    record.update(extra)
    return record


def write_record(path, record):
    """Write a record atomically; the file is the run's only output that the tables read."""
    missing = [k for k in REQUIRED if k not in record]
    if missing:
        raise ValueError(f"record lacks {missing}")
    refuse_non_finite(path, record, hint=" (non-finite outputs: a diverged run or weights that overflow); no "
                                         "record is written, a record holds only finite numbers")
    return atomic_write_json(path, record)


def _refuse_constant(name):
    raise ValueError(f"it holds {name}, which strict JSON has no place for (written by an older version? rerun)")


def read_record(path):
    """Load one record, refusing files that are not records with one line naming the file."""
    try:
        # a regular file, bounded in size and depth (a FIFO or a hostile nesting is refused); no NaN/Infinity
        record = read_json(path, parse_constant=_refuse_constant)
    except (OSError, ValueError) as err:
        raise CebenchError(f"{path}: not a readable result record ({err})") from None
    missing = [k for k in REQUIRED if k not in record] if isinstance(record, dict) else list(REQUIRED)
    if missing:
        raise CebenchError(f"{path}: not a result record (missing {missing})")
    return record
