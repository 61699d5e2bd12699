"""A run's outputs as one unit: the previous run stays whole until a new one has succeeded, and a failed run
leaves nothing half-made behind.

    with keep_previous_run([record, run_dir], fresh=not resuming, checkpoint=run_dir / "checkpoint.pt"):
        ...  # train, evaluate, write the record

- A fresh run (no flag, or --overwrite) first moves the outputs that exist aside, to hidden `.<name>.previous`
  siblings. Success deletes them. An error deletes what the new run wrote and moves them back.
- A resumed run moves nothing; an error deletes only outputs that did not exist before it.
- Ctrl-C or a kill keeps the new run's files, resumable with --resume, and leaves the previous ones aside until a
  run succeeds (they are deleted) or a fresh run fails (they come back). A fresh run that finds such leftovers
  keeps them as the previous run and discards the interrupted one.
- An error in a run with nothing to restore keeps its files if it already wrote `checkpoint` (resumable work is
  never thrown away); otherwise they go.
- Temporary files of writes killed midway are deleted first; folders made for the outputs are removed again on
  an error when they are left empty.
"""

import shutil
from contextlib import contextmanager, suppress
from pathlib import Path

from cebench.files import remove_stale_temps, write_error


def previous_path(path):
    """Where a fresh run keeps `path` of the previous run until it has succeeded."""
    path = Path(path)
    return path.parent / f".{path.name}.previous"


def _exists(path):
    return path.exists() or path.is_symlink()


def _remove(path):
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _move_aside(paths):
    for path in paths:
        aside = previous_path(path)
        try:
            if _exists(path) and _exists(aside):  # an interrupted fresh run: its predecessor is the one to keep
                _remove(path)
            elif _exists(path):
                path.rename(aside)
        except OSError as err:
            raise write_error(path, err) from None


def _roll_back(paths, existed, fresh, new_folders):
    """After an error: delete what the run wrote, put the previous run back, drop folders left empty."""
    for path in paths:
        with suppress(OSError):  # best effort: the error that got us here is the one to report
            if fresh or path not in existed:
                _remove(path)
            if fresh and _exists(previous_path(path)):
                previous_path(path).rename(path)
    for folder in new_folders:
        with suppress(OSError):
            folder.rmdir()  # only succeeds when empty


@contextmanager
def keep_previous_run(paths, *, fresh, checkpoint=None, enabled=True):
    """Wrap the part of a run that writes `paths` (files or folders); see the module docstring.

    `enabled=False` (the non-main ranks of a distributed run) makes it a no-op."""
    if not enabled:
        yield
        return
    paths = [Path(p) for p in paths]
    remove_stale_temps(*paths)
    new_folders = sorted({f for p in paths for f in p.parents if not _exists(f)}, key=lambda f: -len(f.parts))
    existed = {p for p in paths if _exists(p)}
    if fresh:
        _move_aside(paths)
    try:
        yield
    except Exception:
        nothing_to_restore = not any(_exists(previous_path(p)) for p in paths)
        resumable = checkpoint is not None and Path(checkpoint).is_file()
        if not (nothing_to_restore and resumable):
            _roll_back(paths, existed, fresh, new_folders)
        raise
    for path in paths:
        with suppress(OSError):
            _remove(previous_path(path))
