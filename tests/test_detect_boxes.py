"""Ground-truth boxes outside their image: partly outside are clipped and counted, wholly outside are an error
naming the annotation file, or with --skip-bad the image is left out and counted."""

import json

import numpy as np
import pytest
from vocfactory import make_vocdevkit, set_box

from cebench.errors import CebenchError
from transfer.detect import main
from transfer.detection.coco import load_coco_split
from transfer.detection.data import from_voc, ground_truth
from voc.devkit import load_split

FAST = ["--train-split", "train", "--test-split", "val", "--scale", "96", "--max-size", "128", "--steps", "1",
        "--fc-dim", "32", "--width", "0.25", "--rescale-images", "2", "--ss-workers", "1", "--max-proposals", "100",
        "--device", "cpu"]


@pytest.fixture()
def voc(tmp_path):
    return make_vocdevkit(tmp_path / "VOCdevkit", splits={"train": 4, "val": 3}, size=(96, 72), max_objects=2)


def test_partly_outside_is_clipped_and_counted(voc):
    first = voc.splits["val"][0]
    w, h = set_box(voc, first, 0, (5, 10, 200, 90))  # reaches past the right and bottom edges
    split = from_voc(load_split(voc.root, "2007", "val"))
    assert split.boxes_clipped == 1 and len(split) == 3 and not split.skipped
    np.testing.assert_array_equal(split.boxes[0][0], [4, 9, w, h])  # continuous pixels, inside the image
    assert ground_truth(split)[first][0][1:5] == (5.0, 10.0, float(w), float(h))  # VOC's inclusive pixels


def test_wholly_outside_is_an_error_naming_the_file_or_skipped(voc):
    second = voc.splits["val"][1]
    w, _ = set_box(voc, second, 0, (200, 5, 240, 30))  # starts right of the image
    xml = voc.path("xml", second)
    with pytest.raises(CebenchError, match=f"{xml}: the '.*' box \\(200, 5, 240, 30\\).* outside the {w}x"):
        from_voc(load_split(voc.root, "2007", "val"))
    split = from_voc(load_split(voc.root, "2007", "val"), skip_bad=True)
    assert second not in split.ids and len(split) == 2 and split.skipped[0]["id"] == second
    assert str(xml) in split.skipped[0]["reason"]
    set_box(voc, second, 0, (w, 5, w, 30))  # a 1-pixel column on the border survives clipping
    assert len(from_voc(load_split(voc.root, "2007", "val"))) == 3


def test_coco_boxes_are_fitted_the_same_way(tmp_path, voc):
    sizes = [(a.width, a.height) for a in load_split(voc.root, "2007", "val").annotations]
    images = [{"id": n, "file_name": f"{i}.jpg", "width": w, "height": h}
              for n, (i, (w, h)) in enumerate(zip(voc.splits["val"], sizes, strict=True))]
    anns = [{"id": 1, "image_id": 0, "category_id": 1, "bbox": [-5, 2, 20, 10], "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [500, 2, 20, 10], "iscrowd": 0}]
    path = tmp_path / "coco.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": [{"id": 1, "name": "cat"}]}))
    with pytest.raises(CebenchError, match="coco.json: image 1's box .*500.* outside"):
        load_coco_split(path, voc.base / "JPEGImages")
    split = load_coco_split(path, voc.base / "JPEGImages", skip_bad=True)
    assert split.boxes_clipped == 1 and split.ids == ["0", "2"] and split.boxes[0][0].tolist() == [0, 2, 15, 12]


def test_detect_records_clipped_boxes_and_refuses_boxes_outside(voc, tmp_path):
    set_box(voc, voc.splits["train"][0], 0, (3, 3, 500, 20))
    set_box(voc, voc.splits["val"][0], 0, (3, 3, 20, 500))
    argv = ["--voc-root", str(voc.root), *FAST, "--proposals-cache", str(tmp_path / "cache")]
    main([*argv, "--out", str(tmp_path / "det.json")])
    record = json.loads((tmp_path / "det.json").read_text())
    assert record["boxes_clipped"] == {"train": 1, "test": 1} and record["n_skipped"] == 0
    set_box(voc, voc.splits["val"][1], 0, (3, 400, 20, 500))  # below the image
    with pytest.raises(CebenchError, match="Annotations/.*xml: the .* outside"):
        main([*argv, "--out", str(tmp_path / "det2.json")])
    assert not (tmp_path / "det2.json").exists()
