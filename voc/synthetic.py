"""A deterministic synthetic PASCAL VOC devkit: the data of the `smoke` profile, made in seconds on a CPU.

Six VOC classes, each drawn as its own family of shapes, colours and textures (so classification, detection
and segmentation are learnable), pasted 1-3 per image on textured backgrounds (so inpainting has structure),
written in the VOC2007 layout that every VOC reader of this project accepts. Same seed, same bytes.

    python -m voc.synthetic --out data/smoke
    python -m voc.synthetic --out /tmp/voc-synth --n-train 40 --n-val 20 --size 96 --seed 1
"""

import argparse
import colorsys
import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from cebench.errors import CebenchError, run_cli
from cebench.files import atomic_write_text, check_writable, write_error
from cebench.logs import progress
from voc.devkit import STAMP_NAME, VOC_CLASSES, save_mask
from voc.shapes import CLASSES, draw_object

# written into every stamp and XML since v1 (when the generator lived in transfer/): kept so existing
# datasets stay valid and their bytes identical
GENERATOR = "transfer.synthetic"
GENERATOR_VERSION = 1  # bump when the drawing changes: a stamp with another version is not reused
DIFFICULT_RATE = 0.12  # share of objects drawn small and faint, flagged difficult (VOC2007 trainval: ~11%)
JPEG_QUALITY = 90  # as voc-mini


def _random_colour(rng):
    return np.array(colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.05, 0.5), rng.uniform(0.25, 0.95)),
                    dtype=np.float32)


