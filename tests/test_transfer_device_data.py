"""The device data paths of detection and segmentation (--data-path device), run on the CPU against the loader's:
the same batches where nothing is random or for the same draws, the same sample distributions (flip rates, RoI
positions and sizes, crop geometry, per-pixel classes) within stated tolerances, exact resumption, and short
fits whose records say which path ran."""

import json
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch.utils.data import default_collate
from torchvision import tv_tensors

from cebench.errors import CebenchError
from test_device_data import ks_distance
from transfer.detection import device_data as det
from transfer.detection.data import RoiSampling, TrainImages, collate_rois, from_voc
from transfer.engine import fit
from transfer.sampling import SeededItems, StepBatchSampler, derive_seed
from transfer.segmentation import device_data as seg
from transfer.segmentation.data import IGNORE_INDEX, SegTransform, VOCSegmentation, pad_collate
from voc.devkit import load_split
from vocfactory import make_vocdevkit

N = 1000  # draws per distribution: two samples of one law stay within KS distance 1.95 * sqrt(2 / N) = 0.087
KS_LIMIT = 0.09  # with probability > 99.9%; a flip rate within 4 standard errors (4 * sqrt(0.25 / N) = 0.063)
FLIP_LIMIT = 0.065  # of the exact rate
DET_FAST = ["--train-split", "train", "--test-split", "val", "--scale", "96", "--max-size", "128", "--steps", "2",
            "--fc-dim", "32", "--width", "0.25", "--rescale-images", "4", "--ss-workers", "1", "--seed", "0",
            "--threads", "1", "--health-images", "0", "--n-boot", "200"]
SEG_TINY = ["--weights", "random", "--width", "0.25", "--fc-dim", "16", "--input-size", "96", "--steps", "2",
            "--batch-size", "2", "--accum-steps", "2", "--crop-size", "40", "--min-scale", "0.7", "--max-scale",
            "1.3", "--flip-prob", "0.5", "--rescale-images", "4", "--lr", "0.01", "--loss-normalization", "valid",
            "--n-boot", "200", "--device", "cpu", "--examples", "0", "--threads", "1", "--health-images", "0"]


def loader_items(dataset, seeds):
    """The loader path's items: dataset[i] under the global generators seeded with each seed, as the engine's."""
    items = SeededItems(dataset)
    return [items[(i, s)] for i, s in seeds]


def micro_batches(n_items, steps, batch_size, start=0, accum=1, seed=0):
    """The engine's sampler over `steps` optimiser steps on one rank."""
    config = SimpleNamespace(batch_size=batch_size, accum_steps=accum, seed=seed)
    return StepBatchSampler(n_items, config, SimpleNamespace(rank=0, world_size=1), start, steps)


def assert_same_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert all(torch.equal(u, v) for u, v in zip(x, y, strict=True))


# ----- detection -----

@pytest.fixture(scope="module")
def detection_split(tmp_path_factory):
    voc = make_vocdevkit(tmp_path_factory.mktemp("det") / "voc", splits={"train": 5}, size=(96, 72), seed=4)
    split = from_voc(load_split(voc.root, "2007", "train"))
    return split, random_proposals(split)


def random_proposals(split, n=300, seed=0):
    """`n` random boxes per image: enough fg and bg candidates for the RoI sampling to be random."""
    rng, proposals = np.random.default_rng(seed), []
    for width, height in split.sizes:
        xy = rng.uniform(0, [width, height], size=(n, 2))
        wh = rng.uniform(4, [width / 2, height / 2], size=(n, 2))
        proposals.append(np.concatenate([xy, np.minimum(xy + wh, [width, height])], axis=1).astype(np.float32))
    return proposals


def train_images(split, proposals, flip_prob=0.5, sampling=None):
    return TrainImages(split, proposals, scale=96, max_size=128, flip_prob=flip_prob,
                       sampling=sampling or RoiSampling())


@pytest.mark.parametrize("flip_prob", [0.0, 1.0])
def test_detection_batches_are_the_loaders_where_nothing_is_random(detection_split, flip_prob):
    # every candidate RoI kept (fg quota and batch above their counts) and the flip certain: no draw matters
    train = train_images(*detection_split, flip_prob, RoiSampling(rois_per_image=10_000, fg_fraction=1.0))
    images = det.DeviceImages(train, "cpu", threads=1)
    assert images.nbytes == det.DeviceImages.estimate_nbytes(train)  # what --data-path auto weighs
    sampler = micro_batches(len(train), steps=2, batch_size=2)
    ours = list(det.device_batches(images, train, sampler))
    theirs = [collate_rois(loader_items(train, items)) for items in sampler]
    assert_same_batches(ours, theirs)  # images, rois (with batch index), labels, targets: exact


