"""One error type for bad input, and the wrapper that turns it into a one-line exit for every entry point."""

import sys


class CebenchError(Exception):
    """A user-facing failure: bad input, bad config, refused checkpoint. Its message is the whole story."""


def one_line(err):
    """The message of a CebenchError on one line. Raised in a DataLoader worker, it reaches the main process
    wrapped in the worker's traceback ("Caught CebenchError in DataLoader worker process 0. Original Traceback
    ..."), whose last line holds the message."""
    text = str(err).strip()
    if text.startswith("Caught ") and "\nOriginal Traceback" in text:
        text = text.splitlines()[-1].split(f"{type(err).__name__}: ", 1)[-1]
    return " ".join(text.split())


def _close_bars():
    """Progress bars first leave their last state on a line of their own (plumbing only: no model code)."""
    from cebench.logs import close_progress_bars

    close_progress_bars()


def run_cli(main, argv=None):
    """Run an entry point's `main`, turning a CebenchError into one line on stderr and exit status 2.

    An OSError that reached this far (a folder that cannot be created, a file that cannot be written) is one
    line too, naming its path: the writers of cebench.files already say which file, this is the last resort.

    Open progress bars are closed before anything is printed, so the error is the last line on stderr (an open bar
    would otherwise be glued to it and redrawn after it when the process exits)."""
    try:
        return main(argv)
    except CebenchError as err:
        _close_bars()
        print(f"error: {one_line(err)}", file=sys.stderr, flush=True)
        sys.exit(2)
    except OSError as err:
        _close_bars()
        where = f"{err.filename}: " if err.filename else ""
        print(f"error: {where}{err.strerror or err}", file=sys.stderr, flush=True)
        sys.exit(2)
    except KeyboardInterrupt:
        _close_bars()
        print("interrupted: the last checkpoint is kept; rerun with --resume to continue", file=sys.stderr)
        sys.exit(130)
    except BaseException:  # a bug or an exit: its traceback or message, too, comes after the bars
        _close_bars()
        raise
