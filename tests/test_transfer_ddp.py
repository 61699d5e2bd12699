"""The three transfer entry points under torchrun: 2 CPU processes (gloo), tiny VOCdevkits, a couple of steps.

Each test launches ``python -m torch.distributed.run --standalone --nproc_per_node=2`` on this file, which (see
``__main__`` at the bottom) runs ``python -m transfer.<task>`` unchanged via runpy, after wrapping the engine's
training loop so that every rank saves its final weights into $CEBENCH_TEST_RANK_WEIGHTS (outside the run's
output folder). The tests then check: exit status 0, one well-formed record (by rank 0) scoring the whole test
split once, identical weights on both ranks, the same files as a 1-process run, and -- with dropout off, so that
the two runs compute the same thing -- the same trained weights and test metric as that 1-process run (DDP splits
each global batch over the ranks and averages their gradients). The transfer modules are imported inside the
tests only, so that runpy executes them afresh under torchrun.
"""

import json
import math
import os
import re
import runpy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from vocfactory import make_vocdevkit

from cebench.records import REQUIRED

REPO = Path(__file__).resolve().parents[1]
RANK_WEIGHTS_ENV = "CEBENCH_TEST_RANK_WEIGHTS"

# The tiny devkits lack some classes; their AP is nan and the metric warns, as it should.
pytestmark = pytest.mark.filterwarnings("ignore:class\\(es\\).*no positive:UserWarning")

# Fast flag sets of test_transfer_classify.py, test_detect_main.py and test_segment_main.py; dropout off so that
# 1 and 2 processes train the same function (dropout masks are drawn per rank).
COMMON = ["--device", "cpu", "--threads", "1", "--width", "0.25", "--dropout", "0", "--seed", "0"]
CLASSIFY = ["--train-split", "train", "--test-split", "val", "--input-size", "64", "--base-size", "80",
            "--fc-dim", "32", "--steps", "2", "--batch-size", "4", "--lr-step", "1", "--rescale-images", "8",
            "--rescale-iterations", "2", "--test-crops", "2", "--workers", "0"]
DETECT = ["--train-split", "train", "--test-split", "val", "--scale", "96", "--max-size", "128", "--steps", "2",
          "--batch-size", "2", "--fc-dim", "32", "--rescale-images", "6", "--ss-workers", "1", "--workers", "0",
          "--rois-per-image", "8", "--bg-iou-low", "0"]  # each image fills its 8 RoIs (test_detect_two_cpu_...)
SEGMENT = ["--weights", "random", "--fc-dim", "16", "--input-size", "96", "--steps", "2", "--batch-size", "2",
           "--crop-size", "40", "--min-scale", "0.7", "--max-scale", "1.3", "--flip-prob", "0.5",
           "--rescale-images", "4", "--lr", "0.01", "--loss-normalization", "valid", "--n-boot", "200",
           "--examples", "2", "--workers", "0"]


def _env(**extra):
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), **extra)


