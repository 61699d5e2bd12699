"""Masks (coverage, reproducibility, zero fill) and the masked reconstruction loss."""

import numpy as np
import pytest
import torch

from cebench.errors import CebenchError
from pretrain.losses import discriminator_loss, loss_weights, masked_l2
from pretrain.masks import (AUTOENCODER, MASK_KINDS, apply_mask, central_mask, context_of, make_masks, overlap_band,
                            random_region_mask)


@pytest.mark.parametrize("kind", [k for k in MASK_KINDS if k != AUTOENCODER])
@pytest.mark.parametrize("size", [64, 128])
def test_masks_cover_about_a_quarter(kind, size):
    mask = make_masks(kind, 16, size, size, torch.Generator().manual_seed(0))
    assert mask.shape == (16, 1, size, size) and mask.dtype == torch.bool
    frac = mask.float().mean(dim=(1, 2, 3))
    assert frac.min() >= 0.19 and frac.max() <= 0.31, frac
    assert abs(float(frac.mean()) - 0.25) < 0.04


@pytest.mark.parametrize("kind", ["random-block", "random-region"])
def test_masks_are_seeded_and_vary(kind):
    a = make_masks(kind, 4, 64, 64, torch.Generator().manual_seed(7))
    b = make_masks(kind, 4, 64, 64, torch.Generator().manual_seed(7))
    c = make_masks(kind, 4, 64, 64, torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert not torch.equal(a[0], a[1])  # one mask per image, not one per batch


def test_central_mask_is_the_middle_quarter():
    mask = central_mask(1, 8, 8)[0, 0]
    assert mask[2:6, 2:6].all() and mask.sum() == 16


def test_random_region_follows_released_acceptance_window():
    mask = random_region_mask(32, 96, 96, torch.Generator().manual_seed(3))
    frac = mask.float().mean(dim=(1, 2, 3))
    assert ((frac > 0.20) & (frac < 0.30)).all()
    assert not torch.equal(mask, central_mask(32, 96, 96))


def test_masked_input_pixels_are_zero_and_context_unchanged():
    x = torch.randn(3, 3, 32, 32)
    mask = make_masks("random-block", 3, 32, 32, torch.Generator().manual_seed(0))
    y = apply_mask(x, mask)
    assert (y.masked_select(mask.expand_as(y)) == 0).all()
    assert torch.equal(y.masked_select(~mask.expand_as(y)), x.masked_select(~mask.expand_as(x)))


def test_loss_ignores_target_outside_the_hole():
    gen = torch.Generator().manual_seed(0)
    pred, target = torch.randn(2, 3, 32, 32, generator=gen), torch.randn(2, 3, 32, 32, generator=gen)
    mask = make_masks("random-region", 2, 32, 32, gen)
    changed = torch.where(mask, target, torch.randn(2, 3, 32, 32, generator=gen) * 100)
    changed_pred = torch.where(mask, pred, torch.full_like(pred, float("inf")))
    base = masked_l2(pred, target, mask)
    assert base > 0
    assert torch.equal(masked_l2(pred, changed, mask), base)
    assert torch.equal(masked_l2(changed_pred, target, mask), base)
    inside = target.clone()
    inside[mask.expand_as(inside)] += 1.0
    assert masked_l2(pred, inside, mask) != base  # the hole does count


def test_loss_is_mean_squared_error_over_hole_pixels():
    pred, target = torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 4)
    mask = torch.zeros(1, 1, 4, 4, dtype=torch.bool)
    mask[..., :2, :2] = True
    target[..., 0, 0] = 2.0  # squared error 4 on 3 channels of one of 4 hole pixels
    assert float(masked_l2(pred, target, mask)) == pytest.approx(3 * 4 / (4 * 3))


