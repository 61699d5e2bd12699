"""The Fast R-CNN module and the detection data pieces: shapes, gradients, stride, flips, padding, COCOeval."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from cebench.errors import CebenchError
from transfer.backbone import build_backbone
from transfer.detection.coco import coco_ap, coco_from_split, load_coco_split
from transfer.detection.data import DetectionSplit, collate_rois, flip_boxes, image_scale
from transfer.detection.model import FastRCNN, trunk_stride


@pytest.mark.parametrize("arch", [{"arch": "caffenet", "width": 0.25}, {"arch": "torchvision", "width": 0.25}])
def test_fast_rcnn_shapes_stride_and_gradients(arch):
    backbone, _ = build_backbone("random", arch=arch, input_size=227, fc_dim=32, seed=0)
    model = FastRCNN(backbone, num_classes=5, generator=torch.Generator().manual_seed(0))
    assert trunk_stride(backbone.encoder) == 16 and model.spatial_scale == 1 / 16 and model.pool_size == (6, 6)
    images = torch.randn(2, 3, 96, 128)
    rois = torch.tensor([[0, 0.0, 0.0, 60.0, 50.0], [1, 10.0, 20.0, 120.0, 90.0], [1, 5.0, 5.0, 20.0, 20.0]])
    logits, deltas = model(images, rois)
    assert logits.shape == (3, 5) and deltas.shape == (3, 20) and torch.isfinite(logits).all()
    (logits.sum() + deltas.sum()).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing
    assert len(model.state_dict()) == len(dict(model.named_parameters()))  # trunk not registered twice


def test_image_scale_follows_fast_rcnn():
    assert image_scale(500, 375, 600, 1000) == pytest.approx(1.6)  # shorter side to 600
    assert image_scale(1000, 300, 600, 1000) == pytest.approx(1.0)  # longer side capped at 1000
    assert image_scale(224, 168, 224, 224) == pytest.approx(1.0)


def test_flip_twice_is_identity_and_mirrors():
    boxes = np.array([[0, 0, 10, 5], [30, 2, 64, 9]], np.float32)
    assert flip_boxes(boxes, 64).tolist() == [[54, 0, 64, 5], [0, 2, 34, 9]]
    assert np.array_equal(flip_boxes(flip_boxes(boxes, 64), 64), boxes)


def test_collate_pads_and_indexes_rois():
    a = (torch.zeros(3, 10, 12, dtype=torch.uint8), torch.ones(2, 4), torch.tensor([1, 0]), torch.zeros(2, 4))
    b = (torch.zeros(3, 14, 8, dtype=torch.uint8), torch.ones(3, 4), torch.tensor([0, 0, 2]), torch.zeros(3, 4))
    images, rois, labels, targets = collate_rois([a, b])
    assert images.shape == (2, 3, 14, 12) and rois.shape == (5, 5) and labels.tolist() == [1, 0, 0, 0, 2]
    assert rois[:, 0].tolist() == [0, 0, 1, 1, 1] and targets.shape == (5, 4)
    assert images[0, :, 12:].float().mean() > 0  # padded with the mean colour, 0 once normalised


def _toy_split():
    boxes = [np.array([[10, 10, 50, 60], [5, 5, 20, 20]], np.float32), np.array([[0, 0, 30, 30]], np.float32)]
    return DetectionSplit("toy", ("a", "b"), ["x", "y"], ["x.jpg", "y.jpg"], [(100, 100), (64, 64)], boxes,
                          [np.array([1, 2]), np.array([2])], [np.array([False, False]), np.array([False])])


def test_cocoeval_perfect_detections_score_one_and_shifted_less():
    split = _toy_split()
    perfect = {i: (b, np.ones(len(b)), c) for i, b, c in zip(split.ids, split.boxes, split.labels, strict=True)}
    assert coco_ap(split, perfect) == {"ap": pytest.approx(1.0), "ap50": pytest.approx(1.0)}
    shifted = {i: (b + 4, s, c) for i, (b, s, c) in perfect.items()}
    worse = coco_ap(split, shifted)
    assert worse["ap"] < 1.0 and worse["ap50"] <= 1.0
    assert coco_ap(split, {}) == {"ap": 0.0, "ap50": 0.0}


def test_difficult_objects_become_crowd_regions():
    split = _toy_split()
    split.difficult[0] = np.array([False, True])
    gt = coco_from_split(split)
    crowd = [a for a in gt.dataset["annotations"] if a["iscrowd"]]
    assert len(crowd) == 1 and crowd[0]["bbox"] == [5.0, 5.0, 15.0, 15.0]
    # Detections of the two non-difficult objects only: nothing is missing, AP stays 1.
    dets = {"x": (split.boxes[0][:1], np.ones(1), np.array([1])), "y": (split.boxes[1], np.ones(1), np.array([2]))}
    assert coco_ap(split, dets)["ap"] == pytest.approx(1.0)


def test_load_coco_split(tmp_path):
    Image.new("RGB", (40, 30)).save(tmp_path / "a.jpg")
    data = {"images": [{"id": 7, "file_name": "a.jpg", "width": 40, "height": 30}],
            "annotations": [{"id": 1, "image_id": 7, "category_id": 3, "bbox": [2, 3, 10, 5], "area": 50,
                             "iscrowd": 0},
                            {"id": 2, "image_id": 7, "category_id": 9, "bbox": [0, 0, 4, 4], "area": 16,
                             "iscrowd": 1}],
            "categories": [{"id": 9, "name": "dog"}, {"id": 3, "name": "cat"}]}
    (tmp_path / "a.json").write_text(json.dumps(data))
    split = load_coco_split(tmp_path / "a.json", tmp_path)
    assert split.classes == ("cat", "dog") and split.ids == ["7"] and split.sizes == [(40, 30)]
    assert split.boxes[0].tolist() == [[2, 3, 12, 8], [0, 0, 4, 4]] and split.labels[0].tolist() == [1, 2]
    assert split.difficult[0].tolist() == [False, True]
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(CebenchError, match="bad.json"):
        load_coco_split(tmp_path / "bad.json", tmp_path)
    data["images"][0]["file_name"] = "missing.jpg"
    (tmp_path / "b.json").write_text(json.dumps(data))
    with pytest.raises(CebenchError, match="missing.jpg"):
        load_coco_split(tmp_path / "b.json", tmp_path)
