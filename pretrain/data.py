"""Unlabelled images for pretraining: a recursive folder, an optional uint8 cache, and a replayable sample stream.

Every sample is a pure function of (seed, position in the stream): which image (a per-epoch permutation seeded
by (seed, epoch)), its crop and flip, and its mask. A run resumed at step k therefore sees exactly the batches an
uninterrupted run would, and DDP ranks read disjoint positions of the same stream.
"""

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cebench.errors import CebenchError
from cebench.images import open_image, read_rgb
from cebench.logs import progress
from cebench.runtime import default_num_workers, worker_seed_init
from pretrain.masks import make_masks

EXTENSIONS = {".jpg", ".jpeg", ".png"}
IMAGE_MEAN = (0.485, 0.456, 0.406)  # ImageNet statistics; masked pixels become 0 = the mean after normalising
IMAGE_STD = (0.229, 0.224, 0.225)
CACHE_LIMIT_BYTES = 2 * 1024**3


def list_images(root, image_list=None):
    """Sorted JPEG/PNG files under `root` (recursive), optionally only the ids (file stems) listed in a file."""
    root = Path(root)
    if not root.is_dir():
        raise CebenchError(f"image folder not found: {root}")
    paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in EXTENSIONS and p.is_file())
    if image_list:
        try:
            ids = {line.split()[0] for line in Path(image_list).read_text().splitlines() if line.strip()}
        except OSError as err:
            raise CebenchError(f"{image_list}: cannot read the image list ({err.strerror})") from None
        paths = [p for p in paths if p.stem in ids]
        if len(paths) < len(ids):
            raise CebenchError(f"{image_list}: {len(ids) - len(paths)} of {len(ids)} listed ids have no image "
                               f"under {root}")
    if not paths:
        raise CebenchError(f"no .jpg/.jpeg/.png images under {root}")
    return paths


def resized_size(width, height, short_side):
    """(width, height) of an image whose shorter side is scaled to `short_side` (neither side below it)."""
    scale = short_side / min(width, height)
    return max(short_side, round(width * scale)), max(short_side, round(height * scale))


def read_image(path, short_side):
    """Decode an image as RGB uint8 (H, W, 3) with its shorter side resized to `short_side` (cebench.images: a bad,
    16-bit or too large file is handled or refused there, with one line naming it)."""
    # JPEG: let libjpeg decode at 1/2, 1/4 or 1/8 scale when that is enough
    img, stored = read_rgb(path, draft_size=lambda w, h: resized_size(w, h, short_side))
    size = resized_size(*stored, short_side)
    if img.size != size:
        img = img.resize(size, Image.BILINEAR, reducing_gap=2.0)
    return np.asarray(img, dtype=np.uint8)


def check_images(paths, skip_bad, short_side=None):
    """With skip_bad, drop files PIL cannot parse or that exceed cebench.images' bound when decoded for
    `short_side` as read_image decodes them (header check); returns (kept paths, skipped paths).

    Only headers are read here (a full decode of an ImageNet-sized folder takes hours): a file that fails to
    decode later is replaced in the stream (InpaintingStream with skip_bad) and reported by the training loop."""
    if not skip_bad:
        return list(paths), []
    good, bad = [], []
    for path in progress(paths, desc="checking images", leave=False):
        try:
            with open_image(path, None if short_side is None else
                            (lambda w, h: resized_size(w, h, short_side))) as img:
                img.verify()
            good.append(path)
        except CebenchError:  # any parse failure means the file is skipped; the count is reported
            bad.append(path)
    if not good:
        raise CebenchError("no readable images left after skipping bad files")
    return good, bad


class ImageCache:
    """All images pre-resized into one flat uint8 buffer (fork-friendly: workers share its pages)."""

    def __init__(self, paths, short_side, skip_bad=False, threads=None):
        """threads: decoding threads (None: torch.get_num_threads(), i.e. the entry point's --threads)."""

        def load(path):
            try:
                return read_image(path, short_side)
            except CebenchError:
                if skip_bad:
                    return None
                raise

        # PIL releases the GIL; --threads (torch's count, which start_run set from it) bounds the decoders and so
        # the memory of images in flight (each at most cebench.images.MAX_PIXELS)
        with ThreadPoolExecutor(max_workers=threads or torch.get_num_threads()) as pool:
            arrays = list(progress(pool.map(load, paths), total=len(paths), desc="caching images", leave=False))
        self.paths = [p for p, a in zip(paths, arrays, strict=True) if a is not None]
        self.skipped = [p for p, a in zip(paths, arrays, strict=True) if a is None]
        arrays = [a for a in arrays if a is not None]
        if not arrays:
            raise CebenchError("no readable images to cache")
        self.shapes = np.array([a.shape for a in arrays], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.shapes.prod(axis=1))])
        self.buffer = np.concatenate([a.reshape(-1) for a in arrays])

    def __len__(self):
        return len(self.shapes)

    def __getitem__(self, i):
        return self.buffer[self.offsets[i]:self.offsets[i + 1]].reshape(self.shapes[i])

    def on_device(self, device):
        """The images as one tensor on `device` (pretrain.device_data), uploaded once per device."""
        from pretrain.device_data import DeviceImages

        copies = self.__dict__.setdefault("_on_device", {})
        key = str(torch.device(device))
        if key not in copies:
            copies[key] = DeviceImages(self, device)
        return copies[key]

    @staticmethod
    def estimated_bytes(n_images, short_side):
        """Bytes of a cache of `n_images` of aspect ~4:3, before decoding them."""
        return n_images * short_side * short_side * 3 * 4 / 3

    @staticmethod
    def fits(n_images, short_side, limit=CACHE_LIMIT_BYTES):
        """Whether a cache of `n_images` (aspect ~4:3) stays under `limit` bytes."""
        return ImageCache.estimated_bytes(n_images, short_side) < limit


