"""Atomic writes and safe checkpoint loading: a crash never leaves a half-written file behind."""

import contextlib
import json
import math
import os
import pickle
import re
import shutil
import stat
import tempfile
from pathlib import Path

from cebench.errors import CebenchError


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


TEMP_PATTERN = r"\.{name}\.[a-z0-9_]{{8}}\.tmp"  # what atomic_write's mkstemp names (8 random characters)


def write_error(path, err):
    """One line for an OSError met while writing `path`: a read-only folder, a full disk, a file in the way."""
    return CebenchError(f"cannot write {path}: {err.strerror or err}")


def _file_in_the_way(folder, blocker):
    where = "" if blocker == folder else f"cannot create folder {folder}: "
    return CebenchError(f"{where}{blocker} is a file, not a folder")


def make_dirs(folder):
    """mkdir -p, failing with one line that names the folder (and the file in its way, if any)."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        blocker = next((p for p in (folder, *folder.parents) if p.exists()), None)
        if blocker is not None and not blocker.is_dir():
            raise _file_in_the_way(folder, blocker) from None
        raise write_error(folder, err) from None
    return folder


def check_writable(folder):
    """Fail early, with one line, when `folder` could not be created or written; creates nothing."""
    folder = Path(folder)
    existing = next(p for p in (folder, *folder.parents) if p.exists())  # "." or "/" at the latest
    if not existing.is_dir():
        raise _file_in_the_way(folder, existing)
    if not os.access(existing, os.W_OK | os.X_OK):
        raise CebenchError(f"cannot write {folder}: {existing} is not writable")
    return folder


class _WriteAll:
    """An unbuffered file whose write() never returns short: torch.save then sees a full disk as an OSError
    (through a buffered file it reports a garbled position instead)."""

    def __init__(self, raw):
        self.raw = raw

    def write(self, data):
        view, done = memoryview(data).cast("B"), 0
        while done < len(view):
            done += self.raw.write(view[done:])
        return done

    def flush(self):
        self.raw.flush()


def atomic_write(path, write_fn, mode="wb", raw=False):
    """Call write_fn(file) on a temporary file next to `path`, then os.replace it into place.

    A failure leaves no temporary file and keeps the previous `path`; an OSError becomes one line naming `path`.
    raw=True hands write_fn an unbuffered binary file that writes all it is given (for torch.save).
    """
    path = Path(path)
    make_dirs(path.parent)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise write_error(path, err) from None
    try:
        with os.fdopen(fd, mode, buffering=0 if raw else -1) as f:
            write_fn(_WriteAll(f) if raw else f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; outputs get the usual permissions
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(err, (OSError, RuntimeError)) and _os_error(err) is not None:
            raise write_error(path, _os_error(err)) from None
        raise
    return path


def _os_error(err):
    """The OSError behind `err`: torch.save reports a full disk as a RuntimeError raised while handling it."""
    while err is not None and not isinstance(err, OSError):
        err = err.__context__
    return err


def atomic_write_text(path, text):
    """Write text to `path` through a temporary file and `os.replace`."""
    return atomic_write(path, lambda f: f.write(text), "w")


def non_finite_entries(obj, where=""):
    """(key path, value) of every NaN/Inf float in nested dicts and lists, e.g. ('per_class.cat', nan)."""
    if isinstance(obj, float):
        return [] if math.isfinite(obj) else [(where or "value", obj)]
    if isinstance(obj, dict):
        return [e for k, v in obj.items() for e in non_finite_entries(v, f"{where}.{k}" if where else str(k))]
    if isinstance(obj, (list, tuple)):
        return [e for i, v in enumerate(obj) for e in non_finite_entries(v, f"{where}[{i}]")]
    return []


def refuse_non_finite(path, obj, hint=""):
    """One line naming the file and the first NaN/Inf of `obj`: strict JSON has no such numbers."""
    bad = non_finite_entries(obj)
    if bad:
        (key, value), more = bad[0], f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise CebenchError(f"{path}: not written: {key} is {value}{more}, not a finite number{hint}")


def atomic_write_json(path, obj):
    """Write `obj` as indented strict JSON (no NaN/Infinity tokens: a NaN/Inf is refused), atomically."""
    refuse_non_finite(path, obj)
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, allow_nan=False) + "\n")


def atomic_write_bytes(path, data):
    """Write bytes (a PNG, a safetensors file) through a temporary file and `os.replace`."""
    return atomic_write(path, lambda f: f.write(data), "wb")


def atomic_torch_save(obj, path):
    """torch.save through a temporary file, so an interrupted save keeps the previous checkpoint intact."""
    import torch  # here, not at the top: the parsers' modules import this one, and --help imports no torch

    return atomic_write(path, lambda f: torch.save(obj, f), "wb", raw=True)


@contextlib.contextmanager
def staged_files(folder):
    """Write a set of files as one unit: yields a temporary folder inside `folder`; when the block succeeds its
    files replace their namesakes in `folder` (os.replace, which a full disk cannot stop), else none does and the
    temporary folder is removed. Returns nothing; the caller names the final paths."""
    folder = make_dirs(folder)
    try:
        stage = Path(tempfile.mkdtemp(prefix=".staged.", suffix=".tmp", dir=folder))
    except OSError as err:
        raise write_error(folder, err) from None
    try:
        yield stage
        for path in sorted(stage.iterdir()):
            os.replace(path, folder / path.name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def remove_stale_temps(*paths):
    """Delete temporary files that atomic_write left for `paths` when a process was killed mid-write.

    A file path: its own temporaries beside it; a folder (a run folder): every temporary inside it."""
    for path in map(Path, paths):
        folder, name = (path, r"[^/]+") if path.is_dir() else (path.parent, re.escape(path.name))
        if folder.is_dir():
            pattern = re.compile(TEMP_PATTERN.format(name=name))
            for tmp in folder.iterdir():
                if pattern.fullmatch(tmp.name) and tmp.is_file():
                    tmp.unlink(missing_ok=True)


def append_jsonl(path, row):
    """Append one JSON line (per epoch or per log interval) to a run's metrics.jsonl."""
    try:
        with open(path, "a") as f:
            f.write(json.dumps(row) + "\n")
    except OSError as err:
        raise write_error(path, err) from None


