"""The suite runner (run_all.sh): command construction, resume by stamps, reruns on change, first failure stops.

Stages are replaced by a fake entry point (a stdlib-only module on PYTHONPATH) through a test profile in a
temporary benchmarks.yaml ($CEBENCH_BENCHMARKS), so these tests exercise only the orchestration.
"""

import json
import os
import subprocess
import sys

import pytest

from cebench import CebenchError
from cebench.config import get_profile
from cebench.suite import REPO, Tee, main, plan
from cebench.suite_args import get_args_parser

FAKE_STAGE = r'''
import argparse, json, os, sys
from pathlib import Path

p = argparse.ArgumentParser()
for flag in ("--profile", "--out", "--results", "--weights", "--features", "--voc-root", "--images", "--device",
             "--seed", "--max-steps"):
    p.add_argument(flag)
p.add_argument("--resume", action="store_true")
p.add_argument("--overwrite", action="store_true")
a = p.parse_args()
with open(os.environ["FAKE_CALLS"], "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\n")
target = a.out or a.results
if os.environ.get("FAKE_FAIL") and os.environ["FAKE_FAIL"] in target:
    print("error: the fake stage was told to fail", file=sys.stderr)
    sys.exit(3)
if a.results:
    Path(a.results, "table2.md").write_text("| Pretraining | Classification |\n|---|---|\n| fake | 1.0 |\n")
elif target.endswith(".pt"):
    Path(target).write_bytes(b"fake weights")
else:
    stage = Path(target).name.split("_")[0]
    task = {"classify": "classification", "retrieval": "retrieval"}[stage]
    record = {"task": task, "init": a.weights or a.features, "dataset": "fake", "split": "val", "metric": "mAP",
              "value": 12.5, "ci95": [10.0, 15.0], "per_class": {}, "n_images": 3, "seed": 0, "wall_time_s": 0.1,
              "config": {}, "protocol": {}, "versions": {}}
    if os.environ.get("FAKE_BAD") and os.environ["FAKE_BAD"] in target:
        del record["metric"]
    Path(target).write_text(json.dumps(record))
'''

YAML = """
default_profile: t
profiles:
  t:
    description: A test profile whose stages are all one fake module.
    common: {voc_root: voc, seed: 0}
    pretrain: {images: imgs}
    classify: {lr: 0.1}
    run:
      stages:
        pretrain: {module: fake_stage}
        classify: {module: fake_stage, inits: [ce, random, supervised]}
        retrieval: {module: fake_stage, inits: [hog]}
        tables: {module: fake_stage}
"""


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """A temp benchmarks.yaml with profile 't', its data folders, and the fake stage module on PYTHONPATH."""
    (tmp_path / "voc").mkdir()
    (tmp_path / "imgs").mkdir()
    (tmp_path / "mods").mkdir()
    (tmp_path / "mods" / "fake_stage.py").write_text(FAKE_STAGE)
    (tmp_path / "benchmarks.yaml").write_text(YAML)
    monkeypatch.setenv("CEBENCH_BENCHMARKS", str(tmp_path / "benchmarks.yaml"))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "mods"))
    monkeypatch.setenv("FAKE_CALLS", str(tmp_path / "calls.jsonl"))
    monkeypatch.delenv("FAKE_FAIL", raising=False)
    monkeypatch.delenv("FAKE_BAD", raising=False)
    return tmp_path.resolve()


def _calls(tmp_path):
    path = tmp_path / "calls.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    path.unlink(missing_ok=True)
    return [json.loads(line) for line in lines if "--help" not in line]


def _targets(calls):
    return [c[c.index("--out") + 1] if "--out" in c else "tables" for c in calls]


def _run(tmp_path, *extra):
    return main(["t", "--results", str(tmp_path / "res"), *extra])


