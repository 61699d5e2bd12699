"""Region masks (paper §3.3): pure functions of a shape and a torch.Generator; True marks a dropped pixel.

Every mask kind covers about a quarter of the image, except `none`: the paper's autoencoder control (Table 2),
whose input is the whole image and whose loss covers every pixel. Masks are (N, 1, H, W) bool tensors on the
generator's device: central, none and the noise-pattern random-region are drawn on a CUDA generator's device too
(pretraining's device data path); random-block and the VOC-shape random-region loop per image on the CPU.
"""

import numpy as np
import torch
import torch.nn.functional as F

MASK_KINDS = ("central", "random-block", "random-region", "none")
AUTOENCODER = "none"  # no hole: reconstruct the whole, unmasked image
TARGET_FRACTION = 0.25  # "each covers up to 1/4 of the image" (paper §3.3)

# Released code (train_random.lua): a 600² uniform noise field scaled bicubically to 10000² and thresholded at
# 0.25; a fineSize window (128) is kept when 20-30% of it is masked. A window therefore spans 128·0.06 = 7.68
# noise cells; we draw that many cells across each image, so the blobs keep the same size relative to the image.
REGION_CELLS = 7.68
REGION_DENSITY = 0.25
REGION_ACCEPT = (0.20, 0.30)


DEVICE_MASK_KINDS = ("central", "none")  # and random-region without shapes: drawn on any device


