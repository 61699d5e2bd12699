"""The GPU data path of pretraining: CPU workers read file bytes, the training device decodes and crops.

On a GPU, decoding full-size JPEGs on the CPU bounds the paper profile's pretraining (the model step is faster
than two decodes per core can feed). Here the loader's workers only read each file's bytes, its size (from the
header) and the sample's random choices — the very ones `InpaintingStream` draws, from the same (seed, position)
— and `decode_batch` decodes the whole batch on the device (`decode_jpeg(..., device="cuda")`, nvJPEG), resizes
the shorter side to --load-size (bilinear, antialiased), crops and flips. The result is the CPU path's batch up
to the decoders' rounding (libjpeg's DCT-domain downscaling and PIL's resize on one side,
a full decode and torchvision's resize on the other). The same functions run with device="cpu" in the tests.

The JPEG decoder: torchvision 0.29 deprecated its image decoders for TorchCodec's (torchcodec >= 0.16, the same
API and the same libjpeg/nvJPEG output); `decode_jpeg` is TorchCodec's when it is installed (`pip install -e
'.[gpu-decode]'`), else torchvision's, whose DeprecationWarning is silenced here only (it is not yet a
dependency, so that a plain install runs, and is tested on, the decoder every machine has). Files that are not JPEGs
decode with PIL through cebench.images, as on the CPU path, so 16-bit PNGs and the size bound are handled once.
"""

import warnings

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF

from cebench.errors import CebenchError
from cebench.images import image_size, read_rgb
from cebench.runtime import default_num_workers, worker_seed_init
from pretrain.data import StepBatchSampler, resized_size

JPEG_MAGIC = (0xFF, 0xD8)


def jpeg_decoder():
    """(decode_jpeg(list of byte tensors, device) -> list of uint8 (3, H, W), its library): TorchCodec's, the one
    torchvision recommends since 0.29, else torchvision's own."""
    try:
        from torchcodec.decoders import decode_jpeg
    except ImportError:  # not installed (or its FFmpeg libraries are missing): torchvision's, same output
        from torchvision.io import ImageReadMode, decode_jpeg as tv_decode_jpeg

        def decode(datas, device):
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", "The image decoding and encoding capabilities of TorchVision",
                                        DeprecationWarning)
                return tv_decode_jpeg(datas, mode=ImageReadMode.RGB, device=device)

        return decode, "torchvision"
    return (lambda datas, device: decode_jpeg(datas, mode="RGB", device=device)), "torchcodec"


class EncodedStream(torch.utils.data.Dataset):
    """Position -> (path, file bytes uint8 (L,), [height, width, top, left, flip] after resizing, mask (1, S, S))."""

    def __init__(self, stream):
        self.stream = stream  # the InpaintingStream whose samples these are

    def __len__(self):
        return len(self.stream)

    def __getitem__(self, position):
        path = self.stream.paths[self.stream.image_index(position)]
        width, height = resized_size(*image_size(path), self.stream.load_size)  # the header only (cebench.images)
        try:
            data = torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8)  # (L,)
        except OSError as err:
            raise CebenchError(f"{path}: unreadable image ({err.strerror or err})") from None
        top, left, flip, mask = self.stream.draw(position, height, width)
        return str(path), data, torch.tensor([height, width, top, left, int(flip)]), mask


def collate_encoded(items):
    """A batch of encoded samples: (paths, list of byte tensors, params (N, 5), masks (N, 1, S, S))."""
    paths, datas, params, masks = zip(*items, strict=True)
    return list(paths), list(datas), torch.stack(params), torch.stack(masks)


def _decode_all(paths, datas, device):
    """RGB uint8 (3, H, W) images on `device`: JPEGs as one batched decode there, other formats with PIL on the CPU
    (cebench.images)."""
    decode, _ = jpeg_decoder()
    jpeg = [tuple(d[:2].tolist()) == JPEG_MAGIC for d in datas]
    try:
        decoded = iter(decode([d for d, j in zip(datas, jpeg, strict=True) if j], device) if any(jpeg) else [])
    except RuntimeError as err:  # a batched decode does not say which file failed: find it
        for path, data, j in zip(paths, datas, jpeg, strict=True):
            try:
                if j:
                    decode([data], "cpu")
            except RuntimeError:
                raise CebenchError(f"{path}: unreadable image ({str(err)[:120]})") from None
        raise
    return [next(decoded) if j else torch.from_numpy(np.array(read_rgb(path)[0])).permute(2, 0, 1).to(device)
            for path, j in zip(paths, jpeg, strict=True)]


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
