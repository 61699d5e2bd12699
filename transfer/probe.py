"""Frozen-feature linear probe: logistic regression per class on standardised pool5 features (fast comparisons).

Training samples are `train_views` random views of each training image (the fine-tuning augmentation); test
features are pool5 averaged over the test crops, so scores are the probe's logits averaged over crops.
Difficult labels are left out of each class's fit. The backbone is checked afterwards to be unchanged
(MoCo's sanity check).
"""

import warnings

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from cebench.errors import CebenchError
from cebench.logs import progress
from pretrain.data import normalize
from transfer.classification import TestViews


@torch.no_grad()
def pool5_features(backbone, views, device, batch_size=16, average=True, desc="features"):
    """pool5 of every view, flattened: (N, D) averaged over each item's views, or (N * views, D)."""
    loader = torch.utils.data.DataLoader(views, batch_size=batch_size)
    out = []
    for crops, _ in progress(loader, desc=desc, leave=False):
        n, k = crops.shape[:2]
        feats = backbone.forward_features(normalize(crops.flatten(0, 1), device)).flatten(1).float().cpu()
        out.append(feats.view(n, k, -1).mean(dim=1) if average else feats)
    return torch.cat(out).numpy()


def state_fingerprint(module):
    """Copies of every tensor of a module's state, to prove afterwards that nothing changed."""
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


def assert_unchanged(module, before):
    """MoCo's sanity check: frozen weights must be bit-identical after the probe."""
    changed = [k for k, v in module.state_dict().items() if not torch.equal(v.detach().cpu(), before[k])]
    if changed:
        raise CebenchError(f"frozen backbone weights changed during the probe: {changed[:4]}")


def fit_predict(train_x, train_labels, test_x, c=0.01, max_iter=500):
    """Per class a logistic regression on standardised features; returns test logits (N_test, C)."""
    scaler = StandardScaler().fit(train_x)
    train_x, test_x = scaler.transform(train_x), scaler.transform(test_x)
    scores = np.zeros((len(test_x), train_labels.shape[1]))
    for c_idx in progress(range(train_labels.shape[1]), desc="probe", leave=False):
        kept = train_labels[:, c_idx] != 0
        y = train_labels[kept, c_idx] == 1
        if y.all() or not y.any():
            continue  # nothing to learn (a dataset with fewer classes): constant scores, AP by chance
        clf = LogisticRegression(C=c, max_iter=max_iter)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            clf.fit(train_x[kept], y)
        scores[:, c_idx] = clf.decision_function(test_x)
    return scores


def linear_probe(backbone, train_images, test_images, *, device, train_views=2, test_crops=10, c=0.01, seed=0):
    """Fit on frozen pool5 of the training views, score the test images; returns logits (N_test, 20)."""
    backbone.to(device).eval()
    before = state_fingerprint(backbone)
    train_x = pool5_features(backbone, TestViews(train_images, train_views, seed, stream=5), device,
                             average=False, desc="train features")
    train_y = np.repeat(train_images.split.labels, train_views, axis=0)
    test_x = pool5_features(backbone, TestViews(test_images, test_crops, seed, stream=4), device,
                            desc="test features")
    scores = fit_predict(train_x, train_y, test_x, c=c)
    assert_unchanged(backbone, before)
    return scores
