"""PASCAL VOC semantic segmentation data: SegmentationClass palette masks, joint augmentation, batching.

Masks hold class indices 0..20 (0 background) and 255 (void: object borders and unlabelled pixels). Every
geometric change applies to the image and its mask together; masks are only ever resampled with nearest
neighbour, so no label is ever interpolated (PAPER.md, "Segmentation": 255 is ignored by loss and metric).
"""

import copy
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms.v2 import InterpolationMode, functional as TF

from cebench.errors import CebenchError
from cebench.images import image_size
from transfer.backbone import PRETRAINED_CFG
from voc.devkit import IGNORE_LABEL as IGNORE_INDEX, load_image, segmentation_files, shipped_list
from voc.sbd import load_any_mask

NUM_CLASSES = 21  # background + the 20 VOC classes
CACHE_LIMIT_BYTES = 1024**3  # --cache auto keeps a split in memory below this
YEARS = ("2012", "2007")  # --year auto: the paper's VOC2012 when the root holds it, else VOC2007


def find_year(voc_root, split, year="auto"):
    """The VOC year under `voc_root` whose ImageSets/Segmentation lists `split` (auto: 2012, then 2007)."""
    if year != "auto":
        return str(year)
    for candidate in YEARS:
        lists = Path(voc_root) / f"VOC{candidate}" / "ImageSets" / "Segmentation"
        if (lists / f"{split}.txt").is_file() or (lists.is_dir() and shipped_list(candidate, split)):
            return candidate
    raise CebenchError(f"{voc_root}: neither VOC2012 nor VOC2007 has ImageSets/Segmentation/{split}.txt "
                       "(pass the VOCdevkit folder as --voc-root, or --year)")


class VOCSegmentation(Dataset):
    """(image (3, H, W) float normalised, mask (H, W) int64) pairs of one ImageSets/Segmentation split, and of
    `extra` images when given (name, (ids, image paths, mask paths, skipped)): SBD's, whose masks are .mat files."""

    def __init__(self, voc_root, split, year="auto", transform=None, cache="auto", skip_bad=False, extra=None):
        self.year, self.split, self.transform = find_year(voc_root, split, year), split, transform
        # Every image and mask is opened and checked here, so a bad file fails now and not mid-training.
        self.ids, self.image_paths, self.mask_paths, self.skipped = segmentation_files(
            voc_root, self.year, split, skip_bad=skip_bad)
        self.sources = {f"VOC{self.year} {split}": len(self.ids)}  # images each source gave, for the record
        self.sbd = None  # SBD's merge counts, set by SegmentationHooks.load_data
        if extra is not None:
            name, (ids, image_paths, mask_paths, skipped) = extra
            self.ids, self.image_paths = self.ids + ids, self.image_paths + image_paths
            self.mask_paths, self.skipped = self.mask_paths + mask_paths, self.skipped + skipped
            self.sources[name] = len(ids)
        # Decoded once, before DataLoader workers fork, so that they share the arrays copy-on-write.
        self._cache = None
        if cache == "on" or cache is True or (cache == "auto" and self._estimated_bytes() < CACHE_LIMIT_BYTES):
            self._cache = [self.load(i) for i in range(len(self.ids))]

    def _estimated_bytes(self):
        """Decoded size of the split (image + mask), from the first image's size."""
        width, height = image_size(self.image_paths[0])
        return 4 * width * height * len(self.ids)

    @property
    def cached(self):
        return self._cache is not None

    def __len__(self):
        return len(self.ids)

    def load(self, index):
        """Decoded (image uint8 (H, W, 3), mask uint8 (H, W)) of one image."""
        if self._cache is not None:
            return self._cache[index]
        return np.array(load_image(self.image_paths[index])), load_any_mask(self.mask_paths[index])

    def __getitem__(self, index):
        image, mask = self.load(index)
        image = tv_tensors.Image(torch.from_numpy(image).permute(2, 0, 1).contiguous())  # (3, H, W) uint8
        mask = tv_tensors.Mask(torch.from_numpy(mask))  # (H, W) uint8
        if self.transform is not None:
            image, mask = self.transform(image, mask)
        return image, mask


