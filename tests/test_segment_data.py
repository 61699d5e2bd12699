"""Segmentation data: masks are never interpolated, image and mask stay aligned, bad masks are refused."""

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors
from vocfactory import make_vocdevkit

from cebench.errors import CebenchError
from transfer.segmentation.data import IGNORE_INDEX, SegTransform, VOCSegmentation, find_year, pad_collate
from voc.devkit import save_mask, voc_palette, load_mask

VALID = set(range(21)) | {IGNORE_INDEX}


def _label_map(rng, h, w, block=8):
    """A blocky map of labels 0..20 with void borders between some blocks, like a VOC mask."""
    labels = rng.integers(0, 21, ((h + block - 1) // block, (w + block - 1) // block))
    mask = np.kron(labels, np.ones((block, block), dtype=np.int64))[:h, :w].astype(np.uint8)
    mask[::block, :] = np.where(rng.random(mask[::block, :].shape) < 0.5, IGNORE_INDEX, mask[::block, :])
    return mask


def _pair(mask):
    """Image whose grey level encodes the label (10 per class), with its mask, as tv_tensors."""
    grey = np.where(mask == IGNORE_INDEX, 250, mask.astype(np.int64) * 10).astype(np.uint8)
    image = torch.from_numpy(np.repeat(grey[None], 3, axis=0))
    return tv_tensors.Image(image), tv_tensors.Mask(torch.from_numpy(mask))


def test_rescaled_masks_only_hold_labels_of_the_original():
    rng = np.random.default_rng(0)
    transform = SegTransform(scale_range=(0.3, 3.0), crop_size=57, flip_prob=0.5)
    for trial in range(25):
        torch.manual_seed(trial)
        mask = _label_map(rng, int(rng.integers(20, 90)), int(rng.integers(20, 90)))
        _, out = transform(*_pair(mask))
        values = set(out.unique().tolist())
        assert values <= VALID
        # Nearest-neighbour: every label in the result was in the mask (255 may come from the crop padding).
        assert values - {IGNORE_INDEX} <= set(np.unique(mask).tolist())
        assert out.dtype == torch.int64 and out.shape == (57, 57)


def test_nearest_resampling_keeps_the_label_proportions():
    """A 2x up-scale copies each label pixel four times: the label histogram scales exactly."""
    torch.manual_seed(0)
    mask = _label_map(np.random.default_rng(1), 32, 40)
    _, out = SegTransform(scale_range=(2.0, 2.0))(*_pair(mask))
    assert out.shape == (64, 80)
    assert np.array_equal(np.bincount(out.numpy().ravel(), minlength=256), 4 * np.bincount(mask.ravel(), minlength=256))


def _denormalised_grey(image, transform):
    mean, std = torch.tensor(transform.mean).view(3, 1, 1), torch.tensor(transform.std).view(3, 1, 1)
    return ((image * std + mean) * 255).mean(dim=0)  # (H, W)


@pytest.mark.parametrize("scale", [(1.0, 1.0), (0.5, 2.0)])
def test_flip_crop_and_scale_keep_image_and_mask_aligned(scale):
    rng = np.random.default_rng(2)
    transform = SegTransform(scale_range=scale, crop_size=48, flip_prob=0.5)
    for trial in range(12):
        torch.manual_seed(trial)
        mask = _label_map(rng, 60, 72, block=16)
        image, out = transform(*_pair(mask))
        grey = _denormalised_grey(image, transform)
        labelled = out != IGNORE_INDEX
        m = out.numpy()
        # Pixels deep inside a region: bilinear image resampling has nothing else to blend there.
        interior = labelled.numpy().copy()
        for dy in (-2, -1, 0, 1, 2):
            for dx in (-2, -1, 0, 1, 2):
                interior[2:-2, 2:-2] &= np.roll(np.roll(m, dy, 0), dx, 1)[2:-2, 2:-2] == m[2:-2, 2:-2]
        interior[:2], interior[-2:], interior[:, :2], interior[:, -2:] = False, False, False, False
        assert interior.sum() > 100
        err = (grey - out.float() * 10).abs().numpy()[interior]
        assert err.max() < 3.0, (trial, err.max())


def test_flip_mirrors_image_and_mask_together():
    mask = _label_map(np.random.default_rng(4), 20, 30)
    outcomes = set()
    for trial in range(16):
        torch.manual_seed(trial)
        image, out = SegTransform(flip_prob=0.5)(*_pair(mask))
        flipped = np.array_equal(out.numpy(), mask[:, ::-1])
        assert flipped or np.array_equal(out.numpy(), mask)
        expected = torch.from_numpy(np.ascontiguousarray(mask[:, ::-1] if flipped else mask)).long()
        grey = _denormalised_grey(image, SegTransform())
        labelled = expected != IGNORE_INDEX
        assert (grey[labelled] - expected[labelled].float() * 10).abs().max() < 1.0
        outcomes.add(flipped)
    assert outcomes == {True, False}


def test_crop_pads_small_images_with_void_and_the_mean():
    torch.manual_seed(0)
    mask = np.full((10, 12), 7, dtype=np.uint8)
    transform = SegTransform(crop_size=30)
    image, out = transform(*_pair(mask))
    assert out.shape == (30, 30)
    assert int((out == 7).sum()) == 120 and int((out == IGNORE_INDEX).sum()) == 900 - 120
    # Padding is the mean pixel: zero once normalised (up to rounding to uint8).
    assert image[:, out == IGNORE_INDEX].abs().max() < 0.02


def test_pad_collate_stacks_different_sizes():
    batch = [(torch.ones(3, 5, 7), torch.zeros(5, 7, dtype=torch.long)),
             (torch.ones(3, 8, 4), torch.ones(8, 4, dtype=torch.long))]
    images, masks = pad_collate(batch)
    assert images.shape == (2, 3, 8, 7) and masks.shape == (2, 8, 7)
    assert (masks[0, 5:] == IGNORE_INDEX).all() and (masks[1, :, 4:] == IGNORE_INDEX).all()
    assert images[0, :, 5:].abs().sum() == 0 and (masks[1, :, :4] == 1).all()


def test_dataset_reads_palette_masks_and_checks_values(tmp_path):
    info = make_vocdevkit(tmp_path, splits={"train": 3, "val": 2})
    ds = VOCSegmentation(info.root, "train", transform=SegTransform(), cache=True)
    assert ds.year == "2007" and len(ds) == 3
    image, mask = ds[0]
    truth = np.array(Image.open(info.path("png", ds.ids[0])))
    assert image.shape[1:] == mask.shape and np.array_equal(mask.numpy(), truth)
    bad = info.path("png", ds.ids[1])
    png = Image.fromarray(np.full((30, 30), 42, dtype=np.uint8))
    png.putpalette(voc_palette().reshape(-1).tolist())
    png.save(bad)
    with pytest.raises(CebenchError, match=str(bad.name)):
        VOCSegmentation(info.root, "train")
    kept = VOCSegmentation(info.root, "train", skip_bad=True)
    assert kept.ids == [ds.ids[0], ds.ids[2]] and [s["id"] for s in kept.skipped] == [ds.ids[1]]


def test_year_auto_prefers_voc2012(tmp_path):
    make_vocdevkit(tmp_path, splits={"train": 2, "val": 2}, year="2007")
    assert find_year(tmp_path, "val") == "2007"
    make_vocdevkit(tmp_path, splits={"train": 2, "val": 2}, year="2012")
    assert find_year(tmp_path, "val") == "2012"
    assert find_year(tmp_path, "seg11valid") == "2012"  # cebench ships FCN's list for VOC2012 (voc/lists)
    with pytest.raises(CebenchError, match="nosuchsplit"):
        find_year(tmp_path, "nosuchsplit")


def test_saved_masks_round_trip_as_palette_pngs(tmp_path):
    labels = np.random.default_rng(3).integers(0, 21, (13, 17)).astype(np.uint8)
    labels[0] = IGNORE_INDEX
    path = save_mask(tmp_path / "p.png", labels)
    with Image.open(path) as im:
        assert im.mode == "P"
        assert np.array_equal(np.array(im.getpalette()[:63]).reshape(21, 3), voc_palette()[:21])
    assert np.array_equal(load_mask(path), labels)


@pytest.mark.integration
def test_real_voc_masks_stay_labels_under_random_rescaling(voc_mini_root):
    transform = SegTransform(scale_range=(0.5, 2.0), crop_size=160, flip_prob=0.5)
    ds = VOCSegmentation(voc_mini_root, "train", transform=transform)
    for i in range(0, len(ds), 20):
        torch.manual_seed(i)
        _, mask = ds[i]
        original = set(np.unique(ds.load(i)[1]).tolist())
        assert set(mask.unique().tolist()) - {IGNORE_INDEX} <= original
