"""VOC classification data: random scaled/cropped/mirrored views of images, training and test items."""

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from cebench.logs import progress
from transfer.backbone import PRETRAINED_CFG, normalize
from transfer.sampling import derive_seed
from voc.devkit import load_image


CACHE_LIMIT_BYTES = 2 * 1024**3  # --cache auto keeps both splits in memory below this
MEAN_RGB = PRETRAINED_CFG["pad_rgb"]  # padding colour: 0 after normalisation


@dataclass(frozen=True)
class ViewSpec:
    """How a training/test view is drawn from an image."""

    input_size: int = 227
    base_size: int = 500  # longer side at scale 1 (VOC's stored images are 500 px)
    min_scale: float = 0.5
    max_scale: float = 2.0
    flip_prob: float = 0.5  # probability of a horizontal flip of each view (--flip-prob)


def random_view(image, spec, rng):
    """A random scaled, cropped (mean-padded) and mirrored view: uint8 array (S, S, 3)."""
    w, h = image.size
    size = spec.input_size
    s = rng.uniform(spec.min_scale, spec.max_scale) * spec.base_size / max(w, h)  # view px per image px
    sw, sh = w * s, h * s
    x0 = rng.uniform(min(0.0, sw - size), max(0.0, sw - size))  # window origin in scaled coordinates
    y0 = rng.uniform(min(0.0, sh - size), max(0.0, sh - size))
    vx0, vy0, vx1, vy1 = max(x0, 0.0), max(y0, 0.0), min(x0 + size, sw), min(y0 + size, sh)
    out_w, out_h = max(1, round(vx1 - vx0)), max(1, round(vy1 - vy0))
    part = image.resize((out_w, out_h), Image.BILINEAR, box=(vx0 / s, vy0 / s, vx1 / s, vy1 / s))
    if (out_w, out_h) == (size, size):
        canvas = part
    else:
        canvas = Image.new("RGB", (size, size), MEAN_RGB)
        canvas.paste(part, (min(size - out_w, round(vx0 - x0)), min(size - out_h, round(vy0 - y0))))
    view = np.array(canvas, dtype=np.uint8)  # a writable copy (torch.from_numpy warns on PIL's read-only buffer)
    return np.ascontiguousarray(view[:, ::-1]) if spec.flip_prob and rng.random() < spec.flip_prob else view


class VocImages(Dataset):
    """Images of a VocSplit with their labels; optionally kept decoded in memory (one copy per process)."""

    def __init__(self, split, spec, cache=False):
        self.split, self.spec = split, spec
        self.labels = torch.from_numpy(split.labels.astype(np.int8))
        self._cache = [np.asarray(load_image(p)) for p in progress(split.image_paths, desc="decode",
                                                                    leave=False)] if cache else None

    def __len__(self):
        return len(self.split)

    def image(self, i):
        return Image.fromarray(self._cache[i]) if self._cache is not None else load_image(self.split.image_paths[i])

    def view(self, i, rng):
        """uint8 tensor (3, S, S) of a random view of image i."""
        return torch.from_numpy(random_view(self.image(i), self.spec, rng)).permute(2, 0, 1)

    def __getitem__(self, i):
        # The engine seeds numpy's global generator per (seed, epoch, index): draw this item's generator from it.
        rng = np.random.default_rng(np.random.randint(0, 2**62, dtype=np.int64))
        return self.view(i, rng), self.labels[i]


class TestViews(Dataset):
    """Item i: the `crops` views (crops, 3, S, S) of image i, each seeded by (seed, stream, i, crop)."""

    def __init__(self, images, crops, seed, stream=4):
        self.images, self.crops, self.seed, self.stream = images, crops, seed, stream

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        views = [self.images.view(i, np.random.default_rng(derive_seed(self.seed, self.stream, i, c)))
                 for c in range(self.crops)]
        return torch.stack(views), self.images.labels[i]


def calibration_images(train, n, seed, device):
    """`n` normalised training views of VocImages `train` (distinct images while they last), seeded: (n, 3, S, S)."""
    order = np.random.default_rng(derive_seed(seed, 6)).permutation(len(train))
    views = [train.view(int(order[k % len(order)]), np.random.default_rng(derive_seed(seed, 6, k)))
             for k in range(n)]
    return normalize(torch.stack(views), device)


def calibration_views(split, input_size, base_size, n, seed, device):
    """The `n` normalised views of a VocSplit that transfer.classify's rescaling draws at the default scales
    (evaluation.probe rescales on them: the same seed gives the same weights)."""
    return calibration_images(VocImages(split, ViewSpec(input_size, base_size)), n, seed, device)
