"""One stage of a profile checked for a few steps: its own step at the profile's precision, timed alone on a batch
in memory and in the whole loop with its loader (cebench.speed.measure), peak memory, and the projected wall time
of its full schedule. `python -m evaluation.check` (`bash run_all.sh PROFILE --check`) runs every stage with it.
"""

import dataclasses
import gc
import importlib
import os
import platform
import time

import torch

from cebench.config import command_line_dests, parse_with_profile, resolved_config
from cebench.logs import get_logger
from cebench.runtime import Runtime, default_num_workers, resolve_device, resolve_precision, seed_everything, \
    set_threads
from cebench.speed import Bench, measure, peak_memory, reset_peak_memory, seconds_per_call

CHECKED = ("pretrain", "classify", "detect", "segment", "probe", "retrieval", "inpainting")
TRANSFERS = ("classify", "detect", "segment")
CHECK_TRAIN, CHECK_TEST = 64, 16  # detection images checked on (of larger splits): proposals are computed for them


def _head(split, n):
    """The first `n` images of a DetectionSplit (its per-image lists cut alike)."""
    per_image = ("ids", "image_paths", "sizes", "boxes", "labels", "difficult")
    return dataclasses.replace(split, **{k: getattr(split, k)[:n] for k in per_image})


def _stage_parser(stage):
    """The stage's own parser: its flags and the profile's section apply as in a run."""
    if stage == "pretrain":
        from pretrain.train import get_args_parser
        return get_args_parser(run_files=False)
    module = {"classify": "transfer.classify", "detect": "transfer.detect", "segment": "transfer.segment",
              "probe": "evaluation.probe", "retrieval": "evaluation.retrieval",
              "inpainting": "evaluation.inpainting"}[stage]
    return importlib.import_module(module).get_args_parser()


def _selective_search_s(paths, settings):
    """Mean seconds of selective search per image over `paths`, in this process (as one worker of the run's)."""
    import cv2

    from transfer.detection.proposals import selective_search
    start = time.perf_counter()
    for path in paths:
        selective_search(cv2.imread(str(path)), settings)
    return (time.perf_counter() - start) / len(paths)


def _workers(cfg, default):
    return cfg["workers"] if cfg.get("workers") is not None else default


