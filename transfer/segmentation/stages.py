"""The stages of `python -m transfer.segment`, kept apart so the entry point reads as a list of steps."""

from dataclasses import asdict
from pathlib import Path

import numpy as np
from PIL import Image

from cebench.errors import CebenchError
from cebench.files import atomic_write
from cebench.records import schedule_fields
from evaluation.metrics import segmentation_miou_ci
from transfer import stages
from transfer.backbone import measure_health, rescale_backbone_
from transfer.segmentation.data import SegTransform, VOCSegmentation, find_year, sample_batch
from transfer.segmentation.model import fcn_from_backbone
from transfer.segmentation.task import SEG_CLASSES
from voc.devkit import dataset_name, read_image_set, voc_palette, year_dir
from voc.sbd import extra_training_ids, sbd_files

METRIC = ("mean IU over 21 classes from one dataset-wide confusion matrix (FCN score.py); void 255 ignored; every "
          "test image whole, at its original resolution")


def check_config(cfg):
    stages.check_positive(cfg, ("steps", "batch_size", "accum_steps", "input_size", "fc_dim", "ckpt_every",
                                "log_every", "rescale_images"))
    if not 0 < cfg["min_scale"] <= cfg["max_scale"] or not 0 <= cfg["flip_prob"] <= 1:
        raise CebenchError("need 0 < --min-scale <= --max-scale and 0 <= --flip-prob <= 1")


def load_data(cfg, log):
    """(train, test, training transform): augmented crops for training (VOC's split, plus SBD's masks with
    --sbd-root), whole test images; every file checked. train_ds.sbd: SBD's merge counts (None without it)."""
    transform = SegTransform(scale_range=(cfg["min_scale"], cfg["max_scale"]), crop_size=cfg["crop_size"],
                             flip_prob=cfg["flip_prob"])
    test_ds = VOCSegmentation(cfg["voc_root"], cfg["test_split"], cfg["year"], transform=SegTransform(),
                              cache=cfg["cache"], skip_bad=cfg["skip_bad"])
    extra, counts = sbd_extra(cfg, test_ds)
    train_ds = VOCSegmentation(cfg["voc_root"], cfg["train_split"], cfg["year"], transform=transform,
                               cache=cfg["cache"], skip_bad=cfg["skip_bad"], extra=extra)
    train_ds.sbd = counts
    stages.check_ids(test_ds.ids, f"VOC{test_ds.year} {cfg['test_split']}")  # they name the prediction PNGs
    log.info("training: %s (%d images); VOC%s %s: %d images", ", ".join(f"{n} {k}" for k, n in
             train_ds.sources.items()), len(train_ds), test_ds.year, cfg["test_split"], len(test_ds))
    if counts:
        log.info("SBD: %d listed in %s, %d dropped as images of the scored split %s, %d already in VOC's %s",
                 counts["sbd_listed"], "+".join(cfg["sbd_splits"]), counts["sbd_in_test_split_dropped"],
                 cfg["test_split"], counts["sbd_already_in_voc_train"], cfg["train_split"])
    return train_ds, test_ds, transform


def sbd_extra(cfg, test_ds):
    """(extra training images for VOCSegmentation, counts) from --sbd-root, or (None, None) without it: SBD's
    listed images less those of the scored split and those VOC's training split already has (FCN's merge)."""
    if not cfg["sbd_root"]:
        return None, None
    year = find_year(cfg["voc_root"], cfg["train_split"], cfg["year"])
    voc_train = read_image_set(cfg["voc_root"], year, cfg["train_split"], kind="Segmentation")
    scored = read_image_set(cfg["voc_root"], test_ds.year, cfg["test_split"], kind="Segmentation")
    ids, counts = extra_training_ids(cfg["sbd_root"], cfg["sbd_splits"], voc_train, scored)
    files = sbd_files(cfg["sbd_root"], ids, year_dir(cfg["voc_root"], year) / "JPEGImages", skip_bad=cfg["skip_bad"])
    counts["sbd_skipped"] = len(files[3])
    return (f"SBD {'+'.join(cfg['sbd_splits'])}", files), counts


def output_paths(cfg, label):
    """The common paths (stages.output_paths), the predictions' folder and the examples PNG beside the record."""
    paths = stages.output_paths(cfg, "segment", label)
    out = paths["out"]
    predictions = Path(cfg["save_predictions"]) if cfg["save_predictions"] else out.parent / f"{out.stem}.predictions"
    return dict(paths, predictions=predictions, examples_png=out.parent / f"{out.stem}.examples.png")


def own_outputs(paths, cfg):
    """What a run writes besides its record and run folder: the examples PNG and the predictions (their folder
    when it is the run's own; else only the PNGs in it, as the folder may be the user's)."""
    predictions = paths["predictions"]
    own = [predictions] if not cfg["save_predictions"] else sorted(Path(predictions).glob("*.png"))
    return [paths["examples_png"], *own]


def rescale(backbone, info, train_ds, cfg, rt):
    """Krähenbühl's rescaling of the backbone on training crops at its input size (as the paper; once per run:
    `stages.rescale_once` calls it), and the init's feature health right after it."""
    crops = SegTransform(scale_range=(cfg["min_scale"], cfg["max_scale"]), crop_size=cfg["input_size"],
                         flip_prob=cfg["flip_prob"])
    images = sample_batch(train_ds, crops, cfg["rescale_images"], seed=cfg["seed"])
    summary = rescale_backbone_(backbone, info, images, iterations=cfg["rescale_iterations"], seed=cfg["seed"])
    # measured now and kept in rescale.json: a resumed run has its trained weights, not these, by the time it ends
    summary["feature_health"] = health(backbone, train_ds, cfg, rt, rescaled=True)
    return summary


