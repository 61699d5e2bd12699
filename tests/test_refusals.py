"""Hostile files and bad flags (issue 26): a label read from a file or a flag never becomes a path; one run at a time
writes an output; every stage section of a profile is checked before run_all.sh runs anything; numbers within
their bounds; one rule for --resume with --overwrite; enough bootstrap resamples for an interval."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from test_pretrain_train import make_images
from test_pretrain_train import tiny_args as pretrain_args
from test_transfer_classify import tiny_args as classify_args
from vocfactory import make_vocdevkit

from cebench import CebenchError
from cebench.config import get_profile, profile_defaults
from cebench.locks import acquire_outputs, lock_path, release_outputs
from cebench.preflight import problems
from cebench.records import record_name
from pretrain import train
from pretrain.model import AlexNetEncoder, ContextEncoder
from pretrain.weights import load_encoder, save_checkpoint
from transfer import classify, detect, segment
from transfer.driver import check_ids

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.filterwarnings("ignore:class\\(es\\).*no positive:UserWarning")


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    return make_vocdevkit(tmp_path_factory.mktemp("voc") / "VOCdevkit", splits={"train": 8, "val": 4}, seed=3)


def _env():
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))


# --- 1. a label is a name, never a path -----------------------------------------------------------------------

@pytest.mark.parametrize("label", ["../../tmp/PWNED", "a/b", "..", ".hidden", "", "two words", "a\\b", "x" * 101])
def test_a_label_that_is_no_name_is_refused_where_records_are_named(label):
    with pytest.raises(CebenchError, match="is not a name"):
        record_name("classify", label)


@pytest.mark.parametrize("label", ["ce", "ce-untrained", "ce-step100", "autoencoder", "random_w0.5"])
def test_names_pass(label):
    assert record_name("classify", label) == f"classify_{label}.json"


def test_a_weights_file_does_not_choose_where_the_record_goes(voc, tmp_path):
    """The issue's attack: meta.init_label climbs out of results/<profile>/ to a file of the attacker's choice."""
    target = tmp_path / "PWNED"
    model = ContextEncoder(AlexNetEncoder("caffenet", width=0.25), input_size=64)
    evil = tmp_path / "evil.pt"
    save_checkpoint(evil, model, {"steps": 1, "init_label": "../" * 16 + str(target).lstrip("/")})
    with pytest.raises(CebenchError, match=r"evil\.pt: meta\.init_label: .* is not a name"):
        load_encoder(evil)
    argv = [a for a in classify_args(voc, tmp_path / "unused.json") if a != "--out"][:-1]  # default record path
    with pytest.raises(CebenchError, match="meta.init_label"):
        classify.main([*argv, "--weights", str(evil), "--steps", "1"])
    assert not target.with_suffix(".json").exists() and not target.with_suffix(".run").exists()


def test_init_label_flag_and_image_ids_are_names(voc, tmp_path):
    with pytest.raises(CebenchError, match="--init-label: '../x' is not a name"):
        classify.main(classify_args(voc, tmp_path / "r.json", "--init-label", "../x"))
    assert not (tmp_path / "r.json").exists()
    check_ids(["000005", "2008_000123", 42], "VOC2007 val")
    with pytest.raises(CebenchError, match="VOC2007 val: image id: '../../x' is not a name"):
        check_ids(["000005", "../../x"], "VOC2007 val")


def test_a_profile_name_is_a_name(tmp_path):
    (tmp_path / "b.yaml").write_text("profiles:\n  ../../evil: {description: x}\n")
    with pytest.raises(CebenchError, match="profile: '../../evil' is not a name"):
        get_profile("../../evil", tmp_path / "b.yaml")


# --- 2. one run per output at a time -------------------------------------------------------------------------

def _holder(path):
    """A process that holds the lock of `path` until killed."""
    code = ("import sys, time\nfrom cebench.locks import acquire_outputs\nacquire_outputs([sys.argv[1]])\n"
            "print('held', flush=True)\ntime.sleep(120)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(path)], cwd=REPO, env=_env(), stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def _kill(proc):
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stdout.close()


def test_a_second_run_is_refused_naming_the_holder_and_a_killed_holder_holds_nothing(tmp_path):
    out = tmp_path / "res" / "classify_ce.json"
    holder = _holder(out)
    try:
        with pytest.raises(CebenchError, match=rf"classify_ce.json is in use by another run \(pid {holder.pid} on "
                                               rf"host {os.uname().nodename}, started .* UTC: python -c"):
            acquire_outputs([out])
    finally:
        _kill(holder)  # kill -9: the kernel drops its lock, the file it wrote stays behind
    assert lock_path(out).is_file()
    state = acquire_outputs([out])  # a lock of a dead process is no holder (--resume after a crash)
    assert json.loads(lock_path(out).read_text())["pid"] == os.getpid()
    release_outputs(state)
    assert not lock_path(out).exists()


def test_pretraining_and_classification_refuse_an_output_in_use_and_leave_it_alone(voc, tmp_path):
    """--overwrite included: the refused run moves nothing aside and writes nothing."""
    images = make_images(tmp_path / "imgs", n=4)
    ce, record = tmp_path / "ce.pt", tmp_path / "classify.json"
    ce.write_bytes(b"the running pretraining's file")
    for path, run in ((ce, lambda: train.main(pretrain_args(images, ce, "--overwrite"))),
                      (record, lambda: classify.main(classify_args(voc, record, "--overwrite")))):
        holder = _holder(path)
        try:
            with pytest.raises(CebenchError, match=f"{path.name} is in use by another run .pid {holder.pid}"):
                run()
        finally:
            _kill(holder)
    assert ce.read_bytes() == b"the running pretraining's file"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".ce.pt.lock", ".classify.json.lock", "ce.pt", "imgs"]


@pytest.mark.integration
def test_under_torchrun_every_rank_stops_with_the_refusal(tmp_path):
    """Rank 0 holds no lock it cannot take, and tells rank 1, which would otherwise wait for it at a barrier."""
    images = make_images(tmp_path / "imgs", n=4)
    out = tmp_path / "ce.pt"
    holder = _holder(out)
    try:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
               "pretrain.train", *pretrain_args(images, out, "--threads", "1")]
        run = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=240)
    finally:
        _kill(holder)
    assert run.returncode != 0 and not out.exists()
    refusals = [line for line in run.stderr.splitlines() if line.startswith("error:") and "in use by another" in line]
    # every rank stops (no deadlock at a barrier: the run ended well inside its timeout) with the same line; rank 1
    # may be ended by torchrun as soon as rank 0 exits, before it prints its own copy
    assert 1 <= len(refusals) <= 2 and len(set(refusals)) == 1, run.stderr[-2000:]


# --- 6. every stage section checked before anything runs ------------------------------------------------------

def _broken_smoke(tmp_path):
    text = (REPO / "benchmarks.yaml").read_text()
    text = text.replace("      test_crops: 2\n", "      test_crop: 2\n", 1)  # smoke's classify section
    text = text.replace("      n_boot: 200\n", "      n_bot: 200\n", 1)  # smoke's probe section
    path = tmp_path / "benchmarks.yaml"
    path.write_text(text)
    return path


def test_preflight_finds_typos_in_every_stage_section(tmp_path, monkeypatch):
    monkeypatch.setenv("CEBENCH_BENCHMARKS", str(_broken_smoke(tmp_path)))
    sections = {"classify": "transfer.classify", "probe": "evaluation.probe", "pretrain": "pretrain.train"}
    found = problems({"profile": "smoke", "sections": sections, "jobs": [
        {"stage": "classify", "module": "transfer.classify", "argv": ["--profile", "smoke", "--threads", "-2"]}]})
    assert any("classify: unknown keys ['test_crop'] (did you mean 'test_crops'" in p for p in found), found
    assert any("probe: unknown keys ['n_bot'] (did you mean 'n_boot'" in p for p in found), found
    assert len(found) == 3 and all("\n" not in p for p in found)


@pytest.mark.integration
def test_run_all_dry_run_refuses_a_typo_before_running_anything(tmp_path):
    env = dict(_env(), CEBENCH_BENCHMARKS=str(_broken_smoke(tmp_path)))
    run = subprocess.run(["bash", str(REPO / "run_all.sh"), "smoke", "--dry-run", "--results", str(tmp_path / "r")],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 2 and "$ python" not in run.stdout, run.stdout[-500:]
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("error: profile 'smoke' does not pass the check of its stages") and "test_crop" in last
    assert "n_bot" in last and not (tmp_path / "r").exists()


# --- 7-13. numbers within their bounds, --resume with --overwrite, bootstrap resamples --------------------------

def _pretrain(tmp_path, *flags):
    return ["--profile", "smoke", "--images", str(tmp_path), "--image-split", "all", "--out",
            str(tmp_path / "ce.pt"), *flags]


@pytest.mark.parametrize("flags, message", [
    (["--lr", "0"], "--lr must be positive, got 0"),
    (["--lr", "-1"], "--lr must be positive, got -1"),
    (["--lr", "nan"], "--lr must be a finite number"),
    (["--width", "0"], "--width must be positive, got 0"),
    (["--width", "-1"], "--width must be positive"),
    (["--input-size", "10", "--load-size", "12"], "--input-size 10 is too small for the caffenet trunk: pool5 would "
                                                  "be empty; use 39 or more"),
    (["--threads", "-2"], "--threads must be 0 or more, got -2"),
    (["--max-steps", "-1"], "--max-steps must be 0 or more"),
    (["--resume", "--overwrite"], "--resume and --overwrite contradict each other"),
])
def test_pretraining_refuses_bad_numbers_with_one_line(tmp_path, flags, message):
    with pytest.raises(CebenchError, match=message.replace("(", r"\(")):
        train.main(_pretrain(tmp_path, *flags))
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("main", [classify.main, detect.main, segment.main])
@pytest.mark.parametrize("flags, message", [
    (["--max-steps", "-1"], "--max-steps must be positive, got -1"),
    (["--max-steps", "0"], "--max-steps must be positive, got 0"),
    (["--threads", "-2"], "--threads must be 0 or more, got -2"),
    (["--n-boot", "10"], "--n-boot must be at least 200 .too few resamples for BCa"),
    (["--resume", "--overwrite"], "--resume and --overwrite contradict each other"),
])
def test_transfers_refuse_bad_numbers_and_the_resume_overwrite_pair(main, tmp_path, flags, message):
    with pytest.raises(CebenchError, match=message):
        main(["--profile", "smoke", "--out", str(tmp_path / "r.json"), *flags])
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("module", ["evaluation.retrieval", "evaluation.inpainting", "evaluation.probe",
                                    "evaluation.curve"])
def test_every_entry_point_refuses_negative_threads(module):
    main = __import__(module, fromlist=["main"]).main
    with pytest.raises(CebenchError, match="--threads must be 0 or more, got -2"):
        main(["--profile", "smoke", "--threads", "-2"])


def test_a_profile_value_out_of_bounds_names_the_file(tmp_path):
    (tmp_path / "b.yaml").write_text("profiles:\n  p:\n    pretrain: {lr: 0, images: imgs}\n"
                                     "    probe: {n_boot: 10}\n")
    with pytest.raises(CebenchError, match=r"b\.yaml: profile 'p', pretrain: lr must be positive, got 0"):
        profile_defaults(train.get_args_parser(), "pretrain", get_profile("p", tmp_path / "b.yaml"))
    from evaluation import probe

    with pytest.raises(CebenchError, match="probe: n_boot must be at least 200"):
        profile_defaults(probe.get_args_parser(), "probe", get_profile("p", tmp_path / "b.yaml"))


def test_bootstrap_minimum_is_what_the_smoke_profile_uses():
    """The smoke profile's probe runs at the minimum; the entry points' default is 1000 (Efron & Tibshirani)."""
    from cebench.flags import MIN_BOOT
    from evaluation.probe import get_args_parser

    assert MIN_BOOT == get_profile("smoke")["probe"]["n_boot"] == 200
    assert get_args_parser().get_default("n_boot") == 1000
