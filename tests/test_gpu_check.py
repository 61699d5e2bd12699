"""scripts/gpu_check.sh and the bars it reads (evaluation.experiments.check_bars, issue 22 item 7): the bars from
hand-made check JSON, each way a bar is met or missed; and the script itself run on the CPU on smoke, as a GPU session
would run it on cuda (the check, the bars, what it leaves in $OUT for the device tool to bring back)."""

import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from evaluation.experiments.check_bars import main as bars_main
from evaluation.experiments.check_bars import read_bars

REPO = Path(__file__).resolve().parents[1]


def _row(stage, ratio, projected_s=600.0, path="device (images decoded once onto it, no workers)"):
    return {"stage": stage, "ratio": ratio, "projected_s": projected_s, "data_path": path}


def _check_folder(tmp_path, profile, rows, *, summary=True, failed=()):
    folder = tmp_path / f"{profile}-check"
    folder.mkdir(parents=True)
    for row in rows:
        (folder / f"{row['stage']}.json").write_text(json.dumps(row))
    if summary:
        (folder / "check.json").write_text(json.dumps({"projected_total_s": 7200.0, "check_wall_s": 95.0,
                                                       "failed": list(failed), "rows": rows}))
    return folder


def test_bars_met_and_missed(tmp_path):
    folder = _check_folder(tmp_path, "paper", [_row("pretrain", 0.93, projected_s=1800), _row("classify", 0.85)])
    lines, ok = read_bars(folder, "paper")
    assert ok, lines
    assert "paper pretrain: whole loop / step alone = 0.93 (ok; device" in lines[0]
    assert "paper pretraining projected: 0.50 h per run (ok)" in lines
    assert lines[-1] == "paper: projected total 2.00 h; the check took 95 s; failed stages: none"

    slow = _check_folder(tmp_path / "b", "paper", [_row("pretrain", 0.93, projected_s=4000), _row("classify", 0.79)])
    lines, ok = read_bars(slow, "paper")
    assert not ok
    assert "classify: whole loop / step alone = 0.79 (BELOW 0.8" in lines[1]
    assert "paper pretraining projected: 1.11 h per run (OVER 1 h)" in lines
    # the hour bar is the paper profile's alone (voc-mini-paper's pretraining is the same schedule on less data)
    lines, ok = read_bars(_check_folder(tmp_path / "c", "voc-mini-paper", [_row("pretrain", 0.9, 4000),
                                                                           _row("classify", 0.9)]), "voc-mini-paper")
    assert ok and not any("projected:" in line for line in lines)


def test_bars_of_a_check_cut_short_broken_or_absent(tmp_path):
    # cut short by the script's time limit: the stages done have their JSON, the summary is missing
    lines, ok = read_bars(_check_folder(tmp_path / "a", "paper", [_row("pretrain", 0.9, 1800)], summary=False),
                          "paper")
    assert not ok
    assert "paper classify: not checked (no classify.json)" in lines
    assert "no check.json" in lines[-1] and "stages done ['pretrain']" in lines[-1]
    # a stage that failed: its row holds the error, and the summary lists it
    failed = {"stage": "classify", "error": "out of memory"}
    lines, ok = read_bars(_check_folder(tmp_path / "b", "paper", [_row("pretrain", 0.9, 1800), failed],
                                        failed=["classify"]), "paper")
    assert not ok and "paper classify: not checked (out of memory)" in lines
    assert lines[-1].endswith("failed stages: ['classify']")
    # an unreadable JSON is a line, not a traceback
    folder = _check_folder(tmp_path / "c", "paper", [_row("classify", 0.9)])
    (folder / "pretrain.json").write_text("{not json")
    lines, ok = read_bars(folder, "paper")
    assert not ok and lines[0].startswith("paper pretrain: not checked (pretrain.json unreadable")
    lines, ok = read_bars(tmp_path / "absent-check", "paper")
    assert not ok and lines == [f"paper: no check results in {tmp_path / 'absent-check'}"]


def test_bars_command_exit_status(tmp_path, capsys):
    _check_folder(tmp_path, "paper", [_row("pretrain", 0.9, 1800), _row("classify", 0.9)])
    _check_folder(tmp_path, "voc-mini-paper", [_row("pretrain", 0.9), _row("classify", 0.5)])
    assert bars_main(["--results", str(tmp_path), "paper"]) == 0
    assert bars_main(["--results", str(tmp_path), "paper", "voc-mini-paper"]) == 1
    assert "voc-mini-paper classify: whole loop / step alone = 0.50 (BELOW 0.8" in capsys.readouterr().out


@pytest.mark.slow
def test_gpu_check_script_on_the_cpu(tmp_path):
    """The script as a GPU session runs it, with CHECK_DEVICE=cpu on smoke: its results go beside the
    benchmarks.yaml it reads (a copy in tmp_path), and $OUT gets the tables and one archive (the device tool brings
    back at most 8 files)."""
    shutil.copy(REPO / "benchmarks.yaml", tmp_path / "benchmarks.yaml")
    out, wheels = tmp_path / "out", tmp_path / "no-wheels"
    out.mkdir()
    wheels.mkdir()
    env = dict(os.environ, CEBENCH_BENCHMARKS=str(tmp_path / "benchmarks.yaml"), OUT=str(out), CHECK_DEVICE="cpu",
               PROFILES="smoke", CHECK_STEPS="1", CHECK_WHEELS=str(wheels), PYTHONPATH=str(REPO))
    repo_check = REPO / "results" / "smoke-check" / "check.json"  # a check of this checkout's own, if any
    before = repo_check.stat().st_mtime_ns if repo_check.exists() else None
    done = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh"), "--threads", "1"], env=env,
                          capture_output=True, text=True, timeout=600)
    printed = done.stdout + done.stderr
    assert "== bash run_all.sh smoke --check --device cpu --check-steps 1" in printed, printed[-3000:]
    folder = tmp_path / "results" / "smoke-check"
    check = json.loads((folder / "check.json").read_text())
    assert check["failed"] == [], printed[-3000:]
    assert all(row["device"] == "cpu" for row in check["rows"])
    lines, ok = read_bars(folder, "smoke")
    assert all(line in printed for line in lines)  # the script printed the bars as read here
    # on a CPU the loop's ratio is what it is: the exit status says whether the bars were met
    assert done.returncode == (0 if ok else 1), printed[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["gpu_check.tgz", "smoke-check.md"]
    with tarfile.open(out / "gpu_check.tgz") as archive:
        names = archive.getnames()
    assert {"smoke-check/check.json", "smoke-check/check.md", "smoke-check/check.log",
            "smoke-check/pretrain.json"} <= set(names)
    assert not any("standin" in n or "proposals" in n for n in names)
    assert (out / "smoke-check.md").read_text() == (folder / "check.md").read_text()
    assert (repo_check.stat().st_mtime_ns if repo_check.exists() else None) == before  # nothing written there
