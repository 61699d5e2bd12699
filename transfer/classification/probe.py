"""Frozen features and the linear classifiers fitted on them: the one home of both probes of the suite.

Features (`frozen_features`): any of pool5 and conv1..conv5 after ReLU of a frozen trunk, in one pass per batch,
each conv layer average-pooled (adaptive) to a grid (Zhang et al. 2016: about 9,000 dimensions); views of one
image are averaged or kept as rows. Classifiers, per class on the training images without the class's difficult
ones: a logistic regression on standardised features (`fit_predict`, `select_c`, `logistic_probe`; Zhang et al.)
and the VOC07 linear SVM of Goyal et al. (ICCV 2019) as fair_self_supervision_benchmark and VISSL run it
(`svm_probe`).

Users: `python -m transfer.classify --probe` (`linear_probe`: pool5 of `train_views` random views of each training
image, the fine-tuning augmentation; test features pool5 averaged over the test crops, so scores are the probe's
logits averaged over crops) and `python -m evaluation.probe` (each layer of one centre view; its record:
evaluation.experiments.probe_run). The backbone is checked afterwards to be unchanged (MoCo's sanity check).

The SVM is VISSL's `vissl/utils/svm_utils/svm_trainer.py` with `configs/config/benchmark/
linear_image_classification/voc07/eval_alexnet_8gpu_transfer_voc07_svm.yaml`: features L2-normalised
(x / (|x| + 1e-5)); per class a one-vs-rest sklearn LinearSVC (squared hinge, L2, dual, tol 1e-4, max_iter 2000,
class_weight {1: 2, -1: 1}); for every cost of the grid the 3-fold cross-validated AP (`cross_val_score(...,
cv=3, scoring="average_precision")`) on the training images, the cost of the best mean AP kept per class, its SVM
fitted on all training images scores the test images.
"""

import warnings

import numpy as np
import torch
from joblib import Parallel, delayed
from sklearn.decomposition import PCA
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC
from torch.nn import functional as F

from cebench.errors import CebenchError
from cebench.logs import progress
from transfer.flags import PROBE_LAYERS as LAYERS
from transfer.flags import SVM_COSTS
from evaluation.metrics import classification_map
from transfer.backbone import normalize
from transfer.classification.data import TestViews


def state_fingerprint(module):
    """Copies of every tensor of a module's state, to prove afterwards that nothing changed."""
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


def assert_unchanged(module, before):
    """MoCo's sanity check: frozen weights must be bit-identical after the probe."""
    changed = [k for k, v in module.state_dict().items() if not torch.equal(v.detach().cpu(), before[k])]
    if changed:
        raise CebenchError(f"frozen backbone weights changed during the probe: {changed[:4]}")


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


POOL5 = "pool5"  # the trunk's output (forward_features), flattened as it is: (C, h, w) -> C*h*w


@torch.no_grad()
def frozen_features(encoder, loader, device, layers=ZHANG_GRIDS, *, average_views=True, max_batches=None,
                    desc="features"):
    """{layer: float32 (N, D)} of a frozen trunk over the normalised uint8 batches (images, _) of `loader`.

    `layers`: {name: grid} of `POOL5` (grid None: as it is) and conv1..conv5 after ReLU (average-pooled in forward
    hooks to g x g: the map itself is never kept). Images (B, 3, S, S) are one view each; (B, K, 3, S, S) are K
    views of each item, averaged (`average_views`) or kept as K rows per item in order.
    """
    encoder.to(device).eval()
    batch = {}

    def keep(name):
        def hook(module, inputs, output):  # (B, C, h, w) after ReLU -> (B, C*g*g)
            batch[name] = F.adaptive_avg_pool2d(output, layers[name]).flatten(1).float().cpu()
        return hook

    hooks = [m.register_forward_hook(keep(n)) for n, m in relu_after_convs(encoder).items() if n in layers]
    out = {n: [] for n in layers}
    try:
        for b, (images, _) in enumerate(progress(loader, desc=desc, leave=False)):
            if max_batches is not None and b >= max_batches:
                break
            views = images.shape[1] if images.dim() == 5 else 1
            pool5 = encoder.forward_features(normalize(images.flatten(0, images.dim() - 4), device))
            if POOL5 in layers:
                batch[POOL5] = pool5.flatten(1).float().cpu()
            for n in layers:
                feats = batch[n]
                out[n].append(feats.view(len(images), views, -1).mean(dim=1) if average_views and views > 1
                              else feats)
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


def _fit_logistic_class(train_x, y, test_x, cs, max_iter):
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
    tasks = (delayed(_fit_logistic_class)(train_x[kept], y, test_x, cs, max_iter) for _, kept, y in fitted)
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


