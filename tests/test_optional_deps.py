"""Optional packages (setup.cfg's extras): the stages that do not use them import and run without them; a stage that
needs a missing one stops on one line naming the package. Hidden with sys.modules[name] = None in a subprocess,
as on a machine that lacks them, not uninstalled."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from vocfactory import make_vocdevkit

from cebench import deps, suite
from cebench.config import get_profile
from cebench.errors import CebenchError
from transfer.detection.proposals import cached_proposals, selective_search_settings

REPO_ROOT = str(Path(__file__).resolve().parents[1])

# Runs in a fresh interpreter: hides the modules, then runs the stages given as (name, module, argv).
SCRIPT = textwrap.dedent("""
    import json, sys
    for name in HIDDEN:
        sys.modules[name] = None
    import importlib
    from cebench.errors import CebenchError
    out = {}
    for name, module, argv in RUNS:
        main = importlib.import_module(module).main
        try:
            result = main(argv)
            out[name] = {"ok": True, "value": result.get("value") if isinstance(result, dict) else None}
        except CebenchError as err:
            out[name] = {"ok": False, "error": str(err)}
    print("RESULT " + json.dumps(out))
""")


def run_hidden(hidden, runs, tmp_path):
    code = f"HIDDEN = {hidden!r}\nRUNS = {runs!r}\n{SCRIPT}"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=300,
                          env={**os.environ, "PYTHONPATH": REPO_ROOT, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    return make_vocdevkit(tmp_path_factory.mktemp("voc"), splits={"train": 6, "val": 4}, size=(96, 72))


def detect_argv(voc, tmp_path, cache, out):
    return ["--voc-root", str(voc.root), "--train-split", "train", "--test-split", "val", "--scale", "96",
            "--max-size", "128", "--steps", "1", "--fc-dim", "16", "--width", "0.25", "--rescale-images", "2",
            "--ss-workers", "1", "--device", "cpu", "--threads", "1", "--n-boot", "200", "--proposals-cache",
            str(cache), "--out", str(tmp_path / out)]


@pytest.mark.slow  # a subprocess (torch import) and four stages: ~8 CPU s
def test_pretraining_and_transfers_run_without_faiss_pycocotools_opencv(voc, tmp_path):
    common = ["--device", "cpu", "--threads", "1", "--voc-root", str(voc.root), "--train-split", "train",
              "--test-split", "val", "--width", "0.25", "--fc-dim", "16", "--rescale-images", "2", "--n-boot", "200"]
    runs = [
        ("pretrain", "pretrain.train", ["--profile", "smoke", "--images", str(voc.root / "VOC2007" / "JPEGImages"),
                                        "--image-split", "all", "--width", "0.25", "--input-size", "64",
                                        "--load-size", "72", "--batch-size", "2", "--steps", "1", "--device", "cpu",
                                        "--threads", "1", "--workers", "0", "--out", str(tmp_path / "ce.pt")]),
        ("classify", "transfer.classify", [*common, "--weights", "random", "--input-size", "64", "--base-size", "80",
                                           "--steps", "1", "--batch-size", "2", "--test-crops", "1",
                                           "--out", str(tmp_path / "cls.json")]),
        ("segment", "transfer.segment", [*common, "--weights", "random", "--input-size", "96", "--steps", "1",
                                         "--batch-size", "1", "--accum-steps", "1", "--crop-size", "40",
                                         "--out", str(tmp_path / "seg.json")]),
        ("detect", "transfer.detect", detect_argv(voc, tmp_path, tmp_path / "cache", "det.json")),
        ("retrieval", "evaluation.retrieval", ["--profile", "smoke", "--voc-root", str(voc.root), "--features", "hog",
                                               "--gallery-split", "train", "--query-split", "val", "--device", "cpu",
                                               "--out", str(tmp_path / "ret.json")]),
    ]
    result = run_hidden(["faiss", "pycocotools", "cv2"], runs, tmp_path)
    assert result["pretrain"]["ok"] and result["classify"]["ok"] and result["segment"]["ok"], result
    assert (tmp_path / "ce.pt").is_file() and (tmp_path / "cls.json").is_file() and (tmp_path / "seg.json").is_file()
    # the stages that need them: one line naming the package and the stage, before any output
    assert not result["detect"]["ok"] and "pycocotools" in result["detect"]["error"]
    assert "detection" in result["detect"]["error"] and "\n" not in result["detect"]["error"]
    assert not result["retrieval"]["ok"] and "faiss-cpu" in result["retrieval"]["error"]
    assert "retrieval" in result["retrieval"]["error"]
    assert not (tmp_path / "det.json").exists() and not (tmp_path / "ret.json").exists()


@pytest.mark.slow  # a subprocess and one detection run: ~6 CPU s
def test_detection_reads_cached_proposals_without_opencv_and_names_it_on_a_miss(voc, tmp_path):
    # proposals cached here (with OpenCV), then detection where cv2 is hidden: it reads them; an empty cache is a miss
    images = {i: voc.root / "VOC2007" / "JPEGImages" / f"{i}.jpg" for i in voc.splits["train"] + voc.splits["val"]}
    cached_proposals(images, tmp_path / "cache", selective_search_settings(max_boxes=2000), workers=1,
                     show_progress=False)
    runs = [("cached", "transfer.detect", detect_argv(voc, tmp_path, tmp_path / "cache", "det.json")),
            ("uncached", "transfer.detect", detect_argv(voc, tmp_path, tmp_path / "empty", "det2.json"))]
    result = run_hidden(["cv2"], runs, tmp_path)
    assert result["cached"]["ok"], result
    record = json.loads((tmp_path / "det.json").read_text())
    assert record["proposal_cache"] == {"hits": 10, "computed": 0}
    assert record["protocol"]["proposals"]["settings"]["opencv"]  # the version that computed them
    error = result["uncached"]["error"]
    assert not result["uncached"]["ok"] and "opencv-contrib-python-headless" in error and "--proposals" in error
    assert "10 of 10 images" in error and not (tmp_path / "det2.json").exists()


def test_require_names_package_and_stage(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)
    with pytest.raises(CebenchError, match=r"retrieval needs the faiss-cpu package.*\.\[retrieval\]"):
        deps.require("faiss", "retrieval")
    lazy = deps.LazyModule("faiss", "NN-inpainting")
    with pytest.raises(CebenchError, match="NN-inpainting needs the faiss-cpu"):
        lazy.IndexFlatL2  # noqa: B018  (the first attribute access imports)


def test_suite_refuses_a_profile_whose_stages_miss_packages_before_running_any(monkeypatch):
    monkeypatch.setitem(sys.modules, "pycocotools", None)
    monkeypatch.setitem(sys.modules, "faiss", None)
    profile = get_profile("smoke")
    args = suite.get_args_parser().parse_args(["smoke"])
    jobs, _ = suite.plan(profile, args)
    with pytest.raises(CebenchError) as err:
        suite.preflight(profile, jobs, args)
    text = str(err.value)
    assert "stage detect needs pycocotools" in text and "stage retrieval needs faiss-cpu" in text
    assert "stage inpainting needs faiss-cpu" in text and "classify" not in text