class SegTransform:
    """Joint image+mask transform: random rescale, crop (padded: mean image, void mask), flip, normalise."""

    def __init__(self, *, scale_range=(1.0, 1.0), crop_size=0, flip_prob=0.0, mean=PRETRAINED_CFG["mean"],
                 std=PRETRAINED_CFG["std"]):
        self.scale_range, self.crop_size, self.flip_prob = tuple(scale_range), int(crop_size), float(flip_prob)
        self.mean, self.std = tuple(mean), tuple(std)
        self._fill = tuple(int(round(255 * m)) for m in self.mean)  # pad value = mean pixel, 0 once normalised

    def __call__(self, image, mask):
        """The loader's augmentation: every draw from torch's global generator (the engine seeds it per item)."""
        return self.apply(image, mask, uniform=lambda: torch.rand(()).item(),
                          integer=lambda n: int(torch.randint(0, n, ()).item()))

    def apply(self, image, mask, uniform, integer):
        """The augmentation with its draws from `uniform()` (a float in [0, 1)) and `integer(n)` (one of 0..n-1),
        made in this order: scale, crop top, crop left, flip. The device data path calls it with its own draws
        on tensors on the device (transfer.segmentation.device_data), so both paths run the same operations."""
        lo, hi = self.scale_range
        if (lo, hi) != (1.0, 1.0):
            scale = lo + (hi - lo) * uniform()
            h, w = image.shape[-2:]
            size = [max(1, round(h * scale)), max(1, round(w * scale))]
            image = TF.resize(image, size, interpolation=InterpolationMode.BILINEAR, antialias=True)
            # NEAREST_EXACT samples pixel centres (PIL's rule): labels are copied, never blended.
            mask = TF.resize(mask, size, interpolation=InterpolationMode.NEAREST_EXACT)
        if self.crop_size:
            image, mask = self._random_crop(image, mask, integer)
        if self.flip_prob and uniform() < self.flip_prob:
            image, mask = TF.horizontal_flip(image), TF.horizontal_flip(mask)
        image = TF.normalize(TF.to_dtype(image, torch.float32, scale=True), self.mean, self.std)
        return image.as_subclass(torch.Tensor), mask.as_subclass(torch.Tensor).long()

    def _random_crop(self, image, mask, integer):
        """crop_size x crop_size window at a random place; images smaller than it are padded first."""
        size = self.crop_size
        h, w = image.shape[-2:]
        pad_h, pad_w = max(0, size - h), max(0, size - w)
        if pad_h or pad_w:
            image = TF.pad(image, [0, 0, pad_w, pad_h], fill=list(self._fill))
            mask = TF.pad(mask, [0, 0, pad_w, pad_h], fill=IGNORE_INDEX)
            h, w = h + pad_h, w + pad_w
        top, left = integer(h - size + 1), integer(w - size + 1)
        return TF.crop(image, top, left, size, size), TF.crop(mask, top, left, size, size)

    def describe(self):
        """Plain dict for the record's protocol."""
        return {"scale_range": list(self.scale_range), "crop_size": self.crop_size, "flip_prob": self.flip_prob,
                "mask_resampling": "nearest (never interpolated)", "pad": "mean pixel / void 255"}


def sample_batch(dataset, transform, n, seed=0):
    """n random items of `dataset` under another transform, stacked (e.g. crops for data-dependent init)."""
    view = copy.copy(dataset)
    view.transform = transform
    order = torch.randperm(len(view), generator=torch.Generator().manual_seed(seed))[:n].tolist()
    return torch.stack([view[i][0] for i in order])  # (n, 3, S, S)


def pad_collate(batch):
    """Stack (image, mask) pairs of different sizes: pad bottom/right with 0 (the mean) and void 255."""
    height = max(image.shape[-2] for image, _ in batch)
    width = max(image.shape[-1] for image, _ in batch)
    device = batch[0][0].device  # the device data path's items are on the device already
    images = torch.zeros(len(batch), batch[0][0].shape[0], height, width, device=device)
    masks = torch.full((len(batch), height, width), IGNORE_INDEX, dtype=torch.long, device=device)
    for i, (image, mask) in enumerate(batch):
        images[i, :, :image.shape[-2], :image.shape[-1]] = image
        masks[i, :mask.shape[-2], :mask.shape[-1]] = mask
    return images, masks  # (N, 3, H, W), (N, H, W)
