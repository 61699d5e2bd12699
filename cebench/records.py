"""Result records (one JSON file per run, DESIGN.md contract) and run provenance."""

import json
import math
import platform
import subprocess
from importlib import metadata
from pathlib import Path

from cebench.errors import CebenchError
from cebench.files import atomic_write_json

TASKS = ("classification", "detection", "segmentation", "retrieval", "inpainting", "probe")
REQUIRED = ("task", "init", "dataset", "split", "metric", "value", "ci95", "per_class", "n_images",
            "seed", "wall_time_s", "config", "protocol", "versions")
_PACKAGES = ("torch", "torchvision", "numpy", "scikit-learn", "faiss-cpu", "opencv-contrib-python-headless",
             "scikit-image", "pandas", "pycocotools", "timm")


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


def percent(x):
    """A fraction as percent, rounded to 4 decimals; None and NaN become None (null in JSON)."""
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else round(100.0 * float(x), 4)


def make_record(*, task, init, dataset, split, metric, value, ci95, per_class, n_images, seed,
                wall_time_s, config, protocol, **extra):
    """Build a record; metric values come in as fractions and are stored as percent (NaN -> null)."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}")
    record = {
        "task": task, "init": init, "dataset": dataset, "split": split, "metric": metric,
        "value": percent(value), "ci95": [percent(ci95[0]), percent(ci95[1])] if ci95 is not None else None,
        "per_class": {str(k): percent(v) for k, v in (per_class or {}).items()},
        "n_images": int(n_images), "seed": seed, "wall_time_s": round(float(wall_time_s), 2),
        "config": config, "protocol": protocol, "versions": versions(),
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
