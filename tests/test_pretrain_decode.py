"""The GPU data path run on the CPU: same samples as the CPU path (masks exactly, crops within the JPEG decoders'
rounding), one clear line for a bad file, and the pretraining entry points with --precision and pretrain.speed."""

import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from cebench.errors import CebenchError
from pretrain import loop
from pretrain.data import InpaintingStream, list_images, make_loader
from pretrain.decode import EncodedStream, collate_encoded, decode_batch, jpeg_decoder, make_decoding_loader
from pretrain.speed import main as speed_main
from pretrain.train import main as train_main


def smooth_image(rng, width, height):
    """Natural-looking content: a few colour blobs, bicubically enlarged (no 1-px detail JPEG would smear)."""
    base = rng.integers(0, 255, (5, 7, 3), dtype=np.uint8)
    return Image.fromarray(base).resize((width, height), Image.BICUBIC)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("jpegs")
    rng = np.random.default_rng(0)
    for i in range(6):  # sizes >= 2x the load size, so PIL's draft mode decodes at reduced scale as in training
        smooth_image(rng, 150 + 9 * i, 120 - 4 * i).save(folder / f"{i:06d}.jpg", quality=95)
    smooth_image(rng, 96, 80).save(folder / "000006.png")  # not a JPEG: decoded on the CPU, same semantics
    return folder


def stream(images, mask="random-block"):
    return InpaintingStream(list_images(images), input_size=40, load_size=48, mask_kind=mask, seed=3)


def test_device_decoding_gives_the_cpu_paths_crops_and_masks(images):
    ds = stream(images)
    positions = list(range(14))  # two epochs: every image, several crops and flips
    cpu = [ds[p][:2] for p in positions]  # (crop, mask); the third item names a replaced image (-1: none)
    paths, datas, params, masks = collate_encoded([EncodedStream(ds)[p] for p in positions])
    crops = decode_batch(paths, datas, params, 40, torch.device("cpu"))  # the function CUDA runs, on the CPU
    assert crops.shape == (14, 3, 40, 40) and crops.dtype == torch.uint8
    assert torch.equal(masks, torch.stack([m for _, m in cpu]))  # the same random draws, bit for bit
    diff = (crops.float() - torch.stack([c for c, _ in cpu]).float()).abs()
    # JPEG-decoder tolerance: PIL decodes at 1/2 scale in the DCT (draft mode) then resizes with PIL's filter;
    # the device path decodes at full size and resizes with torchvision's antialiased bilinear. Both are the
    # same picture to within a few grey levels; a wrong crop offset or flip would differ by tens.
    assert diff.mean() < 3.0, diff.mean()
    assert diff.flatten(1).mean(1).max() < 6.0
    flipped = diff.new_tensor([(c.float() - r.flip(-1).float()).abs().mean() for (r, _), c in zip(cpu, crops,
                                                                                                  strict=True)])
    assert (flipped > 4 * diff.flatten(1).mean(1)).float().mean() > 0.5  # the check can tell a flip apart


def test_decoding_loader_yields_the_training_batches(images):
    ds = stream(images)
    cpu = list(make_loader(ds, 0, 2, 4, workers=0))
    dev = list(make_decoding_loader(ds, 0, 2, 4, "cpu", workers=1))
    assert len(dev) == 2
    for (a, ma, ra), (b, mb, rb) in zip(cpu, dev, strict=True):
        assert b.shape == a.shape and torch.equal(ma, mb) and torch.equal(ra, rb)  # no image replaced
        assert (a.float() - b.float()).abs().mean() < 3.0  # tolerance as above


def test_unreadable_file_is_named(images, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    for p in list(images.glob("*.jpg"))[:2]:
        (bad / p.name).write_bytes(p.read_bytes())
    (bad / "000009.jpg").write_bytes(b"\xff\xd8 this is not a JPEG")
    ds = InpaintingStream(list_images(bad), 40, 48, "central", seed=0)
    with pytest.raises(CebenchError, match="000009.jpg"):
        list(make_decoding_loader(ds, 0, 1, 3, "cpu", workers=0))


def test_the_device_path_decodes_without_torchvisions_deprecated_decoders(images):
    """TorchCodec's decode_jpeg when installed, else torchvision's with its DeprecationWarning (0.29) kept out of
    the run's output; PNGs go through cebench.images, never torchvision.io."""
    ds = stream(images)
    paths, datas, params, _ = collate_encoded([EncodedStream(ds)[p] for p in range(7)])
    assert any(p.endswith(".png") for p in paths) and any(p.endswith(".jpg") for p in paths)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        crops = decode_batch(paths, datas, params, 40, torch.device("cpu"))
    assert crops.shape == (7, 3, 40, 40)
    assert jpeg_decoder()[1] in ("torchcodec", "torchvision")


def test_decode_gpu_needs_cuda(images):
    ds = stream(images)
    with pytest.raises(CebenchError, match="--decode gpu needs --device cuda"):
        loop.decode_mode({"decode": "gpu"}, ds, torch.device("cpu"))
    assert loop.decode_mode({"decode": "auto"}, ds, torch.device("cpu")) == "cpu"
    assert loop.decode_mode({"decode": "auto"}, ds, torch.device("cuda")) == "gpu"  # not cached: decode there


def tiny(images, out, *extra):
    return ["--profile", "smoke", "--images", str(images), "--image-split", "all", "--width", "0.25",
            "--input-size", "64", "--load-size", "72", "--batch-size", "4", "--steps", "10", "--device", "cpu",
            "--out", str(out), "--workers", "0", "--threads", "1", *extra]


def test_pretrain_records_precision_in_ce_meta_and_config(images, tmp_path):
    out = tmp_path / "ce.pt"
    train_main(tiny(images, out, "--no-figures", "--max-steps", "2", "--precision", "bf16"))
    ckpt = torch.load(out, weights_only=True)
    assert ckpt["meta"]["precision"] == "bf16"
    assert all(v.dtype == torch.float32 for v in ckpt["encoder"].values() if v.is_floating_point())
    assert json.loads(out.with_suffix(".config.json").read_text())["precision"] == "bf16"
    with pytest.raises(CebenchError, match="precision"):  # resuming in another precision would not replay
        train_main(tiny(images, out, "--no-figures", "--max-steps", "3", "--precision", "fp32", "--resume"))


def test_speed_reports_each_precision(images, tmp_path, capsys):
    result = speed_main(tiny(images, tmp_path / "ce.pt", "--bench-steps", "1", "--warmup", "0", "--rounds", "1",
                             "--precisions", "fp32", "bf16", "--json", str(tmp_path / "speed.json")))
    assert set(result["precisions"]) == {"fp32", "bf16"} and result["decode"] == "cpu"
    assert result["speedup_over_fp32"]["fp32"]["model_only"] == 1.0
    assert result["data_cpu_s_per_batch"] > 0
    assert "| bf16 |" in capsys.readouterr().out
    assert json.loads((tmp_path / "speed.json").read_text())["fastest"] in ("fp32", "bf16")
