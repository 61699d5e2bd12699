"""Nothing is lost or left over: a failed --overwrite or --resume leaves the previous run whole, a failed run
leaves no empty folder, killed writes leave no temp files behind a resume, and metrics.jsonl never repeats steps."""

import json

import pytest

from cebench.errors import CebenchError
from cebench.files import truncate_jsonl
from cebench.runs import keep_previous_run, previous_path


def _snapshot(root):
    """{relative path: bytes} of every file under root (hidden ones too)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def previous(tmp_path):
    """A finished run: a record and a run folder."""
    (tmp_path / "r.run").mkdir()
    (tmp_path / "r.run" / "checkpoint.pt").write_text("old weights")
    (tmp_path / "r.json").write_text("old record")
    return [tmp_path / "r.json", tmp_path / "r.run"], _snapshot(tmp_path)


def _new_run(paths, fail=None):
    paths[1].mkdir()
    (paths[1] / "checkpoint.pt").write_text("new weights")
    if fail:
        raise fail
    paths[0].write_text("new record")


def test_fresh_run_that_fails_restores_the_previous_one(tmp_path, previous):
    paths, before = previous
    with pytest.raises(CebenchError), keep_previous_run(paths, fresh=True, checkpoint=paths[1] / "checkpoint.pt"):
        assert not paths[0].exists() and previous_path(paths[0]).exists()  # moved aside while the run works
        _new_run(paths, CebenchError("disk full"))
    assert _snapshot(tmp_path) == before


def test_fresh_run_that_succeeds_replaces_the_previous_one(tmp_path, previous):
    paths, _ = previous
    with keep_previous_run(paths, fresh=True):
        _new_run(paths)
    assert _snapshot(tmp_path) == {"r.json": b"new record", "r.run/checkpoint.pt": b"new weights"}


def test_interrupted_fresh_run_stays_resumable_and_a_later_failure_still_restores(tmp_path, previous):
    paths, before = previous
    with pytest.raises(KeyboardInterrupt), keep_previous_run(paths, fresh=True):
        _new_run(paths, KeyboardInterrupt())
    assert (paths[1] / "checkpoint.pt").read_text() == "new weights"  # --resume continues it
    assert (previous_path(paths[1]) / "checkpoint.pt").read_text() == "old weights"
    with pytest.raises(ValueError), keep_previous_run(paths, fresh=True):  # --overwrite again, and it fails
        _new_run(paths, ValueError("bug"))
    assert _snapshot(tmp_path) == before


def test_failed_resume_removes_only_what_it_created(tmp_path, previous):
    paths, before = previous
    extra = tmp_path / "new" / "deeper" / "examples.png"
    with pytest.raises(CebenchError), keep_previous_run([*paths, extra], fresh=False):
        (paths[1] / "checkpoint.pt").write_text("old weights")  # the same run, further on
        extra.parent.mkdir(parents=True)
        extra.write_text("half")
        raise CebenchError("settings differ")
    assert _snapshot(tmp_path) == before and not (tmp_path / "new").exists()


def test_fresh_run_with_nothing_to_restore_keeps_a_checkpoint_it_wrote(tmp_path):
    paths = [tmp_path / "out" / "r.json", tmp_path / "out" / "r.run"]
    with pytest.raises(CebenchError), keep_previous_run(paths, fresh=True, checkpoint=paths[1] / "checkpoint.pt"):
        paths[1].mkdir(parents=True)
        raise CebenchError("bad data")
    assert not (tmp_path / "out").exists()  # a data error leaves no (empty) output folder
    with pytest.raises(CebenchError), keep_previous_run(paths, fresh=True, checkpoint=paths[1] / "checkpoint.pt"):
        paths[1].parent.mkdir()
        _new_run(paths, CebenchError("disk full"))
    assert (paths[1] / "checkpoint.pt").is_file()  # hours of training are not thrown away: --resume


def test_truncate_jsonl_keeps_rows_up_to_the_checkpoint(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text("".join(json.dumps({"step": s}) + "\n" for s in (1, 2, 3, 4)) + '{"step": 5, "lo')  # killed
    truncate_jsonl(path, lambda row: row["step"] <= 2)
    assert path.read_text() == '{"step": 1}\n{"step": 2}\n'
