"""Object proposals for Fast R-CNN: selective search (OpenCV contrib, fast mode), cached per image, or a user's file.

Boxes everywhere in this module are float32 arrays [K, 4] of (x1, y1, x2, y2) in *continuous* pixel
coordinates of the image as stored on disk: a VOC box (xmin, ymin, xmax, ymax), 1-based and inclusive, is
(xmin - 1, ymin - 1, xmax, ymax) here, so width = x2 - x1 as torchvision.ops expects.

Cache layout: ``<cache_dir>/<settings key>/<sha256 of the image bytes>.npz`` with ``boxes``, ``image_sha256``,
``image_size`` (h, w) and ``settings`` (JSON). The key changes with any setting or OpenCV version, the file name
with any change of the image, and every entry is verified on load; a missing or damaged one is recomputed.
"""

import ctypes
import ctypes.util
import hashlib
import json
import pickle
import zipfile
from multiprocessing import get_all_start_methods, get_context
from pathlib import Path

import numpy as np

from cebench.deps import install_hint, installed
from cebench.errors import CebenchError
from cebench.files import atomic_write, atomic_write_text, make_dirs
from cebench.images import read_rgb
from cebench.logs import progress

CACHE_FORMAT = "cebench.proposals.v1"


SELECTIVE_SEARCH_NEEDS = "detection's selective search (OpenCV's contrib module, cv2.ximgproc)"


def opencv_with_contrib():
    """cv2 with its contrib module (selective search), or None when it is not installed."""
    if not installed("cv2"):
        return None
    import cv2

    return cv2 if hasattr(cv2, "ximgproc") else None


def selective_search_settings(mode="fast", max_side=500, max_boxes=2000, min_size=2):
    """The settings that define a proposal cache entry (plain dict, part of the cache key). Without OpenCV here,
    "opencv" is None, and `cached_proposals` reads the cache that some OpenCV version wrote with these settings."""
    if mode not in ("fast", "quality"):
        raise ValueError(f"selective search mode must be 'fast' or 'quality', got {mode!r}")
    cv2 = opencv_with_contrib()
    return {"method": "opencv-selective-search", "mode": mode, "max_side": int(max_side),
            "max_boxes": int(max_boxes), "min_size": float(min_size), "opencv": cv2.__version__ if cv2 else None,
            "format": CACHE_FORMAT}


