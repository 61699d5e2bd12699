"""The Semantic Boundaries Dataset (Hariharan et al., ICCV 2011): the extra segmentation masks FCN trains on.

SBD's `dataset/` folder holds `cls/<id>.mat` (a MATLAB struct `GTcls` whose `Segmentation` field is an (H, W)
uint8 map of class indices 0..20, VOC's classes, with no void border), `img/<id>.jpg` (VOC2011 images) and the
lists `train.txt` (8,498 ids) and `val.txt` (2,857). The masks are read directly with `scipy.io.loadmat`; nothing is
converted to PNG. `training_files` merges them with a VOC split as FCN does: VOC's own mask wins for an image in both
(it has the void borders), and every image of the scored split is dropped (FCN's seg11valid is VOC2011 val minus
SBD train; training on SBD val without this would train on test images).
"""

from pathlib import Path

import numpy as np

from cebench.errors import CebenchError
from voc.devkit import IGNORE_LABEL, VOC_CLASSES, _checked, load_image, load_mask

SPLITS = ("train", "val")


def read_ids(sbd_root, split):
    """The ids of SBD's <split>.txt (dataset/train.txt or val.txt), in file order."""
    path = Path(sbd_root) / f"{split}.txt"
    if not path.is_file():
        raise CebenchError(f"SBD list not found: {path} (pass SBD's dataset/ folder, the one holding cls/ and "
                           "train.txt, as --sbd-root)")
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]


def load_sbd_mask(path):
    """An SBD cls/<id>.mat as an (H, W) uint8 array of class indices (0 background, 1..20 VOC's classes)."""
    from scipy.io import loadmat  # scipy is required; imported here as only SBD needs its MATLAB reader

    path = Path(path)
    if not path.is_file():
        raise CebenchError(f"SBD mask not found: {path}")
    try:
        gt = loadmat(str(path))["GTcls"]
        mask = np.asarray(gt["Segmentation"][0, 0])
    except (OSError, ValueError, KeyError, IndexError, TypeError, NotImplementedError) as err:
        raise CebenchError(f"{path}: not an SBD class mask (a GTcls struct with Segmentation: {err})") from None
    if mask.ndim != 2 or mask.size == 0:
        raise CebenchError(f"{path}: GTcls.Segmentation is {mask.shape}, expected an (H, W) map")
    bad = np.setdiff1d(np.unique(mask), np.r_[np.arange(len(VOC_CLASSES) + 1), IGNORE_LABEL])
    if bad.size:
        raise CebenchError(f"{path}: mask holds values {bad[:5].tolist()} outside 0..20 and 255")
    return mask.astype(np.uint8)


def load_any_mask(path):
    """A VOC palette PNG or an SBD .mat, as (H, W) uint8 class indices."""
    return load_sbd_mask(path) if Path(path).suffix == ".mat" else load_mask(path)


def sbd_files(sbd_root, ids, voc_images=None, *, skip_bad=False):
    """(ids, image paths, mask paths, skipped) of SBD `ids`, each file checked. The image is VOC's JPEGImages/<id>.jpg
    when `voc_images` holds it (the same picture), else SBD's img/<id>.jpg."""
    root = Path(sbd_root)

    def check(image_id):
        image_path = Path(voc_images or root / "img") / f"{image_id}.jpg"
        if not image_path.is_file():
            image_path = root / "img" / f"{image_id}.jpg"
        mask_path = root / "cls" / f"{image_id}.mat"
        size = load_image(image_path).size
        mask = load_sbd_mask(mask_path)
        if mask.shape[::-1] != size:
            raise CebenchError(f"{mask_path}: mask is {mask.shape[1]}x{mask.shape[0]}, image {size[0]}x{size[1]}")
        return image_path, mask_path

    kept, skipped = _checked(ids, check, skip_bad)
    return [i for i, _ in kept], [p for _, (p, _) in kept], [m for _, (_, m) in kept], skipped


def extra_training_ids(sbd_root, splits, voc_train_ids, scored_ids):
    """SBD ids to add to a VOC training split, and how many each rule took out (FCN's merge)."""
    listed = list(dict.fromkeys(i for split in splits for i in read_ids(sbd_root, split)))
    voc_train, scored = set(voc_train_ids), set(scored_ids)
    in_scored = [i for i in listed if i in scored]
    in_voc = [i for i in listed if i in voc_train and i not in scored]
    extra = [i for i in listed if i not in voc_train and i not in scored]
    counts = {"sbd_listed": len(listed), "sbd_in_test_split_dropped": len(in_scored),
              "sbd_already_in_voc_train": len(in_voc), "sbd_added": len(extra)}
    return extra, counts
