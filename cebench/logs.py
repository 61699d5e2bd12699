"""Logging routed through tqdm (bars don't tear), progress bars on the main process only, metrics.jsonl."""

import json
import logging
import sys

from tqdm.auto import tqdm

from cebench.files import write_error


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
    """tqdm bar, disabled on non-main ranks."""
    return tqdm(iterable, disable=not enabled, dynamic_ncols=True, **kwargs)


def append_jsonl(path, row):
    """Append one JSON line (per epoch or per log interval) to a run's metrics.jsonl."""
    try:
        with open(path, "a") as f:
            f.write(json.dumps(row) + "\n")
    except OSError as err:
        raise write_error(path, err) from None
