"""The stages of `python -m transfer.classify`, kept apart so the entry point reads as a list of steps."""

import warnings
from functools import partial

import numpy as np
import torch

from cebench.errors import CebenchError
from cebench.files import atomic_write
from cebench.records import percent, schedule_fields
from cebench.runtime import resolve_data_path
from evaluation.metrics import classification_map, classification_map_ci
from transfer import engine, stages
from transfer.backbone import measure_health, normalize, rescale_backbone_
from transfer.classification.data import ViewSpec, VocImages
from transfer.classification.device_views import DeviceImages, device_batches
from transfer.classification.model import Classifier
from transfer.classification.probe import linear_probe
from transfer.classification.task import ClassificationTask
from voc.devkit import VOC_CLASSES, dataset_name, load_split

CACHE_LIMIT_BYTES = 2 * 1024**3
AP_DEFINITION = "non-interpolated AP (sklearn average_precision_score on non-difficult images), mean over classes"


def check_config(cfg):
    stages.check_positive(cfg, ("steps", "batch_size", "input_size", "base_size", "test_crops", "probe_views",
                                "fc_dim", "ckpt_every", "log_every", "rescale_images", "accum_steps"))
    if not 0 < cfg["min_scale"] <= cfg["max_scale"]:
        raise CebenchError("--min-scale must be positive and not above --max-scale")
    if cfg["lr"] <= 0 or cfg["probe_c"] <= 0:
        raise CebenchError("--lr and --probe-c must be positive")


def load_data(cfg, log):
    """(train, test) VocImages of the two splits; bad files stop the run or, with --skip-bad, are counted."""
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


def calibration_images(train, n, seed, device):
    """`n` normalised training views (distinct images while they last), seeded: (n, 3, S, S)."""
    order = np.random.default_rng(engine.derive_seed(seed, 6)).permutation(len(train))
    views = [train.view(int(order[k % len(order)]), np.random.default_rng(engine.derive_seed(seed, 6, k)))
             for k in range(n)]
    return normalize(torch.stack(views), device)


def calibration_views(split, cfg, device):
    """The `rescale_images` normalised views of a VocSplit that transfer.classify's rescaling draws at the default
    scales (evaluation.probe rescales on them: the same seed gives the same weights)."""
    views = VocImages(split, ViewSpec(cfg["input_size"], cfg["base_size"]))
    return calibration_images(views, cfg["rescale_images"], cfg["seed"], device)


def classifier(backbone, cfg):
    """Backbone + fc8 (seeded Gaussian fill; the rescaling then initialises fc8 from data, as voc-classification)."""
    return Classifier(backbone, generator=torch.Generator().manual_seed(cfg["seed"] + 2))


def rescale(model, info, train, cfg, rt):
    """Krähenbühl's rescaling of conv1..fc8 on training views (once per run: `stages.rescale_once` calls it)."""
    model.to(rt.device)
    images = calibration_images(train, cfg["rescale_images"], cfg["seed"], rt.device)
    summary = rescale_backbone_(model.backbone, info, images, model=model, top=model.fc8,
                                iterations=cfg["rescale_iterations"], seed=cfg["seed"])
    # measured now and kept in rescale.json: a resumed run has its trained weights, not these, by the time it ends
    summary["feature_health"] = health(model, train, cfg, rt, rescaled=True)
    return summary


def health(model, train, cfg, rt, rescaled):
    """The record's feature_health of the init (main rank): fixed views of the training split at the input size."""
    if not rt.is_main:
        return None
    return measure_health(model.backbone, train.split.image_paths, cfg["input_size"], cfg, rt.device,
                          source=f"VOC{cfg['year']} {cfg['train_split']}", rescaled=rescaled)


def probe(backbone, train, test, cfg, rt):
    """Frozen pool5 + logistic regression on the main rank; test logits (N, 20)."""
    cfg["data_path"] = "loader"  # nothing trains: the features are extracted from the loader's views
    if not rt.is_main:
        return None
    with rt.autocast():  # the frozen pool5 features at the run's precision (they come out float32)
        return linear_probe(backbone, train, test, device=rt.device, train_views=cfg["probe_views"],
                            test_crops=cfg["test_crops"], c=cfg["probe_c"], seed=cfg["seed"])


