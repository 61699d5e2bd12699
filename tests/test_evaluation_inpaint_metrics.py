"""evaluation.metrics.inpainting and evaluation.metrics.retrieval against hand-worked values."""

import numpy as np
import pytest
import torch

from evaluation.experiments.fills import paste
from evaluation.metrics.inpainting import hole_errors, psnr, summarize
from evaluation.metrics.retrieval import precision_at_k, shared_class


def _hole(size=4):
    mask = np.zeros((1, 1, size, size), dtype=bool)
    mask[..., 1:3, 1:3] = True  # 4 pixels
    return mask


def test_psnr_of_known_mse():
    assert psnr(0.01) == pytest.approx(20.0)
    assert psnr(1e-4) == pytest.approx(40.0)
    assert psnr(0.25, peak=1.0) == pytest.approx(10 * np.log10(4))
    assert np.isfinite(psnr(0.0))  # a perfect fill is capped, not infinite


def test_hole_errors_hand_worked():
    target = np.zeros((1, 3, 4, 4))
    pred = np.zeros((1, 3, 4, 4))
    pred[0, 0, 1, 1] = 0.4  # one hole pixel of one channel off by 0.4: 12 hole values in all
    out = hole_errors(pred, target, _hole())
    assert out["l1"][0] == pytest.approx(0.4 / 12)
    assert out["l2"][0] == pytest.approx(0.16 / 12)
    assert out["psnr"][0] == pytest.approx(10 * np.log10(12 / 0.16))


def test_only_hole_pixels_count():
    rng = np.random.default_rng(0)
    target = rng.random((2, 3, 4, 4))
    pred = target.copy()
    pred[:, :, 0, :] = 1 - pred[:, :, 0, :]  # wreck the context (row 0 is outside the hole)
    out = hole_errors(pred, target, _hole())
    np.testing.assert_allclose(out["l1"], 0.0)
    np.testing.assert_allclose(out["l2"], 0.0)
    pred[:, 1, 2, 2] += 0.5  # now one hole value per image
    assert hole_errors(pred, target, _hole())["l1"] == pytest.approx([0.5 / 12, 0.5 / 12])


def test_errors_accept_torch_and_refuse_empty_holes():
    t = torch.zeros(1, 3, 4, 4)
    assert hole_errors(t + 0.1, t, torch.from_numpy(_hole()))["l1"][0] == pytest.approx(0.1)
    with pytest.raises(ValueError):
        hole_errors(t, t, np.zeros((1, 1, 4, 4), dtype=bool))


def test_summarize_means_and_intervals():
    stats = summarize({"l2": np.array([0.1, 0.2, 0.3, 0.4])}, n_boot=200, seed=0)
    mean, low, high = stats["l2"]
    assert mean == pytest.approx(0.25) and 0.1 <= low <= mean <= high <= 0.4


def test_paste_replaces_only_the_hole():
    images = torch.zeros(2, 3, 4, 4, dtype=torch.uint8)
    sources = torch.full((2, 3, 4, 4), 200, dtype=torch.uint8)
    filled = paste(images, sources, torch.from_numpy(_hole()))
    assert filled[:, :, 1:3, 1:3].eq(200).all() and filled.sum() == 200 * 2 * 3 * 4


def test_precision_at_k_hand_worked():
    # classes: 0, 1, 2. Query 0 holds {0}; query 1 holds {1, 2}.
    queries = np.array([[1, 0, 0], [0, 1, 1]], dtype=bool)
    gallery = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [0, 0, 0]], dtype=bool)
    neighbours = np.array([[0, 1], [1, 3]])
    relevant = shared_class(queries, gallery, neighbours)
    np.testing.assert_array_equal(relevant, [[True, False], [True, False]])
    out = precision_at_k(queries, gallery, neighbours, n_boot=100)
    assert out["precision"] == pytest.approx(0.5)
    assert out["per_class"][0] == pytest.approx(0.5)  # query 0: one of two neighbours holds class 0
    assert out["per_class"][2] == pytest.approx(0.0)  # query 1: no neighbour holds class 2
    assert out["chance"] == pytest.approx((1 / 4 + 2 / 4) / 2)  # random neighbours: share of the gallery
