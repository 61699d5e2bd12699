"""Metrics of the transfer tasks (PAPER.md, Table 2): classification and detection mAP, segmentation mean IU.

The package `evaluation.metrics` is the pure layer of evaluation: its modules (this one, `bootstrap`, `retrieval`,
`inpainting`, `knn`) import nothing of ours beyond one another, so that any layer may use them (`transfer` imports
no other evaluation module).

Conventions of every function here:
- values are fractions in [0, 1]; ``per_class_ap`` is a numpy array indexed by class index, nan for a class
  without positives (left out of the mean, with a warning);
- rankings sort scores descending with a stable sort, so the devkit modes break ties by input order, as the
  MATLAB devkit's ``sort(-confidence)`` does; the "sklearn" mode scores a run of tied scores as one threshold;
- detection's ``per_class_ap`` has length (largest class index in either input) + 1; a class index found in
  neither input is nan without a warning; when every detection of a class hits difficult objects its AP is
  0 (the MATLAB devkit's max over all-nan precisions would give nan there);
- bootstrap intervals resample images with replacement; an image drawn k times counts as k images (in the
  "sklearn" mode its copies are k successive points of the ranking, not a run of tied scores), and the interval
  is the bias-corrected and accelerated (BCa) one, which `INTERVAL` describes for the records.
References: the PASCAL VOC devkit (VOCevalcls.m, VOCevaldet.m, VOCap.m) and FCN's score.py (mean IU).
Of our code this module imports only `evaluation.metrics.bootstrap`, a leaf of numpy and scipy.
"""

import warnings
from typing import NamedTuple

import numpy as np
from scipy.special import digamma

from evaluation.metrics.bootstrap import JACKKNIFE_GROUPS, bootstrap_ci, interval_description  # noqa: F401 (re-exported)

CLASSIFICATION_MODES = ("sklearn", "voc07", "voc")


class _Ranking(NamedTuple):
    """One class's scored items, best first, reduced to what AP needs."""

    image: np.ndarray  # (K,) int, image index of each item
    positive: np.ndarray  # (K,) bool, true positive (else false positive)
    group_end: np.ndarray  # (K,) bool, last item of a run of tied scores
    npos: np.ndarray  # (N,) float, positives held by each image
    alone: np.ndarray  # (runs,) bool, per run of tied scores: it is one positive item


def _ranking(image, positive, sorted_scores, npos):
    """A _Ranking of items sorted best first (`sorted_scores` descending)."""
    ends = _group_ends(sorted_scores)
    starts = np.concatenate(([True], ends[:-1]))
    return _Ranking(image, positive, ends, npos, (starts & ends & positive)[ends])


def voc_ap(recall, precision, use_07_metric=True):
    """Average precision of a precision/recall curve, as the VOC devkit computes it."""
    recall = np.asarray(recall, dtype=np.float64)
    precision = np.asarray(precision, dtype=np.float64)
    if recall.ndim != 1 or recall.shape != precision.shape:
        raise ValueError(f"recall and precision must be 1-D, of one length; got {recall.shape} and {precision.shape}")
    if not (np.isfinite(recall).all() and np.isfinite(precision).all()):
        raise ValueError("recall and precision must be finite")
    if np.any(np.diff(recall) < 0):
        raise ValueError("recall must be non-decreasing, as it is along a ranked list")
    if use_07_metric:
        # VOC2007: mean over t = 0, 0.1, ..., 1 of the best precision at recall >= t (0 if none). Thresholds are
        # np.arange(0., 1.1, 0.1) as in py-faster-rcnn's voc_eval, so a recall of exactly 0.3 is below t = 0.3.
        best_from_here = np.append(np.maximum.accumulate(precision[::-1])[::-1], 0.0)
        first_at_or_above = np.searchsorted(recall, np.arange(0.0, 1.1, 0.1), side="left")
        return float(best_from_here[first_at_or_above].mean())
    # VOC2010+ (VOCap.m): area under the precision envelope, with sentinels at recall 0 and 1.
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    steps = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))