def test_dry_run_builds_commands_and_runs_nothing(fake, capsys):
    weights = fake / "alexnet.pth"
    weights.write_bytes(b"x")
    out = main(["t", "--dry-run", "--results", str(fake / "res"), "--max-steps", "7", "--voc-root",
                str(fake / "voc"), "--supervised", str(weights)])
    text = capsys.readouterr().out
    lines = [line for line in text.splitlines() if line.startswith("$ python -m fake_stage")]
    assert len(lines) == 6 and all("--profile t" in line for line in lines)
    pretrain, cls_ce, cls_random, cls_sup, hog, tables = lines
    res = fake / "res"
    assert f"--out {res / 'ce.pt'}" in pretrain and "--max-steps 7" in pretrain and "--voc-root" not in pretrain
    assert f"--weights {res / 'ce.pt'}" in cls_ce and f"--voc-root {fake / 'voc'}" in cls_ce
    assert "--weights random" in cls_random and "--max-steps 7" in cls_random
    assert f"--weights {weights}" in cls_sup and f"--out {res / 'classify_supervised.json'}" in cls_sup
    assert "--features hog" in hog and "--max-steps" not in hog  # retrieval trains nothing
    assert tables.endswith(f"--results {res}")
    assert [j["status"] for j in out["jobs"]] == ["dry-run"] * 6
    assert not (fake / "calls.jsonl").exists() and not res.exists()


def test_nproc_per_node_puts_torchrun_in_front_of_the_training_stages_only(fake, capsys):
    main(["t", "--dry-run", "--results", str(fake / "res"), "--nproc-per-node", "2"])
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("$ python")]
    torchrun = "$ python -m torch.distributed.run --standalone --nproc_per_node=2 -m fake_stage"
    assert [line.startswith(torchrun) for line in lines] == [True, True, True, False, False]  # pretrain, classify x2
    with pytest.raises(CebenchError, match="at least 1"):
        main(["t", "--dry-run", "--nproc-per-node", "0"])


def _args(tmp_path):
    return get_args_parser().parse_args(["--results", str(tmp_path / "res")])


def test_supervised_runs_only_when_given(fake):
    jobs, _ = plan(get_profile("t"), _args(fake))
    assert [(j.stage, j.init) for j in jobs] == [("pretrain", "ce"), ("classify", "ce"), ("classify", "random"),
                                                 ("retrieval", "hog"), ("tables", None)]


def test_rerun_skips_finished_stages_and_logs_both_runs(fake, capsys):
    first = _run(fake)
    assert _targets(_calls(fake)) == [str(fake / "res" / n) for n in
                                      ("ce.pt", "classify_ce.json", "classify_random.json", "retrieval_hog.json")] \
        + ["tables"]
    assert [j["status"] for j in first["jobs"]] == ["ran"] * 5
    assert first["jobs"][1]["summary"] == "mAP = 12.5"
    second = _run(fake)
    assert _targets(_calls(fake)) == ["tables"]  # tables are rebuilt every time, the rest is up to date
    assert [j["status"] for j in second["jobs"]] == ["skipped"] * 4 + ["ran"]
    out = capsys.readouterr().out
    assert "up to date, skipped" in out and "| fake | 1.0 |" in out  # Table 2 printed
    log = (fake / "res" / "run.log").read_text()
    assert log.count("run_all t ->") == 2 and log.count("| fake | 1.0 |") == 2


def test_changed_profile_section_or_weights_rerun_only_what_depends_on_them(fake):
    _run(fake)
    _calls(fake)
    yaml_path = fake / "benchmarks.yaml"
    yaml_path.write_text(yaml_path.read_text().replace("classify: {lr: 0.1}", "classify: {lr: 0.2}"))
    _run(fake)
    calls = _calls(fake)
    assert _targets(calls) == [str(fake / "res" / n) for n in ("classify_ce.json", "classify_random.json")] \
        + ["tables"]
    assert all("--overwrite" in c for c in calls[:2])  # the old records are replaced on purpose
    (fake / "res" / "ce.pt").write_bytes(b"other weights")  # e.g. a longer pretraining
    _run(fake)
    assert _targets(_calls(fake)) == [str(fake / "res" / "classify_ce.json"), "tables"]