def test_detection_draws_have_the_loaders_distribution(detection_split):
    train = train_images(*detection_split)
    images = det.DeviceImages(train, "cpu", threads=1)
    seeds = [(k % len(train), derive_seed(7, k)) for k in range(N)]
    theirs = loader_items(train, seeds)
    ours = [next(det.device_batches(images, train, [[key]])) for key in seeds]  # one item per micro-batch

    def stats(image, rois, labels, index):
        stored = images.images[index]
        flipped = not torch.equal(image, stored)
        assert flipped == torch.equal(image, stored.flip(2))  # the image as stored, or its mirror
        centre, width = (rois[:, 0] + rois[:, 2]) / 2, rois[:, 2] - rois[:, 0]
        return float(flipped), float((labels > 0).float().mean()), float(centre.mean()), float(width.mean())

    a = np.array([stats(im, r, lab, i) for (im, r, lab, _), (i, _) in zip(theirs, seeds, strict=True)])
    b = np.array([stats(im[0], r[:, 1:], lab, i) for (im, r, lab, _), (i, _) in zip(ours, seeds, strict=True)])
    assert abs(a[:, 0].mean() - 0.5) < FLIP_LIMIT and abs(b[:, 0].mean() - 0.5) < FLIP_LIMIT
    # the fg share of each image's RoIs is set by its candidates (min of the quota and their count): equal
    assert np.array_equal(a[:, 1], b[:, 1]) and 0 < a[:, 1].mean() <= 0.25 + 1e-6
    assert ks_distance(a[:, 2], b[:, 2]) < KS_LIMIT and ks_distance(a[:, 3], b[:, 3]) < KS_LIMIT


def test_detection_batches_resume_exactly(detection_split):
    train = train_images(*detection_split)
    images = det.DeviceImages(train, "cpu", threads=1)
    full = list(det.device_batches(images, train, micro_batches(len(train), steps=4, batch_size=2)))
    resumed = list(det.device_batches(images, train, micro_batches(len(train), steps=4, batch_size=2, start=2)))
    assert_same_batches(full[2:], resumed)


# ----- segmentation -----

@pytest.fixture(scope="module")
def segmentation_root(tmp_path_factory):
    return make_vocdevkit(tmp_path_factory.mktemp("seg") / "voc", splits={"train": 4, "val": 2}, seed=5).root


def seg_dataset(root, transform):
    return VOCSegmentation(root, "train", "2007", transform=transform, cache="on")


@pytest.mark.parametrize("transform", [
    SegTransform(scale_range=(0.6, 1.4), crop_size=40, flip_prob=0.5),  # shrunk (antialiased), padded, flipped
    SegTransform(scale_range=(0.7, 1.3), crop_size=0, flip_prob=0.5),  # whole images, padded by the collate
    SegTransform()])  # the paper profile's: whole images as stored
def test_segmentation_batches_are_the_loaders_for_the_same_draws(segmentation_root, transform):
    dataset = seg_dataset(segmentation_root, transform)
    images = seg.DeviceImages(dataset, "cpu")
    for k in range(6):
        draws = []  # the loader's draws, recorded as the uniforms that give them on the device path

        def uniform(draws=draws):
            draws.append(torch.rand(()).item())
            return draws[-1]

        def integer(n, draws=draws):
            draws.append((int(torch.randint(0, n, ()).item()) + 0.5) / n)  # the uniform that maps to it
            return int(draws[-1] * n)

        index = k % len(dataset)
        torch.manual_seed(k)
        theirs = dataset[index]  # the loader's item under global seed k
        torch.manual_seed(k)  # the same draws again, recorded (the transform's own calls, wrapped)
        image, mask = dataset.load(index)
        again = transform.apply(tv_tensors.Image(torch.from_numpy(image).permute(2, 0, 1).contiguous()),
                                tv_tensors.Mask(torch.from_numpy(mask)), uniform=uniform, integer=integer)
        assert torch.equal(again[0], theirs[0]) and torch.equal(again[1], theirs[1])  # the recording is the loader
        ours = seg.augment(images, transform, index, draws + [0.0] * (4 - len(draws)))
        assert torch.equal(ours[0], theirs[0]) and torch.equal(ours[1], theirs[1])  # exact on a CPU


