"""Writes tiny VOCdevkits with the real layout for tests: JPEGs, XMLs, Main and Segmentation image sets, masks.

Each object is a filled rectangle in a colour of its class on a noisy background, so a network can learn
something from a few images; masks paint the same rectangles (class index, 255 on a 1-pixel border).

    from vocfactory import make_vocdevkit      # tests/ is on sys.path under pytest
    info = make_vocdevkit(tmp_path, splits={"train": 8, "val": 4})
    info.root                    # pass as --voc-root
    info.objects["000003"]       # [(class_name, (x1, y1, x2, y2), difficult), ...]
"""

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
           "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
           "tvmonitor")


def voc_palette():
    """The VOC colour map (bit-interleaved), 256 RGB triples flattened, as the devkit's labelcolormap."""
    palette = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette += [r, g, b]
    return palette


@dataclass
class TinyVoc:
    """What make_vocdevkit wrote: the root to pass as --voc-root, ids per split, objects per image."""

    root: Path
    year: str
    splits: dict
    objects: dict = field(default_factory=dict)

    @property
    def base(self):
        return self.root / f"VOC{self.year}"

    def path(self, kind, image_id):
        """Path of an image's file: kind in jpg, xml, png."""
        folder = {"jpg": "JPEGImages", "xml": "Annotations", "png": "SegmentationClass"}[kind]
        return self.base / folder / f"{image_id}.{kind}"


def _xml(image_id, size, objects, year):
    rows = [f"<annotation><folder>VOC{year}</folder><filename>{image_id}.jpg</filename>",
            f"<size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>",
            "<segmented>1</segmented>"]
    for name, (x1, y1, x2, y2), difficult in objects:
        rows.append(f"<object><name>{name}</name><pose>Unspecified</pose><truncated>0</truncated>"
                    f"<difficult>{int(difficult)}</difficult><bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin>"
                    f"<xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>")
    rows.append("</annotation>")
    return "\n".join(rows) + "\n"


def _class_colour(c):
    return np.array([(37 * c + 40) % 256, (91 * c + 120) % 256, (53 * c + 200) % 256], dtype=np.float64)


def _draw(rng, size, objects):
    """(image uint8 HxWx3, mask uint8 HxW) with each object's rectangle painted."""
    w, h = size
    image = rng.normal(110, 25, (h, w, 3))
    mask = np.zeros((h, w), dtype=np.uint8)
    for name, (x1, y1, x2, y2), _ in objects:
        c = CLASSES.index(name)
        image[y1 - 1:y2, x1 - 1:x2] = _class_colour(c) + rng.normal(0, 8, (y2 - y1 + 1, x2 - x1 + 1, 3))
        mask[y1 - 1:y2, x1 - 1:x2] = 255
        mask[y1:y2 - 1, x1:x2 - 1] = c + 1
    return np.clip(image, 0, 255).astype(np.uint8), mask


def _random_objects(rng, size, classes, max_objects, difficult_rate):
    w, h = size
    objects = []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        bw, bh = int(rng.integers(w // 4, w // 2 + 1)), int(rng.integers(h // 4, h // 2 + 1))
        x1, y1 = int(rng.integers(1, w - bw + 1)), int(rng.integers(1, h - bh + 1))
        name = classes[int(rng.integers(len(classes)))]
        objects.append((name, (x1, y1, x1 + bw - 1, y1 + bh - 1), bool(rng.random() < difficult_rate)))
    return objects


def _write_image_sets(info, segmentation):
    main = info.base / "ImageSets" / "Main"
    seg = info.base / "ImageSets" / "Segmentation"
    for d in (main, seg) if segmentation else (main,):
        d.mkdir(parents=True, exist_ok=True)
    splits = dict(info.splits)
    if "train" in splits and "val" in splits and "trainval" not in splits:
        splits["trainval"] = splits["train"] + splits["val"]
    for split, ids in splits.items():
        text = "".join(f"{i}\n" for i in ids)
        (main / f"{split}.txt").write_text(text)
        if segmentation:
            (seg / f"{split}.txt").write_text(text)
        for name in CLASSES:
            rows = []
            for i in ids:
                flags = [not d for n, _, d in info.objects[i] if n == name]
                rows.append(f"{i} {1 if any(flags) else 0 if flags else -1:2d}\n")
            (main / f"{name}_{split}.txt").write_text("".join(rows))


def make_vocdevkit(root, splits=None, *, year="2007", size=(64, 48), vary_size=True, classes=CLASSES,
                   max_objects=3, difficult_rate=0.15, segmentation=True, seed=0):
    """Write a VOCdevkit under `root` (which becomes the --voc-root) and describe it."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    splits = splits or {"train": 8, "val": 4}
    info = TinyVoc(root=root, year=str(year), splits={})
    for folder in ("JPEGImages", "Annotations", "SegmentationClass"):
        (info.base / folder).mkdir(parents=True, exist_ok=True)
    palette, next_id = voc_palette(), 1
    for split, count in splits.items():
        info.splits[split] = []
        for _ in range(count):
            image_id = f"{next_id:06d}"
            next_id += 1
            scale = rng.uniform(0.8, 1.25) if vary_size else 1.0
            image_size = (max(24, int(size[0] * scale)), max(24, int(size[1] * scale)))
            objects = _random_objects(rng, image_size, classes, max_objects, difficult_rate)
            image, mask = _draw(rng, image_size, objects)
            Image.fromarray(image).save(info.path("jpg", image_id), quality=92)
            info.path("xml", image_id).write_text(_xml(image_id, image_size, objects, year))
            if segmentation:
                png = Image.fromarray(mask, mode="P")
                png.putpalette(palette)
                png.save(info.path("png", image_id))
            info.objects[image_id] = objects
            info.splits[split].append(image_id)
    _write_image_sets(info, segmentation)
    return info


def truncate_file(path, keep=0.5):
    """Cut a file to a fraction of its bytes (a truncated download)."""
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: max(1, int(len(data) * keep))])


def set_box(info, image_id, index, box):
    """Rewrite one object's <bndbox> in an image's XML (e.g. a box reaching outside the image); returns its size."""
    with Image.open(info.path("jpg", image_id)) as img:
        size = img.size
    name, _, difficult = info.objects[image_id][index]
    info.objects[image_id][index] = (name, tuple(box), difficult)
    info.path("xml", image_id).write_text(_xml(image_id, size, info.objects[image_id], info.year))
    return size


def help_text(main, capsys):
    """What `main(["--help"])` prints, after checking that it exits with status 0."""
    import pytest

    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    return capsys.readouterr().out
