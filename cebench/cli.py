"""The `cebench` command: the suite and its tools under one name, each subcommand the entry point it names.

    cebench --version
    cebench run [PROFILE] [run_all.sh flags]     # = bash run_all.sh
    cebench status [PROFILE] [--results DIR]     # which stages are done, partial or missing, with their numbers
    cebench tables | report | export [flags]     # = python -m evaluation.tables | evaluation.report | pretrain.export

Only the chosen subcommand's modules are imported, so `cebench --help` and `cebench status` answer at once.
"""

import argparse
import importlib
import sys

from cebench import __version__
from cebench.errors import CebenchError, run_cli

# subcommand -> (module whose main() it runs, what it does)
COMMANDS = {"run": ("cebench.suite", "run a benchmarks.yaml profile end to end (what bash run_all.sh runs)"),
            "status": ("cebench.cli", "which stages of a profile are done, partial or missing, with their numbers"),
            "tables": ("evaluation.tables", "rebuild Tables 1-3 and the answer from the result records"),
            "report": ("evaluation.report", "write the self-contained report.html of a results folder"),
            "export": ("pretrain.export", "export a ce.pt's encoder for timm / torch.export")}
STATES = {"skip": "done", "resume": "partial", "changed": "stale (its command, profile or weights changed)",
          "fresh": "missing"}


def get_args_parser():
    parser = argparse.ArgumentParser(
        "cebench", description=__doc__.split("\n")[0], allow_abbrev=False,
        epilog="commands: " + "; ".join(f"{name}: {what}" for name, (_, what) in COMMANDS.items())
        + ". `cebench COMMAND --help` shows a command's flags.")
    parser.add_argument("--version", action="version", version=f"cebench {__version__}")
    parser.add_argument("command", choices=list(COMMANDS), help="what to do")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="the command's own flags")
    return parser


def plan_of(suite_argv):
    """(jobs, results folder) that `bash run_all.sh SUITE_ARGV` would run."""
    from cebench.config import get_profile
    from cebench.suite import plan
    from cebench.suite_args import get_args_parser as suite_parser
    from cebench.suite_args import profile_name

    opts = suite_parser().parse_args(suite_argv)
    return plan(get_profile(profile_name(opts)), opts)


def hash_of(job, profile_name):
    """The stamp hash run_all gives `job` under the named profile."""
    from cebench.config import get_profile
    from cebench.suite import job_hash

    return job_hash(job, get_profile(profile_name))


def status(argv=None):
    """`cebench status [PROFILE]`: each job of the profile's plan as run_all would judge it, with its number."""
    from cebench.config import get_profile
    from cebench.records import read_record
    from cebench.stages import BY_NAME
    from cebench.suite import _check_output, _shown, job_hash, job_state
    from cebench.suite_args import get_args_parser as suite_parser
    from cebench.suite_args import profile_name
    from evaluation.reporting.cells import is_complete, progress_note

    parser = argparse.ArgumentParser("cebench status", description=status.__doc__.split(": ", 1)[1],
                                     allow_abbrev=False)
    parser.add_argument("profile", nargs="?", default=None, help="profile name (default: the file's default)")
    parser.add_argument("--results", default=None, help="results folder (default: results/<profile>)")
    args = parser.parse_args(argv)
    suite_argv = [*([args.profile] if args.profile else []), *(["--results", args.results] if args.results else [])]
    (jobs, results), profile = plan_of(suite_argv), get_profile(profile_name(suite_parser().parse_args(suite_argv)))
    rows, counts = [], {}
    for job in jobs:
        if job.always:  # data, tables, report: rerun by every run_all, so only their outputs say anything
            state = "written" if job.out.exists() else "missing"
        else:
            state = STATES[job_state(job, job_hash(job, profile), False)]  # as run_all judges it
        number = ""
        if state == "done":
            try:
                number = _check_output(job)
            except CebenchError as err:  # a damaged output is a state to show, not a crash
                state, number = "damaged", str(err)
            if job.stage in BY_NAME and BY_NAME[job.stage].task and not is_complete(read_record(job.out)):
                state, number = "partial", f"{number} ({progress_note(read_record(job.out))})"
        counts[state.split(" (")[0]] = counts.get(state.split(" (")[0], 0) + 1
        rows.append(f"  {job.label:<24} {state.split(' (')[0]:<14} {number}"[:100])
    print(f"cebench status: profile {profile['_name']} -> {_shown(results)}")
    print("\n".join(rows))
    print("  " + ", ".join(f"{n} {s}" for s, n in counts.items()) + f" of {len(jobs)} stages; `cebench run "
          f"{profile['_name']}` runs what is not done")
    return {"jobs": len(jobs), "counts": counts}


def main(argv=None):
    args = get_args_parser().parse_args(sys.argv[1:] if argv is None else argv)
    if args.command == "status":
        return run_cli(status, args.args)
    module = importlib.import_module(COMMANDS[args.command][0])
    return run_cli(module.main, args.args)


if __name__ == "__main__":
    main()
