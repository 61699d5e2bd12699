"""The stages of `python -m transfer.detect`, kept apart so the entry point reads as a list of steps."""

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from cebench.deps import require
from cebench.errors import CebenchError
from cebench.files import atomic_write, atomic_write_text
from cebench.names import check_name
from cebench.records import percent, schedule_fields, write_record
from cebench.runtime import barrier
from evaluation.metrics import detection_map_ci
from transfer import engine, stages
from transfer.backbone import measure_health, normalize, rescale_layers
from transfer.detection.coco import coco_ap, load_coco_split
from transfer.detection.data import (RoiSampling, TestImages, TrainImages, collate_rois, from_voc, ground_truth,
                                     proposals_for)
from transfer.detection.device_data import choose_data_path
from transfer.detection.model import FastRCNN
from transfer.detection.proposals import cached_proposals, load_proposal_file, selective_search_settings
from transfer.detection.task import DetectionTask, detection_scores, voc_detections
from transfer.rescale import krahenbuhl_rescale_
from voc.devkit import dataset_name, load_image, load_split

AP_DEFINITION = "VOC07 11-point AP at IoU 0.5 (devkit VOCevaldet), difficult objects ignored, mean over classes"


def check_config(cfg):
    stages.check_positive(cfg, ("steps", "batch_size", "scale", "max_size", "rois_per_image", "fc_dim",
                                "max_proposals", "ss_max_side", "ckpt_every", "log_every", "max_dets",
                                "rescale_images", "accum_steps"))
    if not 0 < cfg["fg_fraction"] <= 1 or not 0 <= cfg["bg_iou_low"] < cfg["fg_iou"] <= 1:
        raise CebenchError("need 0 < --fg-fraction <= 1 and 0 <= --bg-iou-low < --fg-iou <= 1")
    if cfg["lr"] <= 0 or not 0 < cfg["nms"] <= 1:
        raise CebenchError("--lr must be positive and --nms in (0, 1]")
    if bool(cfg["coco_json"]) != bool(cfg["coco_test_json"]) or (cfg["coco_json"] and not cfg["coco_images"]):
        raise CebenchError("COCO data needs --coco-json (train), --coco-test-json (test) and --coco-images")
    check_name(cfg["test_split"], "--test-split")  # it names the devkit's results files
    require("pycocotools", "detection (its record's COCO-style AP)")  # now, not after training


def load_splits(cfg, log):
    """(train, test) DetectionSplits from the VOCdevkit, or from COCO files when --coco-json is given."""
    if cfg["coco_json"]:
        splits = [load_coco_split(cfg[k], cfg["coco_images"], skip_bad=cfg["skip_bad"])
                  for k in ("coco_json", "coco_test_json")]
        if splits[0].classes != splits[1].classes:
            raise CebenchError(f"{cfg['coco_test_json']}: its categories differ from those of {cfg['coco_json']}")
    else:
        splits = [from_voc(load_split(cfg["voc_root"], cfg["year"], cfg[k], skip_bad=cfg["skip_bad"]),
                           skip_bad=cfg["skip_bad"]) for k in ("train_split", "test_split")]
    for s in splits:
        stages.check_ids(s.ids, s.name)  # they name the example PNGs
        for name in s.classes:  # they name the devkit's results files (COCO's may hold spaces)
            check_name(str(name).replace(" ", "_"), f"{s.name}: class name")
        log.info("%s: %d images, %d objects%s%s", s.name, len(s), sum(len(b) for b in s.boxes),
                 f", {len(s.skipped)} skipped (--skip-bad)" if s.skipped else "",
                 f", {s.boxes_clipped} boxes partly outside their image clipped to it" if s.boxes_clipped else "")
    return splits


def proposal_settings(cfg):
    return selective_search_settings(cfg["ss_mode"], cfg["ss_max_side"], cfg["max_proposals"], min_size=2)


