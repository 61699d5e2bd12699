"""What `python -m transfer.classify` supplies to the one transfer driver (transfer/driver.py): its hooks."""

import warnings
from functools import partial

import numpy as np
import torch

from cebench.errors import CebenchError
from cebench.files import atomic_write
from cebench.records import percent, schedule_fields
from cebench.runtime import resolve_data_path
from evaluation.metrics import classification_map, classification_map_ci
from transfer import driver
from transfer.backbone import measure_health, rescale_backbone_
from transfer.classification.data import CACHE_LIMIT_BYTES, ViewSpec, VocImages, calibration_images
from transfer.classification.device_views import DeviceImages, device_batches
from transfer.classification.model import Classifier
from transfer.classification.probe import linear_probe
from transfer.classification.task import AP_DEFINITION, ClassificationTask
from voc.devkit import VOC_CLASSES, dataset_name, load_split


class ClassificationHooks(driver.TransferHooks):
    """VOC classification: (train, test) VocImages, the Classifier (backbone + fc8), mAP over 20 classes; with
    --probe a frozen pool5 + logistic regression instead of fine-tuning."""

    stage = "classify"
    fixed_shapes = True  # every view is input_size square

    @staticmethod
    def check_config(cfg):
        driver.check_positive(cfg, ("steps", "batch_size", "input_size", "base_size", "test_crops", "probe_views",
                                    "fc_dim", "ckpt_every", "log_every", "rescale_images", "accum_steps"))
        if not 0 < cfg["min_scale"] <= cfg["max_scale"]:
            raise CebenchError("--min-scale must be positive and not above --max-scale")
        if cfg["lr"] <= 0 or cfg["probe_c"] <= 0:
            raise CebenchError("--lr and --probe-c must be positive")

    @property
    def variant(self):
        return "probe" if self.cfg["probe"] else ""

    @property
    def probes(self):
        return self.cfg["probe"]

    def load_data(self, rt, log):
        """(train, test) VocImages of the two splits; bad files stop the run or, with --skip-bad, are counted."""
        cfg = self.cfg
        splits = [load_split(cfg["voc_root"], cfg["year"], cfg[key], skip_bad=cfg["skip_bad"])
                  for key in ("train_split", "test_split")]
        spec = ViewSpec(cfg["input_size"], cfg["base_size"], cfg["min_scale"], cfg["max_scale"], cfg["flip_prob"])
        if cfg["cache"] == "auto":
            size = sum(a.width * a.height * 3 for s in splits for a in s.annotations)
            cache = 0 < size < CACHE_LIMIT_BYTES
        else:
            cache = cfg["cache"] == "on"
        for s in splits:
            log.info("VOC%s %s: %d images%s", s.year, s.split, len(s),
                     f", {len(s.skipped)} skipped (--skip-bad)" if s.skipped else "")
        return tuple(VocImages(s, spec, cache=cache) for s in splits)

    def build_model(self, data):
        backbone, info = driver.backbone_from_flags(self.cfg, self.cfg["input_size"], data[0].split.image_paths)
        return self.classifier(backbone), info

    def classifier(self, backbone):
        """Backbone + fc8 (seeded Gaussian fill; the rescaling then initialises fc8 from data, as
        voc-classification)."""
        return Classifier(backbone, generator=torch.Generator().manual_seed(self.cfg["seed"] + 2))

    def rescale(self, model, info, data, rt):
        """Krähenbühl's rescaling of conv1..fc8 on training views."""
        cfg = self.cfg
        model.to(rt.device)
        images = calibration_images(data[0], cfg["rescale_images"], cfg["seed"], rt.device)
        summary = rescale_backbone_(model.backbone, info, images, model=model, top=model.fc8,
                                    iterations=cfg["rescale_iterations"], seed=cfg["seed"])
        # measured now and kept in rescale.json: a resumed run has its trained weights, not these, by the time it ends
        summary["feature_health"] = self.health(model, info, data, rt, rescaled=True)
        return summary

    def health(self, model, info, data, rt, rescaled):
        """Fixed views of the training split at the input size."""
        if not rt.is_main:
            return None
        cfg = self.cfg
        return measure_health(model.backbone, data[0].split.image_paths, cfg["input_size"], rt.device,
                              n_images=cfg["health_images"], seed=cfg["seed"],
                              source=f"VOC{cfg['year']} {cfg['train_split']}", rescaled=rescaled)

    def in_memory(self, data):
        return data[0]._cache is not None

    def engine_task(self, data, rt, paths, workers):
        train, test = data
        return ClassificationTask(train, test, device=rt.device, test_crops=self.cfg["test_crops"],
                                  seed=self.cfg["seed"], num_workers=workers)

    def choose_data_path(self, task, data, rt, log):
        """--data-path resolved for the training images on rt.device; 'device' puts them there and gives the task its
        device_batches."""
        train = data[0]
        path = resolve_data_path(self.cfg["data_path"], rt.device, DeviceImages.nbytes(train))
        if path == "device":
            images = DeviceImages(train, rt.device)
            task.device_batches = partial(device_batches, images, train.spec)
            if log:
                log.info("data path device: %d training images in %.0f MB on %s", len(train),
                         images.pixels.numel() / 1e6, rt.device)
        return path

    def test_output(self, task):
        return (task.last or {}).get("scores")  # test logits (N, 20) averaged over crops

    def probe(self, model, data, rt):
        """Frozen pool5 + logistic regression on the main rank; test logits (N, 20)."""
        if not rt.is_main:
            return None
        cfg = self.cfg
        with rt.autocast():  # the frozen pool5 features at the run's precision (they come out float32)
            return linear_probe(model.backbone, *data, device=rt.device, train_views=cfg["probe_views"],
                                test_crops=cfg["test_crops"], c=cfg["probe_c"], seed=cfg["seed"])

    def record(self, run):
        """The result record (DESIGN.md contract) with the devkit 11-point mAP and skipped images beside it."""
        cfg, (train, test), scores, fit, info = self.cfg, run.data, run.output, run.fit, run.info
        labels = test.split.labels
        value, per_class = classification_map(scores, labels, mode="sklearn", class_names=VOC_CLASSES)
        with warnings.catch_warnings():  # the same classes as the line above: warned once
            warnings.simplefilter("ignore", UserWarning)
            voc07, per_class07 = classification_map(scores, labels, mode="voc07")
        ci = classification_map_ci(scores, labels, mode="sklearn", n_boot=cfg["n_boot"], seed=cfg["seed"])
        skipped = [dict(s, split=d.split.split) for d in (train, test) for s in d.split.skipped]
        # the probe has no schedule to cut short: it always fits on every training image
        schedule = (schedule_fields(fit.step, cfg["steps"], weights_meta=info["meta"]) if fit is not None else
                    schedule_fields(len(train), len(train), unit="training images (probe)",
                                    weights_meta=info["meta"]))
        return driver.transfer_record(
            task="classification", cfg=cfg, info=info, label=run.paths["label"],
            protocol=self._protocol(info, run.rescaling, fit), dataset=dataset_name(cfg["voc_root"], cfg["year"]),
            split=cfg["test_split"], metric="mAP", value=value, ci95=ci,
            per_class={VOC_CLASSES[i]: v for i, v in enumerate(per_class)}, n_images=len(test),
            wall_time_s=run.wall_time_s, map_voc07=percent(voc07),
            per_class_voc07={VOC_CLASSES[i]: percent(v) for i, v in enumerate(per_class07)},
            n_train_images=len(train), n_skipped=len(skipped), skipped=skipped, feature_health=run.feature_health,
            **schedule)

    def _protocol(self, info, rescaling, fit):
        cfg = self.cfg
        protocol = dict(driver.init_protocol(cfg, info, rescaling, fit), ap=AP_DEFINITION,
                        also_reported="map_voc07: the devkit's 11-point AP", test_crops=cfg["test_crops"],
                        test_views="random views (scale, crop, mirror) as in training, logits averaged",
                        views={k: cfg[k] for k in ("input_size", "base_size", "min_scale", "max_scale")},
                        pool5_shape=info["pool5_shape"], train_split=f"VOC{cfg['year']} {cfg['train_split']}",
                        test_split=f"VOC{cfg['year']} {cfg['test_split']}")
        if cfg["probe"]:
            return dict(protocol, mode="linear probe", layers_trained="none (logistic regression on frozen pool5)",
                        probe_views=cfg["probe_views"], probe_c=cfg["probe_c"])
        return dict(protocol, mode="fine-tune", loss="sigmoid cross-entropy, difficult ignored")

    def write_outputs(self, run):
        """Per-image test logits beside the run (ids, scores [N, 20], labels), for paired comparisons of inits."""
        test, scores = run.data[1], run.output
        path = atomic_write(run.paths["run_dir"] / "test_scores.npz", lambda f: np.savez(
            f, ids=np.array(test.split.ids), scores=scores.astype(np.float32), labels=test.split.labels))
        return {"scores_file": str(path)}

    def headline(self, record):
        return "mAP %.2f [%.2f, %.2f] (11-point %.2f)" % (record["value"], *record["ci95"], record["map_voc07"])

    def summary(self, record, run):
        return {"map_voc07": record["map_voc07"], "n_skipped": record["n_skipped"]}
