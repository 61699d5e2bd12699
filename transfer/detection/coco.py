"""COCO-format detection data and COCO-style AP, both through pycocotools.

- `load_coco_split(json_path, images_dir)`: a COCO instances file plus its image folder as a DetectionSplit
  (categories in id order become labels 1..K; `iscrowd` objects count as VOC's "difficult", i.e. ignored).
- `coco_ap(split, detections)`: AP@[.5:.95] and AP50 of our detections by pycocotools' COCOeval, on any
  DetectionSplit — a VOC one is converted to COCO's format in memory (difficult -> iscrowd, which COCOeval
  ignores, matching with IoU against crowd regions measured over the detection's area).
"""

import contextlib
import io
import json
from pathlib import Path

import numpy as np
from cebench.deps import LazyModule
from cebench.errors import CebenchError
from transfer.detection.data import DetectionSplit, clip_boxes_to_images

NEEDED_FOR = "detection (COCO-style AP, COCO data)"
_coco = LazyModule("pycocotools.coco", NEEDED_FOR)
_cocoeval = LazyModule("pycocotools.cocoeval", NEEDED_FOR)


def _quiet():
    """pycocotools prints progress to stdout; keep it out of our logs."""
    return contextlib.redirect_stdout(io.StringIO())


def _read_coco(json_path):
    path = Path(json_path)
    if not path.is_file():
        raise CebenchError(f"COCO annotation file not found: {path}")
    try:
        with _quiet():
            coco = _coco.COCO(str(path))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CebenchError(f"{path}: not valid JSON ({err})") from None
    except (KeyError, TypeError, AssertionError) as err:
        raise CebenchError(f"{path}: not a COCO instances file ({type(err).__name__}: {err})") from None
    for key in ("images", "annotations", "categories"):
        if not isinstance(coco.dataset.get(key), list):
            raise CebenchError(f"{path}: not a COCO instances file (no {key!r} list)")
    if not coco.dataset["categories"]:
        raise CebenchError(f"{path}: defines no categories")
    return coco, path


def _objects(coco, image, path):
    """(boxes [G, 4] continuous, labels 1..K, crowd flags) of one COCO image; degenerate boxes are dropped."""
    label_of = {c: k + 1 for k, c in enumerate(sorted(coco.getCatIds()))}
    boxes, labels, crowd = [], [], []
    for ann in coco.loadAnns(coco.getAnnIds(imgIds=[image["id"]])):
        bbox = ann.get("bbox")
        if not (isinstance(bbox, list) and len(bbox) == 4 and ann.get("category_id") in label_of):
            raise CebenchError(f"{path}: annotation {ann.get('id')} needs a bbox [x, y, w, h] and a known category_id")
        x, y, w, h = (float(v) for v in bbox)
        if w <= 0 or h <= 0:
            continue
        boxes.append((x, y, x + w, y + h))
        labels.append(label_of[ann["category_id"]])
        crowd.append(bool(ann.get("iscrowd", 0)))
    return (np.array(boxes, dtype=np.float32).reshape(-1, 4), np.array(labels, dtype=np.int64),
            np.array(crowd, dtype=bool))


def load_coco_split(json_path, images_dir, skip_bad=False):
    """A COCO instances file and its image folder -> DetectionSplit (image ids as strings)."""
    coco, path = _read_coco(json_path)
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise CebenchError(f"COCO image folder not found: {images_dir}")
    classes = tuple(str(c["name"]) for c in coco.loadCats(sorted(coco.getCatIds())))
    split = DetectionSplit(f"COCO {path.name}", classes, [], [], [], [], [], [])
    for image in coco.loadImgs(sorted(coco.getImgIds())):
        try:
            file = images_dir / str(image["file_name"])
            size = (int(image["width"]), int(image["height"]))
        except (KeyError, TypeError, ValueError):
            raise CebenchError(f"{path}: image entry {image.get('id')} needs file_name, width and height") from None
        if not file.is_file():
            if skip_bad:
                split.skipped.append({"id": str(image["id"]), "reason": f"image not found: {file}"})
                continue
            raise CebenchError(f"{path}: image not found: {file}")
        boxes, labels, crowd = _objects(coco, image, path)
        for field_, value in (("ids", str(image["id"])), ("image_paths", file), ("sizes", size), ("boxes", boxes),
                              ("labels", labels), ("difficult", crowd)):
            getattr(split, field_).append(value)
    if not split.ids:
        raise CebenchError(f"{path}: no usable images under {images_dir}")

    def describe(i, k):
        x1, y1, x2, y2 = (round(float(v), 2) for v in split.boxes[i][k])
        return f"{path}: image {split.ids[i]}'s box [x, y, w, h] = [{x1}, {y1}, {x2 - x1:g}, {y2 - y1:g}]"

    return clip_boxes_to_images(split, describe, skip_bad)


def coco_from_split(split):
    """A pycocotools COCO ground truth built in memory from a DetectionSplit (images numbered 1..N)."""
    images, annotations = [], []
    for n, (w, h) in enumerate(split.sizes, 1):
        images.append({"id": n, "width": int(w), "height": int(h), "file_name": str(split.image_paths[n - 1])})
        for box, label, hard in zip(split.boxes[n - 1], split.labels[n - 1], split.difficult[n - 1], strict=True):
            bw, bh = float(box[2] - box[0]), float(box[3] - box[1])
            annotations.append({"id": len(annotations) + 1, "image_id": n, "category_id": int(label),
                                "bbox": [float(box[0]), float(box[1]), bw, bh], "area": bw * bh,
                                "iscrowd": int(hard)})
    categories = [{"id": k + 1, "name": name} for k, name in enumerate(split.classes)]
    coco = _coco.COCO()
    coco.dataset = {"images": images, "annotations": annotations, "categories": categories}
    with _quiet():
        coco.createIndex()
    return coco


def coco_ap(split, detections):
    """{"ap": AP@[.5:.95], "ap50": AP@0.5} by COCOeval (100 detections per image) as fractions.

    `detections`: {image_id: (boxes [D, 4] continuous pixels, scores [D], labels [D] in 1..K)}.
    """
    gt = coco_from_split(split)
    number = {image_id: n for n, image_id in enumerate(split.ids, 1)}
    rows = []
    for image_id, (boxes, scores, labels) in detections.items():
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        for b, s, c in zip(boxes, np.asarray(scores), np.asarray(labels), strict=True):
            rows.append([number[image_id], b[0], b[1], b[2] - b[0], b[3] - b[1], float(s), int(c)])
    if not rows or not gt.dataset["annotations"]:
        return {"ap": 0.0 if gt.dataset["annotations"] else float("nan"),
                "ap50": 0.0 if gt.dataset["annotations"] else float("nan")}
    with _quiet():
        dt = gt.loadRes(np.array(rows, dtype=np.float64))
        evaluator = _cocoeval.COCOeval(gt, dt, "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    ap, ap50 = (float(v) for v in evaluator.stats[:2])
    return {"ap": ap if ap >= 0 else float("nan"), "ap50": ap50 if ap50 >= 0 else float("nan")}


__all__ = ["DetectionSplit", "load_coco_split", "coco_from_split", "coco_ap"]