def load_proposals(cfg, splits, rt, log):
    """Per split a list of each image's proposals, from --proposals or the selective-search cache."""
    if cfg["proposals"]:
        boxes = load_proposal_file(cfg["proposals"], one_based=not cfg["proposals_zero_based"])
        by_split, info = [boxes, boxes], {"source": str(cfg["proposals"]), "method": "user file"}
    else:
        # Keyed by (split, id): two COCO files may number their images alike.
        images = {(k, i): p for k, s in enumerate(splits) for i, p in zip(s.ids, s.image_paths, strict=True)}
        settings, workers = proposal_settings(cfg), cfg["ss_workers"] or os.cpu_count() or 1
        if rt.is_main:  # other ranks wait, then read the verified cache
            boxes, info = cached_proposals(images, cfg["proposals_cache"], settings, workers=workers)
            log.info("proposals: %d from the cache, %d computed, in %s", info["hits"], info["computed"],
                     info["cache_dir"])
        barrier(rt)
        if not rt.is_main:
            boxes, info = cached_proposals(images, cfg["proposals_cache"], settings, workers=1, show_progress=False)
        by_split = [{i: boxes[(k, i)] for i in s.ids} for k, s in enumerate(splits)]
        info = dict(info, method="selective search (OpenCV ximgproc)")  # settings: those of the cache read
    per_split = [[b[: cfg["max_proposals"]] for b in proposals_for(s, p, cfg["proposals"] or "proposals")]
                 for s, p in zip(splits, by_split, strict=True)]
    info["mean_per_image"] = {name: float(np.mean([len(b) for b in p])) for name, p in zip(
        ("train", "test"), per_split, strict=True)}
    return per_split, info


def datasets(cfg, splits, proposals):
    sampling = RoiSampling(cfg["rois_per_image"], cfg["fg_fraction"], cfg["fg_iou"], cfg["bg_iou_low"], cfg["fg_iou"])
    train = TrainImages(splits[0], proposals[0], scale=cfg["scale"], max_size=cfg["max_size"],
                        flip_prob=cfg["flip_prob"],
                        sampling=sampling)
    test = TestImages(splits[1], proposals[1], scale=cfg["scale"], max_size=cfg["max_size"])
    return train, test


def build(cfg, num_classes, train_images=None):
    """Fast R-CNN on the backbone of --weights; the trunk flags apply to `random` and `kmeans` only (`kmeans`
    clusters `train_images`, paths)."""
    # 227 px sets the RoI grid: AlexNet's pool5 is 6×6 there, the grid fc6 is built for.
    backbone, info = stages.backbone_from_flags(cfg, input_size=227, train_images=train_images)
    model = FastRCNN(backbone, num_classes=num_classes, generator=torch.Generator().manual_seed(cfg["seed"] + 2))
    info["spatial_scale"], info["roi_grid"] = model.spatial_scale, list(model.pool_size)
    return model, info


def output_paths(cfg, label):
    """The common paths (stages.output_paths), the drawn examples' folder and the devkit results folder."""
    paths = stages.output_paths(cfg, "detect", label)
    out, run_dir = paths["out"], paths["run_dir"]
    # The devkit results files are always kept (in the run folder unless --write-devkit names another), so any
    # devkit-compatible evaluator can re-score the run, as the saved outputs of classify and segment allow.
    devkit = Path(cfg["write_devkit"]) if cfg["write_devkit"] else run_dir / "devkit"
    return dict(paths, examples=out.parent / f"{out.stem}_examples", devkit=devkit)


def guarded_outputs(cfg, classes):
    """Files a new run would replace besides the record and checkpoint: the devkit files, if asked for elsewhere."""
    if not cfg["write_devkit"]:
        return []
    return [Path(cfg["write_devkit"]) / f"comp4_det_{cfg['test_split']}_{c}.txt" for c in classes[:1]]


def rescale(model, info, train, cfg, rt):
    """Krähenbühl's rescaling through RoI pooling, on a few training images with their sampled RoIs (once per run:
    `stages.rescale_once` calls it)."""
    order = np.random.default_rng(engine.derive_seed(cfg["seed"], 6)).permutation(len(train))
    items = []
    for k in range(min(cfg["rescale_images"], len(train))):
        engine.seed_globals(engine.derive_seed(cfg["seed"], 6, k))
        items.append(train[int(order[k])])
    images, rois, _, _ = collate_rois(items)
    model.to(rt.device)
    rois = rois.to(rt.device)
    # cls_score is Fast R-CNN's fc8: initialised from data and rescaled with the rest, as voc-classification's
    # fc8 (bbox_pred keeps Fast R-CNN's small Gaussian fill; the rescaling stops at cls_score).
    layers, fresh = rescale_layers(model.backbone, info, top=model.cls_score)
    summary = krahenbuhl_rescale_(model, lambda x: model(x, rois), layers, fresh, normalize(images, rt.device),
                                  iterations=cfg["rescale_iterations"], seed=cfg["seed"])
    summary.update(normalised_layers=len(fresh), classifier_layer_rescaled=True, n_rois=len(rois),
                   feature_health=health(model, info, train.split, cfg, rt, rescaled=True))
    return summary