def _pretrain(cfg, rt, log, n_train, n_test):
    from pretrain import loop
    from pretrain.health import feature_health, health_views
    from pretrain.speed import trainer_bench

    dataset, _ = loop.build_dataset(cfg, log)
    batch = next(iter(loop.make_train_loader(dataset, cfg, rt, 0, 1)))
    bench, trainer = trainer_bench(cfg, rt, dataset, batch)
    decode = loop.decode_mode(cfg, dataset, rt.device)
    cached = "images cached in memory" if dataset.cache is not None else "images read from disk"
    path = f"loader (workers: {_workers(cfg, default_num_workers())}), JPEGs decoded on the {decode}, {cached}"

    def evaluations():
        if not cfg["health_images"]:
            return []
        views = health_views(dataset.paths, cfg["health_images"], cfg["input_size"], cfg["seed"])
        checks = -(-cfg["steps"] // cfg["ckpt_every"])
        s = seconds_per_call(lambda: feature_health(trainer.model.encoder, views, rt.device), rt.device)
        return [{"what": f"feature health on {len(views)} views at each of {checks} checkpoints", "seconds": s * checks,
                 "how": f"measured: {s:.2f} s per checkpoint"}]

    return {"bench": bench, "images_per_step": cfg["batch_size"], "steps": cfg["steps"], "data_path": path,
            "evaluations": evaluations, "not_projected": ["figures and ce.pt writing at the end (seconds)"]}


def _transfer(stage, cfg, rt, log, n_train, n_test):
    """A transfer's engine step (per micro-batch) and its final evaluation, with the stage's own data and model."""
    from transfer import driver
    from transfer.speed import engine_bench

    extra, notes = [], ["Krähenbühl rescaling and feature health of the init (a few batches, once per run)"]
    if stage == "classify":
        from transfer.classification.hooks import ClassificationHooks
        from transfer.classification.task import ClassificationTask
        run = ClassificationHooks(cfg)
        train, test = run.load_data(rt, log)
        cached = train._cache is not None
        workers = driver.data_workers(cfg, cached=cached)
        backbone, _ = driver.backbone_from_flags(cfg, cfg["input_size"])
        model = run.classifier(backbone)
        task = ClassificationTask(train, test, device=rt.device, test_crops=cfg["test_crops"], seed=cfg["seed"],
                                  num_workers=workers)
        what = f"test pass, {cfg['test_crops']} crops per image"
    elif stage == "detect":
        from transfer.detection.hooks import DetectionHooks
        from transfer.detection.task import DetectionTask
        run = DetectionHooks(cfg)
        # the check's share of each split (selective search of whole splits would take the check's minutes)
        splits = [_head(split, n) for split, n in zip(run.load_splits(log), (CHECK_TRAIN, CHECK_TEST),
                                                        strict=True)]
        proposals, _ = run.load_proposals(splits, rt, log)
        if not cfg["proposals"]:  # timed apart from the cache, on a few images in this one process
            per_image, workers = _selective_search_s(splits[0].image_paths[:4], run.proposal_settings()), \
                cfg["ss_workers"] or os.cpu_count() or 1
            extra.append({"what": "selective search of both splits (CPU; once: cached for every later run)",
                          "seconds": per_image * (n_train + n_test) / workers, "once": True,
                          "how": f"measured: {per_image:.3f} s per image on 4 of the check's images (their content, "
                                 f"not the real photos'), times the full splits' images, over {workers} processes"})
        train, test = run.datasets(splits, proposals)
        cached, workers = False, driver.data_workers(cfg, cached=False)
        model, _ = run.fast_rcnn(num_classes=len(splits[0].classes) + 1)
        task = DetectionTask(train, test, device=rt.device, num_workers=workers,
                             test_settings={"score_thresh": cfg["score_thresh"], "nms_iou": cfg["nms"],
                                            "max_per_image": cfg["max_dets"]})
        what = "test pass (every proposal scored, per-class NMS)"
    else:
        from transfer.segmentation.hooks import SegmentationHooks
        from transfer.segmentation.task import SegmentationTask
        run = SegmentationHooks(cfg)
        train, test, _ = run.load_data(rt, log)
        cached = train.cached
        workers = driver.data_workers(cfg, cached=cached)
        backbone, _ = driver.backbone_from_flags(cfg, cfg["input_size"])
        model = run.fcn(backbone)
        task = SegmentationTask(train, test, loss_normalization=cfg["loss_normalization"], prediction_dir=None,
                                n_examples=0, show_progress=False)
        what = "test pass, whole images one at a time"
    config = driver.train_config(cfg, workers)
    bench = engine_bench(task, model, config, rt)
    micro = cfg["batch_size"] // cfg["accum_steps"]

    def evaluations():
        from transfer.engine import evaluate_main
        s = seconds_per_call(lambda: evaluate_main(task, model, rt), rt.device)
        per_image = s / len(test)
        return extra + [{"what": f"{what}, {n_test} images", "seconds": per_image * n_test,
                         "how": f"measured: {per_image:.4f} s per image over the check's {len(test)} test images"}]

    path = f"loader (workers: {workers}), " + ("images cached in memory" if cached else "images read from disk")
    return {"bench": bench, "images_per_step": micro, "steps": cfg["steps"] * cfg["accum_steps"],
            "step_unit": "micro-batch" if cfg["accum_steps"] > 1 else "step", "data_path": path,
            "evaluations": evaluations, "not_projected": notes}


def _features(stage, cfg, rt, log, n_train, n_test):
    """The forward pass of the evaluation's features (pool5 of the trunk; for inpainting the whole context encoder)
    on batches in memory, and with the loader, over the check's images."""
    from evaluation.experiments.features import Extractor, hole_mask, make_loader
    from evaluation.experiments.imagesets import gallery_and_queries, voc_images
    from pretrain.data import normalize
    from pretrain.masks import apply_mask
    from cebench.flags import trunk_of
    from pretrain.model import ContextEncoder
    from pretrain.weights import load_encoder

    if stage == "probe":
        sets = [voc_images(cfg["voc_root"], cfg["year"], cfg[k]) for k in ("train_split", "test_split")]
    else:
        sets = list(gallery_and_queries(cfg))
    paths, size, batch_size = [p for s in sets for p in s.paths], cfg["input_size"], cfg["batch_size"]
    encoder, _ = load_encoder("random", arch=trunk_of(cfg), seed=cfg["seed"])  # a ce.pt's trunk has these shapes
    extractor = Extractor("pool5", encoder, rt.device, rt.precision)
    mask = hole_mask(size)
    workers = _workers(cfg, default_num_workers())
    if stage == "inpainting":  # the context encoder's fill: encoder, channel-wise FC and decoder
        model = ContextEncoder(extractor.encoder, input_size=size).to(rt.device).eval()

        @torch.inference_mode()
        def step(batch, _):
            with rt.autocast():
                return model(apply_mask(normalize(batch[0], rt.device), mask.to(rt.device))).float().cpu()
        what = "the context encoder's fill (encoder and decoder) of every gallery and query image: an upper bound"
    else:
        def step(batch, _):
            return extractor.batch(batch[0], batch[1], mask)
        what = "pool5 features of every image (the probes' conv1-conv5 come from the same pass)" if stage == "probe" \
            else "pool5 features of the gallery and the queries"

    def batches(start, n, workers=workers):  # the check's images, repeated as often as n full batches need
        need = n * batch_size
        return make_loader((paths * (-(-need // len(paths))))[:need], size, extractor, batch_size, workers)

    bench = Bench(step=step, batch=next(iter(batches(0, 1, workers=0))), batches=batches)
    left = {"probe": "the logistic regressions (scikit-learn, CPU) and the rescaling views",
            "retrieval": "the exact search (faiss) and the bootstrap", "inpainting": "the nearest-neighbour search "
            "and the error metrics"}[stage]
    return {"bench": bench, "images_per_step": batch_size, "steps": -(-(n_train + n_test) // batch_size),
            "step_unit": "batch", "step_what": what, "data_path": f"loader (workers: {workers}), images read from disk",
            "evaluations": list, "not_projected": [left]}


def _counts(stage, cfg):
    """(training or gallery, test or query) images of the splits checked on."""
    if stage == "pretrain":
        return 0, 0
    from voc.devkit import read_image_set
    if stage == "segment":
        from transfer.segmentation.data import find_year
        year = find_year(cfg["voc_root"], cfg["train_split"], cfg["year"])
        return tuple(len(read_image_set(cfg["voc_root"], year, cfg[k], kind="Segmentation"))
                     for k in ("train_split", "test_split"))
    keys = ("gallery_split", "query_split") if stage in ("retrieval", "inpainting") else ("train_split", "test_split")
    return tuple(len(read_image_set(cfg["voc_root"], cfg["year"], cfg[k])) for k in keys)


def check_stage(stage, argv, *, steps, warmup, counts=None, data_label="", sizes_from="the data checked on"):
    """The row of one stage: its flags `argv` (the profile's section applies), `steps` timed steps per side;
    `counts`: (training or gallery, test or query) images of the full run (default: those checked on)."""
    parser = _stage_parser(stage)
    args = parse_with_profile(parser, argv, stage)
    if stage == "pretrain":
        from pretrain.train import check_args
        check_args(args, given=command_line_dests(parser, argv))
    cfg = resolved_config(args)
    set_threads(cfg["threads"])
    seed_everything(cfg["seed"])
    device = resolve_device(cfg["device"])
    rt = Runtime(device=device, precision=resolve_precision(cfg["precision"], device))
    log = get_logger("check")
    n_train, n_test = counts or _counts(stage, cfg)
    gc.collect()  # the previous stage's model and batches go before this stage's peak is counted
    if device.type == "cuda":
        torch.cuda.empty_cache()
    reset_peak_memory(device)
    if stage == "pretrain":
        built = _pretrain(cfg, rt, log, n_train, n_test)
    else:
        built = (_transfer if stage in TRANSFERS else _features)(stage, cfg, rt, log, n_train, n_test)
    rates = measure({rt.precision: built["bench"]}, images_per_step=built["images_per_step"], device=device,
                    rounds=1, warmup=warmup, steps=steps)[rt.precision]
    evaluations = built["evaluations"]()
    memory, memory_how = peak_memory(device)
    step_s = built["images_per_step"] / rates["end_to_end_images_per_s"]
    unit = built.get("step_unit", "step")
    data_path = built["data_path"] if not cfg.get("data_path") else f"{cfg['data_path']}: {built['data_path']}"
    return {"stage": stage, "profile": cfg["profile"], "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else
            (platform.processor() or platform.machine()),
            "threads": torch.get_num_threads(), "precision": rt.precision, "data": data_label, "data_path": data_path,
            "images_per_step": built["images_per_step"], "step_unit": unit, "step_what": built.get("step_what"),
            "model_only_images_per_s": rates["model_only_images_per_s"],
            "whole_loop_images_per_s": rates["end_to_end_images_per_s"], "ratio": rates["ratio"],
            "steps_timed": rates["steps_timed"], "peak_memory_mib": round(memory, 1), "peak_memory_how": memory_how,
            "schedule_steps": built["steps"], "full_images": {"train": n_train, "test": n_test},
            "full_sizes_from": sizes_from, "train_s": built["steps"] * step_s, "evaluations": evaluations,
            # per run: the steps and the evaluation passes; once per stage: what later runs reuse (cached proposals)
            "projected_s": built["steps"] * step_s + sum(e["seconds"] for e in evaluations if not e.get("once")),
            "once_s": sum(e["seconds"] for e in evaluations if e.get("once")),
            "projection": f"{built['steps']} {unit}{'es' if unit.endswith('ch') else 's'} x {step_s:.4f} s (the "
                          "whole loop's, measured)",
            "not_projected": built["not_projected"]}
