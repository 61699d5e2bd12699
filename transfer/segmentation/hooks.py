"""What `python -m transfer.segment` supplies to the one transfer driver (transfer/driver.py): its hooks."""

from dataclasses import asdict
from pathlib import Path

from cebench.errors import CebenchError
from cebench.records import schedule_fields
from evaluation.metrics import segmentation_miou_ci
from transfer import driver
from transfer.backbone import measure_health, rescale_backbone_
from transfer.segmentation import device_data
from transfer.segmentation.data import SegTransform, VOCSegmentation, find_year, sample_batch
from transfer.segmentation.model import fcn_from_backbone
from transfer.segmentation.outputs import save_examples
from transfer.segmentation.task import SEG_CLASSES, SegmentationTask
from voc.devkit import dataset_name, read_image_set, year_dir
from voc.sbd import extra_training_ids, sbd_files

METRIC = ("mean IU over 21 classes from one dataset-wide confusion matrix (FCN score.py); void 255 ignored; every "
          "test image whole, at its original resolution")


class SegmentationHooks(driver.TransferHooks):
    """FCN semantic segmentation: (train, test, training transform) with SBD's masks on request, the backbone
    rescaled on training crops then turned into an FCN, mean IU; predictions and an examples PNG beside the
    record."""

    stage = "segment"

    @staticmethod
    def check_config(cfg):
        driver.check_positive(cfg, ("steps", "batch_size", "accum_steps", "input_size", "fc_dim", "ckpt_every",
                                    "log_every", "rescale_images"))
        if not 0 < cfg["min_scale"] <= cfg["max_scale"] or not 0 <= cfg["flip_prob"] <= 1:
            raise CebenchError("need 0 < --min-scale <= --max-scale and 0 <= --flip-prob <= 1")

    def load_data(self, rt, log):
        """(train, test, training transform): augmented crops for training (VOC's split, plus SBD's masks with
        --sbd-root), whole test images; every file checked. train.sbd: SBD's merge counts (None without it)."""
        cfg = self.cfg
        transform = self.train_transform(cfg["crop_size"])
        test_ds = VOCSegmentation(cfg["voc_root"], cfg["test_split"], cfg["year"], transform=SegTransform(),
                                  cache=cfg["cache"], skip_bad=cfg["skip_bad"])
        extra, counts = self.sbd_extra(test_ds)
        train_ds = VOCSegmentation(cfg["voc_root"], cfg["train_split"], cfg["year"], transform=transform,
                                   cache=cfg["cache"], skip_bad=cfg["skip_bad"], extra=extra)
        train_ds.sbd = counts
        driver.check_ids(test_ds.ids, f"VOC{test_ds.year} {cfg['test_split']}")  # they name the prediction PNGs
        log.info("training: %s (%d images); VOC%s %s: %d images", ", ".join(f"{n} {k}" for k, n in
                 train_ds.sources.items()), len(train_ds), test_ds.year, cfg["test_split"], len(test_ds))
        if counts:
            log.info("SBD: %d listed in %s, %d dropped as images of the scored split %s, %d already in VOC's %s",
                     counts["sbd_listed"], "+".join(cfg["sbd_splits"]), counts["sbd_in_test_split_dropped"],
                     cfg["test_split"], counts["sbd_already_in_voc_train"], cfg["train_split"])
        return train_ds, test_ds, transform

    def train_transform(self, crop_size):
        """The training augmentation (random scale, `crop_size` crop, flip) of the flags."""
        cfg = self.cfg
        return SegTransform(scale_range=(cfg["min_scale"], cfg["max_scale"]), crop_size=crop_size,
                            flip_prob=cfg["flip_prob"])

    def sbd_extra(self, test_ds):
        """(extra training images for VOCSegmentation, counts) from --sbd-root, or (None, None) without it: SBD's
        listed images less those of the scored split and those VOC's training split already has (FCN's merge)."""
        cfg = self.cfg
        if not cfg["sbd_root"]:
            return None, None
        year = find_year(cfg["voc_root"], cfg["train_split"], cfg["year"])
        voc_train = read_image_set(cfg["voc_root"], year, cfg["train_split"], kind="Segmentation")
        scored = read_image_set(cfg["voc_root"], test_ds.year, cfg["test_split"], kind="Segmentation")
        ids, counts = extra_training_ids(cfg["sbd_root"], cfg["sbd_splits"], voc_train, scored)
        files = sbd_files(cfg["sbd_root"], ids, year_dir(cfg["voc_root"], year) / "JPEGImages",
                          skip_bad=cfg["skip_bad"])
        counts["sbd_skipped"] = len(files[3])
        return (f"SBD {'+'.join(cfg['sbd_splits'])}", files), counts

    def build_model(self, data):
        """The backbone alone: it is rescaled first, then becomes an FCN (`trainable`)."""
        return driver.backbone_from_flags(self.cfg, self.cfg["input_size"], data[0].image_paths)

    def output_paths(self, paths):
        """The predictions' folder and the examples PNG beside the record."""
        out = paths["out"]
        saved = self.cfg["save_predictions"]
        predictions = Path(saved) if saved else out.parent / f"{out.stem}.predictions"
        return dict(paths, predictions=predictions, examples_png=out.parent / f"{out.stem}.examples.png")

    def previous_outputs(self, paths):
        """The examples PNG and the predictions (their folder when it is the run's own; else only the PNGs in it,
        as the folder may be the user's)."""
        predictions = paths["predictions"]
        own = [predictions] if not self.cfg["save_predictions"] else sorted(Path(predictions).glob("*.png"))
        return [paths["examples_png"], *own]

    def rescale(self, model, info, data, rt):
        """Krähenbühl's rescaling of the backbone on training crops at its input size (as the paper)."""
        cfg = self.cfg
        images = sample_batch(data[0], self.train_transform(cfg["input_size"]), cfg["rescale_images"],
                              seed=cfg["seed"])
        summary = rescale_backbone_(model, info, images, iterations=cfg["rescale_iterations"], seed=cfg["seed"])
        # measured now and kept in rescale.json: a resumed run has its trained weights, not these, by the time it ends
        summary["feature_health"] = self.health(model, info, data, rt, rescaled=True)
        return summary

    def health(self, model, info, data, rt, rescaled):
        """Fixed views of the training images at the input size."""
        if not rt.is_main:
            return None
        train_ds = data[0]
        return measure_health(model, train_ds.image_paths, self.cfg["input_size"], next(model.parameters()).device,
                              n_images=self.cfg["health_images"], seed=self.cfg["seed"], rescaled=rescaled,
                              source=f"VOC{train_ds.year} {train_ds.split} (segmentation)")

    def trainable(self, model):
        """The (rescaled) backbone with fc6/fc7 as convolutions and the FCN head."""
        return self.fcn(model)

    def fcn(self, backbone):
        cfg = self.cfg
        return fcn_from_backbone(backbone, variant=cfg["variant"], pad=cfg["pad"], dropout=cfg["dropout"],
                                 learn_upsampling=cfg["upsampling"] == "learned")

    def in_memory(self, data):
        return data[0].cached

    def choose_data_path(self, task, data, rt, log):
        """--data-path for the training images and masks (transfer.segmentation.device_data)."""
        return device_data.choose_data_path(task, data[0], self.cfg["data_path"], rt.device, log)

    def engine_task(self, data, rt, paths, workers):
        return SegmentationTask(data[0], data[1], loss_normalization=self.cfg["loss_normalization"],
                                prediction_dir=paths["predictions"], n_examples=self.cfg["examples"],
                                show_progress=rt.is_main)

    def test_output(self, task):
        return task.last  # scores, per-image confusion matrices, examples (predictions already written)

    def record(self, run):
        """mIoU, bootstrap ci95 over images, per-class IU, of SegmentationTask.last."""
        cfg, (train_ds, test_ds, transform), last, fit = self.cfg, run.data, run.output, run.fit
        scores = last["scores"]
        ci95 = segmentation_miou_ci(last["per_image"], n_boot=cfg["n_boot"], seed=cfg["seed"])
        optimiser = dict(asdict(driver.train_config(cfg, run.workers)), loss_normalization=cfg["loss_normalization"])
        protocol = dict(driver.init_protocol(cfg, run.info, run.rescaling, fit), metric=METRIC,
                        model=run.model.describe(),
                        train={"dataset": f"VOC{train_ds.year}", "split": train_ds.split, "n_images": len(train_ds),
                               "sources": train_ds.sources, "augmentation": transform.describe(),
                               "sbd_extra_annotations": train_ds.sbd is not None, "sbd": train_ds.sbd},
                        optimiser=optimiser)
        paths = run.paths
        return driver.transfer_record(
            task="segmentation", cfg=cfg, info=run.info, label=paths["label"], protocol=protocol,
            dataset=dataset_name(cfg["voc_root"], test_ds.year), split=cfg["test_split"], metric="mIoU",
            value=scores["miou"], ci95=ci95, per_class=dict(zip(SEG_CLASSES, scores["iou"], strict=True)),
            n_images=len(last["per_image"]), pixel_acc=round(100 * scores["pixel_acc"], 4),
            mean_acc=round(100 * scores["mean_acc"], 4), steps_done=fit.step, predictions=str(paths["predictions"]),
            examples=str(paths["examples_png"]), run_dir=str(paths["run_dir"]),
            skipped=train_ds.skipped + test_ds.skipped,
            **schedule_fields(fit.step, cfg["steps"], weights_meta=run.info["meta"]), wall_time_s=run.wall_time_s,
            feature_health=run.feature_health)

    def write_outputs(self, run):
        """The examples PNG (the record names it already; the predictions were written by the test pass)."""
        save_examples(run.paths["examples_png"], run.data[1], run.output["examples"])
        return {}

    def headline(self, record):
        return "mIoU %.2f%% [%.2f, %.2f], pixel accuracy %.2f%%" % (record["value"], *record["ci95"],
                                                                     record["pixel_acc"])

    def summary(self, record, run):
        return dict(run.fit.metrics)  # miou, pixel_acc, mean_acc (fractions)
