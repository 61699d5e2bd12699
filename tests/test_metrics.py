"""evaluation.metrics against hand-worked values, scikit-learn and loop ports of the VOC devkit."""

import math
import time
import warnings

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, confusion_matrix

from evaluation.metrics import (
    ConfusionMatrix,
    bootstrap_ci,
    classification_map,
    classification_map_ci,
    detection_map,
    detection_map_ci,
    segmentation_confusion,
    segmentation_miou_ci,
    segmentation_scores,
    segmentation_scores_from_confusion,
    voc_ap,
)

# ---------------------------------------------------------------- independent references (plain loops)

def reference_voc_ap(recall, precision, use_07_metric):
    """Loop port of the devkit's AP; nan precisions are skipped, as MATLAB's max skips them."""
    if use_07_metric:
        total = 0.0
        for t in np.arange(0.0, 1.1, 0.1):
            candidates = [p for r, p in zip(recall, precision, strict=True) if r >= t and not math.isnan(p)]
            total += max(candidates, default=0.0)
        return total / 11
    mrec = [0.0, *recall, 1.0]
    mpre = [0.0, *precision, 0.0]
    for i in range(len(mpre) - 2, -1, -1):
        later = mpre[i + 1]
        mpre[i] = later if math.isnan(mpre[i]) else mpre[i] if math.isnan(later) else max(mpre[i], later)
    return sum((mrec[i] - mrec[i - 1]) * mpre[i] for i in range(1, len(mrec)) if mrec[i] != mrec[i - 1])


def reference_detection_ap(detections, ground_truth, class_index, iou_threshold, use_07_metric):
    """Loop port of VOCevaldet for one class: global sort, per-detection matching, difficult kept as 0/0."""
    gt = {}
    npos = 0
    for image_id, objects in ground_truth.items():
        boxes = [o for o in objects if o[0] == class_index]
        gt[image_id] = {"boxes": boxes, "detected": [False] * len(boxes)}
        npos += sum(1 for o in boxes if not o[5])
    if npos == 0:
        return float("nan")
    dets = sorted(detections.get(class_index, []), key=lambda d: -d[1])  # sorted() is stable
    tp, fp = [0] * len(dets), [0] * len(dets)
    for d, (image_id, _, x1, y1, x2, y2) in enumerate(dets):
        entry = gt.get(image_id, {"boxes": [], "detected": []})
        ovmax, jmax = -math.inf, None
        for j, (_, gx1, gy1, gx2, gy2, _) in enumerate(entry["boxes"]):
            iw = min(x2, gx2) - max(x1, gx1) + 1
            ih = min(y2, gy2) - max(y1, gy1) + 1
            if iw > 0 and ih > 0:
                union = (x2 - x1 + 1) * (y2 - y1 + 1) + (gx2 - gx1 + 1) * (gy2 - gy1 + 1) - iw * ih
                if iw * ih / union > ovmax:
                    ovmax, jmax = iw * ih / union, j
        if ovmax >= iou_threshold:
            if not entry["boxes"][jmax][5]:
                if not entry["detected"][jmax]:
                    tp[d] = 1
                    entry["detected"][jmax] = True
                else:
                    fp[d] = 1
        else:
            fp[d] = 1
    tp, fp = np.cumsum(tp), np.cumsum(fp)
    recall = list(tp / npos)
    precision = [t / (t + f) if t + f else float("nan") for t, f in zip(tp, fp, strict=True)]
    return reference_voc_ap(recall, precision, use_07_metric)


