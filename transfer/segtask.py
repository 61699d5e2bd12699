"""The segmentation task for the fine-tuning engine: per-pixel loss, full-resolution evaluation, saved predictions.

Evaluation follows FCN's `score.py`: every test image at its original size, one dataset-wide confusion matrix
(void 255 ignored), mean IU over classes; per-image matrices are kept for the bootstrap interval over images.
"""

from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from cebench.files import atomic_write, refuse_overwrite
from cebench.logs import progress
from cebench.records import make_record
from evaluation.metrics import ConfusionMatrix, interval_description, segmentation_miou_ci
from transfer.engine import checkpoint_path
from transfer.segdata import IGNORE_INDEX, NUM_CLASSES, pad_collate, save_mask, voc_palette
from transfer.voc import VOC_CLASSES

SEG_CLASSES = ("background", *VOC_CLASSES)
LOSS_NORMALIZATIONS = ("valid", "batch")


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


def segmentation_record(last, *, n_boot=1000, seed=0, **fields):
    """A result record (DESIGN.md) of SegmentationTask.last: mIoU, bootstrap ci95 over images, per-class IU."""
    scores = last["scores"]
    ci95 = segmentation_miou_ci(last["per_image"], n_boot=n_boot, seed=seed)
    fields["protocol"] = dict(fields.get("protocol") or {}, interval=interval_description(n_boot))
    return make_record(task="segmentation", metric="mIoU", value=scores["miou"], ci95=ci95,
                       per_class=dict(zip(SEG_CLASSES, scores["iou"], strict=True)),
                       n_images=len(last["per_image"]), seed=seed, pixel_acc=round(100 * scores["pixel_acc"], 4),
                       mean_acc=round(100 * scores["mean_acc"], 4), **fields)


def save_examples(path, dataset, predictions):
    """One PNG, a row per example: image | ground truth | prediction, masks in the VOC colours."""
    palette = voc_palette()
    rows = []
    for index, pred in sorted(predictions.items()):
        image, mask = dataset.load(index)  # uint8 (H, W, 3), (H, W)
        gap = np.full((image.shape[0], 4, 3), 255, dtype=np.uint8)
        rows.append(np.concatenate([image, gap, palette[mask], gap, palette[pred]], axis=1))
    if not rows:
        return None
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 4), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
    grid = Image.fromarray(np.concatenate(rows, axis=0))
    return atomic_write(path, lambda f: grid.save(f, format="PNG"))


def run_paths(out, save_predictions=None):
    """Run folder (checkpoint, metrics.jsonl), predictions folder and examples PNG beside the record `out`."""
    out = Path(out)
    preds = Path(save_predictions) if save_predictions else out.parent / f"{out.stem}.predictions"
    return out.parent / f"{out.stem}.run", preds, out.parent / f"{out.stem}.examples.png"


def check_outputs(out, run_dir, *, resume=False, overwrite=False):
    """Refuse to replace a record or run unless asked (a replaced run is kept aside until the new one succeeds)."""
    if not (resume or overwrite):
        refuse_overwrite(out)
        refuse_overwrite(checkpoint_path(run_dir))


def run_outputs(out, run_dir, pred_dir, examples_png, own_predictions):
    """Everything a run writes: record, run folder, examples PNG and the predictions (their folder when it is the
    run's own; else only the PNGs in it, as the folder may be the user's)."""
    predictions = [Path(pred_dir)] if own_predictions else sorted(Path(pred_dir).glob("*.png"))
    return [Path(out), Path(run_dir), Path(examples_png), *predictions]


def segmentation_protocol(model, info, train_ds, transform, train_config, loss_normalization):
    """What a reader needs to compare this number with the paper's (PAPER.md, "Segmentation")."""
    return {"metric": "mean IU over 21 classes from one dataset-wide confusion matrix (FCN score.py); void 255 "
                      "ignored; every test image whole, at its original resolution",
            "model": model.describe(), "architecture": info["arch"], "fc_init": info["fc_init"],
            "rescaling": info.get("rescale", "none"), "weights": info["source"],
            "train": {"dataset": f"VOC{train_ds.year}", "split": train_ds.split, "n_images": len(train_ds),
                      "augmentation": transform.describe(), "sbd_extra_annotations": False},
            "optimiser": dict(asdict(train_config), loss_normalization=loss_normalization)}