def background(w, h, rng):
    """A textured scene without objects: gradient, stripes, smooth blobs or a horizon, plus noise."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32) / max(w, h)
    theta = rng.uniform(0, 2 * np.pi)
    along = xx * np.cos(theta) + yy * np.sin(theta)
    along = (along - along.min()) / max(float(np.ptp(along)), 1e-6)
    kind = rng.integers(4)
    if kind == 0:
        mix = along
    elif kind == 1:
        mix = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(3, 10) * along + rng.uniform(0, 2 * np.pi))
    elif kind == 2:
        k = int(rng.integers(3, 8))
        low = Image.fromarray((rng.random((k, k)) * 255).astype(np.uint8))
        mix = np.asarray(low.resize((w, h), Image.Resampling.BICUBIC), dtype=np.float32) / 255.0
    else:
        horizon = rng.uniform(0.3, 0.7) * h / max(w, h)
        mix = 1.0 / (1.0 + np.exp(-(yy - horizon) * rng.uniform(20, 80)))
    mix = mix[..., None]
    img = _random_colour(rng) * (1 - mix) + _random_colour(rng) * mix
    img += rng.normal(0, rng.uniform(0.01, 0.05), img.shape).astype(np.float32)
    return np.clip(img, 0, 1)


def _visible_ok(owner, full_areas, min_fraction=0.55, min_pixels=30):
    """Every object keeps enough of itself visible after occlusion and cropping."""
    counts = np.bincount(owner[owner >= 0].ravel(), minlength=len(full_areas))
    return all(n >= min_pixels and n >= min_fraction * a for n, a in zip(counts, full_areas, strict=True))


def _paste(img, owner, k, rgb, mask, x0, y0, opacity):
    """Alpha-paste object `k` with its top-left corner at (x0, y0), clipped to the image; returns copies."""
    H, W = owner.shape
    h, w = mask.shape
    ys, xs = slice(max(0, y0), min(H, y0 + h)), slice(max(0, x0), min(W, x0 + w))
    oy, ox = slice(ys.start - y0, ys.stop - y0), slice(xs.start - x0, xs.stop - x0)
    img, owner = img.copy(), owner.copy()
    m = mask[oy, ox]
    img[ys, xs][m] = img[ys, xs][m] * (1 - opacity) + rgb[oy, ox][m] * opacity
    owner[ys, xs][m] = k
    return img, owner


def make_scene(w, h, rng):
    """One image: (H, W, 3) float RGB, per-pixel object owner (-1 background), and its object list."""
    img, owner = background(w, h, rng), np.full((h, w), -1, dtype=np.int16)
    n_objects = int(rng.choice([1, 2, 3], p=[0.5, 0.3, 0.2]))
    objects, full_areas = [], []
    for k in range(n_objects):
        name = CLASSES[rng.integers(len(CLASSES))]
        difficult = k > 0 and rng.random() < DIFFICULT_RATE  # the first object is always a clear one
        scale = rng.uniform(0.12, 0.2) if difficult else rng.uniform(0.35, 0.7) * (1.0, 0.85, 0.75)[k]
        rgb, mask, pose = draw_object(name, scale * max(w, h), rng)
        mh, mw = mask.shape
        for _ in range(10):  # a few placements; an object that cannot be placed visibly is left out
            x0 = int(rng.integers(-mw // 6, max(w - mw + mw // 6, -mw // 6) + 1))
            y0 = int(rng.integers(-mh // 6, max(h - mh + mh // 6, -mh // 6) + 1))
            new_img, new_owner = _paste(img, owner, len(objects), rgb, mask, x0, y0, 0.6 if difficult else 1.0)
            if _visible_ok(new_owner, [*full_areas, int(mask.sum())]):
                truncated = x0 < 0 or y0 < 0 or x0 + mw > w or y0 + mh > h
                img, owner = new_img, new_owner
                objects.append({"name": name, "pose": pose, "truncated": int(truncated), "difficult": int(difficult)})
                full_areas.append(int(mask.sum()))
                break
    for k, obj in enumerate(objects):  # VOC boxes bound the visible pixels, 1-based and inclusive
        ys, xs = np.nonzero(owner == k)
        obj["bbox"] = (int(xs.min()) + 1, int(ys.min()) + 1, int(xs.max()) + 1, int(ys.max()) + 1)
    return img, owner, objects


def class_mask(owner, objects):
    """VOC class indices per pixel (0 background); difficult objects and a band at every edge are 255 (void)."""
    labels = np.zeros(owner.shape, dtype=np.uint8)
    for k, obj in enumerate(objects):
        labels[owner == k] = 255 if obj["difficult"] else VOC_CLASSES.index(obj["name"]) + 1
    # Both pixels on either side of a change of owner: a 2 px void border, VOC's ~5 px at 500 px scaled down.
    band = np.zeros(owner.shape, dtype=bool)
    step_x, step_y = owner[:, :-1] != owner[:, 1:], owner[:-1, :] != owner[1:, :]
    band[:, :-1] |= step_x
    band[:, 1:] |= step_x
    band[:-1, :] |= step_y
    band[1:, :] |= step_y
    labels[band] = 255
    return labels


def annotation_xml(image_id, width, height, objects, segmented):
    """The VOC2007 annotation of one image, laid out like the devkit's files."""
    parts = [f"<annotation>\n\t<folder>VOC2007</folder>\n\t<filename>{image_id}.jpg</filename>\n"
             "\t<source>\n\t\t<database>cebench synthetic VOC (not PASCAL VOC)</database>\n"
             f"\t\t<annotation>{GENERATOR}</annotation>\n\t\t<image>generated</image>\n\t</source>\n"
             f"\t<size>\n\t\t<width>{width}</width>\n\t\t<height>{height}</height>\n\t\t<depth>3</depth>\n\t</size>\n"
             f"\t<segmented>{int(segmented)}</segmented>\n"]
    for obj in objects:
        x1, y1, x2, y2 = obj["bbox"]
        parts.append(f"\t<object>\n\t\t<name>{obj['name']}</name>\n\t\t<pose>{obj['pose']}</pose>\n"
                     f"\t\t<truncated>{obj['truncated']}</truncated>\n\t\t<difficult>{obj['difficult']}</difficult>\n"
                     f"\t\t<bndbox>\n\t\t\t<xmin>{x1}</xmin>\n\t\t\t<ymin>{y1}</ymin>\n"
                     f"\t\t\t<xmax>{x2}</xmax>\n\t\t\t<ymax>{y2}</ymax>\n\t\t</bndbox>\n\t</object>\n")
    parts.append("</annotation>\n")
    return "".join(parts)


