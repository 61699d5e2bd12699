"""The stages of `python -m evaluation.probe`: backbone and rescaling as the classification transfer, one layer's
scores and their record fields (its features and classifiers: transfer.classification.probe), and the result
record."""

import warnings

from cebench.records import make_record, percent
from evaluation.metrics import classification_map, classification_map_ci, interval_description
from cebench.flags import trunk_of
from transfer.backbone import build_backbone, rescale_backbone_
from transfer.classification.data import calibration_views
from transfer.classification.probe import CV_FOLDS, SVM_SETTINGS, logistic_probe, svm_probe
from transfer.classification.task import AP_DEFINITION
from voc.devkit import VOC_CLASSES, dataset_name


# What each --classifier is, for the records (protocol.classifier names it; Table 3 keeps them in rows apart).
CLASSIFIERS = {
    "logistic": "Zhang et al. 2016: sklearn LogisticRegression (L2, lbfgs) per class on standardised features "
                "(rotated onto the span of the training features, an exact isometry for the L2 probe)",
    "svm": "Goyal et al. 2019 VOC07 linear SVM as fair_self_supervision_benchmark / VISSL svm_trainer: features "
           "L2-normalised, sklearn LinearSVC per class (one-vs-rest, squared hinge, L2, dual, tol 1e-4, max_iter "
           "2000, class_weight {1: 2, -1: 1})",
}


def build(cfg, train_images=None):
    """Backbone from --weights as transfer.classify builds it (the trunk flags apply to `random` and `kmeans`
    only; `kmeans` clusters `train_images`, paths of the training split)."""
    return build_backbone(cfg["weights"], arch=trunk_of(cfg), input_size=cfg["input_size"], fc_dim=cfg["fc_dim"],
                          seed=cfg["seed"], train_images=train_images)


def rescale(backbone, info, train, cfg, device, log):
    """Krähenbühl's rescaling on the training views transfer.classify draws (same seed: the same weights)."""
    if not cfg["rescale"]:
        return {"applied": False}
    backbone.to(device)
    images = calibration_views(train, cfg["input_size"], cfg["base_size"], cfg["rescale_images"], cfg["seed"], device)
    summary = rescale_backbone_(backbone, info, images, iterations=cfg["rescale_iterations"], seed=cfg["seed"])
    log.info("rescaled (%d layers normalised on data; gradient/weight ratio spread %.1f -> %.2f)",
             summary["normalised_layers"], summary["ratio_spread_before"], summary["ratio_spread_after"])
    return dict(summary, applied=True)


def _logistic(train_x, train_y, test_x, cfg):
    """C chosen on held-out training images, refit on all of them: (test logits (N_test, 20), record fields)."""
    scores, c, held = logistic_probe(train_x, train_y, test_x, cfg["cs"], held_out=cfg["held_out"], seed=cfg["seed"],
                                     max_iter=cfg["max_iter"], n_jobs=max(1, cfg["threads"]))
    return scores, {"c": c, "held_out_map": {f"{k:g}": percent(v) for k, v in held.items()}}


def _svm(train_x, train_y, test_x, cfg):
    """The VOC07 SVM per class, cost by 3-fold CV AP: (test decision values (N_test, 20), record fields)."""
    scores, chosen = svm_probe(train_x, train_y, test_x, cfg["svm_costs"], n_jobs=max(1, cfg["threads"]))
    costs = {VOC_CLASSES[i]: cost for i, (cost, _) in chosen.items()}
    cv_ap = {VOC_CLASSES[i]: {f"{c:g}": percent(v) for c, v in aps.items()} for i, (_, aps) in chosen.items()}
    return scores, {"cost_per_class": costs, "cv_ap": cv_ap}


