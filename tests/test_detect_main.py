"""`python -m transfer.detect` end to end: tiny VOCdevkit smoke runs, devkit files, COCO input, real voc-mini."""

import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest

from cebench.errors import CebenchError
from evaluation.metrics import detection_map
from test_metrics import reference_detection_ap
from transfer.detect import main
from voc.devkit import VOC_CLASSES
from vocfactory import help_text, make_vocdevkit

FAST = ["--train-split", "train", "--test-split", "val", "--scale", "96", "--max-size", "128", "--steps", "2",
        "--fc-dim", "32", "--width", "0.25", "--rescale-images", "4", "--ss-workers", "1", "--seed", "0"]


def read_devkit(folder, split, classes):
    """Parse comp4_det_<split>_<class>.txt files the way the devkit does (independent of our writer)."""
    detections = {}
    for c, name in enumerate(classes):
        rows = (Path(folder) / f"comp4_det_{split}_{name}.txt").read_text().split("\n")
        detections[c] = [(r.split()[0], *map(float, r.split()[1:])) for r in rows if r.strip()]
    return detections


def voc_ground_truth(info, split):
    gt = {}
    for image_id in info.splits[split]:
        gt[image_id] = [(VOC_CLASSES.index(n), *box, d) for n, box, d in info.objects[image_id]]
    return gt


def test_help_lists_the_main_flags(capsys):
    out = help_text(main, capsys)
    for flag in ("--weights", "--proposals", "--coco-json", "--write-devkit", "--max-steps", "--voc-root"):
        assert flag in out


def test_two_step_smoke_run_record_devkit_and_cache(tmp_path):
    info = make_vocdevkit(tmp_path / "voc", splits={"train": 6, "val": 4}, size=(96, 72))
    argv = ["--voc-root", str(info.root), *FAST, "--proposals-cache", str(tmp_path / "cache"),
            "--out", str(tmp_path / "out" / "det.json"), "--write-devkit", str(tmp_path / "devkit"), "--examples", "2"]
    first = main(argv)
    assert first["steps"] == 2 and first["proposals"] == {"hits": 0, "computed": 10}
    record = json.loads((tmp_path / "out" / "det.json").read_text())
    assert record["task"] == "detection" and record["init"] == "random" and record["split"] == "val"
    assert set(record["per_class"]) == set(VOC_CLASSES) and record["n_images"] == 4
    assert 0 <= record["value"] <= 100 and record["ci95"][0] <= record["value"] <= record["ci95"][1]
    assert record["coco_ap"] is not None and record["n_proposals_mean"] > 0
    assert record["protocol"]["test"]["nms"] == 0.3 and record["protocol"]["rois_per_image"] == 64
    assert record["protocol"]["interval"].startswith("BCa")
    health = record["feature_health"]  # the 6 training images at the backbone's 227 px, after rescaling
    assert health["n_images"] == 6 and health["image_size"] == 227 and health["weights"].startswith("after")
    assert 0 <= health["dead_units"]["conv5"] <= 1 and health["pool5_effective_rank"] <= 6
    assert record["complete"] and record["schedule"] == {"unit": "iterations", "steps_run": 2, "steps": 2}
    assert record["data_path"] == record["protocol"]["data_path"] == record["config"]["data_path"] == "loader"
    # The devkit files, read back independently of our writer, give the record's mAP, scored by our metric and
    # by the plain-loop port of the devkit's VOCevaldet in test_metrics (independent of evaluation.metrics).
    devkit, gt = read_devkit(tmp_path / "devkit", "val", VOC_CLASSES), voc_ground_truth(info, "val")
    with warnings.catch_warnings():  # most classes have no object in 4 tiny images
        warnings.simplefilter("ignore", UserWarning)
        value, _ = detection_map(devkit, gt)
    reference = [reference_detection_ap(devkit, gt, c, 0.5, use_07_metric=True) for c in range(len(VOC_CLASSES))]
    assert 100 * value == pytest.approx(record["value"], abs=1e-4)  # the record rounds to 4 decimals
    assert 100 * np.nanmean(reference) == pytest.approx(record["value"], abs=1e-4)
    assert len(list((tmp_path / "out" / "det_examples").glob("*.png"))) == 2
    with pytest.raises(CebenchError, match="exists"):  # nothing silently overwritten
        main(argv)
    second = main([*argv, "--overwrite"])
    assert second["proposals"] == {"hits": 10, "computed": 0}  # the cache is reused
    assert second["value"] == first["value"]  # seeded end to end


def test_bad_voc_root_is_one_clear_error(tmp_path):
    with pytest.raises(CebenchError, match="VOC2007 not found"):
        main(["--voc-root", str(tmp_path), *FAST, "--out", str(tmp_path / "d.json")])


