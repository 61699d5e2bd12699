"""What `python -m transfer.detect` supplies to the one transfer driver (transfer/driver.py): its hooks."""

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cebench.deps import require
from cebench.errors import CebenchError
from cebench.names import check_name
from cebench.records import percent, schedule_fields
from cebench.runtime import barrier
from evaluation.metrics import detection_map_ci
from transfer import driver, engine
from transfer.backbone import measure_health, normalize, rescale_layers
from transfer.detection import device_data
from transfer.detection.coco import coco_ap, load_coco_split
from transfer.detection.data import (RoiSampling, TestImages, TrainImages, collate_rois, from_voc, ground_truth,
                                     proposals_for)
from transfer.detection.model import FastRCNN
from transfer.detection.outputs import draw_examples, write_devkit
from transfer.detection.proposals import cached_proposals, load_proposal_file, selective_search_settings
from transfer.detection.task import DetectionTask, detection_scores, voc_detections
from transfer.rescale import krahenbuhl_rescale_
from voc.devkit import dataset_name, load_split

AP_DEFINITION = "VOC07 11-point AP at IoU 0.5 (devkit VOCevaldet), difficult objects ignored, mean over classes"


@dataclass
class DetectionData:
    """What load_data gives the other hooks: the (train, test) DetectionSplits, their datasets with proposals, and
    how the proposals were obtained."""

    splits: list
    train: TrainImages
    test: TestImages
    proposals: dict