def torchrun(module, argv, rank_weights):
    """`python -m <module> argv` in 2 CPU processes under torchrun; each rank leaves rank<r>.pt in rank_weights."""
    rank_weights.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", __file__, module,
           *argv]
    run = subprocess.run(cmd, cwd=REPO, env=_env(**{RANK_WEIGHTS_ENV: str(rank_weights)}), capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, f"exit status {run.returncode}\n{run.stderr[-3000:]}"
    return run


def ranks_identical(rank_weights):
    """Both ranks ended with bit-identical weights; returns rank 0's state dict."""
    states = [torch.load(rank_weights / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert set(states[0]) == set(states[1]) and states[0]
    differ = [k for k in states[0] if not torch.equal(states[0][k], states[1][k])]
    assert not differ, f"ranks disagree on {differ}"
    return states[0]


def trained_weights(out):
    """The model of the run checkpoint the engine writes next to a record (rank 0 only)."""
    return torch.load(out.parent / f"{out.stem}.run" / "checkpoint.pt", weights_only=True)["model"]


def assert_same_training(ddp_state, single_state):
    """2 processes x half the batch, gradients averaged == 1 process x the whole batch, up to float rounding."""
    assert set(ddp_state) == set(single_state)
    for k, v in single_state.items():
        torch.testing.assert_close(ddp_state[k], v, rtol=1e-4, atol=1e-6, msg=f"{k} differs from the 1-process run")


def files_under(folder):
    """Relative paths of the files; TensorBoard event files (named by time, host and pid) as one generic name."""
    return sorted(re.sub(r"events\.out\.tfevents\..*", "events.out.tfevents", str(p.relative_to(folder)))
                  for p in Path(folder).rglob("*") if p.is_file())


def the_record(folder):
    """The one result record under `folder` (config.json, rescale.json etc. are not records)."""
    records = [p for p in Path(folder).rglob("*.json") if set(REQUIRED) <= set(json.loads(p.read_text()))]
    assert len(records) == 1, f"expected one record, found {records}"
    return json.loads(records[0].read_text())


def check_record(record, task, n_test, n_train):
    assert record["task"] == task and record["init"] == "random" and record["split"] == "val"
    assert record["n_images"] == n_test, "the test split was not scored exactly once per image"
    assert record.get("n_train_images", n_train) == n_train  # the segmentation record does not have it
    assert math.isfinite(record["value"]) and 0 <= record["value"] <= 100
    low, high = record["ci95"]
    assert 0 <= low <= record["value"] <= high <= 100
    assert not record.get("skipped") and not record.get("n_skipped")


@pytest.mark.integration
def test_classify_two_cpu_processes(tmp_path):
    from transfer import classify

    voc = make_vocdevkit(tmp_path / "VOCdevkit", splits={"train": 12, "val": 6}, seed=2)
    argv = ["--voc-root", str(voc.root), *CLASSIFY, *COMMON]
    torchrun("transfer.classify", [*argv, "--out", str(tmp_path / "ddp" / "cls.json")], tmp_path / "ranks")
    single = classify.main([*argv, "--out", str(tmp_path / "one" / "cls.json")])
    assert single["steps"] == 2

    ddp, one = the_record(tmp_path / "ddp"), the_record(tmp_path / "one")
    check_record(ddp, "classification", n_test=6, n_train=12)
    assert ddp["protocol"]["iterations"] == 2 and ddp["protocol"]["batch_size"] == 4
    scores = np.load(ddp["scores_file"])
    assert list(scores["ids"]) == voc.splits["val"] and scores["scores"].shape == (6, 20)
    assert files_under(tmp_path / "ddp") == files_under(tmp_path / "one")
    assert_same_training(ranks_identical(tmp_path / "ranks"), trained_weights(tmp_path / "one" / "cls.json"))
    assert ddp["n_images"] == one["n_images"]
    np.testing.assert_allclose(scores["scores"], np.load(one["scores_file"])["scores"], rtol=1e-4, atol=1e-4)
    assert ddp["value"] == pytest.approx(one["value"], abs=1e-3)


@pytest.mark.integration
def test_detect_two_cpu_processes(tmp_path):
    from transfer import detect

    voc = make_vocdevkit(tmp_path / "voc", splits={"train": 6, "val": 4}, size=(96, 72))
    argv = ["--voc-root", str(voc.root), *DETECT, *COMMON, "--proposals-cache", str(tmp_path / "cache")]
    torchrun("transfer.detect", [*argv, "--out", str(tmp_path / "ddp" / "det.json"), "--write-devkit",
                                 str(tmp_path / "ddp" / "devkit")], tmp_path / "ranks")
    single = detect.main([*argv, "--out", str(tmp_path / "one" / "det.json"), "--write-devkit",
                          str(tmp_path / "one" / "devkit")])
    assert single["steps"] == 2 and single["proposals"] == {"hits": 10, "computed": 0}  # rank 0 filled the cache

    ddp, one = the_record(tmp_path / "ddp"), the_record(tmp_path / "one")
    check_record(ddp, "detection", n_test=4, n_train=6)
    assert ddp["proposal_cache"] == {"hits": 0, "computed": 10} and ddp["protocol"]["iterations"] == 2
    # Fast R-CNN's loss is a mean over the RoIs of a micro-batch, so 1 process x 2 images equals the average of
    # 2 ranks x 1 image only when every image has the same number of RoIs (here the full 8 of them).
    assert ddp["protocol"]["rescaling"]["n_rois"] == 6 * 8  # rescaling saw each training image's RoIs
    rows = [r.split() for f in (tmp_path / "ddp" / "devkit").glob("comp4_det_val_*.txt")
            for r in f.read_text().splitlines()]
    assert rows and {r[0] for r in rows} <= set(voc.splits["val"])
    assert files_under(tmp_path / "ddp") == files_under(tmp_path / "one")
    assert_same_training(ranks_identical(tmp_path / "ranks"), trained_weights(tmp_path / "one" / "det.json"))
    assert ddp["n_images"] == one["n_images"] and ddp["n_detections"] == one["n_detections"]
    assert ddp["value"] == pytest.approx(one["value"], abs=1e-3)


@pytest.mark.integration
def test_segment_two_cpu_processes(tmp_path):
    from transfer import segment

    voc = make_vocdevkit(tmp_path / "voc", splits={"train": 6, "val": 4})
    argv = ["--voc-root", str(voc.root), *SEGMENT, *COMMON]
    # 'valid' loss: mean over the valid pixels of a micro-batch, and images differ in them (void padding and
    # borders), so both runs take 1 image per micro-batch: 2 ranks x 1, or 1 process x 2 accumulated.
    torchrun("transfer.segment", [*argv, "--accum-steps", "1", "--out", str(tmp_path / "ddp" / "seg.json")],
             tmp_path / "ranks")
    single = segment.main([*argv, "--accum-steps", "2", "--out", str(tmp_path / "one" / "seg.json")])
    assert math.isfinite(single["value"])

    ddp, one = the_record(tmp_path / "ddp"), the_record(tmp_path / "one")
    check_record(ddp, "segmentation", n_test=4, n_train=6)
    assert ddp["steps_done"] == 2
    assert sorted(p.stem for p in Path(ddp["predictions"]).glob("*.png")) == voc.splits["val"]
    assert files_under(tmp_path / "ddp") == files_under(tmp_path / "one")
    assert_same_training(ranks_identical(tmp_path / "ranks"), trained_weights(tmp_path / "one" / "seg.json"))
    assert ddp["n_images"] == one["n_images"]
    assert ddp["value"] == pytest.approx(one["value"], abs=1e-3)


def _save_rank_weights(folder):
    """Wrap the engine's training loop: after the last step, each rank saves its (unwrapped) model's weights."""
    from transfer import engine

    train_loop = engine._train_loop

    def train_loop_then_save(task, model, optimizer, scaler, config, runtime, *rest):
        result = train_loop(task, model, optimizer, scaler, config, runtime, *rest)
        state = {k: v.detach().cpu().clone() for k, v in engine.unwrap(model).state_dict().items()}
        torch.save(state, Path(folder) / f"rank{runtime.rank}.pt")
        return result

    engine._train_loop = train_loop_then_save


if __name__ == "__main__":  # under torchrun: <this file> transfer.<task> <flags...>, run as `python -m` would
    _save_rank_weights(os.environ[RANK_WEIGHTS_ENV])
    module, sys.argv = sys.argv[1], sys.argv[1:]
    runpy.run_module(module, run_name="__main__", alter_sys=True)
