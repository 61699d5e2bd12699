"""SBD's extra masks (Hariharan et al.) in segmentation training: the .mat layout read directly, FCN's merge (VOC's
mask wins, images of the scored split dropped), the counts in the record; FCN's seg11valid list shipped."""

import json

import numpy as np
import pytest
import scipy.io
import scipy.sparse
from PIL import Image
from vocfactory import make_vocdevkit

from cebench.errors import CebenchError
from transfer.segment import main
from transfer.segmentation.data import find_year
from voc.devkit import read_image_set
from voc.sbd import extra_training_ids, load_sbd_mask

TINY = ["--weights", "random", "--width", "0.25", "--fc-dim", "16", "--input-size", "96", "--steps", "2",
        "--batch-size", "2", "--accum-steps", "1", "--crop-size", "40", "--rescale-images", "2", "--lr", "0.01",
        "--loss-normalization", "valid", "--n-boot", "200", "--device", "cpu", "--threads", "1", "--examples", "1"]


def write_gtcls(path, segmentation):
    """An SBD cls/<id>.mat as the dataset has it: a 1x1 struct GTcls with Segmentation (uint8 class map),
    Boundaries (a cell of one sparse boundary map per class) and CategoriesPresent."""
    present = np.unique(segmentation[segmentation > 0]).astype(np.uint8)
    boundaries = np.empty((20, 1), dtype=object)
    for c in range(20):
        edge = (segmentation == c + 1) & ~np.pad(segmentation == c + 1, 1)[2:, 1:-1]
        boundaries[c, 0] = scipy.sparse.csc_matrix(edge)
    scipy.io.savemat(path, {"GTcls": {"Boundaries": boundaries, "Segmentation": segmentation.astype(np.uint8),
                                      "CategoriesPresent": present.reshape(-1, 1)}})


def make_sbd(root, voc, new_ids, overlap_ids, rng):
    """SBD's dataset/ folder: masks for `new_ids` (images only in SBD's img/) and `overlap_ids` (VOC images)."""
    for folder in ("cls", "img"):
        (root / folder).mkdir(parents=True)
    for image_id in new_ids:
        h, w = 60, 80
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / "img" / f"{image_id}.jpg")
        seg = np.zeros((h, w), np.uint8)
        seg[10:40, 20:60] = rng.integers(1, 21)
        write_gtcls(root / "cls" / f"{image_id}.mat", seg)
    for image_id in overlap_ids:
        w, h = Image.open(voc.path("jpg", image_id)).size
        write_gtcls(root / "cls" / f"{image_id}.mat", np.full((h, w), 15, np.uint8))
    return root


