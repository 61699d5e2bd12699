"""VOC classification for the engine: image views, the multi-label model and loss, and multi-crop evaluation.

Protocol of Krähenbühl's voc-classification, which the paper used (PAPER.md): a view is the image scaled by a
random factor in [0.5, 2] (scale 1 = longer side `base_size`), a random `input_size` crop of it (padded with
the mean where the scaled image is smaller) and a random mirror; 20 sigmoid outputs, cross-entropy summed over
classes and averaged over images, difficult labels ignored; test scores are the logits averaged over
`test_crops` views drawn the same way (seeded per image and crop).
"""

import warnings

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from cebench.logs import progress
from evaluation.metrics import classification_map
from transfer.backbone import normalize
from transfer.classification.data import TestViews

AP_DEFINITION = "non-interpolated AP (sklearn average_precision_score on non-difficult images), mean over classes"


def voc_bce(logits, labels):
    """Sigmoid cross-entropy summed over classes, mean over images; label 0 (difficult) is ignored."""
    labels = labels.to(logits.device)
    counted = (labels != 0).to(logits.dtype)
    loss = F.binary_cross_entropy_with_logits(logits.float(), (labels == 1).float(), reduction="none")
    return (loss * counted).sum() / logits.shape[0]


@torch.no_grad()
def predict(model, views, device, batch_size=8, num_workers=0, desc="test"):
    """Logits averaged over each image's views: float64 array (N, 20)."""
    loader = DataLoader(views, batch_size=batch_size, num_workers=num_workers)
    scores = []
    for crops, _ in progress(loader, desc=desc, leave=False):
        n, k = crops.shape[:2]
        logits = model(normalize(crops.flatten(0, 1), device)).float()  # (n*k, 20)
        scores.append(logits.view(n, k, -1).mean(dim=1).cpu().double())
    return torch.cat(scores).numpy()


class ClassificationTask:
    """What the engine needs: training items, the loss, Caffe's lr multipliers and the test evaluation."""

    def __init__(self, train_images, test_images, *, device, test_crops=10, seed=0, num_workers=0):
        self.train_dataset = train_images
        self.test_views = TestViews(test_images, test_crops, seed)
        self.test_labels = test_images.split.labels
        self.device, self.num_workers = device, num_workers
        self.device_batches = None  # the device data path sets it (classification.device_views); None: a loader
        self.last = None  # what the latest evaluate() predicted: {"scores": test logits (N, 20)}

    def param_groups(self, model):
        """Caffe's convention in voc-classification: biases learn at twice the rate, all decay."""
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        return [{"params": [p for n, p in named if not n.endswith("bias")], "lr_mult": 1.0},
                {"params": [p for n, p in named if n.endswith("bias")], "lr_mult": 2.0}]

    def training_step(self, model, batch):
        images, labels = batch
        return voc_bce(model(normalize(images, self.device)), labels)

    def evaluate(self, model):
        scores = predict(model, self.test_views, self.device, num_workers=self.num_workers)
        self.last = {"scores": scores}
        with warnings.catch_warnings():  # classes without positives: the record warns about them once
            warnings.simplefilter("ignore", UserWarning)
            value, _ = classification_map(scores, self.test_labels, mode="sklearn")
            voc07, _ = classification_map(scores, self.test_labels, mode="voc07")
        return {"map": value, "map_voc07": voc07}
