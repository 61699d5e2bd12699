"""Fast R-CNN as an engine task: the training step (softmax + smooth-L1 loss), test-time detection and its mAP."""

import warnings

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from cebench.logs import progress
from evaluation.metrics import detection_map
from transfer.backbone import normalize
from transfer.detection.data import collate_rois, ground_truth
from transfer.detection.targets import clip_boxes, decode_boxes, fast_rcnn_loss, postprocess_detections


@torch.no_grad()
def detect_image(model, image, proposals, scale, size, device, *, score_thresh, nms_iou, max_per_image):
    """One test image: score every proposal, regress its boxes, per-class NMS and a cap.

    image uint8 (3, H, W) at the detection scale, proposals [K, 4] at that scale, `scale` the factor from the
    stored image, `size` its stored (width, height). Returns (boxes [D, 4] stored pixels, scores [D], labels [D]).
    """
    if len(proposals) == 0:
        return np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64)
    x = normalize(image[None], device)  # (1, 3, H, W)
    proposals = proposals.to(device)
    rois = torch.cat([proposals.new_zeros(len(proposals), 1), proposals], dim=1)  # (K, 5)
    logits, deltas = model(x, rois)
    probs = F.softmax(logits.float(), dim=1)  # (K, C)
    boxes = clip_boxes(decode_boxes(proposals, deltas.float()), image.shape[1], image.shape[2])  # (K, 4·C)
    boxes, scores, labels = postprocess_detections(probs.cpu(), boxes.cpu(), score_thresh=score_thresh,
                                                   nms_iou=nms_iou, max_per_image=max_per_image)
    boxes = clip_boxes(boxes / scale, size[1], size[0])
    return boxes.numpy().astype(np.float32), scores.numpy().astype(np.float32), labels.numpy().astype(np.int64)


def detect_split(model, dataset, device, *, score_thresh=0.0, nms_iou=0.3, max_per_image=100, num_workers=0,
                 desc="test"):
    """{image_id: (boxes, scores, labels)} for every image of a TestImages dataset."""
    loader = DataLoader(dataset, batch_size=None, num_workers=num_workers)
    split, out = dataset.split, {}
    for image, proposals, scale, i in progress(loader, desc=desc, leave=False, total=len(dataset)):
        out[split.ids[i]] = detect_image(model, image, proposals, scale, split.sizes[i], device,
                                         score_thresh=score_thresh, nms_iou=nms_iou, max_per_image=max_per_image)
    return out


def voc_detections(detections, num_classes):
    """{class_index 0..K-1: [(image_id, score, x1, y1, x2, y2)]} in VOC's 1-based inclusive pixels."""
    per_class = {c: [] for c in range(num_classes)}
    for image_id, (boxes, scores, labels) in detections.items():
        for b, s, c in zip(boxes, scores, labels, strict=True):
            per_class[int(c) - 1].append((image_id, float(s), float(b[0]) + 1, float(b[1]) + 1, float(b[2]),
                                          float(b[3])))
    return per_class


def detection_scores(detections, split):
    """(mAP, per-class AP) of detections on a DetectionSplit: VOC07 11-point AP at IoU 0.5, difficult ignored."""
    with warnings.catch_warnings():  # classes without objects: the record lists them as null
        warnings.simplefilter("ignore", UserWarning)
        return detection_map(voc_detections(detections, len(split.classes)), ground_truth(split),
                             iou_threshold=0.5, use_07_metric=True)


class DetectionTask:
    """What the engine needs: training items with their RoIs, Fast R-CNN's loss and lr multipliers, the test mAP."""

    def __init__(self, train_images, test_images, *, device, test_settings, num_workers=0):
        self.train_dataset = train_images
        self.collate_fn = collate_rois
        self.test_images, self.device, self.num_workers = test_images, device, num_workers
        self.test_settings = dict(test_settings)  # score_thresh, nms_iou, max_per_image
        self.device_batches = None  # the device data path sets it (detection.device_data); None: a loader
        self.last = None  # what the latest evaluate() predicted: {"detections": {id: (boxes, scores, labels)}}

    def param_groups(self, model):
        """Fast R-CNN's Caffe convention: biases learn at twice the rate and are not decayed."""
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        return [{"params": [p for n, p in named if not n.endswith("bias")], "lr_mult": 1.0},
                {"params": [p for n, p in named if n.endswith("bias")], "lr_mult": 2.0, "weight_decay": 0.0}]

    def training_step(self, model, batch):
        images, rois, labels, targets = batch
        class_logits, box_deltas = model(normalize(images, self.device), rois)
        cls_loss, box_loss = fast_rcnn_loss(class_logits, box_deltas, labels, targets)
        return cls_loss + box_loss

    def evaluate(self, model):
        detections = detect_split(model, self.test_images, self.device, num_workers=self.num_workers,
                                  **self.test_settings)
        self.last = {"detections": detections}
        value, _ = detection_scores(detections, self.test_images.split)
        return {"map": value}
