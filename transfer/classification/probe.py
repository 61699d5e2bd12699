"""Frozen-feature linear probes: logistic regression per class on standardised features (fast comparisons).

`linear_probe` (transfer.classify --probe): pool5 of `train_views` random views of each training image (the
fine-tuning augmentation); test features are pool5 averaged over the test crops, so scores are the probe's logits
averaged over crops. `conv_features` (evaluation.probe): conv1..conv5 after ReLU, each average-pooled to a grid of
about 9,000 dimensions (Zhang et al. 2016). Difficult labels are left out of each class's fit. The backbone is
checked afterwards to be unchanged (MoCo's sanity check).
"""

import warnings

import numpy as np
import torch
from joblib import Parallel, delayed
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.decomposition import PCA
from sklearn.preprocessing import StandardScaler
from torch.nn import functional as F

from cebench.errors import CebenchError
from cebench.logs import progress
from evaluation.metrics import classification_map
from transfer.backbone import normalize
from transfer.classification.data import TestViews


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


LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5")
# Zhang et al. 2016 (linear probes of AlexNet at 227 px): each layer average-pooled to about 9,000 dimensions,
# conv1 96x10x10, conv2 256x6x6, conv3/conv4 384x5x5, conv5 256x6x6. Adaptive pooling to the same grids keeps the
# dimensions at any input size whose maps are at least this large (at 128 px: 30, 15, 7, 7, 7 px maps).
ZHANG_GRIDS = {"conv1": 10, "conv2": 6, "conv3": 5, "conv4": 5, "conv5": 6}


def relu_after_convs(encoder):
    """{conv1: its ReLU, ...}: the modules whose outputs are conv1..conv5 after ReLU."""
    modules = list(encoder.features)
    return {name: modules[modules.index(conv) + 1] for name, conv in zip(LAYERS, encoder.conv_layers(), strict=True)}


def layer_shapes(encoder, input_size, grids=ZHANG_GRIDS):
    """{layer: (C, h, w) of its map at `input_size`, (C, g, g) pooled, pooled dimensions}, from one dummy pass."""
    shapes = {}
    hooks = [m.register_forward_hook(lambda mod, inp, out, n=n: shapes.__setitem__(n, tuple(out.shape[1:])))
             for n, m in relu_after_convs(encoder).items()]
    try:
        with torch.no_grad():
            device = next(encoder.parameters()).device
            encoder.forward_features(torch.zeros(1, 3, input_size, input_size, device=device))
    finally:
        for h in hooks:
            h.remove()
    return {n: {"map": list(shapes[n]), "pooled": [shapes[n][0], grids[n], grids[n]],
                "dims": shapes[n][0] * grids[n] ** 2} for n in grids}


@torch.no_grad()
def conv_features(encoder, loader, device, grids=ZHANG_GRIDS, max_batches=None, desc="features"):
    """{layer: float32 (N, C*g*g)} of normalised uint8 batches (images, _) from `loader`, pooled in forward hooks."""
    encoder.to(device).eval()
    batch = {}

    def keep(name):
        def hook(module, inputs, output):  # (B, C, h, w) after ReLU -> (B, C*g*g): the map itself is never kept
            batch[name] = F.adaptive_avg_pool2d(output, grids[name]).flatten(1).float().cpu()
        return hook

    hooks = [m.register_forward_hook(keep(n)) for n, m in relu_after_convs(encoder).items() if n in grids]
    out = {n: [] for n in grids}
    try:
        for b, (images, _) in enumerate(progress(loader, desc=desc, leave=False)):
            if max_batches is not None and b >= max_batches:
                break
            encoder.forward_features(normalize(images, device))
            for n in grids:
                out[n].append(batch[n])
    finally:
        for h in hooks:
            h.remove()
    return {n: torch.cat(v).numpy() for n, v in out.items()}


