"""Features of an image's context (the image with its central hole): pool5 of any weights spec, or HOG.

One API for both: `extract_features(images, extractor, ...)` streams the images through a DataLoader in batches and
returns float32 [N, D]; it never holds more than a batch of images. Every image is resized (shorter side) and
centre-cropped to a square `size` (the paper's inpainting images are square crops), and the central hole (half
the height and width, a quarter of the area, paper Table 1) is filled with the dataset mean before embedding, as
the context encoder saw its masked inputs.
"""

from dataclasses import dataclass, field

import numpy as np
import torch
from skimage.feature import hog

from cebench.errors import CebenchError
from cebench.flags import trunk_of
from cebench.logs import progress
from cebench.runtime import autocast, default_num_workers, worker_seed_init
from pretrain.data import IMAGE_MEAN, normalize, read_image
from pretrain.health import health_record
from pretrain.masks import apply_mask, central_mask
from pretrain.weights import load_encoder
from evaluation.experiments.flags import HOG

# Dalal & Triggs' HOG as the paper's NN-inpainting baseline (Hays & Efros style): 9 unsigned orientations,
# 8x8-pixel cells, 2x2-cell blocks with L2-Hys normalisation, on colour (per pixel the channel of largest gradient).
HOG_PARAMS = {"orientations": 9, "pixels_per_cell": (8, 8), "cells_per_block": (2, 2), "block_norm": "L2-Hys"}
MEAN_RGB = np.array([round(255 * m) for m in IMAGE_MEAN], dtype=np.uint8)  # hole fill for HOG, = 0 after normalize


def hole_mask(size):
    """The central hole as a bool (1, 1, S, S) tensor (True = dropped pixel)."""
    return central_mask(1, size, size)


def square_crop(image, size):
    """Centre square of a (H, W, 3) uint8 image whose shorter side is already `size`."""
    h, w = image.shape[:2]
    top, left = (h - size) // 2, (w - size) // 2
    return image[top:top + size, left:left + size]


def load_square(path, size):
    """An image file as uint8 (3, S, S): shorter side resized to S, centre crop."""
    crop = square_crop(read_image(path, size), size)
    return torch.from_numpy(np.ascontiguousarray(crop.transpose(2, 0, 1)))


def hog_of_context(image, mask):
    """HOG vector (float32) of a uint8 (3, S, S) image with its hole set to the mean colour."""
    pixels = image.permute(1, 2, 0).numpy().copy()  # (S, S, 3) uint8
    pixels[mask[0, 0].numpy()] = MEAN_RGB
    return hog(pixels, channel_axis=-1, feature_vector=True, **HOG_PARAMS).astype(np.float32)


class ContextImages(torch.utils.data.Dataset):
    """Index -> (uint8 (3, S, S) image, per-image feature or empty); HOG runs here, in the loader's workers."""

    def __init__(self, paths, size, per_image=None):
        self.paths, self.size, self.per_image = list(paths), int(size), per_image
        self.mask = hole_mask(self.size)

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        image = load_square(self.paths[i], self.size)
        extra = self.per_image(image, self.mask) if self.per_image is not None else np.zeros(0, np.float32)
        return image, torch.from_numpy(extra)


@dataclass
class Extractor:
    """What to compute: 'hog' (per image, in workers) or 'pool5' of `encoder` (per batch, on `device`)."""

    kind: str
    encoder: torch.nn.Module = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    precision: str = "fp32"  # resolved --precision of the encoder's forward pass; features come out float32

    def __post_init__(self):
        if self.kind not in ("hog", "pool5"):
            raise ValueError(f"unknown feature kind {self.kind!r}; use 'hog' or 'pool5'")
        if self.kind == "pool5" and self.encoder is None:
            raise ValueError("pool5 features need an encoder")
        if self.encoder is not None:
            self.encoder = self.encoder.to(self.device).eval()

    @torch.inference_mode()
    def batch(self, images, hog_rows, mask):
        """Features of one batch as float32 numpy [B, D]."""
        if self.kind == "hog":
            return hog_rows.numpy()
        x = apply_mask(normalize(images, self.device), mask.to(self.device))  # (B, 3, S, S), hole = 0 = mean
        with autocast(self.device, self.precision):
            feats = self.encoder.forward_features(x)
        return feats.flatten(1).float().cpu().numpy()  # (B, C*h*w)


