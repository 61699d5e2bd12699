"""Result records (one JSON file per run, DESIGN.md contract) and run provenance."""

import json
import math
import platform
import subprocess
import time
from importlib import metadata
from pathlib import Path

from cebench.config import benchmarks_path
from cebench.errors import CebenchError
from cebench.files import atomic_write_json

TASKS = ("classification", "detection", "segmentation", "retrieval", "inpainting")
REQUIRED = ("task", "init", "dataset", "split", "metric", "value", "ci95", "per_class", "n_images",
            "seed", "wall_time_s", "config", "protocol", "versions")
_PACKAGES = ("torch", "torchvision", "numpy", "scikit-learn", "faiss-cpu", "opencv-contrib-python-headless",
             "scikit-image", "pandas", "pycocotools", "timm")


def record_name(stage, init, variant=""):
    """The one naming scheme of records, `<stage>_<init>[_<variant>].json`, whoever runs the stage (the suite or
    a user): `stage` is the entry point's section of benchmarks.yaml (classify, detect, segment, retrieval,
    inpainting), `init` the initialisation's label, `variant` a second record of one run (e.g. decoder)."""
    return f"{stage}_{init}" + (f"_{variant}" if variant else "") + ".json"


def results_dir(profile):
    """results/<profile>/ beside benchmarks.yaml: where records go when no --out or --results-dir says otherwise."""
    return benchmarks_path().parent / "results" / profile


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


def _pct(x):
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else round(100.0 * float(x), 4)


def make_record(*, task, init, dataset, split, metric, value, ci95, per_class, n_images, seed,
                wall_time_s, config, protocol, **extra):
    """Build a record; metric values come in as fractions and are stored as percent (NaN -> null)."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}")
    record = {
        "task": task, "init": init, "dataset": dataset, "split": split, "metric": metric,
        "value": _pct(value), "ci95": [_pct(ci95[0]), _pct(ci95[1])] if ci95 is not None else None,
        "per_class": {str(k): _pct(v) for k, v in (per_class or {}).items()},
        "n_images": int(n_images), "seed": seed, "wall_time_s": round(float(wall_time_s), 2),
        "config": config, "protocol": protocol, "versions": versions(),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),  # the newest run wins ties in tables
    }
    record.update(extra)
    return record


def write_record(path, record):
    """Write a record atomically; the file is the run's only output that the tables read."""
    missing = [k for k in REQUIRED if k not in record]
    if missing:
        raise ValueError(f"record lacks {missing}")
    return atomic_write_json(path, record)


def read_record(path):
    """Load one record, refusing files that are not records with one line naming the file."""
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CebenchError(f"{path}: not a readable result record ({err})") from None
    missing = [k for k in REQUIRED if k not in record] if isinstance(record, dict) else list(REQUIRED)
    if missing:
        raise CebenchError(f"{path}: not a result record (missing {missing})")
    return record
