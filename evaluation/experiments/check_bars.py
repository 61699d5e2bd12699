"""Issue 22's bars for one GPU, read from the JSON that `bash run_all.sh PROFILE --check` wrote
(results/<profile>-check/): the whole loop at >= 0.8 of the step alone for pretraining and classification, and one
run of the paper profile's pretraining projected at <= 1 hour. scripts/gpu_check.sh runs it after the checks.

    python -m evaluation.experiments.check_bars paper voc-mini-paper          # exit 1 when a bar is missed

A check cut short (by gpu_check.sh's time limit) still has the JSON of the stages it finished, one per stage, and is
read from those; its missing stages miss their bars. Torch-free: it reads JSON only.
"""

import argparse
import sys
from pathlib import Path

from cebench.config import benchmarks_path
from cebench.files import read_json

RATIO_BAR = 0.8  # the whole loop's images/s over the step alone's
RATIO_STAGES = ("pretrain", "classify")
PRETRAIN_HOURS_BAR = 1.0  # one run of the paper profile's full pretraining schedule
PRETRAIN_HOURS_PROFILE = "paper"


def _read(path):
    try:
        return read_json(path)
    except (OSError, ValueError) as err:
        return {"error": f"{path.name} unreadable ({err})"}


def read_bars(folder, profile):
    """(lines, ok): one line per bar of `profile` from its check folder, and whether every bar was met."""
    folder = Path(folder)
    rows = {p.stem: _read(p) for p in sorted(folder.glob("*.json")) if p.stem != "check"}
    if not rows:
        return [f"{profile}: no check results in {folder}"], False
    lines, ok = [], True
    for stage in RATIO_STAGES:
        row = rows.get(stage)
        if row is None or "error" in row:
            lines.append(f"{profile} {stage}: not checked ({row['error'] if row else 'no ' + stage + '.json'})")
            ok = False
            continue
        met = row["ratio"] >= RATIO_BAR
        ok &= met
        lines.append(f"{profile} {stage}: whole loop / step alone = {row['ratio']:.2f} "
                     f"({'ok' if met else f'BELOW {RATIO_BAR}'}; {row['data_path']})")
    if profile == PRETRAIN_HOURS_PROFILE:
        row = rows.get("pretrain")
        if row is not None and "error" not in row:
            hours = row["projected_s"] / 3600
            met = hours <= PRETRAIN_HOURS_BAR
            ok &= met
            lines.append(f"{profile} pretraining projected: {hours:.2f} h per run "
                         f"({'ok' if met else f'OVER {PRETRAIN_HOURS_BAR:g} h'})")
    summary = folder / "check.json"
    if summary.is_file():
        check = _read(summary)
        if "error" in check:
            lines.append(f"{profile}: {check['error']}")
            ok = False
        else:
            lines.append(f"{profile}: projected total {check['projected_total_s'] / 3600:.2f} h; the check took "
                         f"{check['check_wall_s']:.0f} s; failed stages: {check['failed'] or 'none'}")
            ok &= not check["failed"]
    else:
        lines.append(f"{profile}: no check.json in {folder} (cut short?): stages done {sorted(rows)}")
        ok = False
    return lines, ok


def main(argv=None):
    p = argparse.ArgumentParser("python -m evaluation.experiments.check_bars", description=__doc__.split("\n")[0])
    p.add_argument("profiles", nargs="+", help="profiles whose check to read")
    p.add_argument("--results", default=None, help="the folder holding <profile>-check/ (default: results/ beside "
                   "benchmarks.yaml, where the check writes)")
    opts = p.parse_args(argv)
    results = Path(opts.results) if opts.results else benchmarks_path().parent / "results"
    ok = True
    for profile in opts.profiles:
        lines, met = read_bars(results / f"{profile}-check", profile)
        print("\n".join(lines))
        ok &= met
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
