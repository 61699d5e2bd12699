"""The segmentation task for the fine-tuning engine: per-pixel loss, full-resolution evaluation, saved predictions.

Evaluation follows FCN's `score.py`: every test image at its original size, one dataset-wide confusion matrix
(void 255 ignored), mean IU over classes; per-image matrices are kept for the bootstrap interval over images.
"""

from pathlib import Path

import torch
import torch.nn.functional as F

from cebench.logs import progress
from evaluation.metrics import ConfusionMatrix
from transfer.segmentation.choices import LOSS_NORMALIZATIONS
from transfer.segmentation.data import IGNORE_INDEX, NUM_CLASSES, pad_collate
from voc.devkit import save_mask, VOC_CLASSES

SEG_CLASSES = ("background", *VOC_CLASSES)


def segmentation_loss(scores, masks, normalization="valid"):
    """Per-pixel softmax cross-entropy, void ignored; 'valid' averages over labelled pixels, 'batch' sums
    over pixels and averages over images (Caffe's SoftmaxWithLoss with normalize: false, as voc-fcn-alexnet)."""
    total = F.cross_entropy(scores, masks, ignore_index=IGNORE_INDEX, reduction="sum")
    if normalization == "batch":
        return total / masks.shape[0]
    if normalization != "valid":
        raise ValueError(f"unknown loss normalization {normalization!r}; use one of {LOSS_NORMALIZATIONS}")
    return total / (masks != IGNORE_INDEX).sum().clamp_min(1)  # an all-void crop gives 0, not nan


class SegmentationTask:
    """Train on augmented crops, evaluate whole test images one at a time at their own resolution."""

    collate_fn = staticmethod(pad_collate)

    def __init__(self, train_dataset, test_dataset, *, loss_normalization="valid", prediction_dir=None,
                 n_examples=4, show_progress=True):
        if loss_normalization not in LOSS_NORMALIZATIONS:
            raise ValueError(f"unknown loss normalization {loss_normalization!r}")
        self.train_dataset, self.test_dataset = train_dataset, test_dataset
        self.loss_normalization, self.show_progress = loss_normalization, show_progress
        self.prediction_dir = Path(prediction_dir) if prediction_dir else None
        n = len(test_dataset)
        self.example_indices = sorted({round(i * (n - 1) / max(1, n_examples - 1)) for i in range(n_examples)}) \
            if n_examples else []
        self.device_batches = None  # the device data path sets it (segmentation.device_data); None: a loader
        self.last = None  # full results of the latest evaluate(): scores, per-image confusions, examples

    def param_groups(self, model):
        """voc-fcn-alexnet's Caffe settings: score-layer biases learn at 2x without decay, the rest at 1x."""
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        score_bias = [n.startswith("score") and n.endswith("bias") for n, _ in named]
        return [{"params": [p for (_, p), b in zip(named, score_bias, strict=True) if not b]},
                {"params": [p for (_, p), b in zip(named, score_bias, strict=True) if b], "lr_mult": 2.0,
                 "weight_decay": 0.0}]

    def training_step(self, model, batch):
        images, masks = batch  # (N, 3, H, W), (N, H, W)
        return segmentation_loss(model(images), masks, self.loss_normalization)

    def evaluate(self, model):
        """Scores over the test split; predictions are written as palette PNGs when prediction_dir is set."""
        device = next(model.parameters()).device
        metric, examples = ConfusionMatrix(NUM_CLASSES, IGNORE_INDEX), {}
        for i in progress(range(len(self.test_dataset)), enabled=self.show_progress, desc="evaluate", leave=False):
            image, mask = self.test_dataset[i]
            scores = model(image[None].to(device))  # (1, 21, H, W): the whole image at its own size
            pred = scores[0].argmax(0).to(torch.uint8).cpu().numpy()
            metric.update(pred, mask.numpy())
            if self.prediction_dir is not None:
                save_mask(self.prediction_dir / f"{self.test_dataset.ids[i]}.png", pred)
            if i in self.example_indices:
                examples[i] = pred
        scores = metric.compute()
        self.last = {"scores": scores, "per_image": metric.per_update, "examples": examples}
        return {"miou": scores["miou"], "pixel_acc": scores["pixel_acc"], "mean_acc": scores["mean_acc"]}