def standardise_and_rotate(train_x, test_x):
    """Standardise on the training features, then rotate both sets onto the span of the training features.

    The rotation (PCA keeping every component, no whitening) is an isometry on the span where an L2-penalised
    linear model's weights lie, so no decision function changes; with fewer images N than dimensions D it makes
    every L-BFGS iteration cost N instead of D per image (2,500 instead of ~9,000 at voc-mini).
    """
    scaler = StandardScaler().fit(train_x)
    train_x, test_x = scaler.transform(train_x), scaler.transform(test_x)
    if len(train_x) >= train_x.shape[1]:
        return train_x, test_x
    rotation = PCA(svd_solver="full").fit(train_x)
    return rotation.transform(train_x), rotation.transform(test_x)


def select_c(train_x, train_labels, cs, held_out=0.2, seed=0, max_iter=500, n_jobs=1, standardize=True):
    """The C of `cs` with the best mAP on a seeded held-out part of the training images: (C, {C: mAP})."""
    order = np.random.default_rng(seed).permutation(len(train_x))
    n_held = max(1, int(round(held_out * len(train_x))))
    held, fit = order[:n_held], order[n_held:]
    logits = fit_predict_path(train_x[fit], train_labels[fit], train_x[held], cs, max_iter=max_iter, n_jobs=n_jobs,
                              standardize=standardize)
    with warnings.catch_warnings():  # a class without positives in the held-out part: left out, as in mAP
        warnings.simplefilter("ignore", UserWarning)
        scores = {c: classification_map(logits[c], train_labels[held], mode="sklearn")[0] for c in cs}
    return max(cs, key=lambda c: (scores[c], -c)), scores  # ties: the stronger regularisation


def _fit_class(train_x, y, test_x, cs, max_iter):
    """Test decision values of one class's regressions for each C (ascending), each warm-started from the last."""
    clf = LogisticRegression(C=cs[0], max_iter=max_iter, warm_start=True)
    out = []
    for c in cs:
        clf.set_params(C=c)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            clf.fit(train_x, y)
        out.append(clf.decision_function(test_x))
    return out


def fit_predict_path(train_x, train_labels, test_x, cs, max_iter=500, n_jobs=1, standardize=True):
    """Per class and C a logistic regression on standardised features: {C: test logits (N_test, classes)}.

    Classes are fitted in `n_jobs` threads (joblib; NumPy's BLAS releases the GIL), C ascending with warm starts.
    `standardize=False`: the features are standardised already (e.g. by `standardise_and_rotate`).
    """
    cs = sorted(cs)
    if standardize:
        scaler = StandardScaler().fit(train_x)
        train_x, test_x = scaler.transform(train_x), scaler.transform(test_x)
    fitted = []
    for c_idx in range(train_labels.shape[1]):
        kept = train_labels[:, c_idx] != 0
        y = train_labels[kept, c_idx] == 1
        if not (y.all() or not y.any()):  # else nothing to learn (fewer classes): constant scores, AP by chance
            fitted.append((c_idx, kept, y))
    tasks = (delayed(_fit_class)(train_x[kept], y, test_x, cs, max_iter) for _, kept, y in fitted)
    results = Parallel(n_jobs=n_jobs, prefer="threads")(progress(tasks, total=len(fitted), desc="probe",
                                                                  leave=False))
    scores = {c: np.zeros((len(test_x), train_labels.shape[1])) for c in cs}
    for (c_idx, _, _), per_c in zip(fitted, results, strict=True):
        for c, values in zip(cs, per_c, strict=True):
            scores[c][:, c_idx] = values
    return scores


def fit_predict(train_x, train_labels, test_x, c=0.01, max_iter=500, n_jobs=1, standardize=True):
    """Per class a logistic regression on standardised features; returns test logits (N_test, C)."""
    return fit_predict_path(train_x, train_labels, test_x, [c], max_iter=max_iter, n_jobs=n_jobs,
                            standardize=standardize)[c]


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
