"""The device data paths (--data-path device), run on the CPU: the same crops as the loader's for the same draws,
the same sample distributions (crop corners, view scales, flip rates, mask coverage) within stated tolerances,
exact resumption, and the records saying which path ran."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from pretrain.data import ImageCache, InpaintingStream
from pretrain.device_data import DeviceBatches, cpu_masks, draw_crops, gather_crops, step_generators
from pretrain.train import main as pretrain_main
from test_pretrain_train import make_images, tiny_args
from transfer.classification.data import MEAN_RGB, ViewSpec, random_view
from transfer.classification.device_views import draw_views, render_views

N = 4000  # draws per distribution: the Kolmogorov-Smirnov distance of two such samples of one law stays below
KS_LIMIT = 0.05  # 0.05 with probability > 99.9% (critical value 1.95 * sqrt(2 / N) = 0.044); a flip rate stays
FLIP_LIMIT = 0.04  # within 0.04 of the other (3.6 standard errors of the difference, sqrt(2 * 0.25 / N) = 0.011)


def ks_distance(a, b):
    """The largest gap between the empirical CDFs of two samples."""
    grid = np.sort(np.concatenate([a, b]))
    cdf = [np.searchsorted(np.sort(x), grid, side="right") / len(x) for x in (a, b)]
    return float(np.abs(cdf[0] - cdf[1]).max())


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_images(tmp_path_factory.mktemp("imgs"), n=6)


def stream(folder, kind="central", size=40, load=48):
    paths = sorted(p for p in folder.rglob("*") if p.suffix in (".jpg", ".png"))
    return InpaintingStream(paths, size, load, kind, seed=3, cache=ImageCache(paths, load, threads=1))


def test_gather_crops_equals_the_loaders_crop_for_the_same_draws(folder):
    ds = stream(folder)
    images = ds.cache.on_device("cpu")
    assert ds.cache.on_device("cpu") is images  # uploaded once per device
    for position in range(8):
        crop, _, _ = ds[position]
        index = ds.image_index(position)
        top, left, flip, _ = ds.draw(position, *ds.cache[index].shape[:2])
        ours = gather_crops(images, torch.tensor([index]), torch.tensor([top]), torch.tensor([left]),
                            torch.tensor([flip]), ds.input_size)
        assert torch.equal(ours[0], crop)  # uint8: exact


def test_crop_corners_and_flips_have_the_loaders_distribution(folder):
    ds = stream(folder)
    h, w = ds.cache.shapes[0][:2]
    loader = np.array([ds.draw(p, h, w)[:3] for p in range(N)], dtype=np.float64)  # (N, 3) top, left, flip
    gen = torch.Generator().manual_seed(0)
    top, left, flip = draw_crops(torch.full((N,), h), torch.full((N,), w), ds.input_size, gen)
    assert int(top.max()) <= h - ds.input_size and int(left.max()) <= w - ds.input_size and int(top.min()) >= 0
    assert ks_distance(loader[:, 0], top.numpy()) < KS_LIMIT
    assert ks_distance(loader[:, 1], left.numpy()) < KS_LIMIT
    assert abs(loader[:, 2].mean() - flip.float().mean().item()) < FLIP_LIMIT


def test_mask_coverage_matches_and_batches_resume_exactly(folder):
    ds = stream(folder, kind="random-region")
    batches = list(DeviceBatches(ds, ds.cache.on_device("cpu"), 0, 6, batch_size=10))
    ours = torch.cat([m for _, m, _ in batches]).float().mean(dim=(1, 2, 3))  # (60,) masked fraction
    theirs = torch.stack([ds[p][1] for p in range(60)]).float().mean(dim=(1, 2, 3))
    # both accept 20-30% coverage; the means of 60 such fractions (sd ~0.03) agree within 0.015 (3.5 se)
    assert ((ours > 0.2) & (ours < 0.3)).all() and abs(ours.mean() - theirs.mean()) < 0.015
    again = list(DeviceBatches(ds, ds.cache.on_device("cpu"), 4, 6, batch_size=10))  # a resume at step 4
    for (a, ma, _), (b, mb, _) in zip(batches[4:], again, strict=True):
        assert torch.equal(a, b) and torch.equal(ma, mb)
    assert step_generators(3, 4, 0, "cpu")[0].initial_seed() != step_generators(3, 4, 1, "cpu")[0].initial_seed()


def test_cpu_drawn_masks_come_ahead_in_order_and_resume_exactly(folder):
    ds = stream(folder, kind="random-block")  # drawn per image on the CPU, one step ahead in a thread
    batches = list(DeviceBatches(ds, ds.cache.on_device("cpu"), 0, 4, batch_size=6))
    for step, (_, masks, _) in enumerate(batches):
        assert torch.equal(masks, cpu_masks(ds, 6, ds.seed, step, 0))
    again = list(DeviceBatches(ds, ds.cache.on_device("cpu"), 3, 4, batch_size=6))
    assert torch.equal(again[0][0], batches[3][0]) and torch.equal(again[0][1], batches[3][1])
    coverage = torch.cat([m for _, m, _ in batches]).float().mean()  # random-block: 25% +- 3% per mask
    assert abs(coverage - 0.25) < 0.03


def test_pretrain_device_path_on_cpu_records_it(folder, tmp_path):
    out = tmp_path / "ce.pt"
    pretrain_main(tiny_args(folder, out, "--max-steps", "2", "--data-path", "device", "--no-figures",
                            "--health-images", "0"))
    meta = torch.load(out, weights_only=True)["meta"]
    assert meta["data_path"] == "device" and meta["steps"] == 2
    assert meta["runtime"]["memory_format"] == "contiguous" and meta["runtime"]["compile"] is False
    default = tmp_path / "default.pt"
    pretrain_main(tiny_args(folder, default, "--max-steps", "1", "--no-figures", "--health-images", "0"))
    assert torch.load(default, weights_only=True)["meta"]["data_path"] == "loader"  # auto on a CPU: the loader


def test_classification_views_have_random_views_distribution():
    spec = ViewSpec(input_size=24, base_size=40, min_scale=0.5, max_scale=2.0, flip_prob=0.5)
    h, w = 30, 40
    gen = torch.Generator().manual_seed(0)
    scale, x0, y0, flip = draw_views(torch.full((N,), h), torch.full((N,), w), spec, gen)
    # random_view's draws, replayed with its NumPy generator: scale, then the window origin, then the flip
    rng = np.random.default_rng(0)
    s = rng.uniform(0.5, 2.0, N) * 40 / 40
    ox = rng.uniform(np.minimum(0, w * s - 24), np.maximum(0, w * s - 24))
    assert ks_distance(s, scale.numpy()) < KS_LIMIT and ks_distance(ox, x0.numpy()) < KS_LIMIT
    assert abs(flip.float().mean().item() - 0.5) < FLIP_LIMIT / 2  # one sample against the exact rate


def test_classification_views_render_as_pil_for_enlarged_views():
    rng = np.random.default_rng(1)
    image = Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)).resize((40, 30))
    spec = ViewSpec(input_size=24, base_size=40, min_scale=1.0, max_scale=1.5, flip_prob=0.5)

    class Draws:  # random_view's generator, answering with fixed draws
        def __init__(self, *values):
            self.values = list(values)

        def uniform(self, lo, hi):
            return lo + self.values.pop(0) * (hi - lo)

        def random(self):
            return self.values.pop(0)

    pixels = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None]
    images = type("Images", (), {"device": torch.device("cpu"), "pixels": pixels, "heights": torch.tensor([30]),
                                 "widths": torch.tensor([40])})()
    for u_scale, u_x, u_y, mirror in [(0.0, 0.3, 0.6, 0.9), (1.0, 0.0, 1.0, 0.1)]:
        theirs = random_view(image, spec, Draws(u_scale, u_x, u_y, mirror))  # (S, S, 3)
        s = (1.0 + u_scale * 0.5) * 40 / 40
        x0, y0 = u_x * (40 * s - 24), u_y * (30 * s - 24)
        ours = render_views(images, torch.tensor([0]), torch.tensor([s], dtype=torch.float64),
                            torch.tensor([x0], dtype=torch.float64), torch.tensor([y0], dtype=torch.float64),
                            torch.tensor([mirror < 0.5]), 24)[0].permute(1, 2, 0).numpy().astype(int)
        # PIL's bilinear runs in 8-bit fixed point with its own rounding: a pixel may differ by a few levels
        assert np.abs(ours - theirs).max() <= 3 and np.abs(ours - theirs).mean() < 0.5
    padded = render_views(images, torch.tensor([0]), torch.tensor([0.5], dtype=torch.float64),
                          torch.tensor([-4.0], dtype=torch.float64), torch.tensor([-9.0], dtype=torch.float64),
                          torch.tensor([False]), 24)[0]
    assert padded[:, 0, 0].tolist() == list(MEAN_RGB)  # outside the image: the mean colour, as the loader pads


def test_classify_device_path_on_cpu_fine_tunes_and_records_it(tmp_path):
    from test_transfer_classify import tiny_args as classify_args
    from vocfactory import make_vocdevkit

    from transfer import classify

    voc = make_vocdevkit(tmp_path / "VOCdevkit", splits={"train": 12, "val": 6}, seed=2)
    out = tmp_path / "device.json"
    with pytest.warns(UserWarning, match="no positive"):  # the tiny devkit lacks some classes
        classify.main(classify_args(voc, out, "--weights", "random", "--data-path", "device", "--health-images", "0",
                                    "--no-rescale", "--n-boot", "200"))
    record = json.loads(out.read_text())
    assert record["data_path"] == "device" and record["protocol"]["data_path"] == "device"
    assert record["config"]["runtime"]["memory_format"] == "contiguous" and 0 <= record["value"] <= 100