def _image_size(size, rng):
    """(width, height) with the longer side `size`: mostly landscape, like VOC's 500x375 photos."""
    short = int(round(size * rng.uniform(0.66, 0.85)))
    r = rng.random()
    return (size, short) if r < 0.7 else (short, size) if r < 0.9 else (size, size)


def _split_ids(n_train, n_val, seg_fraction, seed):
    """Ids per split (sorted) and the set of ids that get a segmentation mask."""
    ids = [f"{i + 1:06d}" for i in range(n_train + n_val)]
    rng = np.random.default_rng([seed, 0])
    order = rng.permutation(len(ids))
    splits = {"train": sorted(ids[i] for i in order[:n_train]), "val": sorted(ids[i] for i in order[n_train:])}
    segmented = set()
    for split in ("train", "val"):
        k = int(round(seg_fraction * len(splits[split])))
        segmented.update(str(i) for i in rng.choice(splits[split], size=k, replace=False))
    return ids, splits, segmented


def _write_lists(root, splits, objects_of, segmented):
    """ImageSets/Main (split lists and <class>_<split>.txt flags) and ImageSets/Segmentation."""
    splits = {**splits, "trainval": sorted(splits["train"] + splits["val"])}
    for split, ids in splits.items():
        atomic_write_text(root / "ImageSets/Main" / f"{split}.txt", "".join(f"{i}\n" for i in ids))
        seg_ids = [i for i in ids if i in segmented]
        atomic_write_text(root / "ImageSets/Segmentation" / f"{split}.txt", "".join(f"{i}\n" for i in seg_ids))
        for name in VOC_CLASSES:
            lines = []
            for i in ids:  # 1: a clear object of the class, 0: only difficult ones, -1: none
                flags = [1 - o["difficult"] for o in objects_of[i] if o["name"] == name]
                lines.append(f"{i} {(1 if any(flags) else 0) if flags else -1:>2}\n")
            atomic_write_text(root / "ImageSets/Main" / f"{name}_{split}.txt", "".join(lines))


README = """SYNTHETIC DATA -- this is NOT PASCAL VOC.

Generated by `python -m voc.synthetic` (cebench) with settings {settings}.
It follows the VOCdevkit layout (VOCdevkit/VOC2007) so that every stage of the pipeline runs on it
unchanged, but its images are drawn shapes: {classes} on gradient, striped, blotchy or horizon
backgrounds, 1-3 objects per image, about {difficult:.0%} of the extra objects small, faint and flagged
difficult (void in the masks). The other 14 VOC classes never occur. Masks have a 2 px void (255) border
at every object edge, like real VOC masks.

Numbers measured on these data check that the pipeline runs end to end. They say nothing about how well
context-encoder features transfer to real images: use the voc-mini or paper profile for that.
"""


