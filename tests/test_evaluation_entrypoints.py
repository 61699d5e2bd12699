"""Smoke tests of python -m evaluation.retrieval / evaluation.inpainting on a tiny VOCdevkit, and on voc-mini."""

import numpy as np
import pytest
from vocfactory import make_vocdevkit

from cebench.errors import CebenchError
from cebench.records import read_record
from evaluation import inpainting, retrieval
from pretrain.model import AlexNetEncoder, ContextEncoder
from pretrain.weights import save_checkpoint

SMALL = ["--profile", "smoke", "--input-size", "64", "--width", "0.25", "--batch-size", "4", "--workers", "0",
         "--device", "cpu"]


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    return make_vocdevkit(tmp_path_factory.mktemp("voc"), splits={"train": 12, "val": 6}, size=(72, 56))


@pytest.fixture(scope="module")
def ce_pt(tmp_path_factory):
    model = ContextEncoder(AlexNetEncoder(width=0.25), input_size=64)
    return save_checkpoint(tmp_path_factory.mktemp("ce") / "ce.pt", model,
                           {"wall_time_s": 12.0, "images_seen": 64, "device": "cpu"})


@pytest.mark.parametrize("source", [["--weights", "random"], ["--features", "hog"]])
def test_retrieval_main(voc, tmp_path, source):
    out = tmp_path / "retrieval.json"
    result = retrieval.main([*SMALL, "--voc-root", str(voc.root), *source, "--k", "3", "--out", str(out)])
    record = read_record(out)
    assert record["task"] == "retrieval" and record["init"] == ("hog" if "hog" in source else "random")
    assert record["metric"] == "precision@3" and 0 <= record["value"] <= 100
    assert record["ci95"][0] <= record["value"] <= record["ci95"][1] and record["n_gallery"] == 12
    assert result["neighbours"].shape == (6, 3) and (tmp_path / "retrieval.png").stat().st_size > 0
    assert record["protocol"]["interval"].startswith("BCa bootstrap 95%, 1000 resamples over queries")
    if "hog" in source:
        assert record["feature_health"] is None  # no encoder
    else:  # pool5 of the init, on the 12 gallery images, as loaded
        assert record["feature_health"]["n_images"] == 12 and record["feature_health"]["weights"].startswith("as")
    assert record["complete"] and record["schedule"] == {"unit": "images", "steps_run": 18, "steps": 18}
    with pytest.raises(CebenchError, match="exists"):  # nothing silently overwritten
        retrieval.main([*SMALL, "--voc-root", str(voc.root), *source, "--out", str(out)])


def test_a_max_steps_trial_is_marked_partial(voc, tmp_path):
    """--max-steps 1 with batches of 4 embeds 4 of the 12 gallery and 4 of the 6 query images."""
    retrieval.main([*SMALL, "--voc-root", str(voc.root), "--features", "hog", "--k", "3", "--max-steps", "1",
                    "--out", str(tmp_path / "r.json")])
    record = read_record(tmp_path / "r.json")
    assert not record["complete"] and record["schedule"] == {"unit": "images", "steps_run": 8, "steps": 18}
    inpainting.main([*SMALL, "--voc-root", str(voc.root), "--features", "hog", "--max-steps", "1",
                     "--out", str(tmp_path / "i.json")])
    assert not read_record(tmp_path / "i.json")["complete"]


def test_retrieval_on_a_folder_without_labels(voc, tmp_path):
    result = retrieval.main([*SMALL, "--images", str(voc.base / "JPEGImages"), "--features", "hog", "--k", "2",
                             "--max-queries", "4", "--out", str(tmp_path / "r.json")])
    record = read_record(tmp_path / "r.json")
    assert record["value"] is None and record["n_images"] == 4 and record["n_gallery"] == 14
    assert result["neighbours"].shape == (4, 2)


def test_inpainting_main_with_decoder(voc, tmp_path, ce_pt):
    out = tmp_path / "inpainting_ce.json"
    result = inpainting.main([*SMALL, "--voc-root", str(voc.root), "--weights", str(ce_pt), "--out", str(out)])
    nn, dec = read_record(out), read_record(tmp_path / "inpainting_ce_decoder.json")
    assert nn["method"] == "nn-inpainting" and dec["method"] == "context-encoder" and nn["init"] == "ce"
    for record in (nn, dec):
        s = record["scores"]
        assert 0 < s["l2"]["value"] <= s["l1"]["value"] <= 100  # errors in [0, 1]: squared <= absolute
        # mean of per-image PSNRs >= PSNR of the mean error (Jensen: -log is convex)
        assert s["psnr"]["value"] >= 10 * np.log10(100 / s["l2"]["value"]) - 1e-6
        assert record["value"] == pytest.approx(s["l2"]["value"]) and record["n_images"] == 6
        assert record["protocol"]["interval"].startswith("BCa") and record["feature_health"]["n_images"] == 12
    assert (tmp_path / "inpainting_ce.png").stat().st_size > 0 and len(result["records"]) == 2


def test_inpainting_hog_and_decoder_errors(voc, tmp_path, ce_pt):
    out = tmp_path / "inpainting_hog.json"
    inpainting.main([*SMALL, "--voc-root", str(voc.root), "--features", "hog", "--out", str(out)])
    assert read_record(out)["features"] == "hog" and not (tmp_path / "inpainting_hog_decoder.json").exists()
    with pytest.raises(CebenchError, match="--input-size 64"):
        inpainting.main([*SMALL, "--voc-root", str(voc.root), "--weights", str(ce_pt), "--input-size", "96",
                         "--out", str(tmp_path / "x.json")])
    with pytest.raises(CebenchError, match="needs a ce.pt"):
        inpainting.main([*SMALL, "--voc-root", str(voc.root), "--weights", "random", "--decoder", "on",
                         "--out", str(tmp_path / "y.json")])


@pytest.mark.integration
def test_retrieval_on_voc_mini(voc_mini_root, tmp_path):
    """Real images: HOG's neighbours (centred features) share a class with their query more often than chance."""
    retrieval.main(["--profile", "voc-mini", "--voc-root", str(voc_mini_root), "--features", "hog",
                    "--max-gallery", "600", "--max-queries", "150", "--workers", "1",
                    "--out", str(tmp_path / "r.json")])
    record = read_record(tmp_path / "r.json")
    assert record["n_images"] == 150 and record["value"] > record["chance"]