class DetectionHooks(driver.TransferHooks):
    """Fast R-CNN detection: VOC or COCO splits with selective-search proposals, FastRCNN on the backbone,
    VOC07 mAP@0.5 and COCO AP; the devkit's results files and drawn examples beside the record."""

    stage = "detect"

    @staticmethod
    def check_config(cfg):
        driver.check_positive(cfg, ("steps", "batch_size", "scale", "max_size", "rois_per_image", "fc_dim",
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

    def load_data(self, rt, log):
        """Annotations checked up front, then proposals (cached selective search or --proposals)."""
        splits = self.load_splits(log)
        proposals, proposal_info = self.load_proposals(splits, rt, log)
        train, test = self.datasets(splits, proposals)
        return DetectionData(splits, train, test, proposal_info)

    def load_splits(self, log):
        """(train, test) DetectionSplits from the VOCdevkit, or from COCO files when --coco-json is given."""
        cfg = self.cfg
        if cfg["coco_json"]:
            splits = [load_coco_split(cfg[k], cfg["coco_images"], skip_bad=cfg["skip_bad"])
                      for k in ("coco_json", "coco_test_json")]
            if splits[0].classes != splits[1].classes:
                raise CebenchError(f"{cfg['coco_test_json']}: its categories differ from those of "
                                   f"{cfg['coco_json']}")
        else:
            splits = [from_voc(load_split(cfg["voc_root"], cfg["year"], cfg[k], skip_bad=cfg["skip_bad"]),
                               skip_bad=cfg["skip_bad"]) for k in ("train_split", "test_split")]
        for s in splits:
            driver.check_ids(s.ids, s.name)  # they name the example PNGs
            for name in s.classes:  # they name the devkit's results files (COCO's may hold spaces)
                check_name(str(name).replace(" ", "_"), f"{s.name}: class name")
            log.info("%s: %d images, %d objects%s%s", s.name, len(s), sum(len(b) for b in s.boxes),
                     f", {len(s.skipped)} skipped (--skip-bad)" if s.skipped else "",
                     f", {s.boxes_clipped} boxes partly outside their image clipped to it" if s.boxes_clipped else "")
        return splits

    def proposal_settings(self):
        cfg = self.cfg
        return selective_search_settings(cfg["ss_mode"], cfg["ss_max_side"], cfg["max_proposals"], min_size=2)

    def load_proposals(self, splits, rt, log):
        """Per split a list of each image's proposals, from --proposals or the selective-search cache."""
        cfg = self.cfg
        if cfg["proposals"]:
            boxes = load_proposal_file(cfg["proposals"], one_based=not cfg["proposals_zero_based"])
            by_split, info = [boxes, boxes], {"source": str(cfg["proposals"]), "method": "user file"}
        else:
            # Keyed by (split, id): two COCO files may number their images alike.
            images = {(k, i): p for k, s in enumerate(splits) for i, p in zip(s.ids, s.image_paths, strict=True)}
            settings, workers = self.proposal_settings(), cfg["ss_workers"] or os.cpu_count() or 1
            if rt.is_main:  # other ranks wait, then read the verified cache
                boxes, info = cached_proposals(images, cfg["proposals_cache"], settings, workers=workers)
                log.info("proposals: %d from the cache, %d computed, in %s", info["hits"], info["computed"],
                         info["cache_dir"])
            barrier(rt)
            if not rt.is_main:
                boxes, info = cached_proposals(images, cfg["proposals_cache"], settings, workers=1,
                                               show_progress=False)
            by_split = [{i: boxes[(k, i)] for i in s.ids} for k, s in enumerate(splits)]
            info = dict(info, method="selective search (OpenCV ximgproc)")  # settings: those of the cache read
        per_split = [[b[: cfg["max_proposals"]] for b in proposals_for(s, p, cfg["proposals"] or "proposals")]
                     for s, p in zip(splits, by_split, strict=True)]
        info["mean_per_image"] = {name: float(np.mean([len(b) for b in p])) for name, p in zip(
            ("train", "test"), per_split, strict=True)}
        return per_split, info

    def datasets(self, splits, proposals):
        """(TrainImages with RoI sampling, TestImages) of the two splits and their proposals."""
        cfg = self.cfg
        sampling = RoiSampling(cfg["rois_per_image"], cfg["fg_fraction"], cfg["fg_iou"], cfg["bg_iou_low"],
                               cfg["fg_iou"])
        train = TrainImages(splits[0], proposals[0], scale=cfg["scale"], max_size=cfg["max_size"],
                            flip_prob=cfg["flip_prob"], sampling=sampling)
        test = TestImages(splits[1], proposals[1], scale=cfg["scale"], max_size=cfg["max_size"])
        return train, test

    def build_model(self, data):
        return self.fast_rcnn(len(data.splits[0].classes) + 1, data.splits[0].image_paths)

    def fast_rcnn(self, num_classes, train_images=None):
        """(FastRCNN on the backbone of --weights, info); `kmeans` clusters `train_images` (paths)."""
        # 227 px sets the RoI grid: AlexNet's pool5 is 6×6 there, the grid fc6 is built for.
        backbone, info = driver.backbone_from_flags(self.cfg, input_size=227, train_images=train_images)
        model = FastRCNN(backbone, num_classes=num_classes,
                         generator=torch.Generator().manual_seed(self.cfg["seed"] + 2))
        info["spatial_scale"], info["roi_grid"] = model.spatial_scale, list(model.pool_size)
        return model, info

    def output_paths(self, paths):
        """The drawn examples' folder and the devkit results folder besides the common paths."""
        out, run_dir = paths["out"], paths["run_dir"]
        # The devkit results files are always kept (in the run folder unless --write-devkit names another), so any
        # devkit-compatible evaluator can re-score the run, as the saved outputs of classify and segment allow.
        devkit = Path(self.cfg["write_devkit"]) if self.cfg["write_devkit"] else run_dir / "devkit"
        return dict(paths, examples=out.parent / f"{out.stem}_examples", devkit=devkit)

    def previous_outputs(self, paths):
        return [paths["examples"]]

    def guarded_outputs(self, paths, data):
        """The devkit files, when --write-devkit puts them outside the run folder."""
        cfg = self.cfg
        if not cfg["write_devkit"]:
            return []
        return [Path(cfg["write_devkit"]) / f"comp4_det_{cfg['test_split']}_{c}.txt"
                for c in data.splits[1].classes[:1]]

    def rescale(self, model, info, data, rt):
        """Krähenbühl's rescaling through RoI pooling, on a few training images with their sampled RoIs."""
        cfg, train = self.cfg, data.train
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
                       feature_health=self.health(model, info, data, rt, rescaled=True))
        return summary

    def health(self, model, info, data, rt, rescaled):
        """Fixed square views of the training images at the backbone's input size (227: the size whose pool5 fc6
        is built for)."""
        if not rt.is_main:
            return None
        split = data.train.split
        return measure_health(model.backbone, split.image_paths, info["input_size"], rt.device,
                              n_images=self.cfg["health_images"], seed=self.cfg["seed"],
                              source=f"{split.name} (detection training images)", rescaled=rescaled)

    def choose_data_path(self, task, data, rt, log):
        """--data-path for the training images (transfer.detection.device_data): 'device' decodes them onto it."""
        return device_data.choose_data_path(task, data.train, self.cfg["data_path"], rt.device, log)

    def engine_task(self, data, rt, paths, workers):
        cfg = self.cfg
        return DetectionTask(data.train, data.test, device=rt.device, num_workers=workers,
                             test_settings={"score_thresh": cfg["score_thresh"], "nms_iou": cfg["nms"],
                                            "max_per_image": cfg["max_dets"]})

    def test_output(self, task):
        return (task.last or {}).get("detections")  # {image id: (boxes, scores, labels)}

    def record(self, run):
        """VOC07 mAP@0.5 with a bootstrap interval over test images, per-class AP, COCO AP."""
        cfg, (train, test), detections, proposals = self.cfg, run.data.splits, run.output, run.data.proposals
        value, per_class = detection_scores(detections, test)
        ci = detection_map_ci(voc_detections(detections, len(test.classes)), ground_truth(test),
                              n_boot=cfg["n_boot"], seed=cfg["seed"])
        coco = coco_ap(test, detections)
        if cfg["coco_json"]:
            dataset = f"COCO {Path(cfg['coco_test_json']).name}"
        else:
            dataset = dataset_name(cfg["voc_root"], cfg["year"])
        return driver.transfer_record(
            task="detection", cfg=cfg, info=run.info, label=run.paths["label"],
            protocol=self._protocol(run.info, run.rescaling, proposals, run.fit),
            dataset=dataset, split=cfg["test_split"] if not cfg["coco_json"] else "test",
            metric="mAP@0.5", value=value, ci95=ci, per_class=dict(zip(test.classes, per_class, strict=True)),
            n_images=len(test), wall_time_s=run.wall_time_s, coco_ap=percent(coco["ap"]),
            coco_ap50=percent(coco["ap50"]), n_proposals_mean=round(proposals["mean_per_image"]["test"], 2),
            n_proposals_mean_train=round(proposals["mean_per_image"]["train"], 2),
            n_detections=int(sum(len(d[1]) for d in detections.values())), n_train_images=len(train),
            proposal_cache={k: proposals[k] for k in ("hits", "computed") if k in proposals},
            n_skipped=len(train.skipped) + len(test.skipped), skipped=train.skipped + test.skipped,
            boxes_clipped={"train": train.boxes_clipped, "test": test.boxes_clipped},
            feature_health=run.feature_health,
            **schedule_fields(run.fit.step, cfg["steps"], weights_meta=run.info["meta"]))

    def _protocol(self, info, rescaling, proposals, fit):
        cfg = self.cfg
        return {
            **driver.init_protocol(cfg, info, rescaling, fit), "ap": AP_DEFINITION,
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

    def write_outputs(self, run):
        """The devkit results files, and drawn examples when asked for."""
        test, detections = run.data.splits[1], run.output
        fields = {"devkit_dir": str(write_devkit(run.paths["devkit"], self.cfg["test_split"], test.classes,
                                                 detections))}
        if self.cfg["examples"]:
            fields["examples_dir"] = str(draw_examples(test, detections, run.paths["examples"], self.cfg["examples"]))
        return fields

    def headline(self, record):
        return (f"mAP@0.5 {record['value']} {record['ci95']}, COCO AP {record['coco_ap']} / AP50 "
                f"{record['coco_ap50']}")

    def summary(self, record, run):
        """The headline numbers and how the proposals were obtained."""
        return {"coco_ap": record["coco_ap"], "coco_ap50": record["coco_ap50"],
                "n_proposals_mean": record["n_proposals_mean"],
                "proposals": {k: run.data.proposals.get(k) for k in ("hits", "computed")}}
