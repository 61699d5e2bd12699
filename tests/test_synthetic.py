"""The synthetic VOCdevkit of the smoke profile: byte-identical per seed, valid VOC layout, never clobbers data."""

import hashlib
import shutil
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from PIL import Image

from cebench import CebenchError
from voc.devkit import VOC_CLASSES, dataset_name, load_split, segmentation_files, synthetic_info, voc_palette
from voc.synthetic import CLASSES, main

SMALL = ["--n-train", "24", "--n-val", "12", "--size", "64"]


def _tree_digest(root):
    """sha256 over every file's relative path and bytes."""
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def devkit(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "smoke"
    main(["--out", str(out), *SMALL])
    return out


def test_same_seed_same_bytes_other_seed_other_bytes(devkit, tmp_path):
    main(["--out", str(tmp_path / "again"), *SMALL])
    main(["--out", str(tmp_path / "seed1"), *SMALL, "--seed", "1"])
    assert _tree_digest(tmp_path / "again") == _tree_digest(devkit)
    assert _tree_digest(tmp_path / "seed1") != _tree_digest(devkit)


def _lines(path):
    return [line for line in path.read_text().splitlines() if line]


def test_image_sets_are_consistent(devkit):
    sets = devkit / "VOCdevkit/VOC2007/ImageSets"
    train, val, trainval = (_lines(sets / f"Main/{s}.txt") for s in ("train", "val", "trainval"))
    assert (len(train), len(val)) == (24, 12) and not set(train) & set(val)
    assert trainval == sorted(train + val)
    seg = {s: _lines(sets / f"Segmentation/{s}.txt") for s in ("train", "val", "trainval")}
    assert (len(seg["train"]), len(seg["val"])) == (12, 6)  # --seg-fraction 0.5 of each split
    assert set(seg["train"]) <= set(train) and set(seg["val"]) <= set(val)
    assert seg["trainval"] == sorted(seg["train"] + seg["val"])
    for split, ids in (("train", train), ("val", val), ("trainval", trainval)):
        for name in VOC_CLASSES:
            rows = [line.split() for line in _lines(sets / f"Main/{name}_{split}.txt")]
            assert [r[0] for r in rows] == ids and all(r[1] in ("1", "0", "-1") for r in rows)


def _objects(xml_path):
    root = ET.parse(xml_path).getroot()
    size = root.find("size")
    objs = [{"name": o.findtext("name"), "difficult": int(o.findtext("difficult")),
             "truncated": int(o.findtext("truncated")), "pose": o.findtext("pose"),
             "box": [int(o.find("bndbox").findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")]}
            for o in root.findall("object")]
    return root, int(size.findtext("width")), int(size.findtext("height")), objs


def test_annotations_images_and_masks_agree(devkit):
    base = devkit / "VOCdevkit/VOC2007"
    seg_ids = set(_lines(base / "ImageSets/Segmentation/trainval.txt"))
    flags = {name: dict(line.split() for line in _lines(base / f"ImageSets/Main/{name}_trainval.txt"))
             for name in VOC_CLASSES}
    seen_classes = set()
    for image_id in _lines(base / "ImageSets/Main/trainval.txt"):
        root, w, h, objs = _objects(base / "Annotations" / f"{image_id}.xml")
        assert root.findtext("folder") == "VOC2007" and root.findtext("filename") == f"{image_id}.jpg"
        with Image.open(base / "JPEGImages" / f"{image_id}.jpg") as im:
            assert im.size == (w, h) and im.mode == "RGB" and max(w, h) == 64
        assert 1 <= len(objs) <= 3 and not objs[0]["difficult"]
        for o in objs:
            x1, y1, x2, y2 = o["box"]
            assert 1 <= x1 <= x2 <= w and 1 <= y1 <= y2 <= h  # 1-based, inclusive
            assert o["name"] in CLASSES and o["difficult"] in (0, 1) and o["truncated"] in (0, 1)
            seen_classes.add(o["name"])
        for name in VOC_CLASSES:
            present = [o for o in objs if o["name"] == name]
            expected = "-1" if not present else "1" if any(not o["difficult"] for o in present) else "0"
            assert flags[name][image_id] == expected
        assert root.findtext("segmented") == str(int(image_id in seg_ids))
        assert (base / "SegmentationClass" / f"{image_id}.png").exists() == (image_id in seg_ids)
        if image_id in seg_ids:
            _check_mask(base / "SegmentationClass" / f"{image_id}.png", w, h, objs)
    assert seen_classes == set(CLASSES)


def _check_mask(path, w, h, objs):
    with Image.open(path) as im:
        assert im.mode == "P" and im.size == (w, h) and im.getpalette()[:63] == voc_palette().reshape(-1).tolist()[:63]
        mask = np.array(im)
    assert set(np.unique(mask)) <= set(range(21)) | {255}
    assert 0 < (mask == 255).mean() < 0.5  # a void border, not a void image
    clear = {VOC_CLASSES.index(o["name"]) + 1 for o in objs if not o["difficult"]}
    assert set(np.unique(mask)) - {0, 255} == clear  # every clear object is labelled, nothing else
    for label in clear:  # labelled pixels lie inside the boxes of their class
        inside = np.zeros_like(mask, dtype=bool)
        for o in objs:
            if VOC_CLASSES.index(o["name"]) + 1 == label:
                x1, y1, x2, y2 = o["box"]
                inside[y1 - 1:y2, x1 - 1:x2] = True
        assert not ((mask == label) & ~inside).any()


def test_the_projects_voc_reader_accepts_it(devkit):
    voc_root = devkit / "VOCdevkit"
    split = load_split(voc_root, "2007", "train")
    assert len(split.ids) == 24 and split.labels.shape == (24, 20)
    assert (split.labels == 1).any(axis=0).sum() >= 4  # several classes have positives
    ids, _, _, skipped = segmentation_files(voc_root, "2007", "val")
    assert len(ids) == 6 and not skipped


def test_is_labelled_synthetic(devkit):
    assert "NOT PASCAL VOC" in (devkit / "README.txt").read_text()
    assert synthetic_info(devkit / "VOCdevkit")["settings"]["n_train"] == 24
    assert "synthetic" in ET.parse(next((devkit / "VOCdevkit/VOC2007/Annotations").iterdir())).findtext(
        "source/database")
    # result records name it as synthetic; a real VOCdevkit keeps its plain name
    assert dataset_name(devkit / "VOCdevkit", "2007") == "VOC2007 (synthetic)"
    real = devkit.parent / "real" / "VOCdevkit"
    shutil.copytree(devkit / "VOCdevkit" / "VOC2007" / "ImageSets", real / "VOC2007" / "ImageSets")
    assert dataset_name(real, "2007") == "VOC2007"


def test_reuse_refuse_and_overwrite(tmp_path):
    out = tmp_path / "smoke"
    main(["--out", str(out), *SMALL])
    before = (out / "synthetic.json").stat().st_mtime_ns
    assert main(["--out", str(out), *SMALL])["reused"] is True
    assert (out / "synthetic.json").stat().st_mtime_ns == before
    with pytest.raises(CebenchError, match="other settings.*--overwrite"):
        main(["--out", str(out), *SMALL, "--seed", "3"])
    assert main(["--out", str(out), *SMALL, "--seed", "3", "--overwrite"])["seed"] == 3
    (out / "notes.txt").write_text("mine")  # a folder holding something else is never deleted
    with pytest.raises(CebenchError, match="notes.txt"):
        main(["--out", str(out), *SMALL, "--overwrite"])
    other = tmp_path / "real"
    other.mkdir()
    (other / "VOCdevkit").mkdir()
    with pytest.raises(CebenchError, match="no readable synthetic.json"):
        main(["--out", str(other), *SMALL])