def _nanmean(values):
    """Mean of the non-nan entries; nan (without numpy's warning) when there are none."""
    values = np.asarray(values, dtype=np.float64)
    kept = values[~np.isnan(values)]
    return float(kept.mean()) if kept.size else float("nan")


def _group_ends(sorted_scores):
    """True at the last item of each run of equal scores in a sorted score array."""
    ends = np.ones(len(sorted_scores), dtype=bool)
    ends[:-1] = sorted_scores[1:] != sorted_scores[:-1]
    return ends


def _ranking_ap(ranking, mode, counts=None):
    """AP of one class's ranking; image i counts counts[i] times (once each when counts is None)."""
    weight = 1 if counts is None else counts[ranking.image]
    npos = ranking.npos.sum() if counts is None else counts @ ranking.npos
    if npos == 0:
        return np.nan
    tp = np.cumsum(weight * ranking.positive)
    seen = np.arange(1, len(tp) + 1) if counts is None else np.cumsum(weight)
    if mode == "sklearn":
        return _sklearn_ap(ranking, tp, seen, npos)
    # seen is 0 only before the first item of a resample (weight 0 so far): precision 0 adds nothing there.
    # An image drawn k times adds its k points at once; the devkit's precision envelope is the same as with k
    # successive points (precision rises along a run of positives and the run ends at its highest point).
    precision = np.divide(tp, seen, out=np.zeros(len(seen)), where=seen > 0)
    return voc_ap(recall=tp / npos, precision=precision, use_07_metric=(mode == "voc07"))


def _sklearn_ap(ranking, tp, seen, npos):
    """average_precision_score's AP (one PR point after each run of tied scores) of a weighted ranking.

    An image of weight k stands for k images of a resample. A fresh test set would not tie their scores, so an
    image alone in its run of scores gives k successive points; scoring them as one run would rate every copy of
    a positive at the precision of the last, and AP would rise with the number of duplicates. The k points of a
    positive after t true and f false positives add sum_{j=1..k} (t + j)/(t + f + j) = k - f * (psi(t + f + k + 1)
    - psi(t + f + 1)) (digamma psi); with k = 1 this is the single point's precision, as sklearn.
    """
    if len(ranking.alone) < len(tp):  # some scores tie: one point per run of tied scores
        tp, seen = tp[ranking.group_end], seen[ranking.group_end]
    gained = np.empty(len(tp))  # positives in each run
    gained[0], gained[1:] = tp[0], tp[1:] - tp[:-1]
    contribution = gained * tp / np.maximum(seen, 1)  # seen 0 (nothing drawn yet) means tp 0: adds 0
    runs = np.flatnonzero(gained > 1)
    copies = runs[ranking.alone[runs]]  # one positive image drawn several times (once: the plain precision)
    if copies.size:
        k, seen_before = gained[copies], seen[copies] - gained[copies]
        false = seen_before - tp[copies] + k
        contribution[copies] = k - false * (digamma(seen_before + k + 1) - digamma(seen_before + 1))
    return float(contribution.sum() / npos)


def _warn_no_positives(classes, what, names=None):
    """One warning naming the classes whose AP is nan (by name when `names` are given, e.g. VOC_CLASSES)."""
    if classes:
        shown = (", ".join(f"{names[c]} ({c})" for c in sorted(classes)) if names is not None
                 else str(sorted(classes)))
        warnings.warn(f"class(es) {shown} have no {what}: AP is nan and left out of the mean", stacklevel=3)


def _check_mode(mode):
    if mode not in CLASSIFICATION_MODES:
        raise ValueError(f"mode must be one of {CLASSIFICATION_MODES}, got {mode!r}")