@pytest.fixture(scope="module")
def voc_and_sbd(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sbd")
    voc = make_vocdevkit(tmp / "voc", splits={"train": 3, "val": 3}, size=(96, 72))
    train, val = voc.splits["train"], voc.splits["val"]
    new = ["2008_000001", "2008_000002", "2008_000003", "2008_000004"]
    sbd = make_sbd(tmp / "SBD" / "dataset", voc, new, [train[0], val[0], val[1]], np.random.default_rng(0))
    # SBD's lists: train holds a VOC train image and one of the scored split; val another scored one
    (sbd / "train.txt").write_text("\n".join([new[0], new[1], train[0], val[0]]) + "\n")
    (sbd / "val.txt").write_text("\n".join([new[2], new[3], val[1]]) + "\n")
    return voc, sbd, new


def test_sbd_mask_read_from_the_real_mat_structure(voc_and_sbd):
    _, sbd, new = voc_and_sbd
    mask = load_sbd_mask(sbd / "cls" / f"{new[0]}.mat")
    assert mask.dtype == np.uint8 and mask.shape == (60, 80)
    assert mask[0, 0] == 0 and 1 <= mask[20, 30] <= 20  # background, and the one object


def test_a_mat_without_gtcls_or_with_bad_labels_is_one_line(tmp_path):
    scipy.io.savemat(tmp_path / "a.mat", {"GTinst": {"Segmentation": np.zeros((4, 4), np.uint8)}})
    with pytest.raises(CebenchError, match=r"a\.mat: not an SBD class mask"):
        load_sbd_mask(tmp_path / "a.mat")
    write_gtcls(tmp_path / "b.mat", np.full((4, 4), 40, np.uint8))
    with pytest.raises(CebenchError, match=r"b\.mat: mask holds values \[40\]"):
        load_sbd_mask(tmp_path / "b.mat")


def test_merge_drops_scored_images_and_keeps_voc_masks(voc_and_sbd):
    voc, sbd, new = voc_and_sbd
    extra, counts = extra_training_ids(sbd, ["train", "val"], voc.splits["train"], voc.splits["val"])
    assert extra == new
    assert counts == {"sbd_listed": 7, "sbd_in_test_split_dropped": 2, "sbd_already_in_voc_train": 1, "sbd_added": 4}
    extra, counts = extra_training_ids(sbd, ["val"], voc.splits["train"], voc.splits["val"])  # --sbd-splits val
    assert extra == new[2:] and counts["sbd_in_test_split_dropped"] == 1


def test_segment_trains_on_voc_plus_sbd_and_says_how_many_each_gave(voc_and_sbd, tmp_path):
    voc, sbd, new = voc_and_sbd
    out = tmp_path / "seg.json"
    result = main(["--voc-root", str(voc.root), "--sbd-root", str(sbd), "--out", str(out), *TINY])
    record = json.loads(out.read_text())
    train = record["protocol"]["train"]
    assert train["sources"] == {"VOC2007 train": 3, "SBD train+val": 4} and train["n_images"] == 7
    assert train["sbd_extra_annotations"] and train["sbd"]["sbd_in_test_split_dropped"] == 2
    assert record["config"]["sbd_root"] == str(sbd) and record["n_images"] == 3  # val alone is scored
    assert result["value"] == record["value"]


def test_missing_sbd_list_is_one_line(voc_and_sbd, tmp_path):
    voc, _, _ = voc_and_sbd
    with pytest.raises(CebenchError, match=r"SBD list not found: .*train\.txt .*--sbd-root"):
        main(["--voc-root", str(voc.root), "--sbd-root", str(tmp_path), "--out", str(tmp_path / "x.json"), *TINY])


def test_seg11valid_comes_with_cebench_for_a_voc2012_devkit(tmp_path):
    lists = tmp_path / "VOC2012" / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True)
    (lists / "train.txt").write_text("2007_000032\n")
    assert find_year(tmp_path, "seg11valid") == "2012"
    ids = read_image_set(tmp_path, "2012", "seg11valid", kind="Segmentation")
    assert len(ids) == len(set(ids)) == 736 and ids[0] == "2007_000033"  # FCN's seg11valid
    with pytest.raises(CebenchError, match="image set not found"):
        read_image_set(tmp_path, "2012", "seg11valid", kind="Main")


def test_run_all_paper_asks_for_sbd_before_running_anything(tmp_path):
    from cebench import suite
    from cebench.config import get_profile

    (tmp_path / "voc" / "VOC2007").mkdir(parents=True)
    (tmp_path / "images").mkdir()
    argv = ["paper", "--voc-root", str(tmp_path / "voc"), "--images", str(tmp_path / "images")]
    args, profile = suite.get_args_parser().parse_args(argv), get_profile("paper")
    jobs, _ = suite.plan(profile, args)
    with pytest.raises(CebenchError, match=r"no SBD dataset folder at \S*data/sbd/dataset: pass --sbd-root DIR"):
        suite.preflight(profile, jobs, args)
    args = suite.get_args_parser().parse_args([*argv, "--sbd-root", str(tmp_path / "voc")])
    jobs, _ = suite.plan(profile, args)
    suite.preflight(profile, jobs, args)  # every folder there
    segment = next(j for j in jobs if j.stage == "segment")
    assert segment.argv[segment.argv.index("--sbd-root") + 1] == str(tmp_path / "voc")


def test_the_check_counts_sbd_in_the_full_runs_training_images(voc_and_sbd):
    """`run_all.sh paper --check` projects on the full run's training set, SBD's images included: exact from the
    lists where SBD is present (the merge above: 3 VOC + 4 SBD), where the --cache auto decision reads it."""
    from transfer.segmentation import check

    voc, sbd, _ = voc_and_sbd
    cfg = {"voc_root": str(voc.root), "year": "auto", "train_split": "train", "test_split": "val",
           "sbd_root": str(sbd), "sbd_splits": ["train", "val"]}
    assert check.counts(cfg) == (7, 3)
    assert check.counts(dict(cfg, sbd_root="")) == (3, 3)
    assert check.counts(dict(cfg, sbd_splits=["val"])) == (5, 3)
