"""The stages of `python -m transfer.segment`, kept apart so the entry point reads as a list of steps."""

from dataclasses import asdict
from pathlib import Path

import numpy as np
from PIL import Image

from cebench.files import atomic_write, refuse_overwrite
from cebench.records import make_record
from evaluation.metrics import interval_description, segmentation_miou_ci
from transfer.backbone import measure_health, rescale_backbone_
from transfer.engine import checkpoint_path
from transfer.segmentation.data import SegTransform, sample_batch
from transfer.segmentation.model import fcn_from_backbone
from transfer.segmentation.task import SEG_CLASSES
from voc.devkit import voc_palette


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


def build_model(args, backbone, info, train_ds):
    """Rescale the backbone as the paper (on training crops at its input size), then make it an FCN."""
    if args.rescale:
        crops = SegTransform(scale_range=(args.min_scale, args.max_scale), crop_size=args.backbone_size,
                             flip_prob=args.flip_prob)
        images = sample_batch(train_ds, crops, args.rescale_images, seed=args.seed)
        info["rescale"] = rescale_backbone_(backbone, info, images, iterations=args.rescale_iterations,
                                            seed=args.seed)
    # the init's feature health as fine-tuning starts (a resumed run rescales again, so this holds on resume too)
    info["feature_health"] = measure_health(backbone, train_ds.image_paths, args.backbone_size, vars(args),
                                            next(backbone.parameters()).device, rescaled=args.rescale,
                                            source=f"VOC{train_ds.year} {train_ds.split} (segmentation)")
    return fcn_from_backbone(backbone, variant=args.variant, pad=args.pad, dropout=args.dropout,
                             learn_upsampling=args.upsampling == "learned")