def test_first_failure_stops_with_the_command_then_rerun_resumes(fake, monkeypatch, capsys):
    monkeypatch.setenv("FAKE_FAIL", "classify_random")
    with pytest.raises(CebenchError, match=r"classify \(random\) failed \(exit status 3\)"):
        _run(fake)
    out = capsys.readouterr().out
    assert "FAILED: classify (random) exited with status 3" in out
    assert f"{sys.executable} -m fake_stage --profile t --weights random" in out
    assert "error: the fake stage was told to fail" in out
    assert _targets(_calls(fake))[-1].endswith("classify_random.json")  # nothing after the failure ran
    assert "FAILED" in (fake / "res" / "run.log").read_text()
    monkeypatch.delenv("FAKE_FAIL")
    result = _run(fake)
    calls = _calls(fake)
    assert _targets(calls) == [str(fake / "res" / "classify_random.json"), str(fake / "res" / "retrieval_hog.json"),
                               "tables"]
    assert "--resume" in calls[0]  # same configuration, unfinished: the stage continues its own run
    assert [j["status"] for j in result["jobs"]] == ["skipped", "skipped", "ran", "ran", "ran"]


def test_malformed_record_is_a_failure(fake, monkeypatch):
    monkeypatch.setenv("FAKE_BAD", "retrieval_hog")
    with pytest.raises(CebenchError, match="not a result record"):
        _run(fake)
    assert "tables" not in _targets(_calls(fake))


@pytest.mark.parametrize("run, message", [
    ("run: {stages: {classify: {inits: [hog]}}}", "expected a list of"),
    ("run: {stages: {classfy: {}}}", r"unknown stages \['classfy'\]"),
    ("run: {stagez: {}}", "missing"),
    ("run: {stages: {tables: {}}, extra: 1}", r"unknown keys \['extra'\]"),
    ("run: {stages: {tables: {}}, synthetic: {n_train: 3}}", "synthetic"),
    ("run: {stages: {classify: {inits: [ce]}}}", "--ce PATH"),
])
def test_bad_run_sections_are_clear_errors(tmp_path, monkeypatch, run, message):
    (tmp_path / "benchmarks.yaml").write_text(f"profiles:\n  u:\n    common: {{voc_root: .}}\n    {run}\n")
    monkeypatch.setenv("CEBENCH_BENCHMARKS", str(tmp_path / "benchmarks.yaml"))
    with pytest.raises(CebenchError, match=message):
        main(["u", "--dry-run", "--results", str(tmp_path / "res")])


def test_missing_profile_and_missing_data_are_clear_errors(fake):
    with pytest.raises(CebenchError, match="unknown profile 'nope'"):
        main(["nope", "--dry-run"])
    with pytest.raises(CebenchError, match=r"no VOCdevkit at .*nowhere: pass --voc-root DIR"):
        _run(fake, "--voc-root", str(fake / "nowhere"))


def test_repository_profiles_plan_the_whole_pipeline():
    smoke = plan(get_profile("smoke"), _args(REPO))[0]
    assert smoke[0].argv[:4] == ["-m", "voc.synthetic", "--out", "data/smoke"]
    assert [j.argv[1] for j in smoke[1:]] == ["pretrain.train"] * 3 + ["transfer.classify"] * 3 \
        + ["transfer.detect"] * 3 + ["transfer.segment"] * 3 + ["evaluation.retrieval"] * 4 \
        + ["evaluation.inpainting"] * 2 + ["evaluation.probe"] * 5 + ["evaluation.tables", "evaluation.report"]
    # kmeans beside random: a keyword of --weights, made by each stage (no weights file to wait for)
    assert [j.argv[j.argv.index("--weights") + 1] for j in smoke if j.init == "kmeans"] == ["kmeans"] * 5
    # the paper's controls: the same pretraining command without a mask, and the weights at step 0
    pretrain = {j.init: j for j in smoke if j.stage == "pretrain"}
    assert pretrain["autoencoder"].argv[-2:] == ["--mask", "none"] and pretrain["autoencoder"].out.name == \
        "autoencoder.pt"
    assert pretrain["ce-untrained"].argv[-2:] == ["--max-steps", "0"]
    probe_ae = next(j for j in smoke if j.stage == "probe" and j.init == "autoencoder")
    assert probe_ae.inputs == [pretrain["autoencoder"].out] and probe_ae.out.name == "probe_autoencoder.json"
    for name in ("voc-mini", "paper"):
        jobs = plan(get_profile(name), _args(REPO))[0]
        assert jobs[0].stage == "pretrain" and [j.stage for j in jobs[-2:]] == ["tables", "report"]
        assert jobs[-1].argv[1] == "evaluation.report" and jobs[-1].out == jobs[-2].out.with_name("report.html")
        inits = {(j.stage, j.init) for j in jobs}
        assert {(s, i) for s in ("classify", "detect", "segment", "retrieval", "probe")
                for i in ("ce", "random", "autoencoder", "ce-untrained")} <= inits


