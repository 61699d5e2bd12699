"""Segmentation's device data path (--data-path device): the training images and masks decoded once into uint8
tensors on the device (a list: each at its own size, as whole-image training needs), and every micro-batch's
augmentation (random scale, crop with mean/void padding, flip) and normalisation run there, with no loader workers.

The operations are the loader's own: `SegTransform.apply` on the device's tensors (torchvision's resize, pad, crop
and flip dispatch on the device), so the distribution is the loader's by construction: scale uniform in
[min_scale, max_scale], crop corners uniform over every place, a flip with probability flip_prob, masks resampled
nearest-exact and never interpolated, then `pad_collate` (0 = the mean after normalisation, void 255 in masks).
Only the draws differ: one generator per micro-batch on the device, seeded from its items' seeds, instead of the
global generators per item; so a step is the same after a resume, but does not replay the loader's batches. On a
CPU the pixels are the loader's for the same draws (tested); on CUDA torchvision resizes uint8 images in float32
and rounds (its CPU kernel is fixed-point), so a resized pixel may differ by a level; masks are exact on both.
"""

from concurrent.futures import ThreadPoolExecutor
from functools import partial

import torch
from torchvision import tv_tensors

from cebench.images import image_size
from cebench.logs import progress
from cebench.runtime import resolve_data_path
from transfer.sampling import derive_seed
from transfer.segmentation.data import pad_collate


class DeviceImages:
    """A VOCSegmentation's training images (3, H, W) and masks (H, W), uint8, on `device`, each at its own size."""

    def __init__(self, dataset, device, threads=None):
        self.device = torch.device(device)
        self.images, self.masks = [], []
        # (H, W, 3), (H, W) uint8 each, from the split's cache or decoded by a few threads (PIL and scipy's loadmat
        # release the GIL), in order, each moved to the device as it comes (the host never holds them all)
        with ThreadPoolExecutor(max_workers=threads or torch.get_num_threads()) as pool:
            for image, mask in progress(pool.map(dataset.load, range(len(dataset))), total=len(dataset),
                                        desc="images to device", leave=False):
                self.images.append(torch.from_numpy(image).to(self.device).permute(2, 0, 1).contiguous())
                self.masks.append(torch.from_numpy(mask).to(self.device))

    def __len__(self):
        return len(self.images)

    @property
    def nbytes(self):
        return sum(im.numel() + m.numel() for im, m in zip(self.images, self.masks, strict=True))

    @staticmethod
    def estimate_nbytes(dataset):
        """Bytes the images and masks will take (4 per pixel), from the files' headers (before decoding them)."""
        return sum(4 * w * h for w, h in (image_size(p) for p in dataset.image_paths))


def augment(images, transform, index, draws):
    """(image float (3, h, w) normalised, mask int64 (h, w)) of images[index] under `transform` (a SegTransform),
    its draws in `draws` (four floats in [0, 1), used in order)."""
    it = iter(draws)
    image = tv_tensors.Image(images.images[index])
    mask = tv_tensors.Mask(images.masks[index])
    return transform.apply(image, mask, uniform=lambda: next(it), integer=lambda n: min(int(next(it) * n), n - 1))


def device_batches(images, transform, sampler):
    """The engine's micro-batches of the sampler as (images (B, 3, H, W), masks (B, H, W)) on the device: one
    generator per micro-batch, seeded from its items' seeds, so a step is the same after a resume."""
    for items in sampler:
        gen = torch.Generator(images.device).manual_seed(derive_seed(*(s for _, s in items)))
        draws = torch.rand(len(items), 4, generator=gen, device=images.device, dtype=torch.float64).tolist()
        yield pad_collate([augment(images, transform, i, u) for (i, _), u in zip(items, draws, strict=True)])


def choose_data_path(task, train, name, device, log=None):
    """--data-path `name` resolved for the training images of `train` (a VOCSegmentation) on `device`; 'device'
    puts them there and gives the task its device_batches. Returns 'loader' or 'device'."""
    path = resolve_data_path(name, device, DeviceImages.estimate_nbytes(train))
    if path == "device":
        images = DeviceImages(train, device)
        task.device_batches = partial(device_batches, images, train.transform)
        if log:
            log.info("data path device: %d training images and masks in %.0f MB on %s", len(images),
                     images.nbytes / 1e6, device)
    return path