def health(backbone, train_ds, cfg, rt, rescaled):
    """The record's feature_health of the init (main rank): fixed views of the training images at the input size."""
    if not rt.is_main:
        return None
    return measure_health(backbone, train_ds.image_paths, cfg["input_size"], cfg, next(backbone.parameters()).device,
                          rescaled=rescaled, source=f"VOC{train_ds.year} {train_ds.split} (segmentation)")


def fcn(backbone, cfg):
    """The (rescaled) backbone with fc6/fc7 as convolutions and the FCN head."""
    return fcn_from_backbone(backbone, variant=cfg["variant"], pad=cfg["pad"], dropout=cfg["dropout"],
                             learn_upsampling=cfg["upsampling"] == "learned")


def segmentation_record(cfg, info, paths, rescaling, last, fit, train_ds, test_ds, transform, model, workers,
                        **fields):
    """A result record (DESIGN.md) of SegmentationTask.last: mIoU, bootstrap ci95 over images, per-class IU."""
    scores = last["scores"]
    ci95 = segmentation_miou_ci(last["per_image"], n_boot=cfg["n_boot"], seed=cfg["seed"])
    optimiser = dict(asdict(stages.train_config(cfg, workers)), loss_normalization=cfg["loss_normalization"])
    protocol = dict(stages.init_protocol(cfg, info, rescaling, fit), metric=METRIC, model=model.describe(),
                    train={"dataset": f"VOC{train_ds.year}", "split": train_ds.split, "n_images": len(train_ds),
                           "sources": train_ds.sources, "augmentation": transform.describe(),
                           "sbd_extra_annotations": train_ds.sbd is not None, "sbd": train_ds.sbd},
                    optimiser=optimiser)
    return stages.transfer_record(
        task="segmentation", cfg=cfg, info=info, label=paths["label"], protocol=protocol,
        dataset=dataset_name(cfg["voc_root"], test_ds.year), split=cfg["test_split"], metric="mIoU",
        value=scores["miou"], ci95=ci95, per_class=dict(zip(SEG_CLASSES, scores["iou"], strict=True)),
        n_images=len(last["per_image"]), pixel_acc=round(100 * scores["pixel_acc"], 4),
        mean_acc=round(100 * scores["mean_acc"], 4), steps_done=fit.step, predictions=str(paths["predictions"]),
        examples=str(paths["examples_png"]), run_dir=str(paths["run_dir"]), skipped=train_ds.skipped + test_ds.skipped,
        **schedule_fields(fit.step, cfg["steps"], weights_meta=info["meta"]), **fields)


def save_examples(path, dataset, predictions):
    """One PNG, a row per example: image | ground truth | prediction, masks in the VOC colours, under column
    headers and above a colour key of the classes shown (white: the void border, not scored)."""
    palette = voc_palette()
    rows, shown = [], set()
    for index, pred in sorted(predictions.items()):
        image, mask = dataset.load(index)  # uint8 (H, W, 3), (H, W)
        shown |= set(np.unique(mask).tolist()) | set(np.unique(pred).tolist())
        gap = np.full((image.shape[0], 4, 3), 255, dtype=np.uint8)
        rows.append(np.concatenate([image, gap, palette[mask], gap, palette[pred]], axis=1))
    if not rows:
        return None
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 4), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
    grid = Image.fromarray(np.concatenate(rows, axis=0))
    column = (width - 8) // 3
    labelled = label_grid(grid, ["image", "ground truth", "prediction"], column + 4,
                          [(SEG_CLASSES[c], tuple(int(v) for v in palette[c])) for c in sorted(shown)
                           if c < len(SEG_CLASSES)])
    return atomic_write(path, lambda f: labelled.save(f, format="PNG"))


def label_grid(grid, headers, step, key, font_size=12):
    """The grid under a header strip (one name per column, `step` pixels apart) and above a colour key strip of
    (name, rgb) swatches, wrapped to the grid's width."""
    from PIL import ImageDraw, ImageFont

    font = ImageFont.load_default(size=font_size)
    line = font_size + 6
    width = max(grid.width, 240)
    items, x, y = [], 4, 0  # lay the key out first, to know its height
    for name, _ in key:
        item = 16 + int(font.getlength(name)) + 12
        if x + item > width and x > 4:
            x, y = 4, y + line
        items.append((x, y))
        x += item
    key_height = (y + line + 4) if key else 0
    out = Image.new("RGB", (width, line + grid.height + key_height), "white")
    out.paste(grid, (0, line))
    draw = ImageDraw.Draw(out)
    for i, header in enumerate(headers):
        draw.text((i * step + 2, 2), header, fill=(0, 0, 0), font=font)
    top = line + grid.height + 2
    for (name, rgb), (x, y) in zip(key, items, strict=True):
        draw.rectangle([x, top + y + 2, x + 12, top + y + 14], fill=rgb, outline=(0, 0, 0))
        draw.text((x + 16, top + y + 1), name, fill=(0, 0, 0), font=font)
    return out
