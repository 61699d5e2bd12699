"""Pretraining's device data path (--data-path device): the cached images as one flat uint8 tensor on the device,
and every batch's crops, flips and masks drawn there by batched tensor ops, with no loader workers.

The sample distribution is the loader's (pretrain.data.InpaintingStream): the same per-epoch image permutation,
crop corners uniform over every position that fits, a flip with probability 1/2, the same mask functions. The
random draws differ (one generator per step on the device instead of one NumPy generator per sample), so a run
is deterministic and resumes exactly on its own path, but does not replay the loader path's batches.
"""

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from pretrain.masks import DEVICE_MASK_KINDS, make_masks


class DeviceImages:
    """An ImageCache's images on `device`: the flat uint8 buffer, each image's offset, height and width."""

    def __init__(self, cache, device):
        self.device = torch.device(device)
        self.buffer = torch.from_numpy(cache.buffer).to(self.device)  # (sum of H*W*3,) uint8, HWC per image
        self.offsets = torch.from_numpy(cache.offsets[:-1]).to(self.device)  # (n_images,) int64
        self.heights = torch.from_numpy(cache.shapes[:, 0].copy()).to(self.device)  # (n_images,)
        self.widths = torch.from_numpy(cache.shapes[:, 1].copy()).to(self.device)

    @property
    def nbytes(self):
        return self.buffer.numel()


def draw_crops(heights, widths, size, generator):
    """Per image: (top, left, flip) of a `size` crop, corners uniform over every position that fits, flip with
    probability 1/2, drawn on the generator's device; heights/widths: (N,) int64."""
    u = torch.rand(3, len(heights), generator=generator, device=generator.device, dtype=torch.float64)
    # floor(u * k) is uniform over 0..k-1; float64 keeps the rounding bias far below any image size's 1/k
    top = torch.minimum((u[0] * (heights - size + 1)).long(), heights - size)
    left = torch.minimum((u[1] * (widths - size + 1)).long(), widths - size)
    return top, left, u[2] < 0.5


def gather_crops(images, index, top, left, flip, size):
    """uint8 (N, 3, size, size) crops of images[index] at (top, left), mirrored where `flip`: one gather."""
    steps = torch.arange(size, device=images.device)
    rows = top[:, None] + steps  # (N, S)
    cols = left[:, None] + torch.where(flip[:, None], size - 1 - steps, steps)  # (N, S)
    pixel = images.offsets[index, None, None] + (rows[:, :, None] * images.widths[index, None, None]
                                                 + cols[:, None, :]) * 3  # (N, S, S): offset of each pixel's R
    channels = torch.arange(3, device=images.device)
    return images.buffer[pixel[..., None] + channels].permute(0, 3, 1, 2).contiguous()  # (N, 3, S, S)


def step_generators(seed, step, rank, device):
    """The generators of one step's draws: one on the device, one on the CPU for the masks drawn there."""
    seed = int(np.random.default_rng([seed, 3, step, rank]).integers(0, 2**62))
    return torch.Generator(device).manual_seed(seed), torch.Generator().manual_seed(seed)


def masks_on_device(dataset):
    """Whether the stream's mask kind is drawn on the device (else per image on the CPU, see pretrain.masks)."""
    return dataset.mask_kind in DEVICE_MASK_KINDS or (dataset.mask_kind == "random-region" and not dataset.shapes)


def cpu_masks(dataset, n, seed, step, rank):
    """(N, 1, S, S) bool masks of a kind drawn on the CPU, from the step's CPU generator."""
    s = dataset.input_size
    return make_masks(dataset.mask_kind, n, s, s, step_generators(seed, step, rank, "cpu")[1], dataset.shapes)


class DeviceBatches:
    """Batches of steps [start, stop) for this rank, as the loader's: (uint8 images, bool masks, replaced = -1)."""

    def __init__(self, dataset, images, start_step, stop_step, batch_size, rank=0, world_size=1):
        self.dataset, self.images = dataset, images
        self.start, self.stop, self.batch, self.rank, self.world = start_step, stop_step, batch_size, rank, world_size

    def __len__(self):
        return max(0, self.stop - self.start)

    def __iter__(self):
        ds, dev = self.dataset, self.images.device
        on_device = masks_on_device(ds)
        # masks drawn per image on the CPU (random-block, VOC shapes: ~0.1 CPU s per 64 at 227 px) are made one step
        # ahead in a thread, overlapping the model step; each is a function of its step's seed, so order is kept
        with ThreadPoolExecutor(max_workers=1) as pool:
            ahead = lambda step: pool.submit(cpu_masks, ds, self.batch, ds.seed, step, self.rank)  # noqa: E731
            pending = ahead(self.start) if not on_device and self.stop > self.start else None
            for step in range(self.start, self.stop):
                base = (step * self.world + self.rank) * self.batch  # the loader's stream positions of this step
                index = torch.tensor([ds.image_index(p) for p in range(base, base + self.batch)]).to(dev)
                device_gen = step_generators(ds.seed, step, self.rank, dev)[0]
                top, left, flip = draw_crops(self.images.heights[index], self.images.widths[index], ds.input_size,
                                             device_gen)
                crops = gather_crops(self.images, index, top, left, flip, ds.input_size)
                if on_device:
                    masks = make_masks(ds.mask_kind, self.batch, ds.input_size, ds.input_size, device_gen, ds.shapes)
                else:
                    masks = pending.result().to(dev, non_blocking=True)
                    pending = ahead(step + 1) if step + 1 < self.stop else None
                yield crops, masks, torch.full((self.batch,), -1)