def _classification_rankings(scores, labels):
    """Per class a _Ranking of its non-difficult images; validates the inputs."""
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels)
    if scores.ndim != 2 or scores.shape != labels.shape:
        raise ValueError(f"scores and labels must both be [N, C], got {scores.shape} and {labels.shape}")
    if not np.isin(labels, (-1, 0, 1)).all():
        raise ValueError("labels must hold only 1 (positive), -1 (negative) and 0 (difficult, ignored)")
    if not np.isfinite(scores).all():
        raise ValueError("scores must be finite")
    rankings = []
    for c in range(scores.shape[1]):
        # Difficult images leave the ranking: the devkit keeps them with tp = fp = 0, which changes no AP.
        kept = np.flatnonzero(labels[:, c] != 0)
        order = kept[np.argsort(-scores[kept, c], kind="stable")]
        positives = (labels[:, c] == 1).astype(np.float64)
        rankings.append(_ranking(order, labels[order, c] == 1, scores[order, c], positives))
    return rankings


def classification_map(scores, labels, mode="sklearn", class_names=None):
    """Mean AP over classes of scores [N, C] against VOC labels (1 positive, -1 negative, 0 difficult);
    class_names (C of them) name the classes of the warning about classes without positives."""
    _check_mode(mode)
    per_class_ap = np.array([_ranking_ap(r, mode) for r in _classification_rankings(scores, labels)])
    _warn_no_positives(np.flatnonzero(np.isnan(per_class_ap)).tolist(), "positive image", class_names)
    return _nanmean(per_class_ap), per_class_ap


def _box_iou(boxes, gt_boxes):
    """IoU [D, G] of inclusive pixel boxes (x1, y1, x2, y2); -inf where they do not overlap, as VOCevaldet."""
    iw = np.minimum(boxes[:, None, 2], gt_boxes[None, :, 2]) - np.maximum(boxes[:, None, 0], gt_boxes[None, :, 0]) + 1
    ih = np.minimum(boxes[:, None, 3], gt_boxes[None, :, 3]) - np.maximum(boxes[:, None, 1], gt_boxes[None, :, 1]) + 1
    area = (boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)
    gt_area = (gt_boxes[:, 2] - gt_boxes[:, 0] + 1) * (gt_boxes[:, 3] - gt_boxes[:, 1] + 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = iw * ih / (area[:, None] + gt_area[None, :] - iw * ih)
    # The devkit only considers boxes that overlap, so a threshold of 0 still rejects disjoint boxes.
    return np.where((iw > 0) & (ih > 0), iou, -np.inf)


def _rows_by_image(images):
    """Yield (image, rows) for each image, rows in their original (score) order."""
    if len(images) == 0:
        return
    by_image = np.argsort(images, kind="stable")
    for rows in np.split(by_image, np.flatnonzero(np.diff(images[by_image])) + 1):
        yield int(images[rows[0]]), rows


def _match_class(dets, gt, image_index, iou_threshold, npos):
    """Mark one class's detections TP/FP as VOCevaldet; those matching a difficult object drop out."""
    if any(len(d) != 6 for d in dets):
        raise ValueError("each detection must be (image_id, score, x1, y1, x2, y2)")
    images = np.array([image_index[d[0]] for d in dets], dtype=np.int64)
    scores = np.array([d[1] for d in dets], dtype=np.float64)
    boxes = np.array([d[2:] for d in dets], dtype=np.float64).reshape(-1, 4)
    if not np.isfinite(scores).all():
        raise ValueError("detection scores must be finite")
    order = np.argsort(-scores, kind="stable")  # the devkit's sort(-confidence): ties keep input order
    images, scores, boxes = images[order], scores[order], boxes[order]
    outcome = np.full(len(order), -1, dtype=np.int8)  # 1 true positive, -1 false positive, 0 ignored
    # Matching only looks at detections of the same image, so each image is matched on its own.
    for image, rows in _rows_by_image(images):
        if image not in gt:
            continue  # no object of this class in the image: all false positives
        gt_boxes, difficult = gt[image]
        iou = _box_iou(boxes[rows], gt_boxes)
        detected = np.zeros(len(gt_boxes), dtype=bool)
        for row, best, best_iou in zip(rows, iou.argmax(axis=1), iou.max(axis=1), strict=True):
            if best_iou < iou_threshold:
                continue
            if difficult[best]:
                outcome[row] = 0
            elif not detected[best]:
                outcome[row], detected[best] = 1, True
            # else: a second detection of a matched object stays a false positive
    kept = outcome != 0
    return _ranking(images[kept], outcome[kept] == 1, scores[kept], npos)


def _class_index(value):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"class indices must be non-negative integers, got {value!r}")
    return int(value)


