"""Detection data for Fast R-CNN: one split format for VOC and COCO sources, training items, test items.

Training item (Fast R-CNN's minibatch): the image rescaled to a single scale (shorter side `scale`, longer side
at most `max_size`), mirrored with probability `flip_prob` (1/2, as Fast R-CNN), and its sampled RoIs with labels
and regression targets.
Randomness comes from the global generators, which the engine seeds per (seed, epoch, index).
"""

from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from cebench.errors import CebenchError
from transfer.backbone import PRETRAINED_CFG
from transfer.detection.proposals import clip_and_filter
from transfer.detection.targets import sample_rois
from voc.devkit import VOC_CLASSES, load_image, year_dir

MEAN_RGB = PRETRAINED_CFG["pad_rgb"]  # padding colour: 0 after normalisation


@dataclass
class DetectionSplit:
    """Images with their objects; boxes float32 [G, 4] continuous pixels, labels 1..K, difficult flags."""

    name: str
    classes: tuple
    ids: list
    image_paths: list
    sizes: list  # (width, height) as stored
    boxes: list
    labels: list
    difficult: list
    skipped: list = field(default_factory=list)
    boxes_clipped: int = 0  # ground-truth boxes partly outside their image, clipped to it

    def __len__(self):
        return len(self.ids)


def from_voc(split, skip_bad=False):
    """A voc.devkit.VocSplit as a DetectionSplit (VOC's 1-based inclusive boxes -> continuous pixels), its
    boxes fitted to their images (`clip_boxes_to_images`)."""
    boxes, labels, difficult = [], [], []
    for ann in split.annotations:
        b = np.array([o.box for o in ann.objects], dtype=np.float32).reshape(-1, 4)
        b[:, :2] -= 1.0
        boxes.append(b)
        labels.append(np.array([o.label + 1 for o in ann.objects], dtype=np.int64))
        difficult.append(np.array([o.difficult for o in ann.objects], dtype=bool))
    out = DetectionSplit(f"VOC{split.year} {split.split}", VOC_CLASSES, list(split.ids),
                         list(split.image_paths), [(a.width, a.height) for a in split.annotations],
                         boxes, labels, difficult, list(split.skipped))
    annotations = year_dir(split.root, split.year) / "Annotations"

    def describe(i, k):
        obj = split.annotations[i].objects[k]
        return f"{annotations / f'{split.ids[i]}.xml'}: the {obj.name!r} box {obj.box} (xmin, ymin, xmax, ymax)"

    return clip_boxes_to_images(out, describe, skip_bad)


def clip_boxes_to_images(split, describe, skip_bad=False):
    """Ground truth inside its image, in place: a box partly outside is clipped to the image and counted in
    `split.boxes_clipped`; a box wholly outside (nothing left once clipped) is a CebenchError naming it
    (`describe(image index, box index)` names the annotation file and box), or with `skip_bad` its image is
    left out and listed in `split.skipped`."""
    keep = []
    for i, ((width, height), boxes) in enumerate(zip(split.sizes, split.boxes, strict=True)):
        if not (width and height):  # no <size> in the annotation: nothing to clip against
            keep.append(i)
            continue
        clipped = np.stack([boxes[:, 0].clip(0, width), boxes[:, 1].clip(0, height), boxes[:, 2].clip(0, width),
                            boxes[:, 3].clip(0, height)], axis=1) if len(boxes) else boxes
        empty = np.flatnonzero((clipped[:, 2] <= clipped[:, 0]) | (clipped[:, 3] <= clipped[:, 1]))
        if len(empty):
            reason = f"{describe(i, int(empty[0]))} lies outside the {width}x{height} image"
            if not skip_bad:
                raise CebenchError(f"{reason} (fix the annotation, or pass --skip-bad to leave the image out)")
            split.skipped.append({"id": split.ids[i], "reason": reason})
            continue
        split.boxes_clipped += int((clipped != boxes).any(axis=1).sum())
        split.boxes[i] = clipped
        keep.append(i)
    for name in ("ids", "image_paths", "sizes", "boxes", "labels", "difficult"):
        setattr(split, name, [getattr(split, name)[i] for i in keep])
    if not keep:
        raise CebenchError(f"{split.name}: no image left once images with boxes outside them were skipped")
    return split


def ground_truth(split):
    """{image_id: [(class_index, x1, y1, x2, y2, difficult)]} in VOC's inclusive pixels, for detection_map."""
    return {image_id: [(int(c) - 1, float(b[0]) + 1, float(b[1]) + 1, float(b[2]), float(b[3]), bool(d))
                       for b, c, d in zip(boxes, labels, diff, strict=True)]
            for image_id, boxes, labels, diff in zip(split.ids, split.boxes, split.labels, split.difficult,
                                                     strict=True)}


def image_scale(width, height, scale, max_size):
    """Fast R-CNN's single scale: shorter side to `scale` unless the longer side would exceed `max_size`."""
    return min(scale / min(width, height), max_size / max(width, height))