def logistic_probe(train_x, train_labels, test_x, cs, *, held_out=0.2, seed=0, max_iter=500, n_jobs=1):
    """Zhang et al.'s probe of evaluation.probe: features standardised and rotated onto the training span, C chosen
    among `cs` on a seeded held-out part of the training images (one value: fixed), refit on all of them.

    Returns (test logits (N_test, classes), the C, {C: held-out mAP} ({} for a fixed C))."""
    cs = sorted(cs)
    opts = {"max_iter": max_iter, "n_jobs": n_jobs, "standardize": False}
    train_x, test_x = standardise_and_rotate(train_x, test_x)  # exact: the same probe, cheaper iterations
    if len(cs) > 1:
        c, held = select_c(train_x, train_labels, cs, held_out, seed=seed, **opts)
    else:
        c, held = cs[0], {}
    return fit_predict(train_x, train_labels, test_x, c=c, **opts), c, held


SVM_SETTINGS = {"loss": "squared_hinge", "penalty": "l2", "dual": True, "tol": 1e-4, "max_iter": 2000,
                "class_weight": {1: 2, -1: 1}, "intercept_scaling": 1.0}
CV_FOLDS = 3


def l2_normalise(features):
    """VISSL's `_normalize_features`: each row divided by its L2 norm + 1e-5."""
    return features / (np.linalg.norm(features, axis=1, keepdims=True) + 1e-5)


def _svm(cost, max_iter):
    return LinearSVC(C=cost, **dict(SVM_SETTINGS, max_iter=max_iter))


def _fit_svm_class(train_x, y, test_x, costs, max_iter):
    """One class: mean 3-fold CV AP per cost, the best cost's SVM refit on all -> (test scores, cost, {cost: AP})."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        cv_ap = {c: float(cross_val_score(_svm(c, max_iter), train_x, y, cv=CV_FOLDS,
                                          scoring="average_precision").mean()) for c in costs}
        best = max(costs, key=lambda c: (cv_ap[c], -c))  # np.argmax in VISSL: the first (smallest) of ties
        clf = _svm(best, max_iter).fit(train_x, y)
    return clf.decision_function(test_x), best, cv_ap


def svm_probe(train_x, train_labels, test_x, costs=SVM_COSTS, max_iter=2000, n_jobs=1):
    """Per class the VOC07 SVM on L2-normalised features: (test scores (N_test, classes), {class index: (cost,
    {cost: CV AP})}). `train_labels` are VOC's 1 / -1 / 0 (difficult: left out of the class's training)."""
    costs = sorted(costs)
    train_x, test_x = l2_normalise(train_x), l2_normalise(test_x)
    fitted = []
    for c_idx in range(train_labels.shape[1]):
        kept = train_labels[:, c_idx] != 0
        y = train_labels[kept, c_idx].astype(int)
        if len(np.unique(y)) == 2 and min((y == 1).sum(), (y == -1).sum()) >= CV_FOLDS:
            fitted.append((c_idx, kept, y))  # else no SVM to fit (small splits): constant scores, AP by chance
    tasks = (delayed(_fit_svm_class)(train_x[kept], y, test_x, costs, max_iter) for _, kept, y in fitted)
    results = Parallel(n_jobs=n_jobs, prefer="threads")(progress(tasks, total=len(fitted), desc="svm",
                                                                  leave=False))
    scores, chosen = np.zeros((len(test_x), train_labels.shape[1])), {}
    for (c_idx, _, _), (values, best, cv_ap) in zip(fitted, results, strict=True):
        scores[:, c_idx], chosen[c_idx] = values, (best, cv_ap)
    return scores, chosen


def linear_probe(backbone, train_images, test_images, *, device, train_views=2, test_crops=10, c=0.01, seed=0):
    """Fit on frozen pool5 of the training views, score the test images; returns logits (N_test, 20)."""
    backbone.to(device).eval()
    before = state_fingerprint(backbone)
    train_x = _pool5(backbone, TestViews(train_images, train_views, seed, stream=5), device, average_views=False,
                     desc="train features")
    train_y = np.repeat(train_images.split.labels, train_views, axis=0)
    test_x = _pool5(backbone, TestViews(test_images, test_crops, seed, stream=4), device, desc="test features")
    scores = fit_predict(train_x, train_y, test_x, c=c)
    assert_unchanged(backbone, before)
    return scores


def _pool5(backbone, views, device, batch_size=16, **kwargs):
    """pool5 of a views dataset's items (TestViews), 16 images' views per batch."""
    loader = torch.utils.data.DataLoader(views, batch_size=batch_size)
    return frozen_features(backbone.encoder, loader, device, {POOL5: None}, **kwargs)[POOL5]
