"""The VOC07 linear-SVM probe of Goyal et al. (ICCV 2019), as fair_self_supervision_benchmark and VISSL run it.

VISSL `vissl/utils/svm_utils/svm_trainer.py` with `configs/config/benchmark/linear_image_classification/voc07/
eval_alexnet_8gpu_transfer_voc07_svm.yaml`: features L2-normalised (x / (|x| + 1e-5)); per class a one-vs-rest
sklearn LinearSVC (squared hinge, L2, dual, tol 1e-4, max_iter 2000, class_weight {1: 2, -1: 1}) on the training
images without the class's difficult ones; for every cost of the grid the 3-fold cross-validated AP
(`cross_val_score(..., cv=3, scoring="average_precision")`) on the training images, the cost of the best mean AP
kept per class, its SVM fitted on all training images scores the test images.
"""

import warnings

import numpy as np
from joblib import Parallel, delayed
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import cross_val_score
from sklearn.svm import LinearSVC

from cebench.logs import progress
from evaluation.experiments.flags import SVM_COSTS  # the --svm-costs default, defined without scikit-learn
SVM_SETTINGS = {"loss": "squared_hinge", "penalty": "l2", "dual": True, "tol": 1e-4, "max_iter": 2000,
                "class_weight": {1: 2, -1: 1}, "intercept_scaling": 1.0}
CV_FOLDS = 3


def l2_normalise(features):
    """VISSL's `_normalize_features`: each row divided by its L2 norm + 1e-5."""
    return features / (np.linalg.norm(features, axis=1, keepdims=True) + 1e-5)


def _svm(cost, max_iter):
    return LinearSVC(C=cost, **dict(SVM_SETTINGS, max_iter=max_iter))


def _fit_class(train_x, y, test_x, costs, max_iter):
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
    tasks = (delayed(_fit_class)(train_x[kept], y, test_x, costs, max_iter) for _, kept, y in fitted)
    results = Parallel(n_jobs=n_jobs, prefer="threads")(progress(tasks, total=len(fitted), desc="svm",
                                                                  leave=False))
    scores, chosen = np.zeros((len(test_x), train_labels.shape[1])), {}
    for (c_idx, _, _), (values, best, cv_ap) in zip(fitted, results, strict=True):
        scores[:, c_idx], chosen[c_idx] = values, (best, cv_ap)
    return scores, chosen