def load_scaled(path, scale, max_size):
    """(uint8 array (H, W, 3) at the detection scale, factor applied)."""
    image = load_image(path)
    s = image_scale(image.width, image.height, scale, max_size)
    size = (max(1, round(image.width * s)), max(1, round(image.height * s)))
    if size != image.size:
        image = image.resize(size, Image.BILINEAR)
    return np.array(image, dtype=np.uint8), s


def flip_boxes(boxes, width):
    """Mirror boxes [K, 4] (continuous pixels) in an image `width` wide."""
    flipped = boxes.copy()
    flipped[:, 0], flipped[:, 2] = width - boxes[:, 2], width - boxes[:, 0]
    return flipped


def proposals_for(split, proposals, source):
    """Each image's proposals, clipped into the image; an image missing from `proposals` is an error."""
    missing = [i for i in split.ids if i not in proposals]
    if missing:
        raise CebenchError(f"{source}: no proposals for {len(missing)} image(s) of {split.name}, e.g. {missing[:3]}")
    return [clip_and_filter(proposals[i], h, w) for i, (w, h) in zip(split.ids, split.sizes, strict=True)]


@dataclass(frozen=True)
class RoiSampling:
    """Fast R-CNN's minibatch settings (per image)."""

    rois_per_image: int = 64
    fg_fraction: float = 0.25
    fg_iou: float = 0.5
    bg_iou_low: float = 0.1
    bg_iou_high: float = 0.5


class TrainImages(Dataset):
    """Training items (image uint8 (3, H, W), rois [R, 4], labels [R], targets [R, 4]); difficult objects left out."""

    def __init__(self, split, proposals, *, scale, max_size, flip_prob=0.5, sampling=RoiSampling()):
        self.split, self.scale, self.max_size, self.sampling = split, scale, max_size, sampling
        self.flip_prob = flip_prob  # probability of a horizontal flip of each training image
        objects = [(b[~d], c[~d]) for b, c, d in zip(split.boxes, split.labels, split.difficult, strict=True)]
        # Fast R-CNN's filter_roidb: an image without objects has no RoI with IoU >= 0.1 (no fg, no bg): it goes.
        self.index = [i for i, (b, _) in enumerate(objects) if len(b)]
        self.objects, self.proposals = objects, proposals
        if not self.index:
            raise CebenchError(f"{split.name}: no training image has a non-difficult object")

    def __len__(self):
        return len(self.index)

    def __getitem__(self, item):
        i = self.index[item]
        image, s = load_scaled(self.split.image_paths[i], self.scale, self.max_size)
        gt, labels = self.objects[i]
        gt, proposals = gt * s, self.proposals[i] * s
        if self.flip_prob and np.random.random() < self.flip_prob:
            width = image.shape[1]
            image = np.ascontiguousarray(image[:, ::-1])
            gt, proposals = flip_boxes(gt, width), flip_boxes(proposals, width)
        p = self.sampling
        rois, roi_labels, targets = sample_rois(
            torch.from_numpy(proposals), torch.from_numpy(gt), torch.from_numpy(labels),
            num_rois=p.rois_per_image, fg_fraction=p.fg_fraction, fg_iou=p.fg_iou,
            bg_iou=(p.bg_iou_low, p.bg_iou_high))
        return torch.from_numpy(image).permute(2, 0, 1), rois, roi_labels, targets


def pad_images(images):
    """Stack uint8 images (3, H, W) of different sizes into (N, 3, Hmax, Wmax), padded with the mean colour."""
    h = max(im.shape[1] for im in images)
    w = max(im.shape[2] for im in images)
    mean = torch.tensor(MEAN_RGB, dtype=torch.uint8, device=images[0].device)  # the device data path's on it
    out = mean.view(1, 3, 1, 1).repeat(len(images), 1, h, w)
    for k, im in enumerate(images):
        out[k, :, : im.shape[1], : im.shape[2]] = im
    return out


def collate_rois(items):
    """Training items -> (images (N, 3, H, W) uint8, rois (R, 5) with batch index, labels (R,), targets (R, 4))."""
    images, rois, labels, targets = zip(*items, strict=True)
    indexed = [torch.cat([torch.full((len(r), 1), float(k), device=r.device), r], dim=1) for k, r in enumerate(rois)]
    return pad_images(images), torch.cat(indexed), torch.cat(labels), torch.cat(targets)


class TestImages(Dataset):
    """Test items (image uint8 (3, H, W), proposals [K, 4] at that scale, scale factor, index)."""

    def __init__(self, split, proposals, *, scale, max_size, max_proposals=None):
        self.split, self.proposals, self.scale, self.max_size = split, proposals, scale, max_size
        self.max_proposals = max_proposals

    def __len__(self):
        return len(self.split)

    def __getitem__(self, i):
        image, s = load_scaled(self.split.image_paths[i], self.scale, self.max_size)
        boxes = self.proposals[i][: self.max_proposals] * s
        return torch.from_numpy(image).permute(2, 0, 1), torch.from_numpy(boxes), s, i

