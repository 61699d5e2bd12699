"""One error type for bad input, and the wrapper that turns it into a one-line exit for every entry point."""

import sys


class CebenchError(Exception):
    """A user-facing failure: bad input, bad config, refused checkpoint. Its message is the whole story."""


def run_cli(main, argv=None):
    """Run an entry point's `main`, turning a CebenchError into one line on stderr and exit status 2.

    An OSError that reached this far (a folder that cannot be created, a file that cannot be written) is one
    line too, naming its path: the writers of cebench.files already say which file, this is the last resort."""
    try:
        return main(argv)
    except CebenchError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except OSError as err:
        where = f"{err.filename}: " if err.filename else ""
        print(f"error: {where}{err.strerror or err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted: the last checkpoint is kept; rerun with --resume to continue", file=sys.stderr)
        sys.exit(130)