def make_loader(paths, size, extractor, batch_size=64, workers=None):
    """Ordered DataLoader over the images (HOG is computed by its workers)."""
    workers = default_num_workers() if workers is None else workers
    per_image = hog_of_context if extractor.kind == "hog" else None
    return torch.utils.data.DataLoader(ContextImages(paths, size, per_image), batch_size=batch_size, shuffle=False,
                                       num_workers=workers, worker_init_fn=worker_seed_init)


def extract_features(paths, extractor, size, *, batch_size=64, workers=None, max_batches=None, desc="features",
                     show_progress=True):
    """Context features of the images at `paths` (in order): float32 [N, D], N capped by `max_batches`."""
    loader = make_loader(paths, size, extractor, batch_size, workers)
    mask = hole_mask(int(size))
    n = len(paths) if max_batches is None else min(len(paths), max_batches * batch_size)
    out = None
    bar = progress(loader, enabled=show_progress, desc=desc, total=-(-n // batch_size), unit="batch")
    for b, (images, hog_rows) in enumerate(bar):
        if max_batches is not None and b >= max_batches:
            break
        feats = extractor.batch(images, hog_rows, mask)
        if out is None:
            out = np.empty((n, feats.shape[1]), dtype=np.float32)
        out[b * batch_size:b * batch_size + len(feats)] = feats
    bar.close()
    bad = int((~np.isfinite(out)).sum())
    if bad:  # finite weights can still overflow: a search over NaN would return arbitrary neighbours
        raise CebenchError(f"{desc}: {bad} of the {out.size} feature values are NaN/Inf (the weights overflow on "
                           "these images); no neighbours can be searched")
    return out


def build_extractor(cfg, device, precision="fp32", train_images=None):
    """(Extractor, info) from a resolved config: info has init, source, arch, meta like load_encoder's;
    `train_images` (paths, the gallery) are what `kmeans` clusters."""
    if cfg["features"] == HOG:
        info = {"init": HOG, "source": "skimage.feature.hog", "arch": None, "meta": {},
                "hog_params": {k: list(v) if isinstance(v, tuple) else v for k, v in HOG_PARAMS.items()}}
        return Extractor("hog"), info
    encoder, info = load_encoder(cfg["weights"], arch=trunk_of(cfg), seed=cfg["seed"], train_images=train_images,
                                 image_size=cfg["input_size"])
    info = {k: v for k, v in info.items() if k != "fc"}
    info["pool5_shape"] = list(encoder.feature_shape(cfg["input_size"]))
    return Extractor("pool5", encoder, device, precision), info


def encoder_health(encoder, gallery, cfg, device):
    """The record's feature_health of an encoder (None for HOG) on fixed views of the gallery it searches."""
    if encoder is None:
        return None
    return health_record(encoder, gallery.paths, cfg["health_images"], cfg["input_size"], seed=cfg["seed"],
                         device=device, source=f"{gallery.source} (the gallery)", weights="as loaded (no rescaling)")


def center_on_gallery(gallery, *others):
    """Subtract the gallery's mean feature from every set, in place; returns the mean.

    Without it, a feature shared by all images (HOG's texture of grass, ReLU features' positive mean) makes a
    few gallery images the neighbours of nearly every query under cosine similarity ("hubness").
    """
    mean = gallery.mean(axis=0, dtype=np.float64).astype(np.float32)
    for feats in (gallery, *others):
        feats -= mean
    return mean