def finetune(model, train, test, cfg, rt, paths, log):
    """Every layer of the Classifier fine-tuned by the engine; returns (test logits averaged over crops, FitResult)."""
    workers = stages.data_workers(cfg, cached=train._cache is not None)
    task = ClassificationTask(train, test, device=rt.device, test_crops=cfg["test_crops"], seed=cfg["seed"],
                              num_workers=workers)
    cfg["data_path"] = choose_data_path(task, train, cfg, rt.device, log)  # resolved, for the record
    fit = stages.fit(task, model, cfg, rt, paths, log, workers)
    return (task.last or {}).get("scores"), fit  # None on other ranks: the main rank evaluates


def choose_data_path(task, train, cfg, device, log=None):
    """--data-path resolved for the training images on `device`; 'device' puts them there and gives the task its
    device_batches. Returns 'loader' or 'device'."""
    path = resolve_data_path(cfg["data_path"], device, DeviceImages.nbytes(train))
    if path == "device":
        images = DeviceImages(train, device)
        task.device_batches = partial(device_batches, images, train.spec)
        if log:
            log.info("data path device: %d training images in %.0f MB on %s", len(train),
                     images.pixels.numel() / 1e6, device)
    return path


def save_scores(paths, test, scores):
    """Per-image test logits beside the run (ids, scores [N, 20], labels), for paired comparisons of inits."""
    return atomic_write(paths["run_dir"] / "test_scores.npz", lambda f: np.savez(
        f, ids=np.array(test.split.ids), scores=scores.astype(np.float32), labels=test.split.labels))


def _protocol(cfg, info, rescaling, fit):
    protocol = dict(stages.init_protocol(cfg, info, rescaling, fit), ap=AP_DEFINITION,
                    also_reported="map_voc07: the devkit's 11-point AP", test_crops=cfg["test_crops"],
                    test_views="random views (scale, crop, mirror) as in training, logits averaged",
                    views={k: cfg[k] for k in ("input_size", "base_size", "min_scale", "max_scale")},
                    pool5_shape=info["pool5_shape"], train_split=f"VOC{cfg['year']} {cfg['train_split']}",
                    test_split=f"VOC{cfg['year']} {cfg['test_split']}")
    if cfg["probe"]:
        return dict(protocol, mode="linear probe", layers_trained="none (logistic regression on frozen pool5)",
                    probe_views=cfg["probe_views"], probe_c=cfg["probe_c"])
    return dict(protocol, mode="fine-tune", loss="sigmoid cross-entropy, difficult ignored")


def make_classification_record(cfg, info, label, rescaling, train, test, scores, fit, wall_time_s,
                               feature_health=None):
    """The result record (DESIGN.md contract) with the devkit 11-point mAP and skipped images beside it."""
    labels = test.split.labels
    value, per_class = classification_map(scores, labels, mode="sklearn", class_names=VOC_CLASSES)
    with warnings.catch_warnings():  # the same classes as the line above: warned once
        warnings.simplefilter("ignore", UserWarning)
        voc07, per_class07 = classification_map(scores, labels, mode="voc07")
    ci = classification_map_ci(scores, labels, mode="sklearn", n_boot=cfg["n_boot"], seed=cfg["seed"])
    skipped = [dict(s, split=d.split.split) for d in (train, test) for s in d.split.skipped]
    # the probe has no schedule to cut short: it always fits on every training image
    schedule = (schedule_fields(fit.step, cfg["steps"], weights_meta=info["meta"]) if fit is not None else
                schedule_fields(len(train), len(train), unit="training images (probe)", weights_meta=info["meta"]))
    return stages.transfer_record(
        task="classification", cfg=cfg, info=info, label=label, protocol=_protocol(cfg, info, rescaling, fit),
        dataset=dataset_name(cfg["voc_root"], cfg["year"]), split=cfg["test_split"], metric="mAP",
        value=value, ci95=ci, per_class={VOC_CLASSES[i]: v for i, v in enumerate(per_class)},
        n_images=len(test), wall_time_s=wall_time_s,
        map_voc07=percent(voc07), per_class_voc07={VOC_CLASSES[i]: percent(v) for i, v in enumerate(per_class07)},
        n_train_images=len(train), n_skipped=len(skipped), skipped=skipped, feature_health=feature_health,
        **schedule)