def test_controls_need_their_pretraining_and_a_passed_max_steps_keeps_step_zero(fake, tmp_path, monkeypatch):
    yaml_path = fake / "benchmarks.yaml"
    yaml_path.write_text(YAML.replace("inits: [ce, random, supervised]", "inits: [ce, autoencoder, ce-untrained]"))
    with pytest.raises(CebenchError, match=r"does not pretrain \['autoencoder', 'ce-untrained'\]"):
        plan(get_profile("t"), _args(fake))
    yaml_path.write_text(yaml_path.read_text().replace("pretrain: {module: fake_stage}",
                                                       "pretrain: {module: fake_stage, inits: [ce, ce-untrained, "
                                                       "autoencoder]}"))
    args = get_args_parser().parse_args(["--results", str(fake / "res"), "--max-steps", "7"])
    jobs = plan(get_profile("t"), args)[0]
    untrained = next(j for j in jobs if j.init == "ce-untrained" and j.stage == "pretrain")
    assert untrained.argv[-4:] == ["--max-steps", "7", "--max-steps", "0"]  # the last flag wins: step 0
    assert [j.init for j in jobs if j.stage == "classify"] == ["ce", "autoencoder", "ce-untrained"]


def test_tee_keeps_the_last_state_of_progress_bars(tmp_path, capsys):
    tee = Tee(tmp_path / "run.log")
    tee.write("bar  10%\rbar  50%")
    tee.write("\rbar 100%\nnext line\r\n")
    tee.close()
    assert (tmp_path / "run.log").read_text() == "bar 100%\nnext line\n"
    assert "bar  50%" in capsys.readouterr().out  # the terminal sees everything live


def test_profile_flag_like_every_entry_point_and_no_abbreviations(fake, capsys):
    out = main(["--profile", "t", "--dry-run", "--results", str(fake / "res")])
    assert out["profile"] == "t" and [j["status"] for j in out["jobs"]] == ["dry-run"] * 5
    assert main(["t", "--profile", "t", "--dry-run", "--results", str(fake / "res")])["profile"] == "t"
    with pytest.raises(CebenchError, match="two profiles given: 't' and --profile 'smoke'"):
        main(["t", "--profile", "smoke", "--dry-run"])
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:  # --max-step is not --max-steps: refused, not guessed
        main(["t", "--max-step", "2", "--dry-run"])
    assert exit_.value.code == 2 and "unrecognized arguments: --max-step 2" in capsys.readouterr().err


def test_run_all_sh_refuses_an_abbreviated_flag_and_takes_profile(fake):
    """The README's wrapper itself (bash run_all.sh), as a user types it."""
    env = dict(os.environ, PATH=f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}",
               PYTHONPATH=f"{REPO}{os.pathsep}{fake / 'mods'}")
    run = subprocess.run(["bash", str(REPO / "run_all.sh"), "t", "--max-step", "2", "--dry-run", "--results",
                          str(fake / "res")], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "unrecognized arguments: --max-step" in run.stderr
    run = subprocess.run(["bash", str(REPO / "run_all.sh"), "--profile", "t", "--dry-run", "--results",
                          str(fake / "res")], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "run_all t ->" in run.stdout