def generate(out, *, n_train, n_val, size, seed, seg_fraction):
    """Write the synthetic VOCdevkit into the (new) folder `out`; returns per-class object counts."""
    root = Path(out) / "VOCdevkit" / "VOC2007"
    for sub in ("JPEGImages", "Annotations", "SegmentationClass", "ImageSets/Main", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    ids, splits, segmented = _split_ids(n_train, n_val, seg_fraction, seed)
    objects_of = {}
    for index, image_id in enumerate(progress(ids, desc="synthetic VOC", unit="img")):
        rng = np.random.default_rng([seed, 1, index])  # one stream per image: images do not depend on counts
        w, h = _image_size(size, rng)
        img, owner, objects = make_scene(w, h, rng)
        Image.fromarray(np.round(img * 255).astype(np.uint8)).save(root / "JPEGImages" / f"{image_id}.jpg",
                                                                   quality=JPEG_QUALITY)
        if image_id in segmented:
            save_mask(root / "SegmentationClass" / f"{image_id}.png", class_mask(owner, objects))
        xml = annotation_xml(image_id, w, h, objects, image_id in segmented)
        (root / "Annotations" / f"{image_id}.xml").write_text(xml)
        objects_of[image_id] = objects
    _write_lists(root, splits, objects_of, segmented)
    counts = {name: sum(o["name"] == name for objs in objects_of.values() for o in objs) for name in CLASSES}
    return {"n_images": len(ids), "n_segmented": len(segmented), "objects_per_class": counts}


def _existing_state(out, settings):
    """'new' (absent or empty), 'reuse' (same stamp) or a reason why the folder is something else."""
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return "new"
    try:
        stamp = json.loads((out / STAMP_NAME).read_text())
    except (OSError, json.JSONDecodeError):
        return "it has no readable synthetic.json stamp"
    if stamp.get("settings") != settings:
        return f"it was generated with other settings {stamp.get('settings')}"
    return "reuse" if (out / "VOCdevkit" / "VOC2007" / "Annotations").is_dir() else "its VOCdevkit is missing"


def get_args_parser():
    parser = argparse.ArgumentParser(
        prog="python -m voc.synthetic",
        description="Generate the synthetic VOCdevkit of the smoke profile (deterministic: same seed, same bytes). "
                    "An existing folder with the same settings is reused; anything else is refused unless "
                    "--overwrite.", formatter_class=argparse.ArgumentDefaultsHelpFormatter, allow_abbrev=False)
    parser.add_argument("--out", required=True, help="folder to create; the devkit goes to OUT/VOCdevkit/VOC2007")
    parser.add_argument("--n-train", type=int, default=300, help="images in ImageSets/Main/train.txt")
    parser.add_argument("--n-val", type=int, default=100, help="images in ImageSets/Main/val.txt")
    parser.add_argument("--size", type=int, default=128, help="longer image side in pixels")
    parser.add_argument("--seg-fraction", type=float, default=0.5,
                        help="share of each split with a SegmentationClass mask (listed in ImageSets/Segmentation)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing different dataset at --out")
    return parser


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    out = Path(args.out).resolve()
    if args.n_train < 1 or args.n_val < 1 or args.size < 32 or not 0 < args.seg_fraction <= 1:
        raise CebenchError("need --n-train >= 1, --n-val >= 1, --size >= 32 and 0 < --seg-fraction <= 1")
    settings = {"generator": GENERATOR, "version": GENERATOR_VERSION, "seed": args.seed,
                "n_train": args.n_train, "n_val": args.n_val, "size": args.size, "seg_fraction": args.seg_fraction}
    state = _existing_state(out, settings)
    if state == "reuse":
        print(f"synthetic VOC: reusing {out} (same settings)")
        return {"root": str(out), "voc_root": str(out / "VOCdevkit"), "reused": True, **settings}
    if state != "new":
        foreign = sorted(p.name for p in out.iterdir() if p.name not in ("VOCdevkit", "README.txt", STAMP_NAME))
        if not args.overwrite or foreign:
            why = f"it also holds {foreign[:3]}" if foreign else "pass --overwrite to replace it"
            raise CebenchError(f"{out} exists and is not this synthetic dataset ({state}); {why}")
    # Build next to the target and move it in at the end: an interrupted run leaves no half dataset at --out.
    partial = check_writable(out.parent) / f".{out.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    try:
        summary = generate(partial, n_train=args.n_train, n_val=args.n_val, size=args.size, seed=args.seed,
                           seg_fraction=args.seg_fraction)
        atomic_write_text(partial / "README.txt", README.format(
            settings=json.dumps(settings), difficult=DIFFICULT_RATE, classes=", ".join(CLASSES)))
        atomic_write_text(partial / STAMP_NAME, json.dumps({"settings": settings, **summary}, indent=2) + "\n")
    except OSError as err:  # a full disk or a read-only folder: one line, and no half dataset left behind
        shutil.rmtree(partial, ignore_errors=True)
        raise write_error(err.filename or partial, err) from None
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out)
    partial.rename(out)
    print(f"synthetic VOC: wrote {summary['n_images']} images ({summary['n_segmented']} with masks) to "
          f"{out / 'VOCdevkit'} -- SYNTHETIC data, not PASCAL VOC")
    return {"root": str(out), "voc_root": str(out / "VOCdevkit"), "reused": False, **settings, **summary}


if __name__ == "__main__":
    run_cli(main)
