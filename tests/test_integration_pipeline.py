"""The whole suite on real data: a reduced voc-mini profile through every stage of run_all, records and tables.

The reduced devkit lists a few dozen real voc-mini images and links to the real image, annotation and mask
folders (nothing is copied); the profile is the repository's voc-mini profile with that devkit, small batches,
a short rescaling, one test crop, fewer proposals and `--max-steps 2`. Skipped where voc-mini is absent.
"""

import copy
import math

import pytest
import yaml

from cebench.config import PATH_KEYS, benchmarks_path
from cebench.records import read_record
from cebench.stages import stage as row_of
from cebench.suite import main

N_TRAIN, N_VAL, N_SEG = 24, 12, 6  # images per Main split; of them, images with masks per Segmentation split
SHRINK = {"batch_size": 4, "rescale_images": 4, "test_crops": 1, "max_proposals": 200, "fc_dim": 256}


def _ids(path):
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]


def reduced_devkit(real_root, out):
    """A VOCdevkit listing a few real images, each file a symlink to voc-mini's (no data is copied)."""
    real, base = real_root / "VOC2007", out / "VOCdevkit" / "VOC2007"
    for folder in ("ImageSets/Main", "ImageSets/Segmentation", "JPEGImages", "Annotations", "SegmentationClass"):
        (base / folder).mkdir(parents=True)
    chosen = {}
    for split, n in (("train", N_TRAIN), ("val", N_VAL)):
        seg = _ids(real / "ImageSets" / "Segmentation" / f"{split}.txt")[:N_SEG]
        rest = [i for i in _ids(real / "ImageSets" / "Main" / f"{split}.txt") if i not in seg]
        chosen[split] = sorted(seg + rest[:n - N_SEG])
        (base / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("".join(f"{i}\n" for i in sorted(seg)))
    chosen["trainval"] = sorted(chosen["train"] + chosen["val"])
    for image_id in chosen["trainval"]:
        for folder, ext in (("JPEGImages", "jpg"), ("Annotations", "xml"), ("SegmentationClass", "png")):
            if (real / folder / f"{image_id}.{ext}").exists():
                (base / folder / f"{image_id}.{ext}").symlink_to(real / folder / f"{image_id}.{ext}")
    (base / "ImageSets" / "Segmentation" / "trainval.txt").write_text(
        "".join(f"{i}\n" for i in sorted(_ids(base / "ImageSets/Segmentation/train.txt")
                                         + _ids(base / "ImageSets/Segmentation/val.txt"))))
    for real_list in (real / "ImageSets" / "Main").glob("*.txt"):
        split = real_list.stem.rsplit("_", 1)[-1]
        keep = set(chosen[split])
        lines = [line for line in real_list.read_text().splitlines() if line.split() and line.split()[0] in keep]
        (base / "ImageSets" / "Main" / real_list.name).write_text("".join(f"{line}\n" for line in lines))
    return out / "VOCdevkit"


def reduced_profile(voc_root, path):
    """The repository's voc-mini profile on the reduced devkit, with small batches, as profile 'ci' in `path`."""
    data = yaml.safe_load(benchmarks_path().read_text())
    prof = copy.deepcopy(data["profiles"]["voc-mini"])
    for section in prof.values():  # relative paths of the repository's file, made absolute for the temp file
        for key, value in (section.items() if isinstance(section, dict) else []):
            if key in PATH_KEYS and isinstance(value, str) and value != "random" and not value.startswith("/"):
                section[key] = str((benchmarks_path().parent / value).resolve())
    prof["common"].update(voc_root=str(voc_root), device="cpu")
    # Every stage and every kind of input once (ce, random weights, HOG); each process costs ~10 s of start-up.
    # One of the paper's controls (autoencoder) goes through pretraining, the probes and the tables.
    prof["run"]["stages"].update(pretrain={"inits": ["ce", "autoencoder"]}, classify={"inits": ["ce", "random"]},
                                 detect={"inits": ["ce"]}, segment={"inits": ["ce"]},
                                 retrieval={"inits": ["ce", "hog"]}, inpainting={"inits": ["ce", "hog"]},
                                 probe={"inits": ["ce", "autoencoder"]})
    prof.setdefault("pretrain", {})["images"] = str(voc_root / "VOC2007" / "JPEGImages")
    for stage, section in prof.items():  # shrink what costs time, only where the stage already has the setting
        if stage in ("description", "common", "run") or not isinstance(section, dict):
            continue
        section.update({k: v for k, v in SHRINK.items() if k in section})
        if "rescale_images" in section:  # data-dependent init: a few images, one pass (every trainer has the flag)
            section["rescale_iterations"] = 1
    path.write_text(yaml.safe_dump({"default_profile": "ci", "profiles": {"ci": prof}}))
    return path


@pytest.mark.integration
def test_reduced_voc_mini_through_every_stage(voc_mini_root, tmp_path, monkeypatch):
    voc_root = reduced_devkit(voc_mini_root, tmp_path / "data")
    monkeypatch.setenv("CEBENCH_BENCHMARKS", str(reduced_profile(voc_root, tmp_path / "benchmarks.yaml")))
    results = tmp_path / "results"
    out = main(["ci", "--results", str(results), "--max-steps", "2", "--device", "cpu"])

    stages = {j["stage"] for j in out["jobs"]}
    assert stages == {"pretrain", "classify", "detect", "segment", "retrieval", "inpainting", "probe", "tables",
                      "report"}
    assert all(j["status"] == "ran" for j in out["jobs"]) and not out["synthetic"]
    assert (results / "ce.pt").is_file()
    page = (results / "report.html").read_text()  # written after the tables, with every run's curves
    assert "Table 2: transfer" in page and "classify_ce.run: loss, learning rate" in page
    for job in out["jobs"]:
        if not row_of(job["stage"]).task:
            continue
        record = read_record(job["out"])  # refuses files that are not records
        assert record["task"] == row_of(job["stage"]).task
        assert record["n_images"] > 0 and isinstance(record["config"], dict) and record["protocol"]
        assert isinstance(record["value"], (int, float)) and math.isfinite(record["value"])
        assert len(record["ci95"]) == 2
    assert read_record(results / "probe_autoencoder.json")["init"] == "autoencoder"  # the label survives
    for table in ("table1.md", "table2.md", "table3.md"):
        text = (results / table).read_text()
        assert text.count("\n|") >= 2, f"{table} has no table rows"
    log = (results / "run.log").read_text()
    assert "Table 2" in log and "FAILED" not in log

    again = main(["ci", "--results", str(results), "--max-steps", "2", "--device", "cpu"])
    rebuilt = ("tables", "report")  # cheap, from the records: rebuilt every time
    assert [j["status"] for j in again["jobs"] if j["stage"] not in rebuilt] == ["skipped"] * (len(out["jobs"]) - 2)
