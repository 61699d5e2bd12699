"""Write errors are one-line errors (exit 2, naming the path) and leave nothing half-written: a file where the output
folder should be, a full disk (writes to /dev/full: the kernel's ENOSPC), a read-only folder."""

import errno
import json
import os
import re
import resource
import subprocess
import sys
import tempfile

import numpy as np
import pytest
import torch
from vocfactory import make_vocdevkit

from cebench.errors import CebenchError, run_cli
from cebench.files import atomic_torch_save, atomic_write, atomic_write_json, make_dirs, remove_stale_temps
from cebench.records import make_record, write_record
from test_pretrain_train import REPO, make_images

VOC = ["--train-split", "train", "--test-split", "val", "--width", "0.25", "--fc-dim", "16", "--steps", "2",
       "--rescale-images", "4", "--device", "cpu", "--threads", "1"]
EVAL = ["--profile", "smoke", "--input-size", "64", "--width", "0.25", "--batch-size", "4", "--workers", "0",
        "--device", "cpu", "--features", "hog"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    voc = make_vocdevkit(root / "voc", splits={"train": 6, "val": 4}, size=(72, 56))
    records = root / "records"
    write_record(records / "retrieval_hog.json", make_record(
        task="retrieval", init="hog", dataset="voc", split="val", metric="precision@10", value=0.3, ci95=(0.2, 0.4),
        per_class={}, n_images=4, seed=0, wall_time_s=1.0, config={}, protocol={}))
    return {"voc": str(voc.root), "images": str(make_images(root / "images", n=6)), "records": str(records),
            "cache": str(root / "proposals")}


def _entry_points(data, out):
    """(module, argv) of every entry point, writing to `out` (a record/checkpoint path or a folder)."""
    return {
        "pretrain.train": ["--profile", "smoke", "--images", data["images"], "--image-split", "all", "--width",
                           "0.25", "--input-size", "64", "--load-size", "72", "--batch-size", "2", "--max-steps",
                           "2", "--device", "cpu", "--workers", "0", "--no-figures", "--out", f"{out}/ce.pt"],
        "transfer.classify": ["--voc-root", data["voc"], *VOC, "--input-size", "64", "--base-size", "80",
                              "--batch-size", "2", "--test-crops", "1", "--out", f"{out}/cls.json"],
        "transfer.detect": ["--voc-root", data["voc"], *VOC, "--scale", "72", "--max-size", "96", "--ss-workers",
                            "1", "--proposals-cache", data["cache"], "--out", f"{out}/det.json"],
        "transfer.segment": ["--voc-root", data["voc"], *VOC, "--input-size", "96", "--batch-size", "2",
                             "--accum-steps", "1", "--crop-size", "40", "--n-boot", "200", "--out", f"{out}/seg.json"],
        "evaluation.retrieval": [*EVAL, "--voc-root", data["voc"], "--k", "2", "--out", f"{out}/r.json"],
        "evaluation.inpainting": [*EVAL, "--voc-root", data["voc"], "--out", f"{out}/i.json"],
        "evaluation.tables": ["--results", data["records"], "--out", str(out)],
        "evaluation.speed": ["--gallery", "300", "--queries", "10", "--dim", "16", "--approx-gallery", "600",
                             "--repeats", "1", "--out", f"{out}/speed.json"],
        "voc.synthetic": ["--out", f"{out}/synth", "--n-train", "4", "--n-val", "2", "--size", "48"],
    }


ENTRY_POINTS = list(_entry_points({"voc": "", "images": "", "records": "", "cache": ""}, "x"))


def _run(module, argv, capsys):
    """Run an entry point as `python -m module` would (through run_cli); returns (exit code, stderr lines)."""
    main = __import__(module, fromlist=["main"]).main
    with pytest.raises(SystemExit) as exc:
        run_cli(main, argv)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    return exc.value.code, lines


def _leftovers(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.name.endswith((".tmp", ".partial")))


@pytest.fixture
def full_disk(monkeypatch):
    """Every atomic write goes to /dev/full, so the kernel answers ENOSPC as on a full disk."""
    real = tempfile.mkstemp

    def mkstemp(*args, **kwargs):
        fd, path = real(*args, **kwargs)
        os.close(fd)
        return os.open("/dev/full", os.O_WRONLY), path

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)


@pytest.mark.parametrize("module", ENTRY_POINTS)
def test_output_under_a_regular_file_is_one_line(module, data, tmp_path, capsys):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file")
    code, err = _run(module, _entry_points(data, blocker / "sub")[module], capsys)
    assert code == 2 and err[-1].startswith("error: ") and str(blocker) in err[-1], err[-3:]
    assert not any("Traceback" in line for line in err)
    assert blocker.read_text() == "a file" and _leftovers(tmp_path) == []


