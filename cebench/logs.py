"""Logging routed through tqdm (bars don't tear) and progress bars on the main process only (metrics.jsonl lines
are written by cebench.files.append_jsonl)."""

import logging
import sys

from tqdm.auto import tqdm


class _TqdmHandler(logging.Handler):
    def emit(self, record):
        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # logging must never kill a run
            self.handleError(record)


def get_logger(name="cebench", is_main=True):
    """A logger that prints through tqdm on the main process and stays quiet on the others."""
    logger = logging.getLogger(name)
    if not logger.handlers:
        handler = _TqdmHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(logging.INFO if is_main else logging.WARNING)
    return logger


def progress(iterable=None, *, enabled=True, **kwargs):
    """tqdm bar, disabled on non-main ranks. An error that leaves it open is printed after
    close_progress_bars() (cebench.errors.run_cli does that), never glued to it."""
    return tqdm(iterable, disable=not enabled, dynamic_ncols=True, **kwargs)


def close_progress_bars():
    """Close every open tqdm bar, each leaving its last state on its own line (or clearing it, for leave=False),
    so that what is printed next is not glued to a bar and no bar is redrawn after it when the process exits."""
    sys.stdout.flush()
    with tqdm.get_lock():
        bars = list(getattr(tqdm, "_instances", ()))  # open bars (a class attribute shared by subclasses)
    for bar in sorted(bars, key=lambda b: abs(getattr(b, "pos", 0)), reverse=True):  # nested bars: inner first
        bar.close()
    sys.stderr.flush()
