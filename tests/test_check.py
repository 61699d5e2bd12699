"""`bash run_all.sh PROFILE --check` (evaluation.check): every stage for a step, one table, JSON apart from the run.

The whole check runs in-process on a profile shaped like smoke whose data is absent, so it must draw its synthetic
stand-in; the pure parts (runs per stage, the full run's cache decision, totals) are checked against hand-made
values; the suite's routing is checked with --dry-run.
"""

import argparse
import json
from pathlib import Path

import pytest
import yaml

from cebench.config import get_profile
from cebench.errors import CebenchError
from cebench.suite import main as run_all
from evaluation import check

REPO = Path(__file__).resolve().parents[1]

STAGES = ["pretrain", "classify", "detect", "segment", "probe", "retrieval", "inpainting"]


@pytest.fixture
def absent_data_profile(tmp_path, monkeypatch):
    """benchmarks.yaml with profile 'tiny': smoke's models and stages, but no synthetic data and a VOCdevkit and
    image folder that do not exist (as the paper profile on a machine without its data)."""
    data = yaml.safe_load((REPO / "benchmarks.yaml").read_text())
    tiny = data["profiles"]["smoke"]
    del tiny["run"]["synthetic"]
    tiny["common"]["voc_root"] = "absent/VOCdevkit"
    tiny["pretrain"].update(images="absent/JPEGImages", image_split="trainval", steps=1000)
    for stage in ("classify", "detect", "probe"):
        tiny[stage].update(train_split="trainval", test_split="test")
    tiny["retrieval"].update(gallery_split="trainval", query_split="test")
    tiny["inpainting"].update(gallery_split="trainval", query_split="test")
    path = tmp_path / "benchmarks.yaml"
    path.write_text(yaml.safe_dump({"default_profile": "tiny", "profiles": {"tiny": tiny}}))
    monkeypatch.setenv("CEBENCH_BENCHMARKS", str(path))
    return tmp_path


@pytest.mark.slow
def test_check_of_a_profile_without_its_data_runs_every_stage_on_a_stand_in(absent_data_profile, capsys):
    out = absent_data_profile / "check"
    result = check.main(["--profile", "tiny", "--check-steps", "1", "--check-warmup", "0", "--check-images", "8",
                         "--check-test-images", "3", "--image-size", "128", "--threads", "1", "--device", "cpu",
                         "--out-dir", str(out)])
    assert result["failed"] == [] and [r["stage"] for r in result["rows"]] == STAGES
    assert "SYNTHETIC STAND-IN" in result["data"]
    assert not (absent_data_profile / "results").exists()  # nothing written where the runs' files go
    saved = json.loads((out / "check.json").read_text())
    assert saved["projected_total_s"] == pytest.approx(sum(check.stage_total(r) for r in saved["rows"]))
    for row in saved["rows"]:
        assert row["device"] == "cpu" and row["precision"] == "fp32" and row["data_path"]
        assert row["model_only_images_per_s"] > 0 and row["whole_loop_images_per_s"] > 0
        # the ratio is of the two measured rates (means over the timed steps)
        assert row["ratio"] == pytest.approx(row["whole_loop_images_per_s"] / row["model_only_images_per_s"])
        assert row["peak_memory_mib"] > 0 and "RSS" in row["peak_memory_how"]
        assert row["projected_s"] >= row["train_s"] > 0
        assert row["train_s"] == pytest.approx(row["schedule_steps"] * row["images_per_step"]
                                               / row["whole_loop_images_per_s"])
        assert json.loads((out / f"{row['stage']}.json").read_text())["stage"] == row["stage"]
    rows = {r["stage"]: r for r in saved["rows"]}
    assert rows["pretrain"]["schedule_steps"] == 1000  # the profile's schedule, not the check's steps
    # the absent data's split sizes come from the VOC devkit's counts, and the passes are scaled to them
    assert rows["classify"]["full_images"] == {"train": 5011, "test": 4952}
    assert "devkit counts" in rows["classify"]["full_sizes_from"]
    assert any(e.get("once") for e in rows["detect"]["evaluations"])  # selective search: once for all runs
    assert rows["retrieval"]["runs"] == ["ce", "random", "kmeans"]  # hog is not checked, supervised needs its file
    table = capsys.readouterr().out
    assert "| stage | device | precision | data path |" in table and "projected total" in table
    assert all(f"| {stage} | cpu | fp32 |" in table for stage in STAGES)


