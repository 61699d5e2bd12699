"""Detection's device data path (--data-path device): the training images decoded once at Fast R-CNN's single
scale into uint8 tensors on the device (a list: each keeps its own size), with their ground truth and proposals,
and every micro-batch's flips and RoI sampling drawn there, with no loader workers.

The distribution is the loader's (`transfer.detection.data.TrainImages`): Fast R-CNN's scale is fixed per image,
so the pixels are the loader's own (the same PIL resize, done once here instead of per item); a mirror with
probability flip_prob, of the image, its objects and its proposals; then `sample_rois` on the device (the same
function: fg_fraction of the RoIs at IoU >= fg_iou, the rest background in [bg_iou_low, fg_iou)) and
`collate_rois` (mean padding). Only the draws differ: one generator per micro-batch on the device, seeded from
its items' seeds, instead of NumPy's and torch's global generators per item; so a step is the same after a
resume, but does not replay the loader's batches.
"""

from concurrent.futures import ThreadPoolExecutor
from functools import partial

import torch

from cebench.images import image_size
from cebench.logs import progress
from cebench.runtime import resolve_data_path
from transfer.detection.data import collate_rois, image_scale, load_scaled
from transfer.detection.targets import sample_rois
from transfer.sampling import derive_seed


class DeviceImages:
    """A TrainImages' items on `device`: image uint8 (3, H, W) at the detection scale, its non-difficult objects
    (boxes float32 (G, 4) at that scale, labels (G,)) and proposals (K, 4) at that scale, one entry per item."""

    def __init__(self, train, device, threads=None):
        self.device = torch.device(device)
        paths = [train.split.image_paths[i] for i in train.index]
        load = partial(load_scaled, scale=train.scale, max_size=train.max_size)
        self.images, self.boxes, self.labels, self.proposals = [], [], [], []
        # PIL decodes and resizes with the GIL released: a few threads, in the items' order, each image moved to
        # the device as it comes (the host never holds them all)
        with ThreadPoolExecutor(max_workers=threads or torch.get_num_threads()) as pool:
            scaled = progress(pool.map(load, paths), total=len(paths), desc="images to device", leave=False)
            for i, (image, s) in zip(train.index, scaled, strict=True):
                gt, labels = train.objects[i]
                self.images.append(torch.from_numpy(image).to(self.device).permute(2, 0, 1).contiguous())
                # scaled in NumPy as the loader scales them, so the boxes are the loader's to the last bit
                self.boxes.append(torch.from_numpy(gt * s).to(self.device))
                self.labels.append(torch.from_numpy(labels).to(self.device))
                self.proposals.append(torch.from_numpy(train.proposals[i] * s).to(self.device))

    def __len__(self):
        return len(self.images)

    @property
    def nbytes(self):
        return sum(t.numel() * t.element_size() for t in (*self.images, *self.boxes, *self.labels, *self.proposals))

    @staticmethod
    def estimate_nbytes(train):
        """Bytes of the scaled images, their objects (float32 boxes, int64 labels) and proposals (float32), from
        the annotations' sizes (the files' headers where they lack one), before anything is decoded."""
        total = 0
        for i in train.index:
            width, height = train.split.sizes[i]
            if not (width and height):
                width, height = image_size(train.split.image_paths[i])
            s = image_scale(width, height, train.scale, train.max_size)
            total += 3 * max(1, round(width * s)) * max(1, round(height * s)) + 16 * len(train.proposals[i]) \
                + 24 * len(train.objects[i][0])
        return total


def flip_boxes(boxes, width):
    """Mirror boxes (K, 4) (continuous pixels) in an image `width` wide: data.flip_boxes on tensors."""
    return torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], dim=1)


def device_batches(images, train, sampler):
    """The engine's micro-batches of the sampler as collate_rois's (images, rois (R, 5), labels, targets) on the
    device: one generator per micro-batch, seeded from its items' seeds, so a step is the same after a resume."""
    p = train.sampling
    for items in sampler:
        gen = torch.Generator(images.device).manual_seed(derive_seed(*(s for _, s in items)))
        flips = (torch.rand(len(items), generator=gen, device=images.device, dtype=torch.float64)
                 < train.flip_prob).tolist()
        batch = []
        for (i, _), flip in zip(items, flips, strict=True):
            image, gt, proposals = images.images[i], images.boxes[i], images.proposals[i]
            if flip:
                width = image.shape[2]
                image, gt, proposals = image.flip(2), flip_boxes(gt, width), flip_boxes(proposals, width)
            rois, labels, targets = sample_rois(proposals, gt, images.labels[i], num_rois=p.rois_per_image,
                                                fg_fraction=p.fg_fraction, fg_iou=p.fg_iou,
                                                bg_iou=(p.bg_iou_low, p.bg_iou_high), generator=gen)
            batch.append((image, rois, labels, targets))
        yield collate_rois(batch)


def choose_data_path(task, train, name, device, log=None):
    """--data-path `name` resolved for the training images of `train` (a TrainImages) on `device`; 'device' puts
    them there and gives the task its device_batches. Returns 'loader' or 'device'."""
    path = resolve_data_path(name, device, DeviceImages.estimate_nbytes(train))
    if path == "device":
        images = DeviceImages(train, device)
        task.device_batches = partial(device_batches, images, train)
        if log:
            log.info("data path device: %d training images with their proposals in %.0f MB on %s", len(images),
                     images.nbytes / 1e6, device)
    return path