def settings_key(settings):
    """Short stable hash of the settings: the cache's sub-folder name."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


def _seed_libc_rand(seed):
    """OpenCV ranks regions with C rand() (level × rand): seeding it makes the ranking reproducible."""
    name = ctypes.util.find_library("c")
    try:
        ctypes.CDLL(name).srand(ctypes.c_uint(seed))
        return True
    except (OSError, AttributeError, TypeError):  # no C library reachable: order stays OpenCV's unseeded one
        return False


def unique_boxes(boxes):
    """Drop exact duplicates, keeping the first occurrence (the ranking order)."""
    _, first = np.unique(boxes, axis=0, return_index=True)
    return boxes[np.sort(first)]


def selective_search(image_bgr, settings, seed=0):
    """Selective-search boxes [K, 4] (ranking order) of one BGR uint8 image, in its own pixel coordinates."""
    import cv2

    cv2.setNumThreads(1)  # one process per core already; OpenCV's own threads would oversubscribe
    h, w = image_bgr.shape[:2]
    # Speed: search a copy whose longer side is at most max_side and map the boxes back (documented trade-off;
    # VOC images are <= 500 px, so the default leaves them unchanged).
    scale = min(1.0, settings["max_side"] / max(h, w))
    small = image_bgr if scale == 1.0 else cv2.resize(image_bgr, (max(1, round(w * scale)), max(1, round(h * scale))),
                                                      interpolation=cv2.INTER_AREA)
    search = cv2.ximgproc.segmentation.createSelectiveSearchSegmentation()
    search.setBaseImage(small)
    if settings["mode"] == "fast":
        search.switchToSelectiveSearchFast()
    else:
        search.switchToSelectiveSearchQuality()
    _seed_libc_rand(seed)
    rects = search.process().astype(np.float32).reshape(-1, 4)  # (x, y, w, h) in the small image
    boxes = np.concatenate([rects[:, :2], rects[:, :2] + rects[:, 2:]], axis=1) / scale
    boxes[:, 0::2] = boxes[:, 0::2].clip(0, w)
    boxes[:, 1::2] = boxes[:, 1::2].clip(0, h)
    boxes = unique_boxes(boxes)
    keep = ((boxes[:, 2] - boxes[:, 0]) >= settings["min_size"]) & ((boxes[:, 3] - boxes[:, 1]) >= settings["min_size"])
    return boxes[keep][: settings["max_boxes"]].astype(np.float32)


def _decode(data, path):
    """BGR uint8 (H, W, 3), as OpenCV's selective search takes it, decoded by cebench.images (the suite's one
    reader; on VOC's JPEGs its pixels equal cv2.imdecode's)."""
    return np.ascontiguousarray(np.asarray(read_rgb(path, data=data)[0])[:, :, ::-1])


def _entry_ok(entry, sha, settings):
    """True when a loaded cache entry belongs to this image and these settings and holds sane boxes."""
    try:
        boxes, size = entry["boxes"], entry["image_size"]
        same = str(entry["image_sha256"]) == sha and json.loads(str(entry["settings"])) == settings
    except (KeyError, ValueError):
        return False
    if not same or boxes.dtype != np.float32 or boxes.ndim != 2 or boxes.shape[1] != 4 or size.shape != (2,):
        return False
    h, w = size
    return bool(np.isfinite(boxes).all() and (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
                and (boxes >= 0).all() and (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all())


def read_cache_entry(path, sha, settings):
    """Boxes of a verified cache entry, or None when it is missing, damaged or belongs to something else."""
    try:
        with np.load(path, allow_pickle=False) as entry:
            loaded = {k: entry[k] for k in entry.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError):
        return None
    return loaded["boxes"] if _entry_ok(loaded, sha, settings) else None


def write_cache_entry(path, boxes, sha, image_size, settings):
    """Write one entry atomically (cebench.files), so readers never see half a file."""
    atomic_write(path, lambda f: np.savez(f, boxes=boxes.astype(np.float32), image_sha256=np.str_(sha),
                                          image_size=np.asarray(image_size, np.int64),
                                          settings=np.str_(json.dumps(settings, sort_keys=True))))


def _compute_entry(job):
    """Worker: selective search on one image, written to the cache; returns (image_id, boxes)."""
    image_id, image_path, sha, entry_path, settings = job
    image = _decode(Path(image_path).read_bytes(), image_path)
    boxes = selective_search(image, settings, seed=int(sha[:8], 16))  # seed from content: same image, same boxes
    write_cache_entry(Path(entry_path), boxes, sha, image.shape[:2], settings)
    return image_id, boxes


def _pool_context():
    """fork where available: spawn would re-import the caller's whole program (torch and all) in every worker.
    The workers only run OpenCV, so forking a process that has loaded torch is safe here."""
    return get_context("fork") if "fork" in get_all_start_methods() else get_context("spawn")


def _cache_of_any_opencv(cache_dir, settings):
    """Settings of the cache folder that some OpenCV version wrote with `settings` otherwise (the one holding the
    most entries; ties: the newest), or `settings` unchanged when there is none."""
    found = []
    for path in sorted(Path(cache_dir).glob("*/settings.json")):
        try:
            written = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(written, dict) and dict(written, opencv=None) == settings and written.get("opencv"):
            found.append((len(list(path.parent.glob("*.npz"))), path.stat().st_mtime, written))
    return max(found, key=lambda f: f[:2])[2] if found else settings


def _missing_opencv(n_missing, n_images, cache_dir):
    return CebenchError(f"{n_missing} of {n_images} images have no cached selective-search proposals in {cache_dir}, "
                        f"and {SELECTIVE_SEARCH_NEEDS} is not installed here ({install_hint('cv2')}; "
                        "an opencv-python without contrib has no selective search), or pass --proposals FILE")


def cached_proposals(images, cache_dir, settings, workers=2, show_progress=True):
    """Proposals for {image_id: image path}: cache hits are verified and reused, the rest computed in parallel.
    OpenCV is needed only for the rest: without it (settings' "opencv" None) the cache of the same settings that
    any OpenCV version wrote is read, and a miss is one line.

    Returns ({image_id: boxes}, {"hits": n, "computed": n, "cache_dir": str, "settings": the cache's settings}).
    """
    if settings["opencv"] is None:
        settings = _cache_of_any_opencv(cache_dir, settings)
    folder = Path(cache_dir) / settings_key(settings)
    if settings["opencv"] is not None:
        make_dirs(folder)
        # settings.json says what the key stands for
        atomic_write_text(folder / "settings.json", json.dumps(settings, indent=2, sort_keys=True) + "\n")
    out, jobs = {}, []
    for image_id, image_path in progress(images.items(), enabled=show_progress, desc="proposals: check cache",
                                         leave=False):
        try:
            sha = hashlib.sha256(Path(image_path).read_bytes()).hexdigest()
        except OSError as err:
            raise CebenchError(f"{image_path}: cannot read image ({err.strerror})") from None
        entry_path = folder / f"{sha}.npz"
        boxes = read_cache_entry(entry_path, sha, settings)
        if boxes is None:
            jobs.append((image_id, str(image_path), sha, str(entry_path), settings))
        else:
            out[image_id] = boxes
    if jobs and settings["opencv"] is None:
        raise _missing_opencv(len(jobs), len(images), cache_dir)
    if jobs:
        bar = progress(total=len(jobs), enabled=show_progress, desc=f"selective search ({workers} workers)")
        if workers > 1:
            with _pool_context().Pool(workers) as pool:
                for image_id, boxes in pool.imap_unordered(_compute_entry, jobs, chunksize=4):
                    out[image_id] = boxes
                    bar.update()
        else:
            for job in jobs:
                image_id, boxes = _compute_entry(job)
                out[image_id] = boxes
                bar.update()
        bar.close()
    return out, {"hits": len(images) - len(jobs), "computed": len(jobs), "cache_dir": str(folder),
                 "settings": settings}


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles only plain containers and numpy arrays: a proposals file must not run code."""

    _ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
                ("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "scalar"),
                ("numpy._core.multiarray", "scalar"), ("builtins", "dict"), ("builtins", "list")}

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _as_mapping(obj, path):
    """{id: boxes}, or Detectron's {'boxes': [...], 'ids'|'indexes': [...]} -> {str id: array}."""
    if isinstance(obj, dict) and "boxes" in obj and ("ids" in obj or "indexes" in obj):
        ids = obj.get("ids", obj.get("indexes"))
        if len(ids) != len(obj["boxes"]):
            raise CebenchError(f"{path}: {len(ids)} ids but {len(obj['boxes'])} box arrays")
        obj = dict(zip(ids, obj["boxes"], strict=True))
    if not isinstance(obj, dict):
        raise CebenchError(f"{path}: expected a mapping of image id -> boxes [K, 4]")
    return {str(k.item() if isinstance(k, np.generic) else k): v for k, v in obj.items()}


def load_proposal_file(path, one_based=True):
    """User proposals (.npz keyed by image id, or .pkl) -> {image_id: boxes [K, 4] continuous coordinates}.

    Boxes are (x1, y1, x2, y2) in the image's pixels; with `one_based` (default) in VOC's 1-based inclusive
    convention, as in the annotations, otherwise already 0-based continuous.
    """
    path = Path(path)
    if not path.is_file():
        raise CebenchError(f"proposals file not found: {path}")
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as data:
                raw = {k: data[k] for k in data.files}
        elif path.suffix in (".pkl", ".pickle"):
            with open(path, "rb") as f:
                raw = _ArrayUnpickler(f).load()
        else:
            raise CebenchError(f"{path}: proposals must be a .npz or .pkl file")
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError) as err:
        raise CebenchError(f"{path}: not a readable proposals file ({str(err)[:160]})") from None
    out = {}
    for image_id, boxes in _as_mapping(raw, path).items():
        boxes = np.asarray(boxes, dtype=np.float32)
        if boxes.size == 0:
            boxes = boxes.reshape(0, 4)
        if boxes.ndim != 2 or boxes.shape[1] < 4 or not np.isfinite(boxes[:, :4]).all():
            raise CebenchError(f"{path}: boxes of image {image_id} must be a finite [K, 4] array, got {boxes.shape}")
        boxes = boxes[:, :4].copy()
        if one_based:
            boxes[:, :2] -= 1.0
        out[image_id] = boxes
    return out


def clip_and_filter(boxes, height, width, min_size=1.0):
    """Clip boxes into an image of (height, width) and drop those thinner than min_size pixels."""
    boxes = boxes.copy()
    boxes[:, 0::2] = boxes[:, 0::2].clip(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clip(0, height)
    keep = ((boxes[:, 2] - boxes[:, 0]) >= min_size) & ((boxes[:, 3] - boxes[:, 1]) >= min_size)
    return boxes[keep]
