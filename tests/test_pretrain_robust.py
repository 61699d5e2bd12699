"""Pretraining survives what a long run meets: a JPEG that only fails when decoded (cache off), a kill after a
checkpoint or during a checkpoint write, a failed --overwrite or --resume."""

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

import pretrain.loop
from cebench.errors import CebenchError
from pretrain.data import InpaintingStream, list_images
from pretrain.train import main
from test_pretrain_train import assert_same_weights, make_images, tiny_args


@pytest.fixture(scope="module")
def truncated(tmp_path_factory):
    """Six readable images and one JPEG cut in half: its header parses (PIL verify passes), decoding fails."""
    folder = make_images(tmp_path_factory.mktemp("imgs"), n=6)
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (76, 90, 3), dtype=np.uint8)).save(buffer, "JPEG")
    (folder / "sub" / "cut.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    return folder


def _args(folder, out, *extra):
    return tiny_args(folder, out, "--cache", "off", "--no-figures", "--steps", "6", "--log-every", "1", *extra)


def _meta(path):
    return torch.load(path, weights_only=True)["meta"]


class Killed(Exception):
    """Stands for a kill or a crash: raised from inside the loop, after a checkpoint."""


def _fail_at(monkeypatch, at_step, error=Killed):
    step = pretrain.loop.Trainer.step

    def failing(self, images, masks, s):
        if s == at_step:
            raise error
        return step(self, images, masks, s)

    monkeypatch.setattr(pretrain.loop.Trainer, "step", failing)


def test_truncated_jpeg_is_skipped_named_counted_and_identical_after_resume(truncated, tmp_path, monkeypatch, capsys):
    full = main(_args(truncated, tmp_path / "full" / "ce.pt", "--skip-bad"))
    assert full["skipped_images"] == ["sub/cut.jpg"]
    assert _meta(tmp_path / "full" / "ce.pt")["skipped_images"] == 1
    assert _meta(tmp_path / "full" / "ce.pt")["skipped_image_files"] == ["sub/cut.jpg"]
    assert "skipped unreadable image sub/cut.jpg" in capsys.readouterr().err
    # killed after the checkpoint of step 4 (the file was met before it), then resumed: the same list, the same run
    killed = tmp_path / "killed" / "ce.pt"
    with monkeypatch.context() as m:
        _fail_at(m, 5)
        with pytest.raises(Killed):
            main(_args(truncated, killed, "--skip-bad", "--ckpt-every", "4"))
    assert torch.load(killed.with_name("ce.last.pt"), weights_only=True)["skipped"] == ["sub/cut.jpg"]
    resumed = main(_args(truncated, killed, "--skip-bad", "--ckpt-every", "4", "--resume"))
    assert resumed["skipped_images"] == full["skipped_images"]
    assert _meta(killed)["skipped_image_files"] == ["sub/cut.jpg"]
    assert_same_weights(killed, tmp_path / "full" / "ce.pt")
    # metrics.jsonl: each step once, as in the uninterrupted run (step 5 was logged before the kill, then replayed)
    rows = [json.loads(line) for line in killed.with_name("ce.metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows if "loss" in row] == [1, 2, 3, 4, 5, 6]
    # feature-health rows: one per checkpoint (steps 4 and 6), none repeated by the resume
    assert [row["step"] for row in rows if "loss" not in row] == [4, 6]


def test_without_the_flag_a_decode_failure_is_one_line_and_the_checkpoint_stays(truncated, tmp_path):
    # one image per step, and a seed whose first step reads a good image: a checkpoint exists when cut.jpg comes
    paths = list_images(truncated)
    bad = next(i for i, p in enumerate(paths) if p.name == "cut.jpg")
    seed = next(s for s in range(20) if InpaintingStream(paths, 64, 72, "random-block", s).image_index(0) != bad)
    out = tmp_path / "ce.pt"
    with pytest.raises(CebenchError, match=r"cut\.jpg: unreadable image .*truncated.*--skip-bad") as err:
        main(_args(truncated, out, "--ckpt-every", "1", "--batch-size", "1", "--seed", str(seed)))
    assert "\n" not in str(err.value)
    assert torch.load(out.with_name("ce.last.pt"), weights_only=True)["step"] >= 1 and not out.exists()


def test_kill_during_a_checkpoint_write_leaves_no_temp_file(tmp_path, monkeypatch):
    folder = make_images(tmp_path / "imgs", n=6)
    out = tmp_path / "run" / "ce.pt"
    main(tiny_args(folder, out, "--max-steps", "2", "--no-figures"))
    (out.parent / ".ce.last.pt.x1y2z3ab.tmp").write_bytes(b"PK half a zip")  # what a SIGKILL in torch.save leaves

    def half_save(obj, f):
        f.write(b"PK half a zip")
        raise Killed

    with monkeypatch.context() as m:
        m.setattr(torch, "save", half_save)
        with pytest.raises(Killed):
            main(tiny_args(folder, out, "--max-steps", "4", "--no-figures", "--resume"))
    assert not list(out.parent.glob("*.tmp"))  # the stale one went at the start, the new one on the failure
    assert torch.load(out.with_name("ce.last.pt"), weights_only=True)["step"] == 2  # the last good checkpoint
    main(tiny_args(folder, out, "--max-steps", "4", "--no-figures", "--resume"))
    assert _meta(out)["steps"] == 4


def _files(folder):  # every file of the run, TensorBoard events included, by its path in the folder
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_failed_overwrite_or_resume_leaves_the_previous_run_whole(tmp_path, monkeypatch):
    folder = make_images(tmp_path / "imgs", n=6)
    out = tmp_path / "run" / "ce.pt"
    main(tiny_args(folder, out, "--max-steps", "2", "--log-every", "1"))
    before = _files(out.parent)
    assert {"ce.pt", "ce.last.pt", "ce.metrics.jsonl", "ce.config.json", "ce.loss.png"} <= set(before)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CebenchError, match="no .jpg"):  # a data error
        main(tiny_args(tmp_path / "empty", out, "--max-steps", "2", "--overwrite"))
    assert _files(out.parent) == before
    with monkeypatch.context() as m:  # an error in the middle of the new run, after its first checkpoints
        _fail_at(m, 3, CebenchError("disk full"))
        with pytest.raises(CebenchError, match="disk full"):
            main(tiny_args(folder, out, "--max-steps", "4", "--ckpt-every", "1", "--seed", "1", "--overwrite"))
    assert _files(out.parent) == before
    with pytest.raises(CebenchError, match="settings differ"):
        main(tiny_args(folder, out, "--max-steps", "4", "--resume", "--lr", "0.5"))
    assert _files(out.parent) == before
