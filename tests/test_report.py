"""evaluation.report: one self-contained report.html of a tiny results folder, and how Chromium renders it."""

import json
import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from cebench.curves import draw_curves
from cebench.errors import CebenchError
from cebench.records import make_record, write_record
from evaluation import report, tables

CLASSES = ("aeroplane", "bicycle", "bird")


def _record(task, init, value, metric, **extra):
    per_class = {c: value * (0.8 + 0.1 * i) for i, c in enumerate(CLASSES)}
    return make_record(task=task, init=init, dataset="VOC2007", split="val", metric=metric, value=value,
                       ci95=(value - 0.02, value + 0.02), per_class=per_class, n_images=20, seed=0, wall_time_s=3.5,
                       config={"profile": "unit", "device": "cpu", "precision": "fp32"}, protocol={"mode": "fine-tune"},
                       **extra)


def _png(path, size=(240, 160), seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


@pytest.fixture
def results(tmp_path):
    """Records, the tables (evaluation.tables), a later table, a run's curves, example grids, a suite stamp."""
    folder = tmp_path / "results"
    for init, value in (("ce", 0.40), ("random", 0.30)):
        write_record(folder / f"classify_{init}.json", _record("classification", init, value, "mAP"))
        write_record(folder / f"segment_{init}.json", _record("segmentation", init, value / 2, "mIoU"))
    tables.main(["--results", str(folder)])
    (folder / "table3.csv").write_text("key,row,conv1,conv1 low,conv1 high,conv1 runs\nce,Context encoder,31.5,30,"
                                       "33,1\n")
    (folder / "table3.md").write_text("# Table 3: per-layer probes (%)\n\n| x |\n|---|\n\nColumns:\n- conv1: probe\n")
    run = folder / "classify_ce.run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in (
        {"step": 1, "loss": 0.9, "lr": 0.01}, {"step": 2, "loss": 0.7, "lr": 0.01},
        {"step": 2, "final": True, "map": 0.4})))
    draw_curves(run / "metrics.jsonl", run / "curves.png", title=run.name)
    _png(folder / "retrieval_ce.png")
    _png(folder / "inpainting_ce.png", size=(700, 700), seed=1)  # large: inlined as JPEG
    for i in range(8):
        _png(folder / "detect_ce_examples" / f"{i:06d}.png", size=(64, 48), seed=i)
    _png(folder / "segment_ce.predictions" / "000001.png", size=(32, 32))  # label maps: not on the page
    (folder / "ce.pt.stamp").write_text(json.dumps({"status": "done", "wall_time_s": 63.8,
                                                    "command": ["python", "-m", "pretrain.train"]}))
    return folder


def test_report_holds_every_part_and_loads_nothing(results):
    out = report.main(["--results", str(results)])
    text = (results / "report.html").read_text()
    assert out["records"] == 4 and out["out"] == str(results / "report.html")
    for part in ("Table 1: inpainting", "Table 2: transfer", "Table 3: per-layer probes", "31.5\u00a0[30.0,\u00a033.0]",
                 "classification: per-class mAP", "aeroplane", "classify_ce.run: loss, learning rate",
                 "retrieval_ce.png", "inpainting_ce.png", "<h3>Detection</h3>", "python -m pretrain.train", "fp32",
                 "Provenance: profile unit", "Libraries: "):
        assert part in text, part
    # nothing is fetched at view time: every image inline, no script, no external style or font
    sources = re.findall(r'(?:src|href)="([^"]*)"', text)
    assert sources and all(s.startswith(("data:image/png;base64,", "data:image/jpeg;base64,", "#")) for s in sources)
    assert "<script" not in text and "@import" not in text and "url(" not in text
    assert text.count("data:image/jpeg") == 1  # the large grid
    assert text.count('alt="detect_ce_examples/') == report.MAX_PER_FOLDER and "6 of 8 images" in text
    assert "segment_ce.predictions" not in text
    assert "Synthetic data" not in text


def test_report_leads_with_the_answer_without_stray_columns(results):
    report.main(["--results", str(results)])
    text = (results / "report.html").read_text()
    sections = re.findall(r'<section id="([^"]+)"', text)
    assert sections[0] == "answer"  # the first section is the answer, before Table 1
    answer_part = text[text.index('<section id="answer"'):text.index('<section id="tables"')]
    # ce 40.0 [38.0, 42.0] vs random 30.0 [28.0, 32.0]: +10.0, MOVER interval 10 -/+ sqrt(2^2 + 2^2) = 2.83
    assert "classification (mAP) ↑" in answer_part and "10.0\u00a0[7.2,\u00a012.8]" in answer_part
    assert 'class="better"' in answer_part and "ce better" in answer_part
    assert " complete</th>" not in text  # the CSV's completeness flags are not columns of the page
    assert 'data-label="verdict"' in answer_part  # the phone layout names each value
    assert "classification (ours) ↑" in text and "device" in text and ">cpu<" in text


def test_report_of_a_folder_without_records_is_one_line(tmp_path):
    with pytest.raises(CebenchError, match="no result records or tables") as err:
        report.main(["--results", str(tmp_path)])
    assert "\n" not in str(err.value)


def _chromium():
    return next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)


@pytest.mark.skipif(_chromium() is None, reason="no Chromium on this machine (Debian: apt-get install chromium)")
@pytest.mark.parametrize("width", [390, 1366])  # a phone and a laptop
def test_chromium_renders_the_page_at_phone_and_laptop_width(results, tmp_path, width):
    report.main(["--results", str(results)])
    shot = tmp_path / "shot.png"
    command = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
               f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", f"--window-size={width},900",
               (results / "report.html").as_uri()]
    subprocess.run(command, capture_output=True, timeout=120, check=True)
    with Image.open(shot) as image:
        pixels = np.asarray(image.convert("L"), dtype=float)
    assert pixels.shape == (900, width)
    assert (pixels < 100).mean() > 0.005 and pixels.std() > 20  # text and tables drawn, not a blank page


def test_per_class_marks_a_run_cut_short():
    from evaluation.report import per_class_html

    def run(init, complete):
        return {"task": "classification", "metric": "mAP", "init": init, "seed": 0, "value": 30.0,
                "per_class": {"cat": 30.0}, "complete": complete}

    page = per_class_html([run("ce", True), run("random", False)])
    assert "random (partial run)" in page and "ce (partial run)" not in page
