"""`python -m pretrain.train` end to end on tiny images: outputs, exact resume (also after SIGKILL), refusals,
data stream, torchrun DDP."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cebench.errors import CebenchError
from pretrain.data import InpaintingStream, StepBatchSampler, list_images
from pretrain.train import main
from pretrain.weights import load_encoder
from vocfactory import make_vocdevkit

REPO = Path(__file__).resolve().parents[1]


def make_images(folder, n=10, seed=0):
    """Small random-texture JPEGs and PNGs in a nested folder."""
    rng = np.random.default_rng(seed)
    (folder / "sub").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        base = rng.integers(0, 255, (6, 8, 3), dtype=np.uint8)
        img = Image.fromarray(base).resize((90 + 3 * i, 76), Image.BICUBIC)
        img.save(folder / ("sub" if i % 2 else ".") / f"{i:06d}.{'png' if i % 3 == 0 else 'jpg'}")
    return folder


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return make_images(tmp_path_factory.mktemp("imgs"))


def tiny_args(images, out, *extra):
    return ["--profile", "smoke", "--images", str(images), "--image-split", "all", "--width", "0.25",
            "--input-size", "64", "--load-size", "72", "--batch-size", "4", "--steps", "10", "--device", "cpu",
            "--lr-schedule", "cosine", "--out", str(out), "--ckpt-every", "2", "--workers", "0", *extra]


def weights(path):
    ckpt = torch.load(path, weights_only=True)
    return {**{f"e.{k}": v for k, v in ckpt["encoder"].items()}, **{f"d.{k}": v for k, v in ckpt["decoder"].items()}}


def assert_same_weights(a, b):
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


def test_two_steps_write_checkpoint_figures_and_meta(images, tmp_path):
    out = tmp_path / "run" / "ce.pt"
    result = main(tiny_args(images, out, "--max-steps", "2", "--mask", "random-region"))
    assert result["steps"] == 2 and result["images_seen"] == 8 and np.isfinite(result["final_loss"])
    for name in ("ce.pt", "ce.last.pt", "ce.loss.png", "ce.samples.png", "ce.config.json"):
        assert (out.parent / name).is_file(), name
    encoder, info = load_encoder(out)
    meta = info["meta"]
    assert meta["steps"] == 2 and meta["images_seen"] == 8 and meta["mask"] == "random-region"
    assert meta["seed"] == 0 and meta["wall_time_s"] > 0 and meta["n_images"] == 10
    assert meta["mask_source"].startswith("released code")  # no --region-shapes: the noise pattern
    assert encoder.feature_shape(64) == (encoder.out_channels, 1, 1)
    # feature health of the final weights, on every one of the 10 images (fewer than --health-images)
    health = meta["feature_health"]
    assert sorted(health["dead_units"]) == [f"conv{k}" for k in range(1, 6)] and health["n_images"] == 10
    assert all(0 <= v <= 1 for v in health["dead_units"].values()) and health["pool5_effective_rank"] <= 10
    assert meta["lrn"] == "caffe-range"
    logged = [json.loads(line) for line in (out.parent / "ce.metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in logged if "feature_health" in row] == [2]  # at the checkpoint (--ckpt-every 2)
    with Image.open(out.parent / "ce.samples.png") as grid:
        assert grid.height > 3 * 64  # three rows: input with hole, output, original


def test_resume_replays_exactly_and_schedule_ignores_max_steps(images, tmp_path):
    main(tiny_args(images, tmp_path / "full" / "ce.pt", "--max-steps", "4", "--no-figures"))
    main(tiny_args(images, tmp_path / "split" / "ce.pt", "--max-steps", "2", "--no-figures"))
    result = main(tiny_args(images, tmp_path / "split" / "ce.pt", "--max-steps", "4", "--resume", "--no-figures"))
    assert result["steps"] == 4
    assert_same_weights(tmp_path / "full" / "ce.pt", tmp_path / "split" / "ce.pt")
    # the history survives the resume, and the run's 4th step differs from a run whose schedule is 4 steps long
    main(tiny_args(images, tmp_path / "short" / "ce.pt", "--max-steps", "4", "--steps", "4", "--no-figures"))
    assert not torch.equal(*(weights(tmp_path / d / "ce.pt")["e.features.0.weight"] for d in ("full", "short")))


def test_save_at_snapshots_and_step_zero_load_with_their_labels(images, tmp_path):
    out = tmp_path / "curve" / "ce.pt"
    result = main(tiny_args(images, out, "--max-steps", "3", "--no-figures", "--save-at", "0", "2", "3", "9"))
    assert result["snapshots"] == [str(out.parent / f"ce.step{s}.pt") for s in (0, 2, 3)]  # 9 is past the stop
    assert not (out.parent / "ce.step9.pt").exists() and not list(out.parent.glob("*.tmp*"))
    assert_same_weights(out.parent / "ce.step3.pt", out)  # the last snapshot is the final ce.pt
    _, info0 = load_encoder(out.parent / "ce.step0.pt")
    _, info2 = load_encoder(out.parent / "ce.step2.pt")
    assert (info0["init"], info0["meta"]["steps"], info0["meta"]["images_seen"]) == ("ce-untrained", 0, 0)
    assert (info2["init"], info2["meta"]["steps"], info2["meta"]["images_seen"]) == ("ce", 2, 8)
    # --max-steps 0: a valid ce.pt of the untrained weights, equal to the step-0 snapshot of the same seed
    zero = tmp_path / "untrained" / "ce.pt"
    result = main(tiny_args(images, zero, "--max-steps", "0"))
    assert result["steps"] == 0 and result["final_loss"] is None and result["images_per_s"] is None
    assert_same_weights(zero, out.parent / "ce.step0.pt")
    encoder, info = load_encoder(zero)
    assert info["init"] == "ce-untrained" and info["meta"]["steps"] == 0
    assert encoder.feature_shape(64) == (encoder.out_channels, 1, 1)
    with pytest.raises(CebenchError, match="--max-steps"):
        main(tiny_args(images, tmp_path / "neg" / "ce.pt", "--max-steps", "-1"))


def test_autoencoder_control_is_labelled_and_learns_the_whole_image(images, tmp_path):
    out = tmp_path / "ae" / "ce.pt"
    result = main(tiny_args(images, out, "--max-steps", "2", "--no-figures", "--mask", "none"))
    assert np.isfinite(result["final_loss"])
    _, info = load_encoder(out)
    assert info["init"] == "autoencoder" and info["meta"]["mask"] == "none"
    assert info["meta"]["mask_source"].startswith("none: autoencoder")


def test_adversarial_flag_trains_a_discriminator(images, tmp_path):
    out = tmp_path / "adv" / "ce.pt"
    result = main(tiny_args(images, out, "--max-steps", "2", "--no-figures", "--adv-weight", "0.001",
                            "--mask", "central", "--overlap", "4"))
    assert np.isfinite(result["final_loss"])
    state = torch.load(out.parent / "ce.last.pt", weights_only=True)
    assert "disc" in state and state["disc_opt"]["state"]  # the discriminator took optimiser steps


def test_workers_and_cache_give_the_same_run(images, tmp_path):
    main(tiny_args(images, tmp_path / "a" / "ce.pt", "--max-steps", "2", "--no-figures", "--cache", "on"))
    main(tiny_args(images, tmp_path / "b" / "ce.pt", "--max-steps", "2", "--no-figures", "--cache", "off",
                   "--workers", "1"))
    assert_same_weights(tmp_path / "a" / "ce.pt", tmp_path / "b" / "ce.pt")


def test_refuses_overwrite_and_mismatched_resume(images, tmp_path):
    out = tmp_path / "ce.pt"
    main(tiny_args(images, out, "--max-steps", "1", "--no-figures"))
    with pytest.raises(CebenchError, match="exists"):
        main(tiny_args(images, out, "--max-steps", "1", "--no-figures"))
    with pytest.raises(CebenchError, match="settings differ.*batch_size"):
        main(tiny_args(images, out, "--max-steps", "2", "--resume", "--batch-size", "2", "--no-figures"))


def test_bad_image_is_named_or_skipped(tmp_path):
    folder = make_images(tmp_path / "imgs", n=5)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 this is not a jpeg")
    with pytest.raises(CebenchError, match="broken.jpg"):
        main(tiny_args(folder, tmp_path / "x.pt", "--max-steps", "1", "--no-figures"))
    result = main(tiny_args(folder, tmp_path / "y.pt", "--max-steps", "1", "--no-figures", "--skip-bad"))
    assert load_encoder(result["out"])[1]["meta"]["skipped_images"] == 1


def test_image_list_restricts_the_folder(images, tmp_path):
    ids = tmp_path / "train.txt"
    ids.write_text("000001\n000004\n")
    assert sorted(p.stem for p in list_images(images, ids)) == ["000001", "000004"]
    ids.write_text("000001\nmissing\n")
    with pytest.raises(CebenchError, match="no image"):
        list_images(images, ids)
    with pytest.raises(CebenchError, match="no .jpg"):
        list_images(tmp_path)


def test_stream_is_deterministic_and_ranks_are_disjoint(images):
    paths = list_images(images)
    a = InpaintingStream(paths, 64, 72, "random-block", seed=3)
    b = InpaintingStream(paths, 64, 72, "random-block", seed=3)
    for pos in (0, 7, 25):
        assert all(torch.equal(x, y) for x, y in zip(a[pos], b[pos], strict=True))
    epoch0 = [a.image_index(p) for p in range(len(paths))]
    assert sorted(epoch0) == list(range(len(paths)))  # each image once per epoch
    r0 = [p for batch in StepBatchSampler(0, 3, 4, rank=0, world_size=2) for p in batch]
    r1 = [p for batch in StepBatchSampler(0, 3, 4, rank=1, world_size=2) for p in batch]
    assert not set(r0) & set(r1) and sorted(r0 + r1) == list(range(24))
    resumed = [p for batch in StepBatchSampler(2, 3, 4, rank=0, world_size=2) for p in batch]
    assert resumed == r0[8:]


def test_help_exits_cleanly(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0 and "--max-steps" in capsys.readouterr().out


def _env():
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))


@pytest.mark.integration
def test_sigkill_then_resume_equals_uninterrupted_run(tmp_path):
    images = make_images(tmp_path / "imgs", n=12)
    flags = ["--steps", "30", "--ckpt-every", "3", "--no-figures", "--threads", "1", "--width", "0.5",
             "--input-size", "96", "--load-size", "104"]
    killed = tmp_path / "killed" / "ce.pt"
    cmd = [sys.executable, "-m", "pretrain.train", *tiny_args(images, killed), *flags]
    proc = subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = killed.parent / "ce.last.pt"
    deadline = time.time() + 120
    while not last.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert last.exists() and not killed.exists(), "the run finished before it could be killed"
    step = torch.load(last, weights_only=True)["step"]
    assert 0 < step < 30
    main([*tiny_args(images, killed), *flags, "--resume"])
    main([*tiny_args(images, tmp_path / "full" / "ce.pt"), *flags])
    assert_same_weights(killed, tmp_path / "full" / "ce.pt")
    assert torch.load(killed, weights_only=True)["meta"]["steps"] == 30


@pytest.mark.integration
def test_torchrun_two_cpu_processes_keep_identical_weights(tmp_path):
    images = make_images(tmp_path / "imgs", n=12)
    out = tmp_path / "ddp" / "ce.pt"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
           "pretrain.train", *tiny_args(images, out, "--max-steps", "3", "--no-figures", "--threads", "1")]
    run = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    meta = torch.load(out, weights_only=True)["meta"]
    assert meta["world_size"] == 2 and meta["ddp_ranks_identical"] is True
    assert len(meta["ddp_rank_checksums"]) == 2 and meta["ddp_rank_checksums"][0] == meta["ddp_rank_checksums"][1]
    assert meta["images_seen"] == 3 * 4 * 2  # each rank its own shard of the global batch


@pytest.mark.integration
def test_paper_profile_few_steps_on_real_photos(voc_mini_root, tmp_path):
    ids = tmp_path / "ids.txt"
    ids.write_text("\n".join(p.stem for p in sorted((voc_mini_root / "VOC2007" / "JPEGImages").glob("*.jpg"))[:8]))
    out = tmp_path / "paper" / "ce.pt"
    result = main(["--profile", "paper", "--images", str(voc_mini_root / "VOC2007" / "JPEGImages"), "--image-list",
                   str(ids), "--batch-size", "4", "--max-steps", "2", "--device", "cpu", "--out", str(out)])
    assert result["steps"] == 2 and np.isfinite(result["final_loss"])
    encoder, info = load_encoder(out)
    assert info["arch"] == {"arch": "caffenet", "pool_free": False, "width": 1.0, "lrn": "caffe-range"}
    assert sum(p.numel() for p in encoder.parameters()) == 2_334_080
    assert [tuple(c.weight.shape) for c in encoder.conv_layers()] == [
        (96, 3, 11, 11), (256, 48, 5, 5), (384, 256, 3, 3), (384, 192, 3, 3), (256, 192, 3, 3)]
    assert encoder.feature_shape(227) == (256, 6, 6)
    decoder = torch.load(out, weights_only=True)["decoder"]
    assert decoder["channelwise_fc.weight"].shape == (256, 36, 36)
    meta = info["meta"]
    assert meta["mask"] == "random-region" and meta["lr"] == 1.0e-4 and meta["input_size"] == 227


def test_speed_benchmark_reports_both_throughputs(images):
    from pretrain.speed import main as speed_main
    result = speed_main(tiny_args(images, "unused.pt", "--bench-steps", "2", "--warmup", "0", "--rounds", "1",
                                  "--precisions", "fp32"))
    row = result["precisions"]["fp32"]  # one row per precision (tests/test_precision.py compares several)
    assert row["model_only_images_per_s"] > 0 and row["end_to_end_images_per_s"] > 0
    assert row["ratio"] == pytest.approx(row["end_to_end_images_per_s"] / row["model_only_images_per_s"])
    assert result["data_cpu_s_per_batch"] > 0


def _imagenet_style(folder, per_class=2):
    """An ImageNet-style train/ folder: one subfolder of .JPEG files per class, no split lists anywhere."""
    rng = np.random.default_rng(1)
    for wnid in ("n01440764", "n01443537", "n01484850"):
        (folder / wnid).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 255, (80, 100, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / wnid / f"{wnid}_{i}.JPEG", quality=90)
    return folder


def test_readme_command_on_a_plain_folder_with_the_default_profile(tmp_path, monkeypatch):
    """`python -m pretrain.train --images /data/imagenet/train` (README): the default profile's VOC split does
    not apply to a plain folder; every image under it is used. An explicit --image-split still must exist."""
    monkeypatch.delenv("CEBENCH_BENCHMARKS", raising=False)  # the repository's benchmarks.yaml, default profile
    train = _imagenet_style(tmp_path / "imagenet" / "train")
    quick = ["--max-steps", "1", "--batch-size", "2", "--workers", "0", "--no-figures", "--device", "cpu"]
    result = main(["--images", str(train), "--out", str(tmp_path / "ce.pt"), *quick])
    assert result["steps"] == 1 and load_encoder(result["out"])[1]["meta"]["n_images"] == 6
    assert json.loads((tmp_path / "ce.config.json").read_text())["image_split"] is None
    with pytest.raises(CebenchError, match="no such split list"):
        main(["--images", str(train), "--image-split", "train", "--out", str(tmp_path / "x.pt"), *quick])


def test_voc_jpegimages_folder_keeps_the_profile_split(tmp_path, monkeypatch):
    monkeypatch.delenv("CEBENCH_BENCHMARKS", raising=False)
    voc = make_vocdevkit(tmp_path / "VOCdevkit", splits={"train": 3, "val": 2}, size=(120, 100))
    quick = ["--max-steps", "1", "--batch-size", "2", "--workers", "0", "--no-figures", "--device", "cpu"]
    result = main(["--images", str(voc.base / "JPEGImages"), "--out", str(tmp_path / "a.pt"), *quick])
    assert load_encoder(result["out"])[1]["meta"]["n_images"] == 3  # the smoke profile's image_split: train
    ids = tmp_path / "ids.txt"
    ids.write_text("\n".join(voc.splits["val"]))  # an explicit list replaces the profile's split
    result = main(["--images", str(voc.base / "JPEGImages"), "--image-list", str(ids), "--out",
                   str(tmp_path / "b.pt"), *quick])
    assert load_encoder(result["out"])[1]["meta"]["n_images"] == 2