def test_overlap_band_weighting():
    mask = central_mask(1, 16, 16)  # rows/cols 4..11
    band = overlap_band(mask, 2)
    assert band.sum() == (12 * 12 - 8 * 8) and not (band & mask).any()
    w = loss_weights(mask, overlap=2, overlap_weight=10.0)
    assert w[0, 0, 5, 5] == 1 and w[0, 0, 3, 3] == 10 and w[0, 0, 0, 0] == 0
    pred, target = torch.zeros(1, 3, 16, 16), torch.zeros(1, 3, 16, 16)
    far = target.clone()
    far[..., 0, :] = 5.0  # outside hole + band: still ignored
    assert masked_l2(pred, far, mask, overlap=2) == 0
    near = target.clone()
    near[..., 3, 3] = 1.0  # inside the band: counted 10x
    assert float(masked_l2(pred, near, mask, overlap=2)) == pytest.approx(10 * 3 / (144 * 3))


def test_discriminator_loss_prefers_correct_logits():
    good = discriminator_loss(torch.full((4,), 5.0), torch.full((4,), -5.0))
    bad = discriminator_loss(torch.full((4,), -5.0), torch.full((4,), 5.0))
    assert good < 0.01 < bad


def test_voc_shape_region_masks(tmp_path):
    from PIL import Image

    from pretrain.masks import load_region_shapes
    labels = np.zeros((40, 50), dtype=np.uint8)
    labels[5:30, 10:20] = 15  # a "person"
    labels[20:35, 25:45] = 12  # a "dog"
    labels[0, :] = 255  # void border is not a shape
    Image.fromarray(labels, mode="L").save(tmp_path / "2007_000001.png")
    shapes = load_region_shapes(tmp_path)
    assert sorted(tuple(s.shape) for s in shapes) == [(15, 20), (25, 10)]
    a = make_masks("random-region", 6, 64, 64, torch.Generator().manual_seed(0), shapes)
    b = make_masks("random-region", 6, 64, 64, torch.Generator().manual_seed(0), shapes)
    frac = a.float().mean(dim=(1, 2, 3))
    assert torch.equal(a, b) and ((frac > 0.2) & (frac < 0.3)).all()


def test_region_shapes_of_one_split_only(tmp_path):
    """--region-shapes-split keeps the shapes of the listed images (a test image lends none)."""
    from PIL import Image

    from pretrain.loop import region_shape_ids
    from pretrain.masks import load_region_shapes
    seg, sets = tmp_path / "SegmentationClass", tmp_path / "ImageSets" / "Segmentation"
    seg.mkdir()
    sets.mkdir(parents=True)
    for image_id, box in (("000001", (5, 30, 10, 20)), ("000002", (20, 35, 25, 45))):
        labels = np.zeros((40, 50), dtype=np.uint8)
        labels[box[0]:box[1], box[2]:box[3]] = 15
        Image.fromarray(labels, mode="L").save(seg / f"{image_id}.png")
    (sets / "train.txt").write_text("000002\n")
    cfg = {"region_shapes": str(seg), "region_shapes_split": "train"}
    assert [tuple(s.shape) for s in load_region_shapes(seg, ids=region_shape_ids(cfg))] == [(15, 20)]
    assert len(load_region_shapes(seg, ids=region_shape_ids({**cfg, "region_shapes_split": None}))) == 2
    with pytest.raises(CebenchError, match="val.txt"):
        region_shape_ids({**cfg, "region_shapes_split": "val"})


def test_autoencoder_sees_the_whole_image_and_its_loss_covers_every_pixel():
    gen = torch.Generator().manual_seed(0)
    x, pred = torch.randn(2, 3, 16, 16, generator=gen), torch.randn(2, 3, 16, 16, generator=gen)
    mask = make_masks(AUTOENCODER, 2, 16, 16, gen)
    assert mask.all() and torch.equal(context_of(x, mask, AUTOENCODER), x)  # no hole in the input
    # the loss is the plain mean squared error over every pixel and channel
    assert float(masked_l2(pred, x, mask)) == pytest.approx(float((pred - x).pow(2).mean()), rel=1e-6)
    for i, j in ((0, 0), (15, 15), (7, 3)):  # a change anywhere in the image changes the loss
        moved = pred.clone()
        moved[0, 1, i, j] += 1.0
        assert masked_l2(moved, x, mask) != masked_l2(pred, x, mask)
    block = make_masks("random-block", 2, 16, 16, gen)
    assert torch.equal(context_of(x, block, "random-block"), apply_mask(x, block))  # other kinds: hole at the mean