def test_runs_cache_and_totals_of_the_repository_profiles():
    smoke, paper = get_profile("smoke"), get_profile("paper")
    assert check.runs_of(smoke, "pretrain") == ["ce", "autoencoder"]  # ce-untrained is 0 steps
    assert check.runs_of(paper, "classify") == ["ce", "random", "autoencoder", "ce-untrained"]
    # VOC2007 trainval + test at 500 px decoded: 9,963 x 500 x 375 x 3 bytes = 5.6 GB, over classify's 2 GiB
    assert check.full_run_cache(paper, "classify", (5011, 4952), 500) == ["--cache", "off"]
    # VOC2012 segmentation train: 1,464 x 500 x 375 x 3 = 0.82 GB, under segmentation's 1 GiB per split
    assert check.full_run_cache(paper, "segment", (1464, 1449), 500) == ["--cache", "on"]
    assert check.full_run_cache(paper, "pretrain", None, 500) == ["--cache", "off"]  # ImageNet: not known to fit
    assert check.full_run_cache(paper, "detect", (5011, 4952), 500) == []
    # the paper's segmentation trains on VOC2012 train plus SBD: absent, its images are estimated (and say so), and
    # the full run's cache decision is taken on them; the stand-in has no SBD, so its flags turn SBD off
    (n_train, n_test), words = check._full_counts(paper, "segment", argparse.Namespace(voc_root="absent"))
    assert (n_train, n_test) == (10582, 736) and "SBD images (an estimate" in words
    assert check.full_run_cache(paper, "segment", (n_train, n_test), 500) == ["--cache", "off"]
    assert check._standin_flags(paper, "segment", Path("devkit"))[-2:] == ["--sbd-root", ""]
    row = {"projected_s": 10.0, "once_s": 3.0, "runs": ["ce", "random"]}
    assert check.stage_total(row) == 23.0


def test_every_checked_stage_has_its_hooks_in_its_own_package():
    from evaluation.experiments.stage_checks import hooks, stage_parser

    for stage in STAGES:
        own = hooks(stage)
        assert callable(own.counts) and callable(own.bench) and own.IMAGE_SETS in (None, "Main", "Segmentation")
        assert own.SPLITS is None or all(k in vars(stage_parser(stage).parse_args([])) for k in own.SPLITS)
    assert hooks("pretrain").__name__ == "pretrain.check" and hooks("segment").IMAGE_SETS == "Segmentation"


def test_run_all_check_runs_evaluation_check_and_nothing_else(capsys):
    result = run_all(["smoke", "--check", "--check-steps", "3", "--threads", "1", "--dry-run"])
    printed = capsys.readouterr().out
    assert result["status"] == "dry-run"
    assert "-m evaluation.check --profile smoke --out-dir results/smoke-check --check-steps 3 --threads 1" in printed
    with pytest.raises(CebenchError, match="--max-steps do\\(es\\) not apply to --check"):
        run_all(["smoke", "--check", "--max-steps", "5", "--dry-run"])
    with pytest.raises(CebenchError, match="--check-steps applies to --check only"):
        run_all(["smoke", "--check-steps", "5", "--dry-run"])


def test_drawn_proposals_stand_in_for_selective_search():
    """Where OpenCV's contrib module is missing (a GPU image's opencv-python-headless), the detection check draws
    each image's proposals: as many as the cap, inside the image, at least 2 px a side, seeded, and around the
    objects as well as anywhere, so that the RoI sampler fills its batch with foreground (IoU >= 0.5) and
    background (IoU in [0.1, 0.5)) as it does on selective search's boxes."""
    import numpy as np
    from torchvision.ops import box_iou
    import torch

    from transfer.detection.check import drawn_proposals
    from transfer.detection.data import DetectionSplit

    boxes = [np.array([[10, 20, 60, 90], [100, 5, 180, 70]], np.float32), np.zeros((0, 4), np.float32)]
    split = DetectionSplit("train", ("a",), ["im1", "im2"], ["x", "y"], [(200, 100), (50, 40)], boxes,
                           [np.array([1, 1]), np.array([], int)], [np.zeros(2, bool), np.zeros(0, bool)])
    drawn = drawn_proposals(split, 2000, seed=3)
    assert drawn.keys() == {"im1", "im2"}
    for image_id, (w, h) in zip(split.ids, split.sizes, strict=True):
        b = drawn[image_id]
        assert b.shape == (2000, 4) and b.dtype == np.float32
        assert (b[:, :2] >= 0).all() and (b[:, 2] <= w).all() and (b[:, 3] <= h).all()
        assert (b[:, 2:] - b[:, :2] >= 2 - 1e-4).all()
    assert all((drawn_proposals(split, 2000, seed=3)[i] == drawn[i]).all() for i in split.ids)
    assert not (drawn_proposals(split, 2000, seed=4)["im1"] == drawn["im1"]).all()
    best = box_iou(torch.from_numpy(drawn["im1"]), torch.from_numpy(boxes[0])).max(dim=1).values
    assert (best >= 0.5).sum() >= 16 and ((best >= 0.1) & (best < 0.5)).sum() >= 48  # a 64-RoI batch: 16 fg


def test_detection_check_without_opencv_contrib_draws_its_proposals(absent_data_profile, monkeypatch):
    monkeypatch.setattr("transfer.detection.proposals.opencv_with_contrib", lambda: None)
    out = absent_data_profile / "check"
    result = check.main(["--profile", "tiny", "--stages", "detect", "--check-steps", "1", "--check-warmup", "0",
                         "--check-images", "8", "--check-test-images", "3", "--image-size", "128", "--threads", "1",
                         "--device", "cpu", "--out-dir", str(out)])
    assert result["failed"] == []
    (row,) = result["rows"]
    assert row["stage"] == "detect" and row["model_only_images_per_s"] > 0
    assert not any("selective search" in e["what"] for e in row["evaluations"])  # not timed: not projected
    assert any("drawn boxes" in note and "cv2.ximgproc" in note for note in row["not_projected"])
    assert not (out / "proposals").exists()  # no selective search ran, none was cached
