"""PASCAL VOC from a standard VOCdevkit: image sets, annotations, image labels, segmentation masks.

Layout read (any year folder, e.g. VOC2007, VOC2012)::

    <voc_root>/VOC<year>/JPEGImages/<id>.jpg   Annotations/<id>.xml   SegmentationClass/<id>.png
    <voc_root>/VOC<year>/ImageSets/Main/<split>.txt   ImageSets/Segmentation/<split>.txt

Labels follow the devkit's classification convention per image and class: 1 (a non-difficult object of the
class), 0 (only difficult ones: ignored by the metric), -1 (none). The XML is parsed with torchvision's
``VOCDetection.parse_voc_xml``; torchvision's dataset classes themselves are not used because they accept only
fixed split names, need the root folder to be named ``VOCdevkit`` and parse lazily (a bad file would surface
mid-training). Here every file of a split is checked when the split is loaded: a malformed XML, an unknown
class name, a missing image or a truncated JPEG is a CebenchError naming the file, or with ``skip_bad=True``
the image is left out and listed in ``VocSplit.skipped``.
"""

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from torchvision.datasets import VOCDetection

from cebench.errors import CebenchError
from cebench.files import atomic_write, read_json
from cebench.images import read_labels, read_rgb
from cebench.names import check_name

VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
               "tvmonitor")
CLASS_INDEX = {name: i for i, name in enumerate(VOC_CLASSES)}
IGNORE_LABEL = 255  # void / object border in SegmentationClass masks
# Images per split of the official devkits (ImageSets/Main for 2007, ImageSets/Segmentation for segmentation), by
# (ImageSets folder, year, split): the full runs' sizes where a profile's data is absent (run_all's --check).
DEVKIT_SIZES = {("Main", "2007", "train"): 2501, ("Main", "2007", "val"): 2510, ("Main", "2007", "trainval"): 5011,
                ("Main", "2007", "test"): 4952, ("Segmentation", "2012", "train"): 1464,
                ("Segmentation", "2012", "val"): 1449, ("Segmentation", "2012", "seg11valid"): 736,
                ("Segmentation", "2007", "train"): 209, ("Segmentation", "2007", "val"): 213,
                ("Segmentation", "2007", "trainval"): 422, ("Segmentation", "2007", "test"): 210}


@dataclass(frozen=True)
class VocObject:
    """One annotated object: class index into VOC_CLASSES, inclusive 1-based pixel box, difficult flag."""

    label: int
    box: tuple  # (x1, y1, x2, y2), VOC pixel coordinates, inclusive
    difficult: bool

    @property
    def name(self):
        return VOC_CLASSES[self.label]


@dataclass(frozen=True)
class VocAnnotation:
    """An image's size and objects as read from its XML."""

    width: int
    height: int
    objects: tuple


@dataclass
class VocSplit:
    """The images of one split with their annotations, labels [N, 20] in 1/-1/0, and what was skipped."""

    root: Path
    year: str
    split: str
    ids: list
    image_paths: list
    annotations: list
    labels: np.ndarray  # (N, 20) int8
    skipped: list = field(default_factory=list)  # [{"id", "file", "reason"}]

    def __len__(self):
        return len(self.ids)


def year_dir(voc_root, year):
    """<voc_root>/VOC<year>, with a hint when the root points one level too deep or shallow."""
    root = Path(voc_root)
    path = root / f"VOC{year}"
    if not path.is_dir():
        hint = ""
        if (root / "VOCdevkit" / f"VOC{year}").is_dir():
            hint = f" (did you mean --voc-root {root / 'VOCdevkit'}?)"
        elif root.name == f"VOC{year}":
            hint = f" (pass the folder that holds VOC{year}: --voc-root {root.parent})"
        raise CebenchError(f"VOC{year} not found under {root}{hint}")
    return path


def dataset_name(voc_root, year):
    """Name of a VOC dataset in result records: VOC<year>, marked synthetic for the smoke generator's data."""
    return f"VOC{year} (synthetic)" if synthetic_info(voc_root) else f"VOC{year}"


# Segmentation lists that the devkit lacks, shipped in voc/lists/ (package data), with the years whose images they
# list. seg11valid: FCN's VOC2011 val less SBD's train images (736; Long et al.'s data/pascal/seg11valid.txt),
# the split the paper's segmentation is scored on.
SHIPPED_LISTS = {"seg11valid": ("2012", "2011")}
LISTS_DIR = Path(__file__).resolve().parent / "lists"


def shipped_list(year, split, kind="Segmentation"):
    """voc/lists/<split>.txt when cebench ships that list for this year's devkit, else None."""
    if kind == "Segmentation" and str(year) in SHIPPED_LISTS.get(split, ()):
        return LISTS_DIR / f"{split}.txt"
    return None


