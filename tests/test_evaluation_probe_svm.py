"""The VOC07 linear-SVM probe (transfer.classification.probe, Goyal et al. 2019 as VISSL runs it)."""

import numpy as np
import pytest

from transfer.classification.probe import SVM_COSTS, l2_normalise, svm_probe


def test_svm_probe_separates_classes_and_chooses_a_cost_per_class_from_the_grid():
    rng = np.random.default_rng(0)
    labels = np.where(rng.random((90, 3)) < 0.4, 1, -1)  # VOC's 1 / -1 per class
    labels[:6, 0] = 0  # difficult: left out of class 0's training
    signal = np.where(labels == 1, 1.0, 0.0)
    train_x = np.concatenate([signal, rng.normal(0, 0.3, (90, 7))], axis=1) * rng.uniform(1, 5, (90, 1))
    test_x = train_x[60:]
    scores, chosen = svm_probe(train_x[:60], labels[:60], test_x, costs=(0.1, 1.0, 10.0))
    assert scores.shape == (30, 3) and set(chosen) == {0, 1, 2}
    for c_idx, (cost, cv_ap) in chosen.items():
        assert cost in (0.1, 1.0, 10.0) and set(cv_ap) == {0.1, 1.0, 10.0}
        assert cv_ap[cost] == max(cv_ap.values())
        positives = labels[60:, c_idx] == 1
        assert scores[positives, c_idx].min() > scores[~positives, c_idx].max()  # a separable class: AP 1
    # rows are L2-normalised first (VISSL's x / (|x| + 1e-5)): the per-image scale above changes nothing
    assert np.allclose(np.linalg.norm(l2_normalise(train_x), axis=1), 1.0, atol=1e-4)
    again, _ = svm_probe(train_x[:60] * 7.0, labels[:60], test_x * 3.0, costs=(0.1, 1.0, 10.0))
    assert np.allclose(again, scores, atol=1e-4)  # liblinear converges to the same optimum up to its tol


def test_a_class_without_positives_is_not_fitted():
    rng = np.random.default_rng(1)
    labels = np.stack([np.where(rng.random(30) < 0.5, 1, -1), -np.ones(30, int)], axis=1)
    scores, chosen = svm_probe(rng.normal(size=(30, 4)), labels, rng.normal(size=(5, 4)), costs=(1.0,))
    assert set(chosen) == {0} and np.all(scores[:, 1] == 0)


def test_default_grid_is_vissls_voc07_alexnet_grid():
    assert SVM_COSTS == pytest.approx((0.01, 0.1, 1.0, 2, 5, 10, 15, 20, 50, 100, 1000))
