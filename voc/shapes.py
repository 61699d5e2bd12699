"""The six object classes of the synthetic smoke data: each a family of shapes, colours and textures drawn
with PIL, with a pixel-exact mask (imported by voc.synthetic)."""

import colorsys

import numpy as np
from PIL import Image, ImageDraw


class _Canvas:
    """An object drawn part by part into an RGB image and its binary mask at the same time."""

    def __init__(self, w, h):
        self.w, self.h = w, h
        self.rgb, self.mask = Image.new("RGB", (w, h)), Image.new("L", (w, h))
        self._rgb, self._mask = ImageDraw.Draw(self.rgb), ImageDraw.Draw(self.mask)

    def add(self, kind, xy, colour):
        """Draw one part (`kind` is an ImageDraw method) given in fractions of the canvas size."""
        pts = [(x * (self.w - 1), y * (self.h - 1)) for x, y in xy]
        getattr(self._rgb, kind)(pts, fill=colour)
        getattr(self._mask, kind)(pts, fill=255)


def _hsv(h, s, v):
    return tuple(int(round(255 * c)) for c in colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0), 1), min(max(v, 0), 1)))


def _shade(colour, factor):
    return tuple(int(min(255, c * factor)) for c in colour)


def _draw_aeroplane(c, rng):
    body = _hsv(rng.uniform(0.5, 0.7), rng.uniform(0.03, 0.2), rng.uniform(0.75, 0.95))
    c.add("polygon", [(0.36, 0.5), (0.6, 0.5), (0.4, 0.0), (0.3, 0.0)], _shade(body, 0.8))  # far wing
    c.add("polygon", [(0.0, 0.5), (0.14, 0.45), (0.05, 0.1)], _shade(body, 0.85))  # tail fin
    c.add("ellipse", [(0.0, 0.38), (1.0, 0.62)], body)  # fuselage
    c.add("polygon", [(0.38, 0.5), (0.62, 0.5), (0.42, 1.0), (0.32, 1.0)], _shade(body, 0.9))  # near wing
    return "none"


def _draw_bird(c, rng):
    body = _hsv(rng.uniform(0.55, 0.66), rng.uniform(0.55, 0.9), rng.uniform(0.55, 0.9))
    c.add("polygon", [(0.0, 0.4), (0.2, 0.55), (0.0, 0.8)], _shade(body, 0.7))  # tail
    c.add("ellipse", [(0.1, 0.3), (0.75, 0.88)], body)
    c.add("ellipse", [(0.58, 0.08), (0.9, 0.5)], body)  # head
    c.add("polygon", [(0.86, 0.22), (1.0, 0.3), (0.86, 0.38)], _hsv(0.09, 0.9, 0.95))  # beak
    c.add("ellipse", [(0.25, 0.45), (0.58, 0.72)], _shade(body, 0.7))  # wing
    return "speckle"


def _draw_bottle(c, rng):
    glass = _hsv(rng.uniform(0.25, 0.4), rng.uniform(0.5, 0.9), rng.uniform(0.35, 0.75))
    c.add("rounded_rectangle", [(0.05, 0.35), (0.95, 1.0)], glass)
    c.add("polygon", [(0.05, 0.42), (0.32, 0.2), (0.68, 0.2), (0.95, 0.42)], glass)  # shoulder
    c.add("rectangle", [(0.33, 0.05), (0.67, 0.25)], glass)  # neck
    c.add("rectangle", [(0.28, 0.0), (0.72, 0.08)], _hsv(rng.uniform(0, 1), 0.6, 0.5))  # cap
    c.add("rectangle", [(0.2, 0.45), (0.32, 0.92)], _shade(glass, 1.6))  # highlight
    return "vertical"


def _draw_car(c, rng):
    paint = _hsv(rng.uniform(-0.04, 0.04), rng.uniform(0.65, 0.95), rng.uniform(0.55, 0.95))
    c.add("polygon", [(0.2, 0.42), (0.3, 0.08), (0.7, 0.08), (0.82, 0.42)], paint)  # cabin
    c.add("polygon", [(0.27, 0.4), (0.34, 0.15), (0.66, 0.15), (0.75, 0.4)], _hsv(0.58, 0.25, 0.85))  # windows
    c.add("rounded_rectangle", [(0.0, 0.38), (1.0, 0.8)], paint)
    for x in (0.22, 0.78):  # wheels: radius 0.2 of the height on a 2:1 canvas
        c.add("ellipse", [(x - 0.1, 0.6), (x + 0.1, 1.0)], (25, 25, 25))
    return "horizontal"