def reference_classification_voc(scores, labels, use_07_metric):
    """Loop port of VOCevalcls for one class: difficult images stay in the ranking with tp = fp = 0."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    tp = np.cumsum([labels[i] > 0 for i in order])
    fp = np.cumsum([labels[i] < 0 for i in order])
    recall = list(tp / np.sum(labels > 0))
    precision = [t / (t + f) if t + f else float("nan") for t, f in zip(tp, fp, strict=True)]
    return reference_voc_ap(recall, precision, use_07_metric)


# ---------------------------------------------------------------- voc_ap

def test_voc_ap_hand_worked_both_modes():
    recall, precision = [0.25, 0.5, 0.75], [1.0, 0.5, 0.6]
    # 11-point: t = 0..0.2 -> 1.0; t = 0.3..0.7 -> max(0.5, 0.6) = 0.6; t = 0.8..1 -> 0.
    assert voc_ap(recall, precision, use_07_metric=True) == pytest.approx((3 * 1.0 + 5 * 0.6) / 11)
    # Area: envelope [1, 0.6, 0.6] over recall steps of 0.25 each, nothing beyond 0.75.
    assert voc_ap(recall, precision, use_07_metric=False) == pytest.approx(0.25 + 0.15 + 0.15)


def test_voc_ap_07_thresholds_round_like_py_faster_rcnn():
    # 3 / 10 = 0.3 lies below the threshold 3 * 0.1 = 0.30000000000000004, so only t = 0, 0.1, 0.2 count.
    assert voc_ap([3 / 10], [1.0], use_07_metric=True) == pytest.approx(3 / 11)


def test_voc_ap_empty_curve_and_bad_input():
    assert voc_ap([], [], use_07_metric=True) == 0.0
    assert voc_ap([], [], use_07_metric=False) == 0.0
    with pytest.raises(ValueError, match="non-decreasing"):
        voc_ap([0.5, 0.25], [1.0, 1.0])
    with pytest.raises(ValueError, match="one length"):
        voc_ap([0.5], [1.0, 1.0])


# ---------------------------------------------------------------- classification

def test_classification_ties_hand_worked():
    scores = np.array([[0.9], [0.8], [0.8], [0.3]])
    labels = np.array([[1], [-1], [1], [-1]])
    # sklearn: the tied pair is one threshold -> 0.5 * 1 + 0.5 * 2/3.
    value, per_class = classification_map(scores, labels, mode="sklearn")
    assert value == pytest.approx(0.5 + 1 / 3)
    assert value == pytest.approx(average_precision_score(labels[:, 0] == 1, scores[:, 0]))
    # devkit: the tie keeps input order (negative first): points (.5, 1), (.5, .5), (1, 2/3), (1, .5).
    assert classification_map(scores, labels, mode="voc07")[0] == pytest.approx((6 + 5 * 2 / 3) / 11)
    assert classification_map(scores, labels, mode="voc")[0] == pytest.approx(0.5 + 1 / 3)
    # Swapping the tied rows puts the positive first: a perfect ranking for the devkit, not for sklearn.
    swapped = [0, 2, 1, 3]
    assert classification_map(scores[swapped], labels[swapped], mode="voc07")[0] == pytest.approx(1.0)
    assert classification_map(scores[swapped], labels[swapped], mode="sklearn")[0] == pytest.approx(value)
    assert isinstance(per_class, np.ndarray) and per_class.shape == (1,)


@pytest.mark.parametrize("mode", ["sklearn", "voc07", "voc"])
def test_classification_difficult_images_are_ignored(mode):
    scores = np.array([[0.9], [0.7], [0.5], [0.2], [0.1]])
    labels = np.array([[1], [0], [-1], [1], [-1]])
    base = classification_map(scores, labels, mode=mode)[0]
    for new_score in (-5.0, 0.6, 0.95, 10.0):
        moved = scores.copy()
        moved[1, 0] = new_score
        assert classification_map(moved, labels, mode=mode)[0] == pytest.approx(base)
    if mode == "sklearn":
        keep = labels[:, 0] != 0
        assert base == pytest.approx(average_precision_score(labels[keep, 0] == 1, scores[keep, 0]))


def test_classification_class_without_positives_is_nan_and_warned():
    scores = np.array([[0.9, 0.1], [0.2, 0.8], [0.4, 0.3]])
    labels = np.array([[1, -1], [-1, 0], [-1, -1]])
    with pytest.warns(UserWarning, match=r"\[1\]"):
        value, per_class = classification_map(scores, labels)
    assert per_class[0] == pytest.approx(1.0) and math.isnan(per_class[1])
    assert value == pytest.approx(1.0)


def test_classification_rejects_bad_input():
    with pytest.raises(ValueError, match=r"\[N, C\]"):
        classification_map(np.zeros((3, 2)), np.ones((3, 3)))
    with pytest.raises(ValueError, match=r"\[N, C\]"):
        classification_map(np.zeros(3), np.ones(3))
    with pytest.raises(ValueError, match="labels must hold only"):
        classification_map(np.zeros((2, 1)), np.array([[2], [1]]))
    with pytest.raises(ValueError, match="mode"):
        classification_map(np.zeros((2, 1)), np.ones((2, 1)), mode="voc12")


def test_classification_sklearn_mode_matches_sklearn_on_random_cases():
    rng = np.random.default_rng(0)
    for case in range(300):
        n, c = int(rng.integers(1, 40)), int(rng.integers(1, 4))
        scores = rng.normal(size=(n, c))
        if case % 2:
            scores = np.round(scores, 1)  # many ties
        labels = rng.choice([-1, 0, 1], size=(n, c), p=[0.5, 0.2, 0.3])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _, per_class = classification_map(scores, labels, mode="sklearn")
        for k in range(c):
            keep = labels[:, k] != 0
            if not np.any(labels[:, k] == 1):
                assert math.isnan(per_class[k])
                continue
            expected = average_precision_score(labels[keep, k] == 1, scores[keep, k])
            assert per_class[k] == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("mode", ["voc07", "voc"])
def test_classification_devkit_modes_match_loop_port(mode):
    rng = np.random.default_rng(1)
    for case in range(150):
        n = int(rng.integers(1, 30))
        scores = np.round(rng.normal(size=(n, 2)), 1 if case % 2 else 6)
        labels = rng.choice([-1, 0, 1], size=(n, 2), p=[0.5, 0.2, 0.3])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _, per_class = classification_map(scores, labels, mode=mode)
        for k in range(2):
            if not np.any(labels[:, k] == 1):
                continue
            expected = reference_classification_voc(scores[:, k], labels[:, k], mode == "voc07")
            assert per_class[k] == pytest.approx(expected, abs=1e-6)


# ---------------------------------------------------------------- detection

def two_image_example():
    ground_truth = {
        "a": [(0, 0, 0, 9, 9, False), (0, 20, 20, 29, 29, True), (2, 0, 0, 9, 9, True)],
        "b": [(0, 0, 0, 9, 9, False), (1, 5, 5, 14, 14, False)],
    }
    detections = {
        0: [
            ("a", 0.9, 0, 0, 9, 9),  # TP on a's object
            ("a", 0.8, 1, 1, 9, 9),  # IoU 0.81 with the same object: duplicate, FP
            ("a", 0.7, 20, 20, 29, 29),  # matches a difficult object: ignored
            ("b", 0.6, 50, 50, 60, 60),  # overlaps nothing: FP
            ("b", 0.5, 0, 0, 9, 9),  # TP on b's object
        ],
        1: [],  # ground truth but no detections: AP 0
        2: [("a", 0.4, 0, 0, 9, 9)],  # only a difficult object: AP nan
    }
    return detections, ground_truth


def test_detection_two_image_hand_worked():
    detections, ground_truth = two_image_example()
    # Class 0 ranking without the ignored detection: TP FP FP TP, npos 2 ->
    # recall .5 .5 .5 1, precision 1 .5 1/3 .5.
    with pytest.warns(UserWarning, match=r"\[2\]"):
        value07, per_class07 = detection_map(detections, ground_truth, use_07_metric=True)
    assert per_class07[0] == pytest.approx((6 * 1.0 + 5 * 0.5) / 11)
    assert per_class07[1] == 0.0
    assert math.isnan(per_class07[2]) and per_class07.shape == (3,)
    assert value07 == pytest.approx(per_class07[0] / 2)  # class 2 is left out of the mean
    with pytest.warns(UserWarning):
        value, per_class = detection_map(detections, ground_truth, use_07_metric=False)
    assert per_class[0] == pytest.approx(0.5 * 1.0 + 0.5 * 0.5)
    assert value == pytest.approx(0.375)


def test_detection_difficult_match_is_neither_tp_nor_fp():
    detections, ground_truth = two_image_example()
    without = {0: [d for d in detections[0] if d[1] != 0.7]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = detection_map(detections, ground_truth)[1][0]
        assert detection_map(without, ground_truth)[1][0] == pytest.approx(expected)


def test_detection_inclusive_boxes():
    ground_truth = {"x": [(0, 1, 1, 10, 10, False)]}
    detections = {0: [("x", 1.0, 1, 1, 10, 5)]}
    # Inclusive pixels: 10 x 5 = 50 inside 10 x 10 = 100, IoU exactly 0.5 (exclusive boxes would give 36 / 81).
    assert detection_map(detections, ground_truth, iou_threshold=0.5)[0] == pytest.approx(1.0)
    assert detection_map(detections, ground_truth, iou_threshold=0.51)[0] == 0.0


def test_detection_ties_keep_input_order():
    ground_truth = {"x": [(0, 0, 0, 9, 9, False)], "y": []}
    miss, hit = ("y", 0.5, 0, 0, 9, 9), ("x", 0.5, 0, 0, 9, 9)
    assert detection_map({0: [hit, miss]}, ground_truth, use_07_metric=False)[0] == pytest.approx(1.0)
    assert detection_map({0: [miss, hit]}, ground_truth, use_07_metric=False)[0] == pytest.approx(0.5)


def test_detection_classes_absent_from_both_inputs_are_nan_without_warning():
    ground_truth = {"x": [(3, 0, 0, 9, 9, False)]}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        value, per_class = detection_map({3: [("x", 1.0, 0, 0, 9, 9)]}, ground_truth)
    assert value == pytest.approx(1.0)
    assert per_class.shape == (4,) and np.isnan(per_class[:3]).all()


def random_detection_case(rng):
    n_images, n_classes = int(rng.integers(1, 7)), int(rng.integers(1, 4))
    ground_truth, all_boxes = {}, []
    for i in range(n_images):
        objects = []
        for _ in range(int(rng.integers(0, 4))):
            x1, y1 = rng.integers(0, 40, size=2)
            w, h = rng.integers(3, 20, size=2)
            box = (int(x1), int(y1), int(x1 + w), int(y1 + h))
            objects.append((int(rng.integers(0, n_classes)), *box, bool(rng.random() < 0.2)))
            all_boxes.append((i, box))
        ground_truth[i] = objects
    detections = {}
    for c in range(n_classes):
        dets = []
        for _ in range(int(rng.integers(0, 12))):
            if all_boxes and rng.random() < 0.7:
                image, box = all_boxes[int(rng.integers(len(all_boxes)))]
                box = tuple(int(v) for v in np.array(box) + rng.integers(-3, 4, size=4))
            else:
                image = int(rng.integers(0, n_images))
                x1, y1 = rng.integers(0, 40, size=2)
                box = (int(x1), int(y1), int(x1 + rng.integers(3, 20)), int(y1 + rng.integers(3, 20)))
            dets.append((image, float(np.round(rng.random(), 1)), *box))  # rounded: ties happen
        detections[c] = dets
    return detections, ground_truth


@pytest.mark.parametrize("use_07_metric", [True, False])
def test_detection_matches_loop_port_of_vocevaldet(use_07_metric):
    rng = np.random.default_rng(2)
    for _ in range(200):
        detections, ground_truth = random_detection_case(rng)
        threshold = float(rng.choice([0.3, 0.5, 0.7]))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            value, per_class = detection_map(detections, ground_truth, threshold, use_07_metric)
        expected = [reference_detection_ap(detections, ground_truth, c, threshold, use_07_metric)
                    for c in range(len(per_class))]
        np.testing.assert_allclose(per_class, expected, atol=1e-6)
        finite = [e for e in expected if not math.isnan(e)]
        if finite:
            assert value == pytest.approx(np.mean(finite), abs=1e-6)


# ---------------------------------------------------------------- segmentation

def test_segmentation_hand_worked_and_ignore_index():
    target = np.array([[0, 0, 1], [1, 255, 2]])
    pred = np.array([[0, 1, 1], [1, 0, 0]])
    scores = segmentation_scores(pred, target, num_classes=3)
    np.testing.assert_array_equal(scores["confusion"], [[1, 1, 0], [0, 2, 0], [1, 0, 0]])
    np.testing.assert_allclose(scores["iou"], [1 / 3, 2 / 3, 0.0])
    assert scores["miou"] == pytest.approx(1 / 3)
    assert scores["pixel_acc"] == pytest.approx(3 / 5)
    assert scores["mean_acc"] == pytest.approx((0.5 + 1.0 + 0.0) / 3)
    # A class in neither target nor prediction is nan and left out of the mean (FCN's nanmean).
    wider = segmentation_scores(pred, target, num_classes=4)
    assert math.isnan(wider["iou"][3]) and wider["miou"] == pytest.approx(1 / 3)


def test_segmentation_list_equals_concatenation_and_sklearn():
    rng = np.random.default_rng(3)
    preds, targets = [], []
    for _ in range(5):
        shape = tuple(rng.integers(2, 9, size=2))
        targets.append(np.where(rng.random(shape) < 0.1, 255, rng.integers(0, 6, size=shape)).astype(np.uint8))
        preds.append(rng.integers(0, 6, size=shape))
    listed = segmentation_scores(preds, targets, num_classes=6)
    pred_all = np.concatenate([p.ravel() for p in preds])
    target_all = np.concatenate([t.ravel() for t in targets])
    joined = segmentation_scores(pred_all, target_all, num_classes=6)
    np.testing.assert_array_equal(listed["confusion"], joined["confusion"])
    assert listed["miou"] == pytest.approx(joined["miou"])
    keep = target_all != 255
    expected = confusion_matrix(target_all[keep], pred_all[keep], labels=range(6))
    np.testing.assert_array_equal(listed["confusion"], expected)


def test_segmentation_rejects_bad_input():
    target = np.array([0, 1, 255])
    with pytest.raises(ValueError, match="pred has values outside"):
        segmentation_scores(np.array([0, 3, 1]), target, num_classes=3)
    with pytest.raises(ValueError, match="target has values outside"):
        segmentation_scores(np.array([0, 1, 1]), np.array([0, 7, 1]), num_classes=3)
    with pytest.raises(ValueError, match="integer"):
        segmentation_scores(np.array([0.0, 1.0, 1.0]), target, num_classes=3)
    with pytest.raises(ValueError, match="shapes differ"):
        segmentation_scores(np.array([0, 1]), target, num_classes=3)
    # A prediction at an ignored pixel never counts, so it is not checked.
    assert segmentation_scores(np.array([0, 1, 99]), target, num_classes=3)["miou"] == 1.0


def test_confusion_matrix_object():
    metric = ConfusionMatrix(num_classes=3, ignore_index=255)
    images = [(np.array([0, 1, 2]), np.array([0, 1, 1])), (np.array([2, 2]), np.array([2, 255]))]
    for pred, target in images:
        metric.update(pred, target)
    result = metric.compute()
    expected = segmentation_scores([p for p, _ in images], [t for _, t in images], num_classes=3)
    np.testing.assert_array_equal(result["confusion"], expected["confusion"])
    assert result["miou"] == pytest.approx(expected["miou"])
    assert metric.miou_ci(n_boot=20, seed=1) == segmentation_miou_ci(metric.per_update, n_boot=20, seed=1)
    metric.reset()
    assert metric.mat.sum() == 0 and metric.per_update == []


# ---------------------------------------------------------------- bootstrap

def classification_case(rng, n=120, c=4):
    labels = rng.choice([-1, 1], size=(n, c), p=[0.7, 0.3])
    labels[rng.random((n, c)) < 0.1] = 0
    scores = labels + rng.normal(scale=1.5, size=(n, c))  # continuous: no ties
    return scores, labels


@pytest.mark.parametrize("mode", ["sklearn", "voc07"])
def test_classification_ci_equals_explicit_resampling(mode):
    scores, labels = classification_case(np.random.default_rng(4))

    def explicit(counts):
        # An image drawn k times becomes k images with successive (untied) scores: copy j scores 1e-9 * j less,
        # far below the gaps between distinct scores, so the copies stay together in the ranking.
        rows = np.repeat(np.arange(len(scores)), counts)
        copy = np.arange(len(rows)) - np.repeat(np.cumsum(counts) - counts, counts)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return classification_map(scores[rows] - 1e-9 * copy[:, None], labels[rows], mode=mode)[0]

    fast = classification_map_ci(scores, labels, mode=mode, n_boot=40, seed=5)
    np.testing.assert_allclose(fast, bootstrap_ci(explicit, len(scores), n_boot=40, seed=5), atol=1e-9)


def test_classification_ci_deterministic_and_contains_estimate():
    scores, labels = classification_case(np.random.default_rng(6))
    point = classification_map(scores, labels)[0]
    low, high = classification_map_ci(scores, labels, n_boot=200, seed=0)
    assert (low, high) == classification_map_ci(scores, labels, n_boot=200, seed=0)
    assert (low, high) != classification_map_ci(scores, labels, n_boot=200, seed=1)
    assert 0.0 <= low <= point <= high <= 1.0


def test_detection_ci_equals_explicit_resampling_with_renamed_images():
    rng = np.random.default_rng(7)
    detections, ground_truth = random_detection_case(rng)
    while not any(not o[5] for objs in ground_truth.values() for o in objs):
        detections, ground_truth = random_detection_case(rng)
    for dets in detections.values():  # continuous scores: only a duplicated image creates ties
        dets[:] = [(d[0], float(rng.random()), *d[2:]) for d in dets]
    images = list(ground_truth)

    def explicit(counts):
        # An image drawn k times becomes k images (image, 0) ... (image, k - 1).
        times = dict(zip(images, counts, strict=True))
        gt = {(i, k): ground_truth[i] for i in images for k in range(times[i])}
        dets = {c: [((d[0], k), *d[1:]) for d in ds for k in range(times[d[0]])] for c, ds in detections.items()}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return detection_map(dets, gt)[0]

    fast = detection_map_ci(detections, ground_truth, n_boot=40, seed=8)
    np.testing.assert_allclose(fast, bootstrap_ci(explicit, len(images), n_boot=40, seed=8), atol=1e-9)


def many_images_detection_case(rng, n_images=500, decimals=None):
    """Two objects per image of 20 classes, each found once (shifted) and echoed once in a random class."""
    ground_truth, detections = {}, {c: [] for c in range(20)}
    score = (lambda x: x) if decimals is None else (lambda x: round(x, decimals))
    for i in range(n_images):
        ground_truth[i] = []
        for c in rng.integers(0, 20, size=2):
            x1, y1 = rng.integers(0, 200, size=2)
            box = (int(x1), int(y1), int(x1) + 40, int(y1) + 40)
            ground_truth[i].append((int(c), *box, bool(rng.random() < 0.1)))
            shift = int(rng.integers(0, 15))
            detections[int(c)].append((i, score(float(rng.random()) + 0.5), box[0] + shift, *box[1:]))
            detections[int(rng.integers(0, 20))].append((i, score(float(rng.random())), *box))
    return detections, ground_truth


def test_detection_ci_is_fast_and_contains_estimate():
    detections, ground_truth = many_images_detection_case(np.random.default_rng(9))
    point = detection_map(detections, ground_truth)[0]
    start = time.perf_counter()
    low, high = detection_map_ci(detections, ground_truth, n_boot=200, seed=0)
    assert time.perf_counter() - start < 5.0
    assert low <= point <= high
    assert (low, high) == detection_map_ci(detections, ground_truth, n_boot=200, seed=0)


def test_segmentation_ci_equals_explicit_sum_and_contains_estimate():
    rng = np.random.default_rng(10)
    confusions = [segmentation_confusion(rng.integers(0, 4, size=50), rng.integers(0, 4, size=50), num_classes=4)
                  for _ in range(30)]
    miou = segmentation_scores_from_confusion(sum(confusions))["miou"]

    def explicit_miou(counts):
        total = sum(k * m for k, m in zip(counts, confusions, strict=True))
        return segmentation_scores_from_confusion(total)["miou"]

    low, high = segmentation_miou_ci(confusions, n_boot=100, seed=11)
    np.testing.assert_allclose((low, high), bootstrap_ci(explicit_miou, 30, n_boot=100, seed=11), atol=1e-12)
    assert low <= miou <= high


def test_bootstrap_skips_nan_resamples_and_validates():
    # One positive among 10 images: resamples without it are nan and skipped.
    scores = np.linspace(0, 1, 10)[:, None]
    labels = -np.ones((10, 1), dtype=int)
    labels[9] = 1
    low, high = classification_map_ci(scores, labels, n_boot=100, seed=0)
    assert np.isfinite([low, high]).all() and low <= high
    assert all(math.isnan(v) for v in bootstrap_ci(lambda counts: float("nan"), 5, n_boot=10))
    with pytest.raises(ValueError):
        bootstrap_ci(lambda counts: 0.0, 0)
    with pytest.raises(ValueError):
        bootstrap_ci(lambda counts: 0.0, 5, alpha=1.5)


def test_bootstrap_ci_is_scipys_bca():
    # With one image per jackknife group the interval is textbook BCa: scipy.stats.bootstrap's, up to Monte Carlo
    # noise (different resamples; 20,000 of them put each endpoint within ~1% of the interval's width).
    from scipy.stats import bootstrap

    x = np.random.default_rng(0).exponential(size=30)  # skewed: BCa and percentile intervals differ
    ours = bootstrap_ci(lambda counts: counts @ x / counts.sum(), len(x), n_boot=20_000, seed=1, groups=len(x))
    ref = bootstrap((x,), np.mean, n_resamples=20_000, method="BCa", rng=np.random.default_rng(2)).confidence_interval
    pct = bootstrap((x,), np.mean, n_resamples=20_000, method="percentile", rng=np.random.default_rng(2))
    width = ref.high - ref.low
    np.testing.assert_allclose(ours, (ref.low, ref.high), atol=0.03 * width)
    assert abs(pct.confidence_interval.high - ref.high) > 0.05 * width  # the correction is larger than the noise


def test_ap_of_a_resample_does_not_tie_the_copies_of_an_image():
    # Two positives and a negative in between; drawing the second positive twice must score as two images in a
    # row (precisions 2/4 and 3/5), not as a tie scored at the precision of the last copy (3/5 for both).
    scores, labels = np.array([[0.9], [0.5], [0.1]]), np.array([[1], [-1], [1]])
    from evaluation.metrics import _classification_rankings, _ranking_ap

    ranking = _classification_rankings(scores, labels)[0]
    ap = _ranking_ap(ranking, "sklearn", counts=np.array([1, 1, 2]))
    assert ap == pytest.approx((1 + 2 / 3 + 3 / 4) / 3)
    assert ap == pytest.approx(average_precision_score([1, 0, 1, 1], [0.9, 0.5, 0.1, 0.1 - 1e-9]))


@pytest.mark.parametrize("seed", range(4))
def test_intervals_contain_their_estimate_with_many_ties(seed):
    # Weak scores quantised to steps of 0.5 (long runs of genuinely tied scores) and rare positives, as the
    # CPU-scale records: the percentile interval of the tied resamples sat above such estimates.
    rng = np.random.default_rng(seed)
    labels = rng.choice([-1, 1], size=(300, 20), p=[0.92, 0.08])
    scores = np.round(2 * (0.5 * (labels == 1) + rng.normal(size=labels.shape))) / 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        point = classification_map(scores, labels)[0]
        low, high = classification_map_ci(scores, labels, n_boot=200, seed=seed)
    assert low < point < high
    detections, ground_truth = many_images_detection_case(rng, n_images=200, decimals=1)  # 16 score levels
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        point = detection_map(detections, ground_truth)[0]
        low, high = detection_map_ci(detections, ground_truth, n_boot=200, seed=seed)
    assert low <= point <= high