def truncate_jsonl(path, keep):
    """Rewrite a JSON-lines file with only the rows for which keep(row) is true (resuming: drop replayed steps)."""
    path = Path(path)
    if not path.is_file():
        return path
    rows = [line for line in path.read_text().splitlines(keepends=True) if line.strip()]
    kept = [line for line in rows if _parses(line) and keep(json.loads(line))]
    return path if kept == rows else atomic_write_text(path, "".join(kept))


def _parses(line):
    try:
        json.loads(line)
    except json.JSONDecodeError:  # a line cut short by a kill
        return False
    return True


MAX_JSON_BYTES = 64 * 1024**2  # a result record is kilobytes; anything this large is not one
MAX_JSON_DEPTH = 64  # a record nests a handful of levels (config, protocol, per_class)


def _depth(obj):
    """Nesting depth of parsed JSON (0 for a scalar), without recursion."""
    deepest, stack = 0, [(obj, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, level)
            stack += [(v, level + 1) for v in (item.values() if isinstance(item, dict) else item)]
    return deepest


def read_json(path, max_bytes=None, max_depth=None, **loads_kwargs):
    """Parse a JSON file that may be hostile: a regular file only (a FIFO or device named *.json is refused
    without blocking), at most `max_bytes` (default MAX_JSON_BYTES), nested at most `max_depth` deep (default
    MAX_JSON_DEPTH); ValueError with the reason otherwise (OSError when it cannot be read)."""
    max_bytes = MAX_JSON_BYTES if max_bytes is None else max_bytes
    max_depth = MAX_JSON_DEPTH if max_depth is None else max_depth
    # O_NONBLOCK: opening a FIFO for reading would wait for a writer forever; on a regular file it changes nothing
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise ValueError("not a regular file")
        if info.st_size > max_bytes:
            raise ValueError(f"{info.st_size:,} bytes, above the limit of {max_bytes:,}")
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ValueError(f"above the limit of {max_bytes:,} bytes")
    try:
        obj = json.loads(data, **loads_kwargs)
    except RecursionError:  # json's parser recurses once per level: this is far deeper than max_depth
        raise ValueError(f"nested deeper than {max_depth} levels") from None
    if _depth(obj) > max_depth:
        raise ValueError(f"nested deeper than {max_depth} levels")
    return obj


def safe_torch_load(path, what="checkpoint"):
    """torch.load with weights_only=True; any failure becomes one line naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CebenchError(f"{what} not found: {path}")
    import torch  # as in atomic_torch_save

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