def health(model, info, split, cfg, rt, rescaled):
    """The record's feature_health of the init (main rank): fixed square views of the training images at the
    backbone's input size (227: the size whose pool5 fc6 is built for)."""
    if not rt.is_main:
        return None
    return measure_health(model.backbone, split.image_paths, info["input_size"], cfg, rt.device,
                          source=f"{split.name} (detection training images)", rescaled=rescaled)


def finetune(model, train, test, cfg, rt, paths, log):
    """Fine-tune every layer with the one engine; returns (test detections, FitResult)."""
    workers = stages.data_workers(cfg, cached=False)
    task = DetectionTask(train, test, device=rt.device, num_workers=workers,
                         test_settings={"score_thresh": cfg["score_thresh"], "nms_iou": cfg["nms"],
                                        "max_per_image": cfg["max_dets"]})
    cfg["data_path"] = choose_data_path(task, train, cfg["data_path"], rt.device, log)  # resolved, for the record
    fit = stages.fit(task, model, cfg, rt, paths, log, workers)
    return (task.last or {}).get("detections"), fit  # None on other ranks: the main rank evaluates


def write_devkit(folder, split_name, classes, detections):
    """The devkit's results files comp4_det_<split>_<class>.txt: '<id> <score> <x1> <y1> <x2> <y2>', 1-based.

    Numbers are written at full precision (shortest exact repr): rounded scores would tie many low-scoring
    detections, and any evaluator would then rank them differently from the record."""
    folder = Path(folder)
    check_name(split_name, "--test-split")
    per_class = voc_detections(detections, len(classes))
    for c, name in enumerate(classes):
        lines = [f"{d[0]} " + " ".join(repr(float(v)) for v in d[1:6]) + "\n" for d in per_class[c]]
        atomic_write_text(folder / f"comp4_det_{split_name}_{name}.txt", "".join(lines))
    return folder


EXAMPLE_SIZE = 384  # px of an example's longer side: small test images are scaled up so labels stay legible


def draw_examples(split, detections, folder, n, min_score=0.3):
    """PNGs of the first `n` test images (longer side EXAMPLE_SIZE px): ground truth in green, detections scoring
    >= min_score in red with their class and score on a dark label, a legend strip above the image."""
    folder = Path(folder)
    font = ImageFont.load_default(size=12)
    for i in range(min(n, len(split))):
        image = load_image(split.image_paths[i])
        scale = EXAMPLE_SIZE / max(image.size)
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.BICUBIC)
        canvas = Image.new("RGB", (image.width, image.height + 20), "white")
        canvas.paste(image, (0, 20))
        draw = ImageDraw.Draw(canvas)
        draw.rectangle([4, 5, 14, 15], outline=(0, 170, 0), width=2)
        draw.text((18, 3), "ground truth", fill=(0, 0, 0), font=font)
        draw.rectangle([110, 5, 120, 15], outline=(230, 30, 30), width=2)
        draw.text((124, 3), f"detection, score >= {min_score:g}", fill=(0, 0, 0), font=font)

        def place(box, scale=scale):  # image coordinates -> canvas (below the legend strip)
            return [float(box[0]) * scale, float(box[1]) * scale + 20, float(box[2]) * scale,
                    float(box[3]) * scale + 20]

        for box in split.boxes[i]:
            draw.rectangle(place(box), outline=(0, 220, 0), width=2)
        boxes, scores, labels = detections[split.ids[i]]
        taken = []  # label rectangles drawn so far: a new label moves down until it overlaps none
        for box, score, label in sorted(zip(boxes, scores, labels, strict=True), key=lambda d: -float(d[1])):
            if score < min_score:
                continue
            x0, y0, _, _ = place(box)
            draw.rectangle(place(box), outline=(255, 40, 40), width=2)
            text = f"{split.classes[label - 1]} {score:.2f}"
            w, h = font.getlength(text) + 4, 15
            x, y = max(0.0, min(x0, canvas.width - w)), max(y0, 20)
            while any(x < a + c and a < x + w and y < b + d and b < y + h for a, b, c, d in taken):
                y += h
            taken.append((x, y, w, h))
            draw.rectangle([x, y, x + w, y + h], fill=(120, 0, 0))
            draw.text((x + 2, y + 1), text, fill=(255, 255, 255), font=font)
        atomic_write(folder / f"{split.ids[i]}.png", lambda f, c=canvas: c.save(f, format="PNG"))
    return folder


