"""The suite's check of a profile before anything runs (run_all.sh, --dry-run included), as a child process so that
the suite itself imports no model code: every stage section of the profile against its entry point's flags (a typo
such as `test_crop:` under `classify:` is found now, not hours in), and the command line of every stage the suite
will start, parsed as the stage parses it (bounds of numbers, contradicting flags).

    echo '{"profile": "smoke", "sections": {...}, "jobs": [...]}' | python -m cebench.preflight

Reads {"profile", "sections": {stage: module}, "jobs": [{"stage", "module", "argv"}]} on stdin; prints one line per
problem on stderr and exits 2 when there is any, else exits 0 silently.
"""

import contextlib
import importlib
import io
import json
import sys

from cebench.config import get_profile, parse_with_profile, profile_defaults
from cebench.errors import CebenchError, one_line


def _parser(module, cache={}):  # noqa: B006 (a cache of the parsers built in this process)
    if module not in cache:
        cache[module] = importlib.import_module(module).get_args_parser
    return cache[module]()


def _argparse_error(err_text):
    """argparse's own refusal (after its usage lines): its last line."""
    lines = [line for line in err_text.splitlines() if line.strip()]
    return lines[-1] if lines else "invalid command line"


def problems(request):
    """Every problem of the profile's stage sections and of the stages' command lines, one line each."""
    profile = get_profile(request["profile"])
    found = []
    for stage, module in request["sections"].items():
        try:
            profile_defaults(_parser(module), stage, profile)
        except CebenchError as err:
            found.append(one_line(err))
    for job in request["jobs"]:
        stderr = io.StringIO()
        try:
            with contextlib.redirect_stderr(stderr):
                parse_with_profile(_parser(job["module"]), job["argv"], job["stage"])
        except CebenchError as err:
            found.append(f"{job['stage']} ({job['module']}): {one_line(err)}")
        except SystemExit:
            found.append(f"{job['stage']} ({job['module']}): {_argparse_error(stderr.getvalue())}")
    return list(dict.fromkeys(found))


def main():
    found = problems(json.load(sys.stdin))
    for line in found:
        print(line, file=sys.stderr)
    return 2 if found else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except CebenchError as err:
        print(one_line(err), file=sys.stderr)
        sys.exit(2)
