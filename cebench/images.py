"""The one reader of image files for the suite: PIL, one set of caught errors, one bound on decoded size.

Every place that opens an image (VOC JPEGs and masks, pretraining's folder, retrieval's --images, detection's
proposals, the report) goes through `open_image`, so a damaged file, a decompression bomb or an image too large
to decode is one CebenchError naming the file, which --skip-bad (where an entry point has it) turns into a
skipped file. Pixels:

- 8-bit modes (RGB, L, P, RGBA, CMYK, ...) become RGB as PIL converts them;
- 16-bit grey (`I;16*`, e.g. a 16-bit PNG) is scaled to 8 bits (v * 255 / 65535, rounded): PIL's
  convert("RGB") would clip it, turning nearly every pixel white;
- 32-bit integer and float pixels (`I`, `F`) have no defined range and are refused.

The bound: an image whose decoded size would exceed MAX_PIXELS (after a JPEG's DCT-domain downscaling, when
the caller asks for a smaller size) is refused before its pixels are decoded. PIL's own bomb check
(`Image.MAX_IMAGE_PIXELS`, which raises DecompressionBombError at twice its value) applies as well.
"""

import contextlib
import io
import struct
from pathlib import Path

import numpy as np
from PIL import Image

from cebench.errors import CebenchError

# 50 megapixels: 150 MB as 8-bit RGB while it decodes (the peak memory of an image is this times its mode's bytes
# per pixel, times the decoding threads). A VOC image is 0.19 MP, a 12-megapixel photo is a quarter of the bound.
MAX_PIXELS = 50_000_000
# What PIL raises for a file it cannot parse or decode (UnidentifiedImageError is an OSError; a truncated or
# damaged file gives OSError, SyntaxError, ValueError, EOFError or struct.error depending on the plugin).
DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, Image.DecompressionBombError)
SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")


def _too_large(path, size):
    width, height = size
    if width * height > MAX_PIXELS:
        raise CebenchError(f"{path}: image is {width}x{height} ({width * height / 1e6:.0f} megapixels decoded), "
                           f"above the limit of {MAX_PIXELS / 1e6:g} megapixels (cebench.images.MAX_PIXELS); "
                           "downscale it or leave it out")


@contextlib.contextmanager
def open_image(path, draft_size=None, data=None):
    """The opened PIL image (header read, pixels not yet decoded), its decoded size checked against MAX_PIXELS.

    draft_size, a (w, h) or a function of the stored (w, h) giving one: a JPEG may decode at 1/2, 1/4 or 1/8
    scale, no smaller than (w, h) (libjpeg's DCT scaling; every byte is still read, so truncation still shows).
    `img.stored_size` keeps the file's own size. data: the file's bytes, already read (`path` names them). Any
    PIL failure, here or in the `with` body, is a CebenchError naming the file."""
    path = Path(path)
    if data is None and not path.is_file():
        raise CebenchError(f"image not found: {path}")
    try:
        with Image.open(path if data is None else io.BytesIO(data)) as img:
            img.stored_size = img.size
            if draft_size is not None:
                wanted = draft_size(*img.size) if callable(draft_size) else draft_size
                img.draft("RGB", tuple(max(1, int(s)) for s in wanted))  # img.size becomes the decoded size
            _too_large(path, img.size)
            yield img
    except DECODE_ERRORS as err:
        raise CebenchError(f"{path}: unreadable image ({type(err).__name__}: {str(err)[:120]})") from None


def image_size(path):
    """(width, height) as stored, from the header; a file PIL cannot parse or above the bound is refused."""
    with open_image(path) as img:
        return img.size


def to_rgb(img, path):
    """A decoded PIL image as RGB: 16-bit grey scaled to 8 bits, 32-bit integer and float pixels refused."""
    if img.mode in SIXTEEN_BIT:
        wide = np.asarray(img).astype(np.uint32)  # (H, W) 0..65535
        grey = ((wide * 255 + 32767) // 65535).astype(np.uint8)
        return Image.fromarray(np.repeat(grey[:, :, None], 3, axis=2), "RGB")
    if img.mode in ("I", "F"):
        raise CebenchError(f"{path}: {'32-bit integer' if img.mode == 'I' else 'floating-point'} pixels (PIL mode "
                           f"{img.mode}) have no defined range; save the image with 8 or 16 bits per channel")
    return img.convert("RGB")


def read_rgb(path, draft_size=None, data=None):
    """(RGB PIL image fully decoded, stored (width, height)); see open_image for draft_size and data."""
    with open_image(path, draft_size, data) as img:
        img.load()
        return to_rgb(img, path), img.stored_size


def read_labels(path):
    """A label PNG (palette P or grey L) as an (H, W) uint8 array of its indices, unconverted."""
    path = Path(path)
    with open_image(path) as img:
        if img.mode not in ("P", "L"):
            raise CebenchError(f"{path}: expected a palette (P) or grey (L) PNG of class indices, not {img.mode}")
        return np.array(img, dtype=np.uint8)
