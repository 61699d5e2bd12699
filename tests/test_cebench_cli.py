"""The `cebench` console command: --version, status of a results folder, subcommands that are the entry points."""

import json

import pytest

import cebench
from cebench import cli
from cebench.records import make_record, write_record


def test_version(capsys):
    with pytest.raises(SystemExit) as done:
        cli.main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.strip() == f"cebench {cebench.__version__}"


def test_status_says_done_partial_and_missing_with_numbers(tmp_path, capsys):
    out = cli.main(["status", "smoke", "--results", str(tmp_path)])
    # an empty folder: no stage done (the synthetic data, outside it, may have been written by another run)
    assert set(out["counts"]) <= {"missing", "written"} and out["counts"]["missing"] >= out["jobs"] - 1
    # a classify record cut short (--max-steps) with a stamp that matches the plan: partial, with its number
    jobs, _ = cli.plan_of(["smoke", "--results", str(tmp_path)])
    job = next(j for j in jobs if j.stage == "classify" and j.init == "random")
    record = make_record(task="classification", init="random", dataset="VOC2007", split="val", metric="mAP",
                         value=0.4, ci95=(0.3, 0.5), per_class={}, n_images=10, seed=0, wall_time_s=1.0, config={},
                         protocol={}, complete=False, schedule={"unit": "iterations", "steps_run": 2, "steps": 60})
    write_record(job.out, record)
    job.stamp.write_text(json.dumps({"hash": cli.hash_of(job, "smoke"), "status": "done"}))
    capsys.readouterr()
    out = cli.main(["status", "smoke", "--results", str(tmp_path)])
    line = next(ln for ln in capsys.readouterr().out.splitlines() if "classify (random)" in ln)
    assert "partial" in line and "mAP = 40.0 (2 of 60 iterations)" in line and out["counts"]["partial"] == 1