def probe_layer(train_x, train_y, test_x, test_y, cfg):
    """One layer's probe (--classifier) fitted on the training features, test mAP with its bootstrap interval (%)."""
    dims = int(train_x.shape[1])
    scores, fields = (_svm if cfg["classifier"] == "svm" else _logistic)(train_x, train_y, test_x, cfg)
    with warnings.catch_warnings():  # classes without positives (small splits) are left out of the mean, once
        warnings.simplefilter("ignore", UserWarning)
        value, per_class = classification_map(scores, test_y, mode="sklearn")
        voc07, _ = classification_map(scores, test_y, mode="voc07")
        low, high = classification_map_ci(scores, test_y, mode="sklearn", n_boot=cfg["n_boot"], seed=cfg["seed"])
    return {"value": percent(value), "ci95": [percent(low), percent(high)],
            "per_class": {VOC_CLASSES[i]: percent(v) for i, v in enumerate(per_class)},
            "map_voc07": percent(voc07), **fields, "dims": dims}


def _protocol(cfg, info, rescaling, shapes):
    protocol = _common_protocol(cfg, info, rescaling, shapes)
    if cfg["classifier"] == "svm":
        protocol["benchmark"] = ("VOC07 linear SVM (Goyal et al., Scaling and Benchmarking Self-Supervised Visual "
                                 "Representation Learning, ICCV 2019)")
        protocol["svm_settings"] = dict(SVM_SETTINGS, class_weight={"1": 2, "-1": 1}, cv_folds=CV_FOLDS,
                                        normalisation="x / (|x|_2 + 1e-5)")
    return protocol


def _common_protocol(cfg, info, rescaling, shapes):
    return {"mode": "linear probe per layer", "ap": AP_DEFINITION, "also_reported": "map_voc07: the devkit's "
            "11-point AP", "features": "conv1..conv5 after ReLU, frozen, each average-pooled (adaptive) to Zhang "
            "et al.'s grid (conv1 10x10, conv2 6x6, conv3/conv4 5x5, conv5 6x6: ~9,000 dims at 227 px)",
            "layers": {n: shapes[n] for n in cfg["layers"]},
            "views": f"one centre view: shorter side resized to {cfg['input_size']}, centre square, no hole",
            "classifier": cfg["classifier"],
            "classifier_protocol": CLASSIFIERS[cfg["classifier"]] + "; difficult images left out of each class's fit",
            "c_choice": _c_choice(cfg),
            "init": info["init"], "architecture": info["arch"], "weights": info["source"], "fc_dim": cfg["fc_dim"],
            "rescaling": rescaling, "train_split": f"VOC{cfg['year']} {cfg['train_split']}",
            "test_split": f"VOC{cfg['year']} {cfg['test_split']}", "interval": interval_description(cfg["n_boot"])}


def _c_choice(cfg):
    if cfg["classifier"] == "svm":
        return (f"per class among {sorted(cfg['svm_costs'])} by the mean AP of {CV_FOLDS}-fold cross-validation "
                "(sklearn cross_val_score, scoring average_precision) on the training images, then fitted on all")
    if len(cfg["cs"]) > 1:
        return (f"per layer among {sorted(cfg['cs'])} by mAP on a seeded held-out {cfg['held_out']:.0%} of the "
                "training images, then refit on all")
    return f"fixed {cfg['cs'][0]}"


def make_probe_record(cfg, info, label, rescaling, layers, shapes, n_train, n_test, wall_time_s):
    """One record per initialisation: every layer in `layers`; value/ci95/per_class are the deepest layer's."""
    top = layers[cfg["layers"][-1]]

    def fraction(v):  # make_record takes fractions and stores percent
        return None if v is None else v / 100.0

    return make_record(
        task="probe", init=label, dataset=dataset_name(cfg["voc_root"], cfg["year"]), split=cfg["test_split"],
        metric="mAP", value=fraction(top["value"]), ci95=[fraction(v) for v in top["ci95"]],
        per_class={k: fraction(v) for k, v in top["per_class"].items()}, n_images=n_test, seed=cfg["seed"],
        wall_time_s=wall_time_s, config=cfg, protocol=_protocol(cfg, info, rescaling, shapes),
        layer=cfg["layers"][-1], layers=layers, n_train_images=n_train, weights_meta=info["meta"])