class InpaintingStream(torch.utils.data.Dataset):
    """Position -> (uint8 crop (3, S, S), bool mask (1, S, S), replaced); deterministic in (seed, position).

    `replaced` is -1, or (skip_bad) the index of an image that failed to decode and was replaced by the next
    readable one: the replacement depends only on the files, so an interrupted and resumed run sees the same data.
    """

    def __init__(self, paths, input_size, load_size, mask_kind, seed, cache=None, shapes=None, skip_bad=False):
        self.paths, self.cache, self.shapes = (cache.paths if cache is not None else list(paths)), cache, shapes
        self.input_size, self.load_size, self.mask_kind, self.seed = input_size, load_size, mask_kind, seed
        self.skip_bad = skip_bad
        self._perm = (None, None)

    def __len__(self):
        return len(self.paths)

    def load(self, index):
        """(image uint8 (H, W, 3), replaced index or -1) for the image at `index`."""
        if self.cache is not None:
            return self.cache[index], -1
        try:
            return read_image(self.paths[index], self.load_size), -1
        except CebenchError as err:
            if not self.skip_bad:
                raise CebenchError(f"{err}; pass --skip-bad (and --resume) to skip such files") from None
        for k in range(1, len(self.paths)):
            try:
                return read_image(self.paths[(index + k) % len(self.paths)], self.load_size), index
            except CebenchError:
                continue
        raise CebenchError("no image of the folder could be decoded")

    def image_index(self, position):
        epoch, offset = divmod(position, len(self.paths))
        if self._perm[0] != epoch:  # one permutation per epoch, seeded by (seed, epoch)
            self._perm = (epoch, np.random.default_rng([self.seed, 0, epoch]).permutation(len(self.paths)))
        return int(self._perm[1][offset])

    def draw(self, position, height, width):
        """The random choices of one sample of a (height, width) image: (top, left, flip, bool mask (1, S, S))."""
        rng = np.random.default_rng([self.seed, 1, position])
        s = self.input_size
        top = int(rng.integers(0, height - s + 1))
        left = int(rng.integers(0, width - s + 1))
        flip = bool(rng.random() < 0.5)
        gen = torch.Generator().manual_seed(int(rng.integers(0, 2**62)))
        return top, left, flip, make_masks(self.mask_kind, 1, s, s, gen, self.shapes)[0]

    def __getitem__(self, position):
        index = self.image_index(position)
        image, replaced = self.load(index)
        top, left, flip, mask = self.draw(position, *image.shape[:2])
        s = self.input_size
        crop = image[top:top + s, left:left + s]
        if flip:
            crop = crop[:, ::-1]
        crop = torch.from_numpy(np.ascontiguousarray(crop.transpose(2, 0, 1)))  # (3, S, S) uint8
        return crop, mask, torch.tensor(replaced)


class StepBatchSampler(torch.utils.data.Sampler):
    """Batches of stream positions for steps [start, stop): rank r of W takes slice r of each global batch."""

    def __init__(self, start_step, stop_step, batch_size, rank=0, world_size=1):
        self.start, self.stop, self.batch, self.rank, self.world = start_step, stop_step, batch_size, rank, world_size

    def __len__(self):
        return max(0, self.stop - self.start)

    def __iter__(self):
        for step in range(self.start, self.stop):
            base = (step * self.world + self.rank) * self.batch
            yield list(range(base, base + self.batch))


def make_loader(dataset, start_step, stop_step, batch_size, rank=0, world_size=1, workers=None, pin_memory=False):
    """DataLoader over the stream; `workers=None` uses cebench's default (one per spare core).

    Workers overlap crops and masks with the step even when images are cached: on a GPU the step is faster
    than the main process could prepare a batch. Forked workers share the cache's pages.
    """
    if workers is None:
        workers = default_num_workers()
    sampler = StepBatchSampler(start_step, stop_step, batch_size, rank, world_size)
    return torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=workers,
                                       worker_init_fn=worker_seed_init, pin_memory=pin_memory,
                                       prefetch_factor=4 if workers else None)


def normalize(images, device):
    """uint8 (N, 3, H, W) -> float (N, 3, H, W) with ImageNet mean/std, on `device`."""
    x = images.to(device, non_blocking=True).float().div_(255.0)
    mean = torch.tensor(IMAGE_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGE_STD, device=device).view(1, 3, 1, 1)
    return (x - mean) / std


def denormalize(x):
    """Inverse of `normalize`, clamped to [0, 1] for display."""
    mean = torch.tensor(IMAGE_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGE_STD, device=x.device).view(1, 3, 1, 1)
    return (x * std + mean).clamp(0, 1)
