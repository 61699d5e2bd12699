"""transfer.segment end to end: --help, a 2-step run on a tiny VOCdevkit, the record, predictions re-scored."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import confusion_matrix
from vocfactory import help_text, make_vocdevkit

from cebench.errors import CebenchError
from cebench.records import read_record
from transfer.segment import main
from transfer.segmentation.task import SEG_CLASSES, segmentation_loss
from voc.devkit import load_mask

TINY = ["--weights", "random", "--width", "0.25", "--fc-dim", "16", "--input-size", "96", "--steps", "2",
        "--batch-size", "2", "--accum-steps", "2", "--crop-size", "40", "--min-scale", "0.7", "--max-scale", "1.3",
        "--flip-prob", "0.5", "--rescale-images", "4", "--lr", "0.01", "--loss-normalization", "valid",
        "--n-boot", "200", "--device", "cpu", "--examples", "2"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("seg")
    info = make_vocdevkit(tmp / "voc", splits={"train": 6, "val": 4})
    out = tmp / "seg.json"
    metrics = main(["--voc-root", str(info.root), "--out", str(out), *TINY])
    return info, out, metrics


def _rescored(record, info, split):
    """mIoU from the saved palette PNGs with sklearn's confusion matrix, independent of evaluation.metrics."""
    total = np.zeros((21, 21), dtype=np.int64)
    for image_id in info.splits[split]:
        pred = load_mask(Path(record["predictions"]) / f"{image_id}.png").ravel()
        truth = load_mask(info.path("png", image_id)).ravel()
        keep = truth != 255
        total += confusion_matrix(truth[keep], pred[keep], labels=list(range(21)))
    inter = np.diag(total)
    union = total.sum(0) + total.sum(1) - inter
    iou = inter[union > 0] / union[union > 0]
    return iou.mean(), np.diag(total).sum() / total.sum()


def test_two_step_run_writes_a_record_predictions_and_examples(tiny_run):
    info, out, metrics = tiny_run
    record = read_record(out)
    assert record["task"] == "segmentation" and record["metric"] == "mIoU" and record["init"] == "random"
    assert record["dataset"] == "VOC2007" and record["split"] == "val" and record["n_images"] == 4
    assert record["steps_done"] == 2 and list(record["per_class"]) == list(SEG_CLASSES)
    assert record["data_path"] == record["protocol"]["data_path"] == record["config"]["data_path"] == "loader"
    assert record["complete"] and record["schedule"]["steps_run"] == record["schedule"]["steps"] == 2
    assert 0 <= record["ci95"][0] <= record["value"] <= record["ci95"][1] <= 100
    assert record["protocol"]["model"]["variant"] == "FCN-32s" and record["protocol"]["interval"].startswith("BCa")
    assert sorted(record["feature_health"]["dead_units"]) == [f"conv{k}" for k in range(1, 6)]
    assert record["feature_health"]["weights"] == "after Krähenbühl rescaling"
    assert abs(metrics["miou"] * 100 - record["value"]) < 1e-3 and metrics["out"] == str(out)
    assert Path(record["examples"]).is_file() and (Path(record["run_dir"]) / "checkpoint.pt").is_file()
    for image_id in info.splits["val"]:  # predictions have the size of the ground truth, labels 0..20 only
        pred = load_mask(Path(record["predictions"]) / f"{image_id}.png")
        assert pred.shape == load_mask(info.path("png", image_id)).shape and pred.max() <= 20


def test_saved_predictions_rescored_by_sklearn_agree_with_the_record(tiny_run):
    info, out, _ = tiny_run
    record = read_record(out)
    miou, pixel_acc = _rescored(record, info, "val")
    assert abs(100 * miou - record["value"]) < 1e-3
    assert abs(100 * pixel_acc - record["pixel_acc"]) < 1e-3


def test_an_existing_record_is_not_overwritten_without_asking(tiny_run):
    info, out, _ = tiny_run
    with pytest.raises(CebenchError, match="--overwrite"):
        main(["--voc-root", str(info.root), "--out", str(out), *TINY])


def test_resume_continues_the_run_to_a_later_step(tiny_run, tmp_path):
    info, out, _ = tiny_run
    copy = tmp_path / "seg.json"
    args = ["--voc-root", str(info.root), "--out", str(copy), *TINY]
    main([*args, "--max-steps", "1"])
    assert not read_record(copy)["complete"]  # a --max-steps trial says it is one
    main([*args, "--resume"])
    lines = [json.loads(x) for x in (tmp_path / "seg.run" / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in lines if row.get("final")] == [1, 2]
    assert read_record(copy)["steps_done"] == 2 and read_record(copy)["complete"]


def test_loss_normalizations():
    scores = torch.zeros(2, 21, 3, 4)  # uniform: every labelled pixel costs log(21)
    masks = torch.full((2, 3, 4), 255)
    masks[0, 0, :3] = 3
    assert segmentation_loss(scores, masks, "valid").item() == pytest.approx(np.log(21))
    assert segmentation_loss(scores, masks, "batch").item() == pytest.approx(3 * np.log(21) / 2)
    assert segmentation_loss(scores, torch.full((2, 3, 4), 255), "valid").item() == 0.0


def test_help_explains_the_flags(capsys):
    text = help_text(main, capsys)
    for flag in ("--weights", "--voc-root", "--variant", "--save-predictions", "--max-steps", "--profile"):
        assert flag in text


@pytest.mark.integration
def test_short_run_on_real_voc_masks(voc_mini_root, tmp_path):
    out = tmp_path / "seg.json"
    main(["--voc-root", str(voc_mini_root), "--out", str(out), *TINY, "--test-split", "val", "--steps", "1",
          "--crop-size", "96", "--batch-size", "2", "--accum-steps", "1", "--examples", "1"])
    record = read_record(out)
    assert record["n_images"] == 114 and record["dataset"] == "VOC2007"
    preds = sorted(Path(record["predictions"]).glob("*.png"))
    assert len(preds) == 114
    for path in preds[:10]:
        assert set(np.unique(load_mask(path)).tolist()) <= set(range(21))


def test_score_biases_learn_at_twice_the_rate_without_decay():
    from pretrain.model import AlexNetEncoder
    from transfer.segmentation.model import FCN
    from transfer.segmentation.task import SegmentationTask

    model = FCN(AlexNetEncoder(width=0.125), variant="16s", fc_channels=8, learn_upsampling=False)
    rest, score_bias = SegmentationTask([], [], n_examples=0).param_groups(model)
    assert {id(p) for p in score_bias["params"]} == {id(model.score.bias), id(model.score_conv5.bias)}
    assert score_bias["lr_mult"] == 2.0 and score_bias["weight_decay"] == 0.0
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert {id(p) for p in rest["params"]} == trainable - {id(p) for p in score_bias["params"]}
    assert all(id(up.weight) not in trainable for up in model.upsample)  # fixed bilinear: not optimised