def test_segmentation_batches_have_the_loaders_distribution(segmentation_root):
    transform = SegTransform(scale_range=(0.7, 1.3), crop_size=40, flip_prob=0.5)
    dataset = seg_dataset(segmentation_root, transform)
    images = seg.DeviceImages(dataset, "cpu")
    seeds = [(k % len(dataset), derive_seed(9, k)) for k in range(N)]
    theirs = pad_collate(loader_items(dataset, seeds))[1]  # (N, 40, 40) masks
    ours = torch.cat([next(seg.device_batches(images, transform, [seeds[k:k + 10]]))[1] for k in range(0, N, 10)])
    assert ours.shape == theirs.shape

    def per_crop(masks):  # per crop: void share (padding, borders), background share, mean column of objects
        objects = ((masks != 0) & (masks != IGNORE_INDEX)).float()
        cols = torch.arange(masks.shape[2]).float()
        centre = (objects * cols).sum(dim=(1, 2)) / objects.sum(dim=(1, 2)).clamp_min(1)
        return [(masks == IGNORE_INDEX).float().mean(dim=(1, 2)).numpy(), (masks == 0).float().mean(dim=(1, 2)).numpy(),
                centre.numpy()]

    for a, b in zip(per_crop(theirs), per_crop(ours), strict=True):
        assert ks_distance(a, b) < KS_LIMIT
    # per-pixel class histograms: each class's share of the pixels, within 4 standard errors of the difference
    # (from the spread of that share over the crops, which are independent draws)
    for c in torch.unique(torch.cat([theirs.unique(), ours.unique()])).tolist():
        a, b = ((m == c).float().mean(dim=(1, 2)).numpy() for m in (theirs, ours))
        assert abs(a.mean() - b.mean()) < 4 * np.sqrt((a.var() + b.var()) / N) + 1e-9, c


def test_segmentation_batches_resume_exactly(segmentation_root):
    transform = SegTransform(scale_range=(0.7, 1.3), crop_size=40, flip_prob=0.5)
    dataset = seg_dataset(segmentation_root, transform)
    images = seg.DeviceImages(dataset, "cpu")
    assert images.nbytes == seg.DeviceImages.estimate_nbytes(dataset)
    full = list(seg.device_batches(images, transform, micro_batches(len(dataset), steps=4, batch_size=2)))
    resumed = list(seg.device_batches(images, transform, micro_batches(len(dataset), steps=4, batch_size=2,
                                                                        start=3)))
    assert_same_batches(full[3:], resumed)


# ----- the entry points -----

def test_detect_and_segment_fit_on_the_device_path_and_record_it(tmp_path):
    from transfer import detect, segment

    # (--data-path auto on a CPU keeps the loader: test_detect_main and test_segment_main check their records)
    voc = make_vocdevkit(tmp_path / "det", splits={"train": 6, "val": 4}, size=(96, 72))
    detect.main(["--voc-root", str(voc.root), *DET_FAST, "--proposals-cache", str(tmp_path / "cache"),
                 "--out", str(tmp_path / "det.json"), "--data-path", "device"])
    voc = make_vocdevkit(tmp_path / "seg", splits={"train": 6, "val": 4})
    segment.main(["--voc-root", str(voc.root), "--out", str(tmp_path / "seg.json"), *SEG_TINY, "--data-path", "device"])
    for name in ("det", "seg"):
        record = json.loads((tmp_path / f"{name}.json").read_text())
        assert record["data_path"] == record["protocol"]["data_path"] == record["config"]["data_path"] == "device"
        assert record["complete"] and 0 <= record["value"] <= 100


def test_a_resume_on_the_other_data_path_is_refused(tmp_path):
    from test_transfer_engine import CONFIG, CPU, ToyTask, toy_model

    def on_device(task):  # a toy device path: the same items, collated without a loader
        task.device_batches = lambda sampler: (default_collate([task.train_dataset[i] for i, _ in items])
                                               for items in sampler)
        return task

    fit(ToyTask(), toy_model(), replace(CONFIG, max_steps=2), tmp_path / "loader", CPU)
    with pytest.raises(CebenchError, match="--data-path loader -> device"):
        fit(on_device(ToyTask()), toy_model(), CONFIG, tmp_path / "loader", CPU)
    fit(on_device(ToyTask()), toy_model(), replace(CONFIG, max_steps=2), tmp_path / "device", CPU)
    assert fit(on_device(ToyTask()), toy_model(), CONFIG, tmp_path / "device", CPU).resumed_from == 2
    with pytest.raises(CebenchError, match="--data-path device -> loader"):
        fit(ToyTask(), toy_model(), CONFIG, tmp_path / "device", CPU)