def _detection_rankings(detections, ground_truth, iou_threshold):
    """Devkit matching, done once: per class index a _Ranking (None for a class absent from both inputs)."""
    image_index = {image_id: i for i, image_id in enumerate(ground_truth)}
    for dets in detections.values():
        for det in dets:
            image_index.setdefault(det[0], len(image_index))  # an image without ground truth
    objects = {}  # class -> image index -> list of (x1, y1, x2, y2, difficult)
    for image_id, image_objects in ground_truth.items():
        for obj in image_objects:
            if len(obj) != 6:
                raise ValueError("each ground-truth object must be (class_index, x1, y1, x2, y2, difficult)")
            per_image = objects.setdefault(_class_index(obj[0]), {})
            per_image.setdefault(image_index[image_id], []).append(obj[1:])
    classes = set(objects) | {_class_index(c) for c in detections}
    rankings = [None] * (max(classes) + 1 if classes else 0)
    for c in classes:
        gt, npos = {}, np.zeros(len(image_index))
        for i, objs in objects.get(c, {}).items():
            difficult = np.array([bool(o[4]) for o in objs])
            gt[i] = (np.array([o[:4] for o in objs], dtype=np.float64), difficult)
            npos[i] = np.sum(~difficult)
        rankings[c] = _match_class(list(detections.get(c, ())), gt, image_index, iou_threshold, npos)
    return rankings, len(image_index)


def detection_map(detections, ground_truth, iou_threshold=0.5, use_07_metric=True):
    """Mean AP over classes of scored boxes against VOC ground truth, as the devkit's VOCevaldet."""
    rankings, _ = _detection_rankings(detections, ground_truth, iou_threshold)
    mode = "voc07" if use_07_metric else "voc"
    per_class_ap = np.array([np.nan if r is None else _ranking_ap(r, mode) for r in rankings])
    missing = [c for c, r in enumerate(rankings) if r is not None and np.isnan(per_class_ap[c])]
    _warn_no_positives(missing, "non-difficult ground-truth object")
    return _nanmean(per_class_ap), per_class_ap


def segmentation_confusion(pred, target, num_classes=21, ignore_index=255):
    """Confusion matrix [C, C] (rows target, columns prediction) of one image or a batch of label maps."""
    pred, target = np.asarray(pred), np.asarray(target)
    if pred.shape != target.shape:
        raise ValueError(f"pred and target shapes differ: {pred.shape} and {target.shape}")
    for name, labels in (("pred", pred), ("target", target)):
        if labels.dtype.kind not in "iu":
            raise ValueError(f"{name} must hold integer class indices, got dtype {labels.dtype}")
    counted = np.ones(target.shape, dtype=bool) if ignore_index is None else target != ignore_index
    pred, target = pred[counted].astype(np.int64), target[counted].astype(np.int64)
    for name, labels in (("pred", pred), ("target", target)):
        if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
            raise ValueError(f"{name} has values outside [0, {num_classes}) at pixels not ignored ({ignore_index})")
    counts = np.bincount(num_classes * target + pred, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def segmentation_scores_from_confusion(confusion):
    """miou, pixel_acc, mean_acc, per-class iou and the matrix, from a confusion matrix (rows target)."""
    matrix = np.asarray(confusion)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"confusion must be a square matrix, got shape {matrix.shape}")
    counts = matrix.astype(np.float64)
    hits, in_target, in_pred = np.diag(counts), counts.sum(axis=1), counts.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        # 0 / 0 = nan for a class absent from target and prediction: FCN's nanmean leaves it out.
        iou = hits / (in_target + in_pred - hits)
        class_acc = hits / in_target
        pixel_acc = hits.sum() / counts.sum()
    return {"miou": _nanmean(iou), "pixel_acc": float(pixel_acc), "mean_acc": _nanmean(class_acc),
            "iou": iou, "confusion": matrix}