def _draw_cat(c, rng):
    fur = _hsv(rng.uniform(0.05, 0.11), rng.uniform(0.5, 0.85), rng.uniform(0.5, 0.9))
    c.add("polygon", [(0.08, 0.5), (0.14, 0.0), (0.45, 0.28)], fur)  # ears
    c.add("polygon", [(0.92, 0.5), (0.86, 0.0), (0.55, 0.28)], fur)
    c.add("ellipse", [(0.05, 0.2), (0.95, 1.0)], fur)  # head
    eye = _hsv(rng.uniform(0.15, 0.3), 0.8, 0.9)
    c.add("ellipse", [(0.25, 0.45), (0.4, 0.6)], eye)
    c.add("ellipse", [(0.6, 0.45), (0.75, 0.6)], eye)
    c.add("polygon", [(0.44, 0.68), (0.56, 0.68), (0.5, 0.76)], _hsv(0.95, 0.5, 0.9))  # nose
    return "stripes"


def _draw_tvmonitor(c, rng):
    frame = _hsv(rng.uniform(0, 1), 0.1, rng.uniform(0.08, 0.25))
    c.add("polygon", [(0.4, 0.84), (0.6, 0.84), (0.72, 1.0), (0.28, 1.0)], frame)  # stand
    c.add("rectangle", [(0.0, 0.0), (1.0, 0.86)], frame)
    c.add("rectangle", [(0.08, 0.08), (0.92, 0.78)], _hsv(rng.uniform(0, 1), rng.uniform(0.2, 0.6), 0.95))
    return "scanlines"


# name -> (drawing, width / height of its canvas)
SHAPES = {"aeroplane": (_draw_aeroplane, 1.8), "bird": (_draw_bird, 1.3), "bottle": (_draw_bottle, 0.42),
          "car": (_draw_car, 2.0), "cat": (_draw_cat, 1.0), "tvmonitor": (_draw_tvmonitor, 1.3)}
CLASSES = tuple(SHAPES)  # the classes that occur; the other 14 VOC classes have no objects


def _texture(rgb, kind, rng):
    """Multiply a class-typical texture into an object's pixels, (h, w, 3) float in [0, 1]."""
    h, w = rgb.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if kind == "stripes":  # tabby: dark bands across the fur
        gain = 0.75 + 0.25 * np.cos(2 * np.pi * (xx * rng.uniform(0.6, 1.4) / max(w, 1) * 5 + yy / max(h, 1)))
    elif kind == "speckle":
        gain = 1.0 + rng.normal(0, 0.12, (h, w))
    elif kind == "scanlines":
        gain = np.where(yy.astype(int) % 3 == 0, 0.8, 1.0)
    elif kind == "vertical":
        gain = 0.8 + 0.3 * yy / max(h - 1, 1)
    elif kind == "horizontal":
        gain = 1.1 - 0.25 * xx / max(w - 1, 1)
    else:
        return rgb
    return np.clip(rgb * gain[..., None], 0, 1)


def draw_object(name, long_side, rng):
    """An object of class `name`: RGB (h, w, 3) float in [0, 1], bool mask (h, w), and its pose."""
    draw, aspect = SHAPES[name]
    w, h = (long_side, long_side / aspect) if aspect >= 1 else (long_side * aspect, long_side)
    canvas = _Canvas(max(4, int(round(w))), max(4, int(round(h))))
    kind = draw(canvas, rng)
    rgb, mask = canvas.rgb, canvas.mask
    flipped = bool(rng.random() < 0.5)
    if flipped:
        rgb, mask = rgb.transpose(Image.Transpose.FLIP_LEFT_RIGHT), mask.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    angle = float(rng.uniform(-12, 12))
    rgb = rgb.rotate(angle, resample=Image.Resampling.BILINEAR, expand=True)
    mask = mask.rotate(angle, resample=Image.Resampling.NEAREST, expand=True)
    rgb = _texture(np.asarray(rgb, dtype=np.float32) / 255.0, kind, rng)
    pose = "Frontal" if name in ("cat", "tvmonitor", "bottle") else ("Left" if flipped else "Right")
    return rgb, np.asarray(mask) > 127, pose
