"""`bash run_all.sh PROFILE --check` (evaluation.check): every stage for a step, one table, JSON apart from the run.

The whole check runs in-process on a profile shaped like smoke whose data is absent, so it must draw its synthetic
stand-in; the pure parts (runs per stage, the full run's cache decision, totals) are checked against hand-made
values; the suite's routing is checked with --dry-run.
"""

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
