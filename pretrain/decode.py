"""The GPU data path of pretraining: CPU workers read file bytes, the training device decodes and crops.

On a GPU, decoding full-size JPEGs on the CPU bounds the paper profile's pretraining (the model step is faster
than two decodes per core can feed). Here the loader's workers only read each file's bytes, its size (from the
header) and the sample's random choices — the very ones `InpaintingStream` draws, from the same (seed, position)
— and `decode_batch` decodes the whole batch on the device (`torchvision.io.decode_jpeg(..., device="cuda")`,
nvJPEG), resizes the shorter side to --load-size (bilinear, antialiased), crops and flips. The result is the CPU
path's batch up to the decoders' rounding (libjpeg's DCT-domain downscaling and PIL's resize on one side,
a full decode and torchvision's resize on the other). The same functions run with device="cpu" in the tests.
"""

import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image, UnidentifiedImageError
from torchvision.io import ImageReadMode, decode_image, decode_jpeg

from cebench.errors import CebenchError
from cebench.runtime import default_num_workers, worker_seed_init
from pretrain.data import StepBatchSampler, resized_size

JPEG_MAGIC = (0xFF, 0xD8)


class EncodedStream(torch.utils.data.Dataset):
    """Position -> (path, file bytes uint8 (L,), [height, width, top, left, flip] after resizing, mask (1, S, S))."""

    def __init__(self, stream):
        self.stream = stream  # the InpaintingStream whose samples these are

    def __len__(self):
        return len(self.stream)

    def __getitem__(self, position):
        path = self.stream.paths[self.stream.image_index(position)]
        try:
            with Image.open(path) as img:  # the header only: no pixels are decoded here
                width, height = resized_size(img.width, img.height, self.stream.load_size)
            data = torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8)  # (L,)
        except (OSError, SyntaxError, UnidentifiedImageError, RuntimeError) as err:
            raise CebenchError(f"{path}: unreadable image ({type(err).__name__}: {str(err)[:120]})") from None
        top, left, flip, mask = self.stream.draw(position, height, width)
        return str(path), data, torch.tensor([height, width, top, left, int(flip)]), mask


def collate_encoded(items):
    """A batch of encoded samples: (paths, list of byte tensors, params (N, 5), masks (N, 1, S, S))."""
    paths, datas, params, masks = zip(*items, strict=True)
    return list(paths), list(datas), torch.stack(params), torch.stack(masks)


def _decode_all(paths, datas, device):
    """RGB uint8 (3, H, W) images on `device`: JPEGs as one batched decode there, other formats on the CPU."""
    jpeg = [tuple(d[:2].tolist()) == JPEG_MAGIC for d in datas]
    try:
        decoded = iter(decode_jpeg([d for d, j in zip(datas, jpeg, strict=True) if j], mode=ImageReadMode.RGB,
                                   device=device) if any(jpeg) else [])
        return [next(decoded) if j else decode_image(d, mode=ImageReadMode.RGB).to(device)
                for d, j in zip(datas, jpeg, strict=True)]
    except RuntimeError as err:  # a batched decode does not say which file failed: find it
        for path, data, j in zip(paths, datas, jpeg, strict=True):
            try:
                (decode_jpeg if j else decode_image)(data, mode=ImageReadMode.RGB)
            except RuntimeError:
                raise CebenchError(f"{path}: unreadable image ({str(err)[:120]})") from None
        raise


def decode_batch(paths, datas, params, size, device):
    """uint8 (N, 3, S, S) on `device`: decode, resize to the drawn (height, width), crop S x S, flip."""
    crops = []
    for image, (height, width, top, left, flip) in zip(_decode_all(paths, datas, device), params.tolist(),
                                                      strict=True):
        image = TF.resize(image, [height, width], interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
        crop = image[:, top:top + size, left:left + size]
        crops.append(crop.flip(-1) if flip else crop)
    return torch.stack(crops)


class DecodedBatches:
    """Iterable of (uint8 images (N, 3, S, S) on `device`, bool masks (N, 1, S, S), replaced (N,) = -1)."""

    def __init__(self, loader, size, device):
        self.loader, self.size, self.device = loader, size, torch.device(device)

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        for paths, datas, params, masks in self.loader:
            # no replaced images (-1): on this path a file that fails to decode stops the run with its name
            yield decode_batch(paths, datas, params, self.size, self.device), masks, torch.full((len(paths),), -1)


def make_decoding_loader(stream, start_step, stop_step, batch_size, device, rank=0, world_size=1, workers=None):
    """The device-decoding counterpart of `pretrain.data.make_loader` (same sampler, same samples)."""
    workers = default_num_workers() if workers is None else workers
    sampler = StepBatchSampler(start_step, stop_step, batch_size, rank, world_size)
    loader = torch.utils.data.DataLoader(EncodedStream(stream), batch_sampler=sampler, num_workers=workers,
                                         collate_fn=collate_encoded, worker_init_fn=worker_seed_init,
                                         pin_memory=torch.device(device).type == "cuda",
                                         prefetch_factor=4 if workers else None)
    return DecodedBatches(loader, stream.input_size, device)