def read_image_set(voc_root, year, split, kind="Main"):
    """Image ids listed in ImageSets/<kind>/<split>.txt (kind: Main or Segmentation); a list the devkit lacks is
    read from voc/lists/ when cebench ships it (SHIPPED_LISTS)."""
    path = year_dir(voc_root, year) / "ImageSets" / kind / f"{split}.txt"
    if not path.is_file() and shipped_list(year, split, kind):
        path = shipped_list(year, split, kind)
    if not path.is_file():
        available = sorted(p.stem for p in path.parent.glob("*.txt") if "_" not in p.stem)
        raise CebenchError(f"image set not found: {path} (available: {', '.join(available) or 'none'})")
    ids = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        parts = line.split()
        if len(parts) > 1 and kind != "Main":
            raise CebenchError(f"{path}:{n}: expected one image id per line, got {line!r}")
        if parts:  # an id names the files read for it (JPEGImages/<id>.jpg, ...): a name, never a path
            ids.append(check_name(parts[0], f"{path}:{n}"))
    if not ids:
        raise CebenchError(f"image set is empty: {path}")
    if len(set(ids)) != len(ids):
        raise CebenchError(f"{path}: lists some image ids more than once")
    return ids


def read_class_list(voc_root, year, class_name, split):
    """The devkit's per-class list ImageSets/Main/<class>_<split>.txt as {id: 1 | 0 | -1}."""
    path = year_dir(voc_root, year) / "ImageSets" / "Main" / f"{class_name}_{split}.txt"
    if not path.is_file():
        raise CebenchError(f"per-class image set not found: {path}")
    flags = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or parts[1] not in ("1", "0", "-1"):
            raise CebenchError(f"{path}:{n}: expected '<id> <1|0|-1>', got {line!r}")
        flags[parts[0]] = int(parts[1])
    return flags


def _int_field(node, key, path, where):
    try:
        return int(round(float(node[key])))
    except (KeyError, TypeError, ValueError):
        raise CebenchError(f"{path}: {where} lacks a numeric <{key}>") from None


def _parse_object(obj, path):
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        raise CebenchError(f"{path}: an <object> has no <name>")
    name = obj["name"].strip()
    if name not in CLASS_INDEX:
        raise CebenchError(f"{path}: unknown class name {name!r} (VOC has {', '.join(VOC_CLASSES)})")
    box = obj.get("bndbox")
    if not isinstance(box, dict):
        raise CebenchError(f"{path}: object {name!r} has no <bndbox>")
    x1, y1, x2, y2 = (_int_field(box, k, path, f"the <bndbox> of {name!r}") for k in ("xmin", "ymin", "xmax", "ymax"))
    # Official VOC has a few boxes touching 0 or a pixel past the border, so only nonsense is refused here.
    if not (0 <= x1 <= x2 and 0 <= y1 <= y2):
        raise CebenchError(f"{path}: box {(x1, y1, x2, y2)} of {name!r} is not a box (need 0 <= min <= max)")
    difficult = str(obj.get("difficult", "0")).strip()
    if difficult not in ("0", "1"):
        raise CebenchError(f"{path}: <difficult> of {name!r} must be 0 or 1, got {difficult!r}")
    return VocObject(CLASS_INDEX[name], (x1, y1, x2, y2), difficult == "1")


