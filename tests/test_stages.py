"""The stage table (cebench.stages): every list of stages is read from it, and a new stage is one new row.

The toy-stage test adds a row to a copy of the plumbing (cebench/ and run_all.sh) and an entry point of its own, and
sees the stage in `bash run_all.sh --dry-run`: the README's recipe for a new transfer task, checked.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

from cebench import config, records, suite_args
from cebench.stages import CHECKED, STAGES, names, spoken, stage
from evaluation import report
from evaluation.reporting import paper_tables

REPO = Path(__file__).resolve().parents[1]

TOY_ROW = '    Stage("knn", "transfer.knn", task="knn", takes=("voc_root", "device", "seed"), table2="knn"),\n'
TOY_PROFILE = """
default_profile: toy
profiles:
  toy:
    description: One toy stage.
    common: {voc_root: vocdata}
    pretrain: {images: imgs}
    run:
      stages:
        knn: {inits: [random, ce-untrained]}
        pretrain: {inits: [ce-untrained]}
"""


def test_the_lists_of_stages_are_read_from_the_table():
    assert config.STAGES == tuple(s.name for s in STAGES)
    assert records.TASKS == tuple(s.task for s in STAGES if s.task)
    assert set(records.PER_CLASS_NULL) == {s.task for s in STAGES if s.null_reason}
    assert paper_tables.TABLE2_TASKS == ("classification", "detection", "segmentation", "retrieval")
    assert report.EXAMPLE_TITLES["ce"] == "Pretraining samples" and report.EXAMPLE_TITLES["segment"] == "Segmentation"
    assert names(trains=True) == ("pretrain", "classify", "detect", "segment")
    assert spoken(names(trains=True)) == "pretrain, classify, detect and segment" and spoken(["a"]) == "a"
    assert stage("probe").module == "evaluation.probe" and stage("tables").runs == "once"
    assert "pretrain, classify, detect and segment" in suite_args.get_args_parser().format_help()


def test_the_check_measures_the_stages_with_hooks_those_that_train_first():
    assert CHECKED == ("pretrain", "classify", "detect", "segment", "probe", "retrieval", "inpainting")


def test_a_toy_stage_added_as_one_row_appears_in_the_dry_run(tmp_path):
    for part in ("cebench", "run_all.sh", "transfer"):  # copies: the plumbing, and transfer/ for the new task
        copy = shutil.copytree if (REPO / part).is_dir() else shutil.copy
        copy(REPO / part, tmp_path / part)
    for part in ("pretrain", "voc", "evaluation"):  # unchanged: the suite's preflight parses their commands
        (tmp_path / part).symlink_to(REPO / part)
    # the new task's entry point (a file it adds): here the classification transfer's flags under a new name
    (tmp_path / "transfer" / "knn.py").write_text("from transfer.classify import get_args_parser  # noqa: F401\n")
    table = tmp_path / "cebench" / "stages.py"
    text = table.read_text()
    assert text.count('    Stage("curve"') == 1
    table.write_text(text.replace('    Stage("curve"', TOY_ROW + '    Stage("curve"'))  # the one edit
    (tmp_path / "benchmarks.yaml").write_text(TOY_PROFILE)
    (tmp_path / "vocdata").mkdir()
    (tmp_path / "imgs").mkdir()
    (tmp_path / ".venv").symlink_to(sys.prefix)  # run_all.sh picks .venv/bin/python: this interpreter
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    env.pop("CEBENCH_BENCHMARKS", None)
    flags = ["--dry-run", "--voc-root", "vocdata", "--seed", "3", "--max-steps", "5"]
    run = subprocess.run(["bash", str(tmp_path / "run_all.sh"), *flags], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    commands = [line for line in run.stdout.splitlines() if line.startswith("$ python -m")]
    assert commands[0].startswith("$ python -m pretrain.train --profile toy --out results/toy/ce-untrained.pt")
    assert commands[1:] == [  # after pretraining, in the table's order; its flags from the row (no --max-steps)
        f"$ python -m transfer.knn --profile toy --weights {w} --out results/toy/knn_{i}.json --voc-root vocdata "
        "--seed 3"
        for w, i in (("random", "random"), ("results/toy/ce-untrained.pt", "ce-untrained"))]


def test_the_smoke_profile_plans_its_synthetic_data_first_and_every_stage(tmp_path, capsys):
    from cebench.suite import main

    out = main(["smoke", "--dry-run", "--results", str(tmp_path / "res")])
    assert [j["stage"] for j in out["jobs"]][:2] == ["data", "pretrain"] and out["synthetic"]
    assert {j["stage"] for j in out["jobs"]} == {"data", *(s.name for s in STAGES)} - {"curve"}  # smoke: no curve
    assert "$ python -m voc.synthetic --out" in capsys.readouterr().out
