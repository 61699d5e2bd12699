"""Training curves: metrics.jsonl mirrored to TensorBoard (rank 0, when installed) and a PNG per run without it."""

import json
from dataclasses import replace

import pytest
import torch
from PIL import Image
from test_pretrain_train import make_images, tiny_args as pretrain_args
from test_transfer_engine import CONFIG, ToyTask, toy_model
from vocfactory import make_vocdevkit

from cebench import curves
from cebench.errors import CebenchError
from cebench.runtime import Runtime
from pretrain.train import main as pretrain_main
from transfer import classify
from transfer.engine import fit

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

CPU = Runtime(device=torch.device("cpu"))


def scalars(folder):
    """{tag: [(step, value), ...]} of the event files in `folder`, as TensorBoard reads them (purges applied)."""
    events = EventAccumulator(str(folder))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def assert_png(path):
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] > 300 and image.size[1] > 200


def test_runlog_writes_jsonl_scalars_and_png(tmp_path):
    log = curves.RunLog(tmp_path / "metrics.jsonl", tmp_path / "tb", curves=tmp_path / "curves.png")
    for step in (1, 2, 3):
        log.write({"step": step, "loss": 1.0 / step, "lr": 0.1, "grad_norm": None})
    log.write({"step": 3, "eval": True, "map": 0.5})
    log.close()
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 4
    tags = scalars(tmp_path / "tb")
    assert tags["train/loss"] == [(1, 1.0), (2, 0.5), (3, pytest.approx(1 / 3))]
    assert tags["eval/map"] == [(3, 0.5)] and "train/grad_norm" not in tags
    assert_png(tmp_path / "curves.png")
    assert not list(tmp_path.glob(".curves.png.*"))  # written through a temporary file, which is gone


def test_other_ranks_write_nothing(tmp_path):
    log = curves.RunLog(tmp_path / "m.jsonl", tmp_path / "tb", enabled=False, curves=tmp_path / "c.png")
    log.write({"step": 1, "loss": 1.0})
    log.close()
    assert list(tmp_path.iterdir()) == []


def test_without_the_package_auto_is_off_and_a_folder_is_refused(monkeypatch, tmp_path):
    monkeypatch.setattr(curves, "tensorboard_installed", lambda: False)
    assert curves.tensorboard_dir("auto", tmp_path / "tb") is None
    assert curves.tensorboard_dir("off", tmp_path / "tb") is None
    with pytest.raises(CebenchError, match="tensorboard package is not installed") as err:
        curves.tensorboard_dir(str(tmp_path / "tb"), None)
    assert "\n" not in str(err.value)
    monkeypatch.setattr(curves, "tensorboard_installed", lambda: True)
    assert curves.tensorboard_dir("auto", tmp_path / "tb") == tmp_path / "tb"


def test_engine_logs_loss_lr_and_evaluations_and_a_restart_replaces_old_events(tmp_path):
    config = replace(CONFIG, eval_every=4)
    for _ in range(2):  # a fresh run in the same folder: TensorBoard shows only the second one
        fit(ToyTask(), toy_model(), config, tmp_path, CPU, resume=False)
    tags = scalars(tmp_path / "tensorboard")
    assert [s for s, _ in tags["train/loss"]] == list(range(1, 9))
    assert [s for s, _ in tags["train/lr"]] == list(range(1, 9)) and tags["train/lr"][0][1] == pytest.approx(0.05)
    assert [s for s, _ in tags["eval/mse"]] == [4, 8]  # the periodic evaluation and the final one
    assert_png(tmp_path / "curves.png")


def test_engine_without_tensorboard_still_draws_the_png(tmp_path):
    fit(ToyTask(), toy_model(), replace(CONFIG, steps=3), tmp_path, CPU, tensorboard="off")
    assert not (tmp_path / "tensorboard").exists()
    assert_png(tmp_path / "curves.png")


def test_classify_run_folder_has_events_and_curves(tmp_path):
    voc = make_vocdevkit(tmp_path / "VOCdevkit", splits={"train": 8, "val": 4}, seed=2)
    out = tmp_path / "classification_random.json"
    with pytest.warns(UserWarning):  # the tiny devkit lacks classes: their AP is nan, as it should be
        classify.main(["--voc-root", str(voc.root), "--train-split", "train", "--test-split", "val",
                       "--input-size", "64", "--base-size", "80", "--width", "0.25", "--fc-dim", "32", "--steps",
                       "2", "--batch-size", "4", "--log-every", "1", "--rescale-images", "4",
                       "--rescale-iterations", "1", "--test-crops", "1", "--device", "cpu", "--out", str(out)])
    run = tmp_path / "classification_random.run"
    assert_png(run / "curves.png")
    tags = scalars(run / "tensorboard")
    assert {"train/loss", "train/lr"} <= set(tags) and any(t.startswith("eval/") for t in tags)


def test_pretrain_logs_to_a_chosen_folder(tmp_path):
    images = make_images(tmp_path / "imgs", n=6)
    out = tmp_path / "run" / "ce.pt"
    pretrain_main(pretrain_args(images, out, "--max-steps", "2", "--log-every", "1", "--tensorboard",
                                str(tmp_path / "events"), "--no-figures"))
    rows = [json.loads(line) for line in (tmp_path / "run" / "ce.metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "loss" in r]  # the others: feature health at the checkpoint
    tags = scalars(tmp_path / "events")
    assert [s for s, _ in tags["train/loss"]] == [r["step"] for r in rows] == [1, 2]
    assert not (tmp_path / "run" / "ce.tensorboard").exists()
