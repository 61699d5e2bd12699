"""Transfer runs lose nothing and leave nothing: metrics.jsonl after a kill and --resume, a failed --overwrite or
--resume, a full disk while writing the scores, a data error before any output exists."""

import json
import os
import tempfile

import pytest
from test_transfer_classify import tiny_args
from test_transfer_engine import CONFIG, CPU, ToyTask, toy_model
from vocfactory import make_vocdevkit

from cebench.errors import CebenchError
from transfer import classify, engine, segment
from transfer.engine import fit

pytestmark = pytest.mark.filterwarnings("ignore:class\\(es\\).*no positive:UserWarning")

class Killed(Exception):
    """Stands for a kill after a checkpoint."""


def _steps(run_dir):
    return [(row["step"], bool(row.get("final"))) for row in map(json.loads, (run_dir / "metrics.jsonl").open())]


def test_resume_after_a_kill_does_not_repeat_metrics_lines(tmp_path, monkeypatch):
    task, calls = ToyTask(), []
    step = task.training_step

    def dying(model, batch):
        calls.append(1)
        if len(calls) == 6:  # the 6th step: after the checkpoint of step 4 and the log line of step 5
            raise Killed
        return step(model, batch)

    monkeypatch.setattr(task, "training_step", dying)
    with pytest.raises(Killed):
        fit(task, toy_model(), CONFIG, tmp_path, CPU, run_config={"a": 1})
    assert _steps(tmp_path) == [(1, False), (2, False), (3, False), (4, False), (5, False)]
    monkeypatch.setattr(task, "training_step", step)
    fit(task, toy_model(), CONFIG, tmp_path, CPU)
    assert _steps(tmp_path) == [(s, False) for s in range(1, 9)] + [(8, True)]
    fit(task, toy_model(), CONFIG, tmp_path, CPU)  # nothing left to train: the final evaluation is redone, once
    assert _steps(tmp_path) == [(s, False) for s in range(1, 9)] + [(8, True)]


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    return make_vocdevkit(tmp_path_factory.mktemp("voc") / "VOCdevkit", splits={"train": 8, "val": 4}, seed=2)


def _snapshot(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_failed_overwrite_and_refused_resume_leave_the_previous_run_whole(voc, tmp_path, monkeypatch):
    out = tmp_path / "res" / "cls.json"
    classify.main(tiny_args(voc, out, "--log-every", "1"))
    before = _snapshot(tmp_path / "res")
    assert {"cls.json", "cls.run/checkpoint.pt", "cls.run/config.json", "cls.run/metrics.jsonl",
            "cls.run/test_scores.npz"} <= set(before)
    with monkeypatch.context() as m:  # the new run dies in the middle of fine-tuning
        m.setattr(engine, "_optimizer_step", lambda *a: (_ for _ in ()).throw(CebenchError("out of memory")))
        with pytest.raises(CebenchError, match="out of memory"):
            classify.main(tiny_args(voc, out, "--overwrite", "--seed", "1"))
    assert _snapshot(tmp_path / "res") == before
    with pytest.raises(CebenchError, match="different settings"):  # config.json is not replaced by the refused one
        classify.main(tiny_args(voc, out, "--resume", "--lr", "0.5"))
    assert _snapshot(tmp_path / "res") == before


def test_full_disk_while_writing_the_scores_leaves_no_temp_file(voc, tmp_path, monkeypatch, capsys):
    real = tempfile.mkstemp

    def mkstemp(*args, prefix="", **kwargs):  # only the scores' write meets a full disk
        fd, path = real(*args, prefix=prefix, **kwargs)
        if prefix.startswith(".test_scores"):
            os.close(fd)
            fd = os.open("/dev/full", os.O_WRONLY)
        return fd, path

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    out = tmp_path / "cls.json"
    with pytest.raises(CebenchError, match="cannot write .*test_scores.npz: No space left on device"):
        classify.main(tiny_args(voc, out))
    assert not [p for p in tmp_path.rglob("*") if "tmp" in p.name or p.stat().st_size == 0]
    assert (tmp_path / "cls.run" / "checkpoint.pt").is_file() and not out.exists()  # --resume finishes it


def test_segmentation_data_error_leaves_no_output_folder(voc, tmp_path):
    out = tmp_path / "new" / "seg.json"
    with pytest.raises(CebenchError, match="no_such_split"):
        segment.main(["--voc-root", str(voc.root), "--train-split", "no_such_split", "--weights", "random",
                      "--width", "0.25", "--fc-dim", "16", "--device", "cpu", "--out", str(out)])
    assert not (tmp_path / "new").exists()