def parse_annotation(path):
    """Read one Annotations/<id>.xml; any defect is a CebenchError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CebenchError(f"annotation not found: {path}")
    try:
        tree = VOCDetection.parse_voc_xml(ET.parse(path).getroot())
    except ET.ParseError as err:
        raise CebenchError(f"{path}: malformed XML ({err})") from None
    ann = tree.get("annotation")
    if not isinstance(ann, dict):
        raise CebenchError(f"{path}: not a VOC annotation (no <annotation> root)")
    size = ann.get("size")
    width = _int_field(size, "width", path, "<size>") if isinstance(size, dict) else 0
    height = _int_field(size, "height", path, "<size>") if isinstance(size, dict) else 0
    raw = ann.get("object", [])
    raw = raw if isinstance(raw, list) else [raw]  # parse_voc_xml nests the object list once
    raw = [o for item in raw for o in (item if isinstance(item, list) else [item])]
    objects = tuple(_parse_object(o, path) for o in raw)
    return VocAnnotation(width, height, objects)


def image_labels(objects, num_classes=20):
    """Per-class label of one image: 1 if a non-difficult object of the class, 0 if only difficult ones, else -1."""
    labels = np.full(num_classes, -1, dtype=np.int8)
    for obj in objects:
        if obj.difficult:
            labels[obj.label] = max(labels[obj.label], 0)
        else:
            labels[obj.label] = 1
    return labels


def load_image(path, draft=False):
    """Decode an image fully to RGB (cebench.images: a truncated, unreadable or too large file is a CebenchError
    naming it)."""
    return _decode(path, draft)[0]


def _decode(path, draft):
    """(RGB image, stored size); with draft=True a JPEG decodes at 1/8 scale, still reading every byte."""
    # DCT scaling: truncation still shows, at a fraction of the cost
    return read_rgb(path, draft_size=(lambda w, h: (w // 8, h // 8)) if draft else None)


def _check_image(path, ann):
    """Decode cheaply; an image whose size disagrees with its XML would get misplaced boxes, so refuse it."""
    _, (width, height) = _decode(path, draft=True)
    if ann.width and ann.height and (width, height) != (ann.width, ann.height):
        raise CebenchError(f"{path}: image is {width}x{height} but its annotation says {ann.width}x{ann.height}")


def _checked(image_ids, check, skip_bad):
    """([(id, check(id))...], skipped): `check` raises CebenchError for a bad image, which stops the load or, with
    `skip_bad`, leaves the image out and lists it in `skipped` with the reason."""
    kept, skipped = [], []
    for image_id in image_ids:
        try:
            kept.append((image_id, check(image_id)))
        except CebenchError as err:
            if not skip_bad:
                raise
            skipped.append({"id": image_id, "reason": str(err)})
    return kept, skipped


def load_split(voc_root, year, split, *, skip_bad=False, check_images=True):
    """Every image of ImageSets/Main/<split>.txt with annotation and labels, each file checked up front."""
    base = year_dir(voc_root, year)

    def check(image_id):
        image_path = base / "JPEGImages" / f"{image_id}.jpg"
        ann = parse_annotation(base / "Annotations" / f"{image_id}.xml")
        if check_images:
            _check_image(image_path, ann)
        elif not image_path.is_file():
            raise CebenchError(f"image not found: {image_path}")
        return image_path, ann

    kept, skipped = _checked(read_image_set(voc_root, year, split), check, skip_bad)
    if not kept:
        raise CebenchError(f"no usable images in {base}/ImageSets/Main/{split}.txt ({len(skipped)} skipped)")
    anns = [ann for _, (_, ann) in kept]
    return VocSplit(Path(voc_root), str(year), split, [i for i, _ in kept], [p for _, (p, _) in kept], anns,
                    np.stack([image_labels(a.objects) for a in anns]).astype(np.int8), skipped)


def load_mask(path):
    """A SegmentationClass palette PNG as an (H, W) uint8 array of class indices (255 = void)."""
    path = Path(path)
    if not path.is_file():
        raise CebenchError(f"segmentation mask not found: {path}")
    mask = read_labels(path)
    bad = np.setdiff1d(np.unique(mask), np.r_[np.arange(len(VOC_CLASSES) + 1), IGNORE_LABEL])
    if bad.size:
        raise CebenchError(f"{path}: mask holds values {bad[:5].tolist()} outside 0..20 and 255")
    return mask


def segmentation_files(voc_root, year, split, *, skip_bad=False):
    """(ids, image paths, mask paths, skipped) of ImageSets/Segmentation/<split>.txt, each file checked."""
    base = year_dir(voc_root, year)

    def check(image_id):
        image_path = base / "JPEGImages" / f"{image_id}.jpg"
        mask_path = base / "SegmentationClass" / f"{image_id}.png"
        size = load_image(image_path, draft=False).size
        mask = load_mask(mask_path)
        if mask.shape[::-1] != size:
            raise CebenchError(f"{mask_path}: mask is {mask.shape[1]}x{mask.shape[0]}, image {size[0]}x{size[1]}")
        return image_path, mask_path

    kept, skipped = _checked(read_image_set(voc_root, year, split, kind="Segmentation"), check, skip_bad)
    if not kept:
        raise CebenchError(f"no usable images in {base}/ImageSets/Segmentation/{split}.txt")
    return [i for i, _ in kept], [p for _, (p, _) in kept], [m for _, (_, m) in kept], skipped


def voc_palette():
    """The VOC colour map (256 RGB triples, the devkit's bit-interleaving rule; 255 void is cream)."""
    palette = np.zeros((256, 3), dtype=np.uint8)
    for label in range(256):
        c, r, g, b = label, 0, 0, 0
        for shift in range(7, -1, -1):
            r |= (c & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        palette[label] = (r, g, b)
    return palette


def save_mask(path, labels):
    """Write a (H, W) label map as a palette PNG that load_mask (and the VOC devkit) read back unchanged."""
    im = Image.fromarray(np.ascontiguousarray(labels, dtype=np.uint8))  # mode 'L'
    im.putpalette(voc_palette().reshape(-1).tolist())  # turns it into mode 'P' with the indices unchanged
    return atomic_write(path, lambda f: im.save(f, format="PNG"))


STAMP_NAME = "synthetic.json"


def synthetic_info(voc_root):
    """The generator stamp of a synthetic dataset given its VOCdevkit (or VOC2007 or out) folder, else None."""
    path = Path(voc_root).resolve()
    for folder in (path, path.parent, path.parent.parent):
        stamp = folder / STAMP_NAME
        if stamp.is_file():
            try:
                return read_json(stamp)
            except (OSError, ValueError):
                return None
    return None