def _protocol(cfg, info, rescaling, proposals, fit):
    return {
        **stages.init_protocol(cfg, info, rescaling, fit), "ap": AP_DEFINITION,
        "also_reported": "coco_ap (AP@[.5:.95]) and coco_ap50 by pycocotools COCOeval, "
        "difficult objects as iscrowd", "detector": "Fast R-CNN (Girshick 2015), single scale",
        "scale": cfg["scale"], "max_size": cfg["max_size"], "flip": cfg["flip_prob"] > 0,
        "flip_prob": cfg["flip_prob"],
        "rois_per_image": cfg["rois_per_image"], "images_per_batch": cfg["batch_size"],
        "fg_fraction": cfg["fg_fraction"], "fg_iou": cfg["fg_iou"], "bg_iou": [cfg["bg_iou_low"], cfg["fg_iou"]],
        "roi_pooling": {"grid": info["roi_grid"], "spatial_scale": info["spatial_scale"]},
        "bbox_targets": "(dx, dy, dw, dh) normalised by means (0, 0, 0, 0) and stds (0.1, 0.1, 0.2, 0.2)",
        "proposals": {k: v for k, v in proposals.items() if k not in ("hits", "computed")}, "test": {
            "nms": cfg["nms"], "score_thresh": cfg["score_thresh"], "max_dets_per_image": cfg["max_dets"],
            "per_class_before_nms": 100},
        "loss": "softmax cross-entropy + smooth L1 (beta 1)"}


def make_detection_record(cfg, info, label, rescaling, splits, detections, proposals, fit, wall_time_s,
                          feature_health=None):
    """The result record: VOC07 mAP@0.5 with a bootstrap interval over test images, per-class AP, COCO AP."""
    train, test = splits
    value, per_class = detection_scores(detections, test)
    ci = detection_map_ci(voc_detections(detections, len(test.classes)), ground_truth(test), n_boot=cfg["n_boot"],
                          seed=cfg["seed"])
    coco = coco_ap(test, detections)
    if cfg["coco_json"]:
        dataset = f"COCO {Path(cfg['coco_test_json']).name}"
    else:
        dataset = dataset_name(cfg["voc_root"], cfg["year"])
    return stages.transfer_record(
        task="detection", cfg=cfg, info=info, label=label, protocol=_protocol(cfg, info, rescaling, proposals, fit),
        dataset=dataset, split=cfg["test_split"] if not cfg["coco_json"] else "test",
        metric="mAP@0.5", value=value, ci95=ci, per_class={n: v for n, v in zip(test.classes, per_class,
                                                                                 strict=True)},
        n_images=len(test), wall_time_s=wall_time_s, coco_ap=percent(coco["ap"]),
        coco_ap50=percent(coco["ap50"]), n_proposals_mean=round(proposals["mean_per_image"]["test"], 2),
        n_proposals_mean_train=round(proposals["mean_per_image"]["train"], 2),
        n_detections=int(sum(len(d[1]) for d in detections.values())), n_train_images=len(train),
        proposal_cache={k: proposals[k] for k in ("hits", "computed") if k in proposals},
        n_skipped=len(train.skipped) + len(test.skipped), skipped=train.skipped + test.skipped,
        boxes_clipped={"train": train.boxes_clipped, "test": test.boxes_clipped},
        feature_health=feature_health, **schedule_fields(fit.step, cfg["steps"], weights_meta=info["meta"]))


def write_outputs(cfg, info, paths, rescaling, splits, detections, proposals, fit, wall_time_s,
                  feature_health=None):
    """The record, the devkit results files, and drawn examples when asked for; returns the record."""
    test = splits[1]
    record = make_detection_record(cfg, info, paths["label"], rescaling, splits, detections, proposals, fit,
                                   wall_time_s, feature_health)
    record["devkit_dir"] = str(write_devkit(paths["devkit"], cfg["test_split"], test.classes, detections))
    if cfg["examples"]:
        record["examples_dir"] = str(draw_examples(test, detections, paths["examples"], cfg["examples"]))
    write_record(paths["out"], record)
    return record


def summary(record, fit, proposals, paths):
    """What main() returns: the headline numbers and how the proposals were obtained."""
    return {"out": str(paths["out"]), "value": record["value"], "ci95": record["ci95"], "coco_ap": record["coco_ap"],
            "coco_ap50": record["coco_ap50"], "steps": fit.step, "n_proposals_mean": record["n_proposals_mean"],
            "proposals": {k: proposals.get(k) for k in ("hits", "computed")}, "wall_time_s": record["wall_time_s"]}