class ConfusionMatrix:
    """Segmentation confusion matrix filled by update() calls, shaped like torchvision references' one."""

    def __init__(self, num_classes=21, ignore_index=255):
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.reset()

    def reset(self):
        """Forget every update."""
        self.mat = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)
        self.per_update = []  # one matrix per update(): per image when fed an image at a time, for miou_ci

    def update(self, pred, target):
        """Add one image's (or batch's) label maps; pixels whose target is ignore_index are skipped."""
        matrix = segmentation_confusion(pred, target, self.num_classes, self.ignore_index)
        self.mat += matrix
        self.per_update.append(matrix)

    def compute(self):
        """The segmentation_scores dict of everything added so far."""
        return segmentation_scores_from_confusion(self.mat)

    def miou_ci(self, n_boot=1000, seed=0, alpha=0.05):
        """BCa bootstrap interval of mean IU over the update() calls (images)."""
        return segmentation_miou_ci(self.per_update, n_boot=n_boot, seed=seed, alpha=alpha)


def segmentation_scores(pred, target, num_classes=21, ignore_index=255):
    """Segmentation scores of one label map or an iterable of them (one per image), via ConfusionMatrix."""
    metric = ConfusionMatrix(num_classes, ignore_index)
    if isinstance(pred, np.ndarray) and isinstance(target, np.ndarray):
        metric.update(pred, target)
    else:
        preds, targets = list(pred), list(target)
        if len(preds) != len(targets):
            raise ValueError(f"got {len(preds)} predictions for {len(targets)} targets")
        for image_pred, image_target in zip(preds, targets, strict=True):
            metric.update(image_pred, image_target)
    return metric.compute()


def classification_map_ci(scores, labels, mode="sklearn", n_boot=1000, seed=0, alpha=0.05):
    """BCa bootstrap interval of classification_map over images (rows)."""
    _check_mode(mode)
    rankings = _classification_rankings(scores, labels)
    n_images = np.shape(scores)[0]

    def resampled_map(counts):
        return _nanmean([_ranking_ap(r, mode, counts) for r in rankings])

    return bootstrap_ci(resampled_map, n_images, n_boot=n_boot, seed=seed, alpha=alpha)


def detection_map_ci(detections, ground_truth, iou_threshold=0.5, use_07_metric=True, n_boot=1000, seed=0,
                     alpha=0.05):
    """BCa bootstrap interval of detection_map over images; matching is per image, so it is done only once."""
    rankings, n_images = _detection_rankings(detections, ground_truth, iou_threshold)
    rankings = [r for r in rankings if r is not None]
    mode = "voc07" if use_07_metric else "voc"

    def resampled_map(counts):
        return _nanmean([_ranking_ap(r, mode, counts) for r in rankings])

    return bootstrap_ci(resampled_map, n_images, n_boot=n_boot, seed=seed, alpha=alpha)


def segmentation_miou_ci(per_image_confusions, n_boot=1000, seed=0, alpha=0.05):
    """BCa bootstrap interval of mean IU from per-image confusion matrices [N, C, C]."""
    confusions = np.asarray(per_image_confusions, dtype=np.float64)
    if confusions.ndim != 3 or confusions.shape[1] != confusions.shape[2]:
        raise ValueError(f"per_image_confusions must be [N, C, C], got shape {confusions.shape}")

    def resampled_miou(counts):
        return segmentation_scores_from_confusion(np.tensordot(counts, confusions, axes=1))["miou"]

    return bootstrap_ci(resampled_miou, len(confusions), n_boot=n_boot, seed=seed, alpha=alpha)