def central_mask(n, height, width, device="cpu"):
    """The central square-ish region of half the height and width (a quarter of the area)."""
    mask = torch.zeros(n, 1, height, width, dtype=torch.bool, device=device)
    top, left = height // 4, width // 4
    mask[..., top:top + (height + 1) // 2, left:left + (width + 1) // 2] = True
    return mask


def random_block_mask(n, height, width, generator, target=TARGET_FRACTION, tolerance=0.03):
    """Several smaller, possibly overlapping rectangles per image, together covering about `target`."""
    mask = np.zeros((n, 1, height, width), dtype=bool)
    area = height * width
    lo = np.array([height // 8, width // 8, 0, 0])
    for i in range(n):
        img = mask[i, 0]
        # bounded tries; coverage lands in [target - tolerance, target + tolerance]. The draws come from the torch
        # generator in one call and the pixels live in NumPy: per-pixel-op overhead dominates at these sizes.
        draws = torch.rand(64, 4, generator=generator).numpy()
        for u in draws:
            h, w = (lo[:2] + u[:2] * (np.array([height // 3, width // 3]) - lo[:2] + 1)).astype(int)
            y, x = int(u[2] * (height - h + 1)), int(u[3] * (width - w + 1))
            before = img[y:y + h, x:x + w].copy()
            img[y:y + h, x:x + w] = True
            covered = img.sum() / area
            if covered > target + tolerance:
                img[y:y + h, x:x + w] = before  # this rectangle overshoots: undo it and draw another
            elif covered >= target - tolerance:
                break
    return torch.from_numpy(mask)


def random_region_mask(n, height, width, generator, cells=REGION_CELLS, density=REGION_DENSITY,
                       accept=REGION_ACCEPT, max_rounds=50):
    """Released code's random region: bicubic-upsampled uniform noise < density, kept when 20-30% is masked."""
    grid = max(2, int(round(cells)))
    device = generator.device  # the noise, the field and the masks live where the generator draws
    mask = torch.zeros(n, 1, height, width, dtype=torch.bool, device=device)
    todo = torch.arange(n, device=device)
    for _ in range(max_rounds):
        noise = torch.rand(len(todo), 1, grid + 1, grid + 1, generator=generator, device=device)
        field = F.interpolate(noise, size=(height + height // grid, width + width // grid), mode="bicubic",
                              align_corners=False)
        # a random sub-cell offset, like the released code's random window into one large pattern
        dy = int(torch.randint(0, height // grid + 1, (1,), generator=generator, device=device))
        dx = int(torch.randint(0, width // grid + 1, (1,), generator=generator, device=device))
        cand = field[..., dy:dy + height, dx:dx + width] < density
        frac = cand.float().mean(dim=(1, 2, 3))
        ok = (frac > accept[0]) & (frac < accept[1])
        mask[todo[ok]] = cand[ok]
        todo = todo[~ok]
        if len(todo) == 0:
            break
    if len(todo):  # practically unreachable (acceptance is ~50% per round); fall back to blocks, still ~1/4
        blocks = generator if device.type == "cpu" else torch.Generator().manual_seed(
            int(torch.randint(0, 2**62, (1,), generator=generator, device=device)))  # the block loop runs on the CPU
        mask[todo] = random_block_mask(len(todo), height, width, blocks).to(device)
    return mask


def load_region_shapes(folder, max_side=64, min_pixels=64, ids=None):
    """Object silhouettes from VOC segmentation PNGs (one per label value except 0 and 255), cropped, bool.

    ids: only the PNGs of these image ids (a split's list), e.g. the pretraining split's, so that no test image
    lends its shapes; default every PNG under the folder."""
    from pathlib import Path

    import numpy as np

    from cebench.images import read_labels

    shapes, keep = [], None if ids is None else set(ids)
    for path in sorted(Path(folder).rglob("*.png")):
        if keep is not None and path.stem not in keep:
            continue
        labels = read_labels(path)  # (H, W) uint8 label values
        for value in np.unique(labels):
            if value in (0, 255):  # background and VOC's void border
                continue
            ys, xs = np.nonzero(labels == value)
            if len(ys) < min_pixels:
                continue
            crop = torch.from_numpy(labels[ys.min():ys.max() + 1, xs.min():xs.max() + 1] == value)
            scale = min(1.0, max_side / max(crop.shape))
            size = (max(1, round(crop.shape[0] * scale)), max(1, round(crop.shape[1] * scale)))
            shapes.append(F.interpolate(crop[None, None].float(), size=size, mode="nearest")[0, 0] > 0.5)
    return shapes


def voc_region_mask(n, height, width, generator, shapes, accept=REGION_ACCEPT):
    """The paper's random region: VOC object shapes, randomly scaled, stretched and flipped, pasted until 20-30%."""
    mask = torch.zeros(n, 1, height, width, dtype=torch.bool)
    area = height * width
    for i in range(n):
        img = mask[i, 0]
        for _ in range(64):  # bounded tries, as for blocks
            shape = shapes[int(torch.randint(len(shapes), (1,), generator=generator))]
            side = float(torch.empty(1).uniform_(0.3, 0.7, generator=generator))  # longest side / image side
            stretch = float(torch.empty(1).uniform_(0.75, 1.33, generator=generator))  # random deformation
            scale = side * min(height, width) / max(shape.shape)
            h = max(1, min(height, round(shape.shape[0] * scale * stretch)))
            w = max(1, min(width, round(shape.shape[1] * scale / stretch)))
            piece = F.interpolate(shape[None, None].float(), size=(h, w), mode="nearest")[0, 0] > 0.5
            if bool(torch.rand(1, generator=generator) < 0.5):
                piece = piece.flip(1)
            y = int(torch.randint(0, height - h + 1, (1,), generator=generator))
            x = int(torch.randint(0, width - w + 1, (1,), generator=generator))
            before = img[y:y + h, x:x + w].clone()
            img[y:y + h, x:x + w] |= piece
            covered = int(img.sum()) / area
            if covered >= accept[1]:
                img[y:y + h, x:x + w] = before
            elif covered > accept[0]:
                break
    return mask


def make_masks(kind, n, height, width, generator, shapes=None):
    """Dispatch on the mask kind; `generator` makes the result reproducible (and says the device, see the module
    docstring); `shapes` = VOC silhouettes."""
    device = generator.device if generator is not None else "cpu"
    if kind == AUTOENCODER:  # the loss region is the whole image (and context_of leaves the input whole)
        return torch.ones(n, 1, height, width, dtype=torch.bool, device=device)
    if kind == "central":
        return central_mask(n, height, width, device)
    if kind == "random-block":
        return random_block_mask(n, height, width, generator)
    if kind == "random-region":
        if shapes:
            return voc_region_mask(n, height, width, generator, shapes)
        return random_region_mask(n, height, width, generator)
    raise ValueError(f"unknown mask kind {kind!r}; use one of {MASK_KINDS}")


def apply_mask(images, mask):
    """Set masked pixels to zero, the dataset mean after normalisation: (N, 3, H, W) x (N, 1, H, W)."""
    return images.masked_fill(mask.to(images.device), 0.0)


def context_of(images, mask, kind):
    """What the network sees: the image with its hole at the mean, or for the autoencoder the whole image."""
    return images if kind == AUTOENCODER else apply_mask(images, mask)


def overlap_band(mask, overlap):
    """Pixels within `overlap` px outside the hole (the paper's overlap band), as a bool mask like `mask`."""
    if overlap <= 0:
        return torch.zeros_like(mask)
    grown = F.max_pool2d(mask.float(), 2 * overlap + 1, stride=1, padding=overlap) > 0
    return grown & ~mask
