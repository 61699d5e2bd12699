"""The last line of stderr is the error: entry points run as a user runs them (subprocesses), with a progress bar
open when the error comes, and with a damaged image that DataLoader workers would otherwise trip over."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_pretrain_train import make_images
from vocfactory import make_vocdevkit, truncate_file

from cebench.errors import CebenchError, one_line
from evaluation.experiments.features import ContextImages

REPO = Path(__file__).resolve().parents[1]


def run(*args, cwd=REPO):
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def last_line(stderr):
    """The line a terminal shows last (str.splitlines also breaks at the carriage returns of bars)."""
    return [line for line in stderr.splitlines() if line.strip()][-1]


@pytest.fixture(scope="module")
def damaged_voc(tmp_path_factory):
    """A tiny VOCdevkit whose 6th training image (in the retrieval/inpainting gallery) is a truncated JPEG."""
    info = make_vocdevkit(tmp_path_factory.mktemp("voc"), splits={"train": 8, "val": 4}, size=(72, 56))
    bad = info.path("jpg", info.splits["train"][5])
    truncate_file(bad, 0.3)
    return info, bad


def test_an_error_with_a_bar_open_is_the_last_line(tmp_path):
    """A loss that blows up (lr 1e30) stops pretraining with its step bar open: the bar keeps its last state on a
    line of its own, then comes the error, and nothing is redrawn after it."""
    images = make_images(tmp_path / "imgs", n=6)
    proc = run("-m", "pretrain.train", "--profile", "smoke", "--images", str(images), "--image-split", "all",
               "--width", "0.25", "--input-size", "64", "--load-size", "72", "--batch-size", "4", "--steps", "10",
               "--device", "cpu", "--workers", "0", "--lr", "1.0e30", "--out", str(tmp_path / "ce.pt"))
    assert proc.returncode == 2, proc.stderr
    assert last_line(proc.stderr).startswith("error: loss became"), proc.stderr[-500:]
    assert "pretrain:" in proc.stderr  # the bar was open
    assert not any("pretrain:" in line and "error:" in line for line in proc.stderr.splitlines())  # not glued


@pytest.mark.parametrize("module", ["evaluation.retrieval", "evaluation.inpainting"])
def test_a_damaged_image_is_one_line_naming_it(module, damaged_voc, tmp_path):
    """Checked up front, as the transfers do: one line naming the file, no worker traceback."""
    info, bad = damaged_voc
    proc = run("-m", module, "--profile", "smoke", "--voc-root", str(info.root), "--features", "hog",
               "--input-size", "64", "--batch-size", "4", "--workers", "1", "--device", "cpu",
               "--out", str(tmp_path / "r.json"))
    assert proc.returncode == 2, proc.stderr
    assert last_line(proc.stderr).startswith(f"error: {bad}: unreadable image"), proc.stderr[-500:]
    assert "Traceback" not in proc.stderr and not (tmp_path / "r.json").exists()


def test_a_worker_error_reaching_the_main_process_is_one_line(damaged_voc, tmp_path):
    """The safety net: a bad file that got past the checks fails inside a DataLoader worker; run_cli still prints
    the worker's one-line message, not the traceback torch wraps around it."""
    info, bad = damaged_voc
    script = tmp_path / "stage.py"
    script.write_text(
        "import sys\n"
        "from cebench.errors import run_cli\n"
        "from evaluation.experiments.features import Extractor, extract_features\n"
        "paths = sys.argv[1:]\n"
        "run_cli(lambda argv: extract_features(paths, Extractor('hog'), 64, batch_size=2, workers=1))\n")
    good = info.path("jpg", info.splits["train"][0])
    proc = run(str(script), str(good), str(good), str(bad))
    assert proc.returncode == 2, proc.stderr
    assert last_line(proc.stderr).startswith(f"error: {bad}: unreadable image"), proc.stderr[-500:]
    assert "Traceback" not in proc.stderr and "worker" not in proc.stderr


def test_one_line_unwraps_a_dataloader_worker_error(damaged_voc):
    info, bad = damaged_voc
    loader = torch.utils.data.DataLoader(ContextImages([bad], 64), num_workers=1)
    with pytest.raises(CebenchError) as caught:
        next(iter(loader))
    assert "Original Traceback" in str(caught.value)  # what torch hands the main process
    assert one_line(caught.value).startswith(f"{bad}: unreadable image (OSError: image file is truncated")
    assert one_line(CebenchError("a plain\nmessage")) == "a plain message"
