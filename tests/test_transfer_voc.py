"""VOC reading: image sets, labels in the devkit's 1/-1/0 convention, masks, and every kind of bad input."""

import numpy as np
import pytest
from vocfactory import CLASSES, make_vocdevkit, truncate_file

from cebench import CebenchError
from voc.devkit import (VOC_CLASSES, VocObject, image_labels, load_mask, load_split, parse_annotation, read_class_list,
                        read_image_set, segmentation_files)


@pytest.fixture()
def voc(tmp_path):
    return make_vocdevkit(tmp_path / "VOCdevkit", splits={"train": 6, "val": 3}, difficult_rate=0.3, seed=1)


def test_classes_are_vocs_in_order():
    assert VOC_CLASSES == CLASSES and len(VOC_CLASSES) == 20


def test_labels_follow_the_devkit_convention():
    objects = [VocObject(3, (1, 1, 5, 5), False), VocObject(3, (2, 2, 6, 6), True),
               VocObject(7, (1, 1, 5, 5), True), VocObject(0, (1, 1, 2, 2), False)]
    labels = image_labels(objects)
    assert labels[3] == 1 and labels[7] == 0 and labels[0] == 1
    assert (np.delete(labels, [0, 3, 7]) == -1).all()


def test_split_matches_annotations_and_per_class_lists(voc):
    split = load_split(voc.root, "2007", "train")
    assert split.ids == voc.splits["train"] and split.labels.shape == (6, 20) and not split.skipped
    for image_id in split.ids:
        ann = parse_annotation(voc.path("xml", image_id))
        assert [(o.name, o.box, o.difficult) for o in ann.objects] == voc.objects[image_id]
    assert (split.labels == 0).any(), "fixture should contain difficult-only classes"
    for c, name in enumerate(VOC_CLASSES):
        flags = read_class_list(voc.root, "2007", name, "train")
        assert [flags[i] for i in split.ids] == split.labels[:, c].tolist()


def test_trainval_is_train_plus_val(voc):
    assert read_image_set(voc.root, "2007", "trainval") == voc.splits["train"] + voc.splits["val"]


def test_masks_and_segmentation_files(voc):
    ids, images, masks, skipped = segmentation_files(voc.root, "2007", "val")
    assert ids == voc.splits["val"] and not skipped
    mask = load_mask(masks[0])
    name, (x1, y1, x2, y2), _ = voc.objects[ids[0]][-1]
    assert mask[(y1 + y2) // 2 - 1, (x1 + x2) // 2 - 1] == VOC_CLASSES.index(name) + 1
    assert set(np.unique(mask)) <= set(range(21)) | {255}


def test_wrong_root_gets_a_hint(voc):
    with pytest.raises(CebenchError, match="did you mean --voc-root"):
        load_split(voc.root.parent, "2007", "train")
    with pytest.raises(CebenchError, match="test.txt.*available: train, trainval, val"):
        load_split(voc.root, "2007", "test")


def _corrupt(voc, kind, image_id):
    if kind == "malformed xml":
        voc.path("xml", image_id).write_text("<annotation><object><name>dog</name>")
    elif kind == "unknown class":
        xml = voc.path("xml", image_id)
        xml.write_text(xml.read_text().replace(f"<name>{voc.objects[image_id][0][0]}</name>", "<name>dragon</name>"))
    elif kind == "missing image":
        voc.path("jpg", image_id).unlink()
    elif kind == "truncated jpeg":
        truncate_file(voc.path("jpg", image_id), 0.6)
    elif kind == "missing annotation":
        voc.path("xml", image_id).unlink()
    elif kind == "size mismatch":
        xml = voc.path("xml", image_id)
        xml.write_text(xml.read_text().replace("<width>", "<width>1"))


BAD = {"malformed xml": ("xml", "malformed XML"), "unknown class": ("xml", "unknown class name 'dragon'"),
       "missing image": ("jpg", "image not found"), "truncated jpeg": ("jpg", "truncated"),
       "missing annotation": ("xml", "annotation not found"), "size mismatch": ("jpg", "annotation says")}


@pytest.mark.parametrize("kind", sorted(BAD))
def test_bad_input_names_the_file(voc, kind):
    bad = voc.splits["train"][2]
    _corrupt(voc, kind, bad)
    ext, message = BAD[kind]
    with pytest.raises(CebenchError, match=message) as err:
        load_split(voc.root, "2007", "train")
    assert str(voc.path(ext, bad)) in str(err.value)


@pytest.mark.parametrize("kind", sorted(BAD))
def test_skip_bad_leaves_the_image_out_and_counts_it(voc, kind):
    bad = voc.splits["train"][2]
    _corrupt(voc, kind, bad)
    split = load_split(voc.root, "2007", "train", skip_bad=True)
    assert bad not in split.ids and len(split) == 5 and split.labels.shape == (5, 20)
    assert [s["id"] for s in split.skipped] == [bad]
    good = load_split(voc.root, "2007", "val")  # the other split is untouched
    assert len(good) == 3


def test_bad_mask_values_are_refused(voc, tmp_path):
    from PIL import Image

    path = voc.path("png", voc.splits["val"][0])
    Image.fromarray(np.full((8, 8), 40, np.uint8), mode="L").save(path)
    with pytest.raises(CebenchError, match="outside 0..20"):
        load_mask(path)


@pytest.mark.integration
def test_real_voc_mini_labels_agree_with_the_devkit_lists(voc_mini_root):
    split = load_split(voc_mini_root, "2007", "val")
    assert len(split) == 1254 and not split.skipped
    for c, name in enumerate(VOC_CLASSES):
        flags = read_class_list(voc_mini_root, "2007", name, "val")
        assert [flags[i] for i in split.ids] == split.labels[:, c].tolist(), name
    assert (split.labels == 0).any() and (split.labels == 1).sum(axis=0).min() > 0


def test_an_image_id_that_is_a_path_is_refused_naming_the_list(voc):
    from voc.devkit import read_image_set

    listing = voc.base / "ImageSets" / "Main" / "evil.txt"
    listing.write_text("000001\n../../../../etc/passwd\n")
    with pytest.raises(CebenchError, match=r"evil.txt:2: '../../../../etc/passwd' is not a name"):
        read_image_set(voc.root, voc.year, "evil")
