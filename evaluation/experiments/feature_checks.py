"""The frozen-feature stages' hooks for `bash run_all.sh PROFILE --check` (evaluation.check): the probes, retrieval
and inpainting, one object each (the stage table's `check` column names them, `module:object`).

Each times the forward pass of its evaluation's features (pool5 of the trunk; for inpainting the whole context
encoder) on batches in memory and with the loader, over the check's images; the names are those every stage's
hooks share (evaluation.experiments.stage_checks).
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch

from cebench.flags import trunk_of
from cebench.runtime import default_num_workers
from cebench.speed import Bench
from evaluation.experiments.features import Extractor, hole_mask, make_loader
from evaluation.experiments.imagesets import gallery_and_queries, voc_images
from pretrain.data import normalize
from pretrain.masks import apply_mask
from pretrain.model import ContextEncoder
from pretrain.weights import load_encoder
from voc.devkit import read_image_set


def _train_and_test(cfg):
    return [voc_images(cfg["voc_root"], cfg["year"], cfg[k]) for k in ("train_split", "test_split")]


@dataclass(frozen=True)
class FeatureCheck:
    """One frozen-feature stage: its two image sets and what its forward pass is."""

    # upper case as the hooks modules' constants: SPLITS, the config keys of its (training or gallery, test or
    # query) splits; IMAGE_SETS, the devkit's folder that lists them
    SPLITS: tuple
    read_sets: Callable  # cfg -> its two ImageSets (evaluation.experiments.imagesets)
    step_what: str  # what one timed batch computes
    not_projected: str  # the work of the stage the check does not time
    fill: bool = False  # the context encoder's fill (encoder and decoder), not the trunk's pool5
    IMAGE_SETS: str = "Main"

    def counts(self, cfg):
        return tuple(len(read_image_set(cfg["voc_root"], cfg["year"], cfg[k])) for k in self.SPLITS)

    def bench(self, cfg, rt, log, n_train, n_test):
        """The forward pass of the features on batches in memory and with the loader, over the check's images."""
        paths = [p for s in self.read_sets(cfg) for p in s.paths]
        size, batch_size = cfg["input_size"], cfg["batch_size"]
        encoder, _ = load_encoder("random", arch=trunk_of(cfg), seed=cfg["seed"])  # a ce.pt's trunk has these shapes
        extractor = Extractor("pool5", encoder, rt.device, rt.precision)
        mask = hole_mask(size)
        workers = cfg["workers"] if cfg.get("workers") is not None else default_num_workers()
        if self.fill:  # the context encoder's fill: encoder, channel-wise FC and decoder
            model = ContextEncoder(extractor.encoder, input_size=size).to(rt.device).eval()

            @torch.inference_mode()
            def step(batch, _):
                with rt.autocast():
                    return model(apply_mask(normalize(batch[0], rt.device), mask.to(rt.device))).float().cpu()
        else:
            def step(batch, _):
                return extractor.batch(batch[0], batch[1], mask)

        def batches(start, n, workers=workers):  # the check's images, repeated as often as n full batches need
            need = n * batch_size
            return make_loader((paths * (-(-need // len(paths))))[:need], size, extractor, batch_size, workers)

        bench = Bench(step=step, batch=next(iter(batches(0, 1, workers=0))), batches=batches)
        return {"bench": bench, "images_per_step": batch_size, "steps": -(-(n_train + n_test) // batch_size),
                "step_unit": "batch", "step_what": self.step_what,
                "data_path": f"loader (workers: {workers}), images read from disk", "evaluations": list,
                "not_projected": [self.not_projected]}


PROBE = FeatureCheck(("train_split", "test_split"), _train_and_test,
                     "pool5 features of every image (the probes' conv1-conv5 come from the same pass)",
                     "the logistic regressions (scikit-learn, CPU) and the rescaling views")
RETRIEVAL = FeatureCheck(("gallery_split", "query_split"), lambda cfg: list(gallery_and_queries(cfg)),
                         "pool5 features of the gallery and the queries", "the exact search (faiss) and the bootstrap")
INPAINTING = FeatureCheck(("gallery_split", "query_split"), lambda cfg: list(gallery_and_queries(cfg)),
                          "the context encoder's fill (encoder and decoder) of every gallery and query image: an "
                          "upper bound", "the nearest-neighbour search and the error metrics", fill=True)
