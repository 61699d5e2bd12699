"""Fast R-CNN's box arithmetic (Girshick 2015): RoI sampling, box-regression targets, test-time post-processing.

Boxes are float tensors [K, 4] of (x1, y1, x2, y2) in continuous pixel coordinates (width = x2 - x1), the
convention of torchvision.ops; a VOC box (xmin, ymin, xmax, ymax), 1-based inclusive, is (xmin - 1, ymin - 1,
xmax, ymax). Class labels: 0 is background, 1..K the object classes.
"""

import math

import torch
import torch.nn.functional as F
from torchvision.ops import batched_nms, box_iou

# Fast R-CNN normalises regression targets by fixed means and stds (BBOX_NORMALIZE_TARGETS_PRECOMPUTED).
BBOX_MEANS = (0.0, 0.0, 0.0, 0.0)
BBOX_STDS = (0.1, 0.1, 0.2, 0.2)
# Largest log-scale change decode accepts (torchvision's clamp: a box may grow at most 1000/16 times).
MAX_LOG_SCALE = math.log(1000.0 / 16)


def _centres(boxes):
    widths, heights = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    return boxes[:, 0] + 0.5 * widths, boxes[:, 1] + 0.5 * heights, widths, heights


def encode_boxes(proposals, targets, means=BBOX_MEANS, stds=BBOX_STDS):
    """Normalised regression targets (dx, dy, dw, dh) [K, 4] that move each proposal onto its target box."""
    px, py, pw, ph = _centres(proposals)
    gx, gy, gw, gh = _centres(targets)
    deltas = torch.stack([(gx - px) / pw, (gy - py) / ph, torch.log(gw / pw), torch.log(gh / ph)], dim=1)
    return (deltas - deltas.new_tensor(means)) / deltas.new_tensor(stds)


def decode_boxes(proposals, deltas, means=BBOX_MEANS, stds=BBOX_STDS):
    """Inverse of encode_boxes: proposals [K, 4] and normalised deltas [K, 4·C] -> boxes [K, 4·C]."""
    k = deltas.shape[0]
    d = deltas.reshape(k, -1, 4) * deltas.new_tensor(stds) + deltas.new_tensor(means)  # (K, C, 4)
    px, py, pw, ph = (t[:, None] for t in _centres(proposals))
    cx, cy = px + d[..., 0] * pw, py + d[..., 1] * ph
    w = pw * torch.exp(d[..., 2].clamp(max=MAX_LOG_SCALE))
    h = ph * torch.exp(d[..., 3].clamp(max=MAX_LOG_SCALE))
    return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=2).reshape(k, -1)


def clip_boxes(boxes, height, width):
    """Clip boxes [K, 4·C] into an image of (height, width)."""
    boxes = boxes.clone()
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
    return boxes


def _pick(candidates, count, generator):
    """`count` of the candidate indices, uniformly without replacement."""
    if count >= len(candidates):
        return candidates
    return candidates[torch.randperm(len(candidates), generator=generator, device=candidates.device)[:count]]


def sample_rois(proposals, gt_boxes, gt_labels, *, num_rois=64, fg_fraction=0.25, fg_iou=0.5,
                bg_iou=(0.1, 0.5), generator=None):
    """One image's training RoIs as Fast R-CNN samples them; returns (rois [R, 4], labels [R], targets [R, 4]).

    The ground-truth boxes join the proposals; up to fg_fraction·num_rois foreground RoIs (IoU >= fg_iou with
    some object) keep that object's label, the rest of the batch is background drawn from IoU in
    [bg_iou[0], bg_iou[1]). R is below num_rois when an image lacks candidates, as in Fast R-CNN. Runs on the
    boxes' device; `generator` (None: torch's global one) must be on it too.
    """
    rois = torch.cat([gt_boxes, proposals]) if len(gt_boxes) else proposals
    if len(gt_boxes):
        iou = box_iou(rois, gt_boxes)  # (K, G)
        best_iou, best_gt = iou.max(dim=1)
    else:  # an image with no (non-difficult) object offers only background
        best_iou, best_gt = rois.new_zeros(len(rois)), torch.zeros(len(rois), dtype=torch.long, device=rois.device)
    fg = _pick(torch.nonzero(best_iou >= fg_iou).flatten(), int(round(fg_fraction * num_rois)), generator)
    bg_candidates = torch.nonzero((best_iou < bg_iou[1]) & (best_iou >= bg_iou[0])).flatten()
    bg = _pick(bg_candidates, num_rois - len(fg), generator)
    keep = torch.cat([fg, bg])
    labels = torch.zeros(len(keep), dtype=torch.long, device=rois.device)
    targets = torch.zeros(len(keep), 4, device=rois.device)
    if len(fg):
        labels[: len(fg)] = gt_labels[best_gt[fg]]
        targets[: len(fg)] = encode_boxes(rois[fg], gt_boxes[best_gt[fg]])
    return rois[keep], labels, targets


def fast_rcnn_loss(class_logits, box_deltas, labels, targets):
    """(classification loss, box loss): softmax cross-entropy over all RoIs, and smooth L1 (beta 1) between the
    true class's deltas and the targets on foreground RoIs, summed and divided by the number of RoIs."""
    cls_loss = F.cross_entropy(class_logits.float(), labels)
    fg = torch.nonzero(labels > 0).flatten()
    deltas = box_deltas.float().reshape(len(labels), -1, 4)[fg, labels[fg]]  # (F, 4): the true class's column
    box_loss = F.smooth_l1_loss(deltas, targets[fg].float(), beta=1.0, reduction="sum") / max(1, len(labels))
    return cls_loss, box_loss


def postprocess_detections(scores, boxes, *, score_thresh=0.0, nms_iou=0.3, max_per_image=100,
                           per_class_top=100):
    """Per-class NMS and a per-image cap on one image's scored boxes.

    scores [K, C] softmax probabilities (column 0 background), boxes [K, 4·C] class-specific boxes. As Fast
    R-CNN's test, each class keeps its `per_class_top` best boxes (above score_thresh) before NMS; the image then
    keeps its `max_per_image` best detections over all classes.
    Returns (boxes [D, 4], scores [D], labels [D] in 1..C-1), best first.
    """
    k, c = scores.shape
    top = min(per_class_top, k)
    best, rows = scores[:, 1:].topk(top, dim=0)  # (top, C-1) each
    labels = torch.arange(1, c).expand(top, c - 1)
    boxes = boxes.reshape(k, c, 4)[rows, labels]  # (top, C-1, 4)
    boxes, scores, labels = boxes.reshape(-1, 4), best.reshape(-1), labels.reshape(-1)
    keep = torch.nonzero(scores > score_thresh).flatten()
    boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    keep = batched_nms(boxes, scores, labels, nms_iou)[:max_per_image]  # sorted by score, descending
    return boxes[keep], scores[keep], labels[keep]
