"""GPU checks of issue 22 items 2-3, for a session with a CUDA device (skipped without one; no CPU test needs it).

    python -m pytest tests/test_gpu_path.py -q -s       # ~2-4 min on one current GPU, prints the throughputs

What a CPU cannot check: auto precision on the real GPU, channels_last/TF32/cudnn.benchmark in the records, the
device data paths drawing on CUDA the same distributions as the CPU, and the whole loop keeping up with the model
step (end-to-end >= 0.8 x model-only, issue 22's bar) on the device data path at the paper's 227 px, batch 64.
"""

import json

import numpy as np
import pytest
import torch

from cebench.runtime import resolve_precision
from pretrain import speed as pretrain_speed
from pretrain.device_data import draw_crops
from pretrain.train import main as pretrain_main
from test_device_data import KS_LIMIT, ks_distance
from test_pretrain_train import make_images, tiny_args
from transfer.classification.data import ViewSpec
from transfer.classification.device_views import draw_views, render_views

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_images(tmp_path_factory.mktemp("imgs"), n=64)


def test_auto_precision_follows_the_gpu():
    major, _ = torch.cuda.get_device_capability()
    assert resolve_precision("auto", "cuda") == ("bf16" if major >= 8 else "fp16")


def test_pretrain_on_cuda_records_what_ran(folder, tmp_path):
    out = tmp_path / "ce.pt"
    pretrain_main([*tiny_args(folder, out, "--max-steps", "3", "--no-figures", "--health-images", "0"), "--device",
                   "cuda"])
    meta = torch.load(out, weights_only=True)["meta"]
    assert meta["data_path"] == "device" and meta["precision"] == resolve_precision("auto", "cuda")
    assert meta["runtime"] | {"device": "cuda:0"} == {"device": "cuda:0", "precision": meta["precision"],
                                                      "memory_format": "channels_last", "compile": False,
                                                      "cudnn_benchmark": True, "tf32": True}


def test_device_draws_on_cuda_have_the_cpu_distribution():
    n, gens = 4000, [torch.Generator(d).manual_seed(0) for d in ("cpu", "cuda")]
    tops = [draw_crops(torch.full((n,), 300, device=g.device), torch.full((n,), 400, device=g.device), 227, g)[0]
            for g in gens]
    assert ks_distance(tops[0].numpy(), tops[1].cpu().numpy()) < KS_LIMIT
    spec = ViewSpec()
    views = [draw_views(torch.full((n,), 375, device=g.device), torch.full((n,), 500, device=g.device), spec, g)
             for g in gens]
    assert ks_distance(views[0][0].numpy(), views[1][0].cpu().numpy()) < KS_LIMIT


def test_views_render_the_same_on_cuda_and_cpu():
    pixels = torch.randint(0, 256, (2, 3, 40, 50), dtype=torch.uint8)
    rendered = []
    for device in ("cpu", "cuda"):
        images = type("Images", (), {"device": torch.device(device), "pixels": pixels.to(device),
                                     "heights": torch.tensor([40, 30], device=device),
                                     "widths": torch.tensor([50, 50], device=device)})()
        args = [torch.tensor(v, dtype=torch.float64, device=device) for v in ([1.3, 0.7], [3.0, -2.0], [1.0, -5.0])]
        rendered.append(render_views(images, torch.tensor([0, 1], device=device), *args,
                                     torch.tensor([False, True], device=device), 32).cpu().int())
    assert (rendered[0] - rendered[1]).abs().max() <= 1  # grid_sample's float rounding differs by device


@pytest.mark.parametrize("data_path", ["device", "loader"])
def test_pretrain_whole_loop_keeps_up_at_paper_size(folder, tmp_path, data_path):
    out = tmp_path / f"speed_{data_path}.json"
    pretrain_speed.main(["--profile", "paper", "--images", str(folder), "--image-split", "all", "--device", "cuda",
                         "--data-path", data_path, "--bench-steps", "10", "--rounds", "2", "--json", str(out)])
    result = json.loads(out.read_text())
    print(data_path, {p: round(r["ratio_median"], 3) for p, r in result["precisions"].items()},
          {p: round(r["model_only_images_per_s_median"]) for p, r in result["precisions"].items()})
    if data_path == "device":
        assert result["data_path"] == "device"
        native = resolve_precision("auto", "cuda")
        assert result["precisions"][native]["ratio_median"] >= 0.8  # issue 22: whole loop >= 0.8 of the step
        assert np.isfinite(result["precisions"][native]["model_only_images_per_s_median"])


def test_detection_and_segmentation_device_batches_on_cuda_are_the_cpus(tmp_path):
    from test_transfer_device_data import DET_FAST, SEG_TINY, micro_batches, random_proposals
    from transfer import detect, segment
    from transfer.detection import device_data as det
    from transfer.detection.data import RoiSampling, TrainImages, from_voc
    from transfer.segmentation import device_data as seg
    from transfer.segmentation.data import SegTransform, VOCSegmentation
    from voc.devkit import load_split
    from vocfactory import make_vocdevkit

    # detection with nothing random (every candidate RoI kept, every image mirrored): the CPU's batches
    voc = make_vocdevkit(tmp_path / "det", splits={"train": 6, "val": 4}, size=(96, 72), seed=4)
    split = from_voc(load_split(voc.root, "2007", "train"))
    train = TrainImages(split, random_proposals(split), scale=96, max_size=128, flip_prob=1.0,
                        sampling=RoiSampling(rois_per_image=10_000, fg_fraction=1.0))
    sampler = micro_batches(len(train), steps=2, batch_size=2)
    cpu, cuda = ([[t.cpu() for t in b] for b in det.device_batches(det.DeviceImages(train, d), train, sampler)]
                 for d in ("cpu", "cuda"))
    for a, b in zip(cpu, cuda, strict=True):
        assert all(torch.equal(x, y) for x, y in zip(a[:3], b[:3], strict=True))  # images, rois, labels
        torch.testing.assert_close(a[3], b[3], rtol=1e-5, atol=1e-5)  # targets: CUDA's log may differ by an ulp
    # segmentation for the same draws: masks exact; a resized pixel within a level (float32 resize on CUDA)
    voc_seg = make_vocdevkit(tmp_path / "seg", splits={"train": 6, "val": 4}, seed=5)
    transform = SegTransform(scale_range=(0.6, 1.4), crop_size=40, flip_prob=0.5)
    dataset = VOCSegmentation(voc_seg.root, "train", "2007", transform=transform, cache="on")
    std, on = torch.tensor(transform.std).view(3, 1, 1), [seg.DeviceImages(dataset, d) for d in ("cpu", "cuda")]
    for index, draws in enumerate([[0.1, 0.3, 0.8, 0.2], [0.9, 0.5, 0.1, 0.7], [0.5, 0.0, 0.99, 0.4]]):
        (ia, ma), (ib, mb) = (seg.augment(images, transform, index, draws) for images in on)
        assert torch.equal(ma, mb.cpu()) and ((ia - ib.cpu()).abs() * std * 255).max() <= 1.01
    # both entry points on CUDA: --data-path auto puts these tiny training sets on the device
    detect.main(["--voc-root", str(voc.root), *DET_FAST, "--device", "cuda", "--proposals-cache",
                 str(tmp_path / "cache"), "--out", str(tmp_path / "det.json")])
    segment.main(["--voc-root", str(voc_seg.root), *SEG_TINY, "--device", "cuda", "--out", str(tmp_path / "seg.json")])
    for name in ("det", "seg"):
        record = json.loads((tmp_path / f"{name}.json").read_text())
        assert record["data_path"] == "device" and record["device"].startswith("cuda"), name
