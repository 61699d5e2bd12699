"""VOC classification for the engine: image views, the multi-label model and loss, and multi-crop evaluation.

Protocol of Krähenbühl's voc-classification, which the paper used (PAPER.md): a view is the image scaled by a
random factor in [0.5, 2] (scale 1 = longer side `base_size`), a random `input_size` crop of it (padded with
the mean where the scaled image is smaller) and a random mirror; 20 sigmoid outputs, cross-entropy summed over
classes and averaged over images, difficult labels ignored; test scores are the logits averaged over
`test_crops` views drawn the same way (seeded per image and crop).
"""

import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset

from cebench.logs import progress
from evaluation.metrics import classification_map
from pretrain.data import IMAGE_MEAN, normalize
from transfer.backbone import gaussian_fill_
from transfer.engine import derive_seed
from transfer.voc import load_image

MEAN_RGB = tuple(int(round(255 * m)) for m in IMAGE_MEAN)  # padding colour: 0 after normalisation


@dataclass(frozen=True)
class ViewSpec:
    """How a training/test view is drawn from an image."""

    input_size: int = 227
    base_size: int = 500  # longer side at scale 1 (VOC's stored images are 500 px)
    min_scale: float = 0.5
    max_scale: float = 2.0
    mirror: bool = True


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
    return np.ascontiguousarray(view[:, ::-1]) if spec.mirror and rng.random() < 0.5 else view


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


class Classifier(nn.Module):
    """Backbone (conv1–fc7) + fc8: 20 logits, one sigmoid per VOC class."""

    def __init__(self, backbone, num_classes=20, generator=None):
        super().__init__()
        self.backbone = backbone
        self.fc8 = gaussian_fill_(nn.Linear(backbone.out_features, num_classes), generator=generator)

    def forward(self, x):
        return self.fc8(self.backbone(x))  # (N, 20)


def voc_bce(logits, labels):
    """Sigmoid cross-entropy summed over classes, mean over images; label 0 (difficult) is ignored."""
    labels = labels.to(logits.device)
    counted = (labels != 0).to(logits.dtype)
    loss = F.binary_cross_entropy_with_logits(logits.float(), (labels == 1).float(), reduction="none")
    return (loss * counted).sum() / logits.shape[0]


@torch.no_grad()
def predict(model, views, device, batch_size=8, num_workers=0, desc="test"):
    """Logits averaged over each image's views: float64 array (N, 20)."""
    loader = DataLoader(views, batch_size=batch_size, num_workers=num_workers)
    scores = []
    for crops, _ in progress(loader, desc=desc, leave=False):
        n, k = crops.shape[:2]
        logits = model(normalize(crops.flatten(0, 1), device)).float()  # (n*k, 20)
        scores.append(logits.view(n, k, -1).mean(dim=1).cpu().double())
    return torch.cat(scores).numpy()


class ClassificationTask:
    """What the engine needs: training items, the loss, Caffe's lr multipliers and the test evaluation."""

    def __init__(self, train_images, test_images, *, device, test_crops=10, seed=0, num_workers=0):
        self.train_dataset = train_images
        self.test_views = TestViews(test_images, test_crops, seed)
        self.test_labels = test_images.split.labels
        self.device, self.num_workers = device, num_workers
        self.last_scores = None

    def param_groups(self, model):
        """Caffe's convention in voc-classification: biases learn at twice the rate, all decay."""
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        return [{"params": [p for n, p in named if not n.endswith("bias")], "lr_mult": 1.0},
                {"params": [p for n, p in named if n.endswith("bias")], "lr_mult": 2.0}]

    def training_step(self, model, batch):
        images, labels = batch
        return voc_bce(model(normalize(images, self.device)), labels)

    def evaluate(self, model):
        self.last_scores = predict(model, self.test_views, self.device, num_workers=self.num_workers)
        with warnings.catch_warnings():  # classes without positives: the record warns about them once
            warnings.simplefilter("ignore", UserWarning)
            value, _ = classification_map(self.last_scores, self.test_labels, mode="sklearn")
            voc07, _ = classification_map(self.last_scores, self.test_labels, mode="voc07")
        return {"map": value, "map_voc07": voc07}
