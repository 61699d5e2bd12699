"""One lock per run output: a second run that would write the same outputs while the first still runs is refused
with one line naming the holder, instead of both succeeding with their files mixed.

    with hold_outputs([record, run_dir], runtime):   # before anything is checked, moved aside or written
        ...

- The lock of `path` is the hidden file `.<name>.lock` beside it, held with `fcntl.flock` (an advisory lock of the
  open file, POSIX; over NFS, Linux maps it to a lock the server keeps) for as long as the run lasts.
- The kernel drops a flock when its process dies, kill -9 included: the file that a killed run leaves behind is no
  holder, and the next run (`--resume`) takes it over. A run that ends removes its lock file.
- The holder writes its pid, host, start time and command into the file; a refused run quotes them. Processes the
  holder forked (DataLoader workers) share its lock: when the holder itself is gone but such a process still holds
  it, the run waits a few seconds for it to exit before refusing.
- Under torchrun only rank 0 takes the locks (only it writes), and it tells the other ranks whether it got them:
  when it did not, every rank stops with the same line, and none waits at a barrier for a rank that has left.
"""

import contextlib
import fcntl
import json
import os
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from cebench.errors import CebenchError
from cebench.files import check_writable, make_dirs

ORPHAN_WAIT_S = 10.0  # how long a lock of a dead holder may stay held by the processes it forked


def lock_path(path):
    """The lock file of an output `path` (a file or a folder): `.<name>.lock` beside it."""
    path = Path(path)
    return path.parent / f".{path.name}.lock"


def _holder(fd):
    """What the holder wrote into its lock file (a dict; empty when unreadable or not yet written)."""
    try:
        text = os.pread(fd, 4096, 0).decode("utf-8", "replace")
        info = json.loads(text) if text.strip() else {}
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def describe(info):
    """'pid 123 on host h, started 2026-12-03 14:55:02 UTC: python -m ...' of a holder's record."""
    if not info:
        return "a process that has not said who it is yet"
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(info["started"])) if "started" in info else "?"
    return f"pid {info.get('pid', '?')} on host {info.get('host', '?')}, started {when}: {info.get('command', '?')}"


def _alive_here(info):
    """False when the holder was a process of this host that no longer exists (its forked children hold the lock)."""
    if info.get("host") != socket.gethostname() or not isinstance(info.get("pid"), int):
        return True
    try:
        os.kill(info["pid"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _try_lock(lock):
    """(fd, None) holding `lock`, or (None, holder's record) when another process holds it."""
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as err:
            raise CebenchError(f"cannot create the lock {lock}: {err.strerror or err}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            info = _holder(fd)
            os.close(fd)
            return None, info
        # the previous holder removes its file when it ends: what we locked must still be the file at `lock`
        with contextlib.suppress(FileNotFoundError):
            if os.fstat(fd).st_ino == os.stat(lock).st_ino:
                return fd, None
        os.close(fd)


def _acquire(lock):
    deadline = time.monotonic() + ORPHAN_WAIT_S
    while True:
        fd, info = _try_lock(lock)
        if fd is not None:
            record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
                      "command": " ".join(["python", *sys.argv])[:300]}
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(record).encode(), 0)
            return fd, None
        if _alive_here(info) or time.monotonic() > deadline:
            return None, info
        time.sleep(0.2)  # the holder died; the workers it forked are exiting


def _release(held):
    for lock, fd in reversed(held):
        with contextlib.suppress(OSError):
            os.unlink(lock)  # removed while still held: a run that opened it meanwhile sees another file and retries
        os.close(fd)


def acquire_outputs(paths):
    """Lock every output of `paths`; returns what `release_outputs` needs. Refuses with one line naming the holder."""
    held, made = [], []
    try:
        for path in dict.fromkeys(Path(p) for p in paths):
            lock = lock_path(path)
            made += [f for f in reversed(lock.parents) if not f.exists()]
            check_writable(lock.parent)  # a file in the way or a read-only folder: one line naming it
            make_dirs(lock.parent)
            fd, info = _acquire(lock)
            if fd is None:
                dead = "" if _alive_here(info) else " (that process is gone, but processes it started still hold it)"
                raise CebenchError(f"{path} is in use by another run ({describe(info)}){dead}; wait for it to end "
                                   "or write elsewhere (--out)")
            held.append((lock, fd))
    except BaseException:
        release_outputs((held, made))
        raise
    return held, made


def release_outputs(state):
    """Unlock, remove the lock files, and remove the folders made only for them when they are left empty."""
    held, made = state
    _release(held)
    for folder in sorted(made, key=lambda f: -len(f.parts)):
        with contextlib.suppress(OSError):
            folder.rmdir()


@contextmanager
def hold_outputs(paths, runtime=None):
    """Hold the locks of `paths` for the block; see the module docstring (`runtime`: the run's cebench Runtime)."""
    distributed = runtime is not None and runtime.distributed
    state, error = None, None
    if runtime is None or runtime.is_main:
        try:
            state = acquire_outputs(paths)
        except (CebenchError, OSError) as err:
            if not distributed:
                raise
            error = str(err) if isinstance(err, CebenchError) else f"{err.filename}: {err.strerror or err}"
    if distributed:
        import torch.distributed as dist  # only the entry points that run under torchrun need it

        box = [error]
        dist.broadcast_object_list(box, src=0)  # every rank learns whether rank 0 got the locks
        if box[0] is not None:
            raise CebenchError(box[0])
    try:
        yield
    finally:
        if state is not None:
            release_outputs(state)
