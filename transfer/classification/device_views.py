"""Classification's device data path (--data-path device): the training images decoded once into one padded uint8
tensor on the device, and every micro-batch's random views (scale, crop, mean padding, mirror) drawn there with
one grid_sample, no loader workers.

The distribution is `transfer.classification.data.random_view`'s: scale uniform in [min_scale, max_scale] times
base_size over the longer side, the window's origin uniform over every placement that covers or is covered by
the scaled image, a mirror with probability flip_prob, bilinear sampling at pixel centres and the mean colour
outside the image. Two differences, both below what an augmentation's distribution cares about: PIL rounds the
kept part to whole output pixels (here the edge is exact to the sub-pixel), and PIL's resize low-pass filters a
shrinking view (scale < 1: VOC's 500-px images at scales 0.5-1) where grid_sample interpolates without it.
voc-mini's 224-px images are always enlarged (scale >= 0.5 * 500 / 224), so there the two paths agree.
"""

import numpy as np
import torch
import torch.nn.functional as F

from cebench.logs import progress
from transfer.classification.data import MEAN_RGB
from transfer.sampling import derive_seed


class DeviceImages:
    """The images of a VocImages on `device`: uint8 (N, 3, H_max, W_max), zero beyond each image, and sizes."""

    def __init__(self, images, device):
        arrays = [np.array(images.image(i)) for i in progress(range(len(images)), desc="images to device",
                                                               leave=False)]  # (h, w, 3) uint8 each
        sizes = np.array([a.shape[:2] for a in arrays], dtype=np.int64)
        h_max, w_max = sizes.max(axis=0)
        self.device = torch.device(device)
        self.pixels = torch.zeros(len(arrays), 3, h_max, w_max, dtype=torch.uint8, device=self.device)
        for i, a in enumerate(arrays):  # one copy per image; the host never holds the padded tensor
            self.pixels[i, :, :a.shape[0], :a.shape[1]] = torch.from_numpy(a).to(self.device).permute(2, 0, 1)
        self.heights = torch.from_numpy(sizes[:, 0]).to(self.device)  # (N,)
        self.widths = torch.from_numpy(sizes[:, 1]).to(self.device)
        self.labels = images.labels.to(self.device)

    @staticmethod
    def nbytes(images):
        """Bytes of the padded tensor of a VocSplit's images, from its annotations (before decoding them)."""
        sizes = np.array([(a.height, a.width) for a in images.split.annotations], dtype=np.int64)
        return int(len(sizes) * 3 * sizes[:, 0].max() * sizes[:, 1].max())


def draw_views(heights, widths, spec, generator):
    """Per image: (scale in view px per image px, window origin x0, y0 in scaled px, mirror), on the generator's
    device, as random_view draws them; heights/widths: (N,) int64."""
    u = torch.rand(4, len(heights), generator=generator, device=generator.device, dtype=torch.float64)
    scale = (spec.min_scale + u[0] * (spec.max_scale - spec.min_scale)) * spec.base_size / torch.maximum(
        heights, widths)
    size = spec.input_size
    sw, sh = widths * scale, heights * scale
    lo_x, hi_x = torch.clamp(sw - size, max=0.0), torch.clamp(sw - size, min=0.0)
    lo_y, hi_y = torch.clamp(sh - size, max=0.0), torch.clamp(sh - size, min=0.0)
    return scale, lo_x + u[1] * (hi_x - lo_x), lo_y + u[2] * (hi_y - lo_y), u[3] < spec.flip_prob


def render_views(images, index, scale, x0, y0, flip, size):
    """uint8 (B, 3, size, size) views of images.pixels[index]: bilinear at pixel centres, MEAN_RGB outside."""
    dev = images.device
    steps = torch.arange(size, device=dev, dtype=torch.float64) + 0.5  # view pixel centres
    xs = torch.where(flip[:, None], size - steps, steps)  # (B, S): the mirror reads the window right to left
    ys = steps.expand(len(index), size)
    sx, sy = x0[:, None] + xs, y0[:, None] + ys  # (B, S) in scaled-image px
    h, w = images.heights[index, None].double(), images.widths[index, None].double()
    inside = ((sy >= 0) & (sy < h * scale[:, None]))[:, :, None] & ((sx >= 0) & (sx < w * scale[:, None]))[:, None]
    # image px, clamped to the image's own pixel centres (PIL's edge replication), then grid_sample's [-1, 1]
    ix = (sx / scale[:, None] - 0.5).clamp(min=0).minimum(w - 1)
    iy = (sy / scale[:, None] - 0.5).clamp(min=0).minimum(h - 1)
    h_max, w_max = images.pixels.shape[2:]
    grid = torch.stack(torch.broadcast_tensors(((2 * ix + 1) / w_max - 1)[:, None, :],
                                               ((2 * iy + 1) / h_max - 1)[:, :, None]), dim=-1)  # (B, S, S, 2)
    views = F.grid_sample(images.pixels[index].float(), grid.float(), mode="bilinear", align_corners=False)
    pad = torch.tensor(MEAN_RGB, device=dev, dtype=views.dtype).view(1, 3, 1, 1)
    views = torch.where(inside[:, None], views, pad)
    return views.round_().clamp_(0, 255).to(torch.uint8)  # (B, 3, S, S), as the loader's uint8 views


def device_batches(images, spec, sampler):
    """The engine's micro-batches of the sampler as (uint8 views (B, 3, S, S), int8 labels (B, 20)) on the device:
    one generator per micro-batch, seeded from its items' seeds, so a step is the same after a resume."""
    for items in sampler:
        index = torch.tensor([i for i, _ in items]).to(images.device)
        gen = torch.Generator(images.device).manual_seed(derive_seed(*(s for _, s in items)))
        scale, x0, y0, flip = draw_views(images.heights[index], images.widths[index], spec, gen)
        yield render_views(images, index, scale, x0, y0, flip, spec.input_size), images.labels[index]
