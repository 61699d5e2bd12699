"""Atomic writes and safe checkpoint loading: a crash never leaves a half-written file behind."""

import json
import os
import pickle
import re
import tempfile
from pathlib import Path

import torch

from cebench.errors import CebenchError


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _atomic_write(path, write_fn, mode):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; outputs get the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path, text):
    """Write text to `path` through a temporary file and `os.replace`."""
    return _atomic_write(path, lambda f: f.write(text), "w")


def atomic_write_json(path, obj):
    """Write `obj` as indented JSON, atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, allow_nan=True) + "\n")


def atomic_write_bytes(path, data):
    """Write bytes (a PNG, a safetensors file) through a temporary file and `os.replace`."""
    return _atomic_write(path, lambda f: f.write(data), "wb")


def atomic_torch_save(obj, path):
    """torch.save through a temporary file, so an interrupted save keeps the previous checkpoint intact."""
    return _atomic_write(path, lambda f: torch.save(obj, f), "wb")


def safe_torch_load(path, what="checkpoint"):
    """torch.load with weights_only=True; any failure becomes one line naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CebenchError(f"{what} not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # weights_only refuses pickled objects that need code; torch names the offending global
        found = re.search(r"unsupported (?:global: )?GLOBAL ([\w.]+)", str(err), re.IGNORECASE)
        if found:
            raise CebenchError(f"{path}: refused to load {what}: it contains pickled code "
                               f"({found.group(1)}); only tensors and plain values are accepted") from None
        raise CebenchError(f"{path}: not a readable {what} (damaged or not a torch file)") from None
    except Exception as err:  # torch raises RuntimeError/EOFError/zipfile errors for damaged files
        raise CebenchError(f"{path}: not a readable {what} ({type(err).__name__}: {str(err)[:160]})") from None


def refuse_overwrite(path, overwrite=False):
    """Raise unless `path` is free or the caller explicitly allows replacing it."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise CebenchError(f"{path} exists; pass --overwrite to replace it or --resume to continue the run")
    return path


def display_path(path, root):
    """`path` as outputs show it: relative to `root` (the checkout) when inside it, else absolute."""
    path, root = Path(path).resolve(), Path(root).resolve()
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)