@pytest.mark.parametrize("module", ENTRY_POINTS)
def test_full_disk_is_one_line_and_leaves_no_temp_file(module, data, tmp_path, capsys, full_disk):
    out = tmp_path / "out"
    code, err = _run(module, _entry_points(data, out)[module], capsys)
    assert code == 2 and err[-1].startswith("error: cannot write ") and "No space left on device" in err[-1], err[-3:]
    assert str(tmp_path) in err[-1] or data["cache"] in err[-1]
    assert _leftovers(tmp_path) == [] and not any(p.is_file() and p.stat().st_size == 0 for p in tmp_path.rglob("*"))


def test_a_real_size_limit_mid_run_is_one_line_and_keeps_nothing_half_written(data, tmp_path):
    """The kernel refuses writes past RLIMIT_FSIZE (EFBIG) as it refuses them on a full disk (ENOSPC): the first
    run checkpoint is too large. torch.save reports that as a RuntimeError raised while handling the OSError."""
    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))

    argv = _entry_points(data, tmp_path / "run")["pretrain.train"] + ["--width", "0.5"]
    run = subprocess.run([sys.executable, "-m", "pretrain.train", *argv], preexec_fn=limit, capture_output=True,
                         text=True, env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO)), timeout=300)
    errors = re.findall(r"error: [^\r\n]*", run.stderr)  # (today it may be glued to the progress bar: issue item 9)
    assert run.returncode == 2 and errors == [f"error: cannot write {tmp_path / 'run' / 'ce.last.pt'}: File too large"]
    assert "Traceback" not in run.stderr and not (tmp_path / "run").exists()  # a failed first run leaves nothing


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_folder_is_one_line(data, tmp_path, capsys):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        code, err = _run("evaluation.tables", _entry_points(data, folder)["evaluation.tables"], capsys)
    finally:
        folder.chmod(0o755)
    assert code == 2 and err[-1].startswith("error: cannot write ") and str(folder) in err[-1]


def test_suite_results_under_a_file_is_one_line(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, err = _run("cebench.suite", ["--results", str(blocker / "res")], capsys)
    assert code == 2 and err[-1] == f"error: cannot create folder {blocker / 'res'}: {blocker} is a file, not a folder"


@pytest.mark.parametrize("write", [
    lambda p: atomic_write_json(p, {"a": 2}),
    lambda p: atomic_torch_save({"w": torch.zeros(10_000)}, p),  # torch.save: through a buffered file this was
    lambda p: atomic_write(p, lambda f: np.savez(f, a=np.zeros(10_000))),  # a garbled RuntimeError
], ids=["json", "torch", "numpy"])
def test_atomic_writers_on_a_full_disk_keep_the_previous_file(write, tmp_path, full_disk):
    path = tmp_path / "x.out"
    path.write_text("previous")
    with pytest.raises(CebenchError, match=f"cannot write {path}: No space left on device"):
        write(path)
    assert path.read_text() == "previous" and sorted(p.name for p in tmp_path.iterdir()) == ["x.out"]


def test_make_dirs_names_the_file_in_the_way(tmp_path):
    (tmp_path / "f").write_text("")
    with pytest.raises(CebenchError, match=f"{tmp_path / 'f'} is a file, not a folder"):
        make_dirs(tmp_path / "f" / "a" / "b")


def test_run_cli_turns_a_stray_oserror_into_one_line(capsys):
    def main(argv):
        raise PermissionError(errno.EACCES, "Permission denied", "/data/out.png")

    with pytest.raises(SystemExit) as exc:
        run_cli(main, [])
    assert exc.value.code == 2 and capsys.readouterr().err == "error: /data/out.png: Permission denied\n"


def test_stale_temps_of_our_own_pattern_are_removed(tmp_path):
    run_dir = tmp_path / "cls.run"
    run_dir.mkdir()
    stale = [tmp_path / ".ce.last.pt.k2j_9x0a.tmp", run_dir / ".checkpoint.pt.abcdefgh.tmp"]
    kept = [tmp_path / ".ce.last.pt.notours.tmp", tmp_path / "ce.last.pt", run_dir / "notes.tmp",
            tmp_path / ".other.pt.abcdefgh.tmp"]
    for path in stale + kept:
        path.write_text("")
    remove_stale_temps(tmp_path / "ce.last.pt", run_dir)
    assert [p.exists() for p in stale] == [False, False] and all(p.exists() for p in kept)
    assert json.loads(atomic_write_json(run_dir / "c.json", [1]).read_text()) == [1]