def _coco_file(info, split, path):
    images, annotations = [], []
    for n, image_id in enumerate(info.splits[split], 1):
        from PIL import Image
        w, h = Image.open(info.path("jpg", image_id)).size
        images.append({"id": n, "file_name": f"{image_id}.jpg", "width": w, "height": h})
        for name, (x1, y1, x2, y2), difficult in info.objects[image_id]:
            annotations.append({"id": len(annotations) + 1, "image_id": n, "category_id": VOC_CLASSES.index(name) + 1,
                                "bbox": [x1 - 1, y1 - 1, x2 - x1 + 1, y2 - y1 + 1], "area": 1.0,
                                "iscrowd": int(difficult)})
    categories = [{"id": k + 1, "name": c} for k, c in enumerate(VOC_CLASSES)]
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


@pytest.mark.integration
def test_coco_input_gives_the_same_numbers_as_voc(tmp_path):
    info = make_vocdevkit(tmp_path / "voc", splits={"train": 6, "val": 4}, size=(96, 72))
    common = [*FAST, "--proposals-cache", str(tmp_path / "cache")]
    voc = main(["--voc-root", str(info.root), *common, "--out", str(tmp_path / "voc.json")])
    coco = main(["--coco-json", str(_coco_file(info, "train", tmp_path / "train.json")),
                 "--coco-test-json", str(_coco_file(info, "val", tmp_path / "val.json")),
                 "--coco-images", str(info.base / "JPEGImages"), *common, "--out", str(tmp_path / "coco.json")])
    assert coco["proposals"]["computed"] == 0  # same image bytes: the cache is keyed by content, not id
    assert coco["value"] == pytest.approx(voc["value"]) and coco["coco_ap"] == pytest.approx(voc["coco_ap"])


def _real_subset(root, out, n_train=6, n_val=4):
    """A VOCdevkit of a handful of real voc-mini images (symlinks) with its own Main/train.txt and val.txt."""
    src, dst = Path(root) / "VOC2007", Path(out) / "VOC2007"
    (dst / "ImageSets" / "Main").mkdir(parents=True)
    for folder in ("JPEGImages", "Annotations"):
        (dst / folder).mkdir()
    for split, n in (("train", n_train), ("val", n_val)):
        ids = (src / "ImageSets" / "Main" / f"{split}.txt").read_text().split()[:n]
        (dst / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(ids) + "\n")
        for i in ids:
            os.symlink(src / "JPEGImages" / f"{i}.jpg", dst / "JPEGImages" / f"{i}.jpg")
            os.symlink(src / "Annotations" / f"{i}.xml", dst / "Annotations" / f"{i}.xml")
    return out


@pytest.mark.integration
def test_short_run_on_real_voc_images(voc_mini_root, tmp_path):
    root = _real_subset(voc_mini_root, tmp_path / "voc")
    result = main(["--profile", "voc-mini", "--voc-root", str(root), "--train-split", "train", "--test-split", "val",
                   "--max-steps", "2", "--fc-dim", "64", "--rescale-images", "2", "--proposals-cache",
                   str(tmp_path / "cache"), "--out", str(tmp_path / "real.json")])
    record = json.loads((tmp_path / "real.json").read_text())
    assert result["steps"] == 2 and record["n_images"] == 4 and record["protocol"]["scale"] == 224
    assert 50 < record["n_proposals_mean"] <= 2000  # selective search on real 224 px images
    assert record["value"] is not None and record["ci95"][0] <= record["value"] <= record["ci95"][1]
    # without --write-devkit the devkit results files are kept in the run folder, one per class
    assert Path(record["devkit_dir"]) == tmp_path / "real.run" / "devkit"
    assert len(list(Path(record["devkit_dir"]).glob("comp4_det_val_*.txt"))) == len(VOC_CLASSES)


def test_context_encoder_weights_keep_the_trunk_and_refit_only_fc(tmp_path):
    from pretrain.model import AlexNetEncoder, ContextEncoder
    from pretrain.weights import save_checkpoint

    ce = save_checkpoint(tmp_path / "ce.pt", ContextEncoder(AlexNetEncoder(width=0.5), input_size=96), {"steps": 1})
    info = make_vocdevkit(tmp_path / "voc", splits={"train": 4, "val": 2}, size=(96, 72))
    result = main(["--voc-root", str(info.root), *FAST, "--weights", str(ce), "--max-steps", "1",
                   "--proposals-cache", str(tmp_path / "cache"), "--out", str(tmp_path / "ce.json")])
    record = json.loads((tmp_path / "ce.json").read_text())
    assert result["steps"] == 1 and record["init"] == "ce" and record["protocol"]["fc_init"] == "gaussian"
    assert record["protocol"]["rescaling"]["normalised_layers"] == 3  # fc6, fc7, cls_score: conv1-5 come from ce.pt
    assert record["protocol"]["architecture"]["width"] == 0.5  # the weights decide the trunk, not --width
