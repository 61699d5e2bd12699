"""Fast R-CNN box arithmetic: target encoding, RoI sampling, loss, NMS and the per-image cap."""

import pytest
import torch
from torchvision.ops import box_iou

from transfer.detection.targets import (BBOX_STDS, decode_boxes, encode_boxes, fast_rcnn_loss, postprocess_detections,
                                        sample_rois)


def random_boxes(n, generator, size=100.0):
    xy = torch.rand(n, 2, generator=generator) * size
    wh = torch.rand(n, 2, generator=generator) * size / 2 + 2.0
    return torch.cat([xy, xy + wh], dim=1)


def test_encode_hand_worked_value():
    proposal = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    target = torch.tensor([[5.0, 0.0, 15.0, 20.0]])  # centre moves 5 right, 5 down; height doubles
    deltas = encode_boxes(proposal, target)
    raw = torch.tensor([[0.5, 0.5, 0.0, torch.log(torch.tensor(2.0))]])
    assert torch.allclose(deltas, raw / torch.tensor(BBOX_STDS))


def test_encode_decode_round_trip():
    gen = torch.Generator().manual_seed(0)
    proposals, targets = random_boxes(50, gen), random_boxes(50, gen)
    decoded = decode_boxes(proposals, encode_boxes(proposals, targets))
    assert torch.allclose(decoded, targets, atol=1e-3)


def test_decode_is_class_specific():
    gen = torch.Generator().manual_seed(1)
    proposals, a, b = random_boxes(5, gen), random_boxes(5, gen), random_boxes(5, gen)
    deltas = torch.cat([encode_boxes(proposals, a), encode_boxes(proposals, b)], dim=1)  # (5, 8): two classes
    decoded = decode_boxes(proposals, deltas)
    assert torch.allclose(decoded[:, :4], a, atol=1e-3) and torch.allclose(decoded[:, 4:], b, atol=1e-3)


def _shifted(gt, shifts):
    """Copies of one box moved right by each shift (IoU falls as the shift grows)."""
    return torch.stack([gt + torch.tensor([s, 0.0, s, 0.0]) for s in shifts])


def test_sampling_fractions_and_iou_ranges():
    gt = torch.tensor([[20.0, 20.0, 60.0, 60.0]])
    shifts = torch.linspace(0, 60, 400)  # IoU from 1 down to 0
    proposals = _shifted(gt[0], shifts.tolist())
    iou_all = box_iou(proposals, gt)[:, 0]
    assert (iou_all >= 0.5).sum() > 16 and ((iou_all >= 0.1) & (iou_all < 0.5)).sum() > 48
    gen = torch.Generator().manual_seed(0)
    rois, labels, targets = sample_rois(proposals, gt, torch.tensor([7]), num_rois=64, generator=gen)
    iou = box_iou(rois, gt)[:, 0]
    assert len(rois) == 64
    assert (labels > 0).sum() == 16 and (labels[labels > 0] == 7).all()  # 25 % foreground, the object's class
    assert (iou[labels > 0] >= 0.5).all()
    assert ((iou[labels == 0] >= 0.1) & (iou[labels == 0] < 0.5)).all()  # background only from [0.1, 0.5)
    assert torch.allclose(decode_boxes(rois[labels > 0], targets[labels > 0]), gt.expand(16, 4), atol=1e-3)
    assert (targets[labels == 0] == 0).all()


def test_sampling_with_few_candidates_takes_what_there_is():
    gt = torch.tensor([[20.0, 20.0, 60.0, 60.0]])
    proposals = _shifted(gt[0], [0.0, 2.0, 30.0, 100.0])  # IoU ~1, ~0.9, ~0.14, 0
    rois, labels, _ = sample_rois(proposals, gt, torch.tensor([3]), num_rois=64,
                                  generator=torch.Generator().manual_seed(0))
    # gt + two proposals are foreground (all kept, below the 16 allowed); one background; the IoU-0 box never
    assert (labels > 0).sum() == 3 and (labels == 0).sum() == 1 and len(rois) == 4


def test_sampling_is_seeded():
    gen = torch.Generator().manual_seed(3)
    proposals, gt = random_boxes(300, gen), random_boxes(3, gen)
    a = sample_rois(proposals, gt, torch.tensor([1, 2, 3]), generator=torch.Generator().manual_seed(5))
    b = sample_rois(proposals, gt, torch.tensor([1, 2, 3]), generator=torch.Generator().manual_seed(5))
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_loss_uses_the_true_class_column_on_foreground_only():
    labels = torch.tensor([2, 0])
    targets = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    deltas = torch.zeros(2, 3 * 4)
    deltas[0, 8] = 1.0  # class 2, dx: equals the target -> no box loss
    deltas[1, :] = 5.0  # background RoI: its deltas never count
    logits = torch.zeros(2, 3, requires_grad=True)
    cls_loss, box_loss = fast_rcnn_loss(logits, deltas, labels, targets)
    assert box_loss.item() == pytest.approx(0.0)
    assert cls_loss.item() == pytest.approx(torch.log(torch.tensor(3.0)).item(), rel=1e-5)
    deltas[0, 8] = 3.0  # |diff| 2 -> smooth L1 = 2 - 0.5 = 1.5, divided by 2 RoIs
    assert fast_rcnn_loss(logits, deltas, labels, targets)[1].item() == pytest.approx(0.75)


def test_nms_per_class_and_cap():
    box = torch.tensor([10.0, 10.0, 50.0, 50.0])
    near = box + 2.0  # IoU ~0.82 with box
    far = box + 100.0
    proposals_boxes = torch.stack([box, near, far])
    boxes = proposals_boxes.repeat(1, 3)  # (3, 12): same box for background and two classes
    scores = torch.tensor([[0.1, 0.9, 0.0], [0.2, 0.8, 0.7], [0.3, 0.6, 0.0]])
    out_boxes, out_scores, out_labels = postprocess_detections(scores, boxes, score_thresh=0.05, nms_iou=0.3,
                                                               max_per_image=100)
    # class 1: `near` suppressed by `box`, `far` kept; class 2: `near` alone (NMS never crosses classes)
    assert sorted(zip(out_labels.tolist(), out_scores.tolist(), strict=True)) == [(1, pytest.approx(0.6)),
                                                                     (1, pytest.approx(0.9)),
                                                                     (2, pytest.approx(0.7))]
    assert (out_scores[:-1] >= out_scores[1:]).all()
    capped = postprocess_detections(scores, boxes, score_thresh=0.05, nms_iou=0.3, max_per_image=2)
    assert capped[1].tolist() == pytest.approx([0.9, 0.7])
    assert len(postprocess_detections(scores, boxes, score_thresh=0.95)[0]) == 0
    top1 = postprocess_detections(scores, boxes, per_class_top=1)  # each class's best box only, before NMS
    assert sorted(top1[1].tolist()) == pytest.approx([0.7, 0.9])
