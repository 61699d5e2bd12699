"""One error type for bad input, and the wrapper that turns it into a one-line exit for every entry point."""

import sys


class CebenchError(Exception):
    """A user-facing failure: bad input, bad config, refused checkpoint. Its message is the whole story."""


def run_cli(main, argv=None):
    """Run an entry point's `main`, turning a CebenchError into one line on stderr and exit status 2."""
    try:
        return main(argv)
    except CebenchError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted: the last checkpoint is kept; rerun with --resume to continue", file=sys.stderr)
        sys.exit(130)
