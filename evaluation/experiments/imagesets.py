"""Gallery and query (held-out) images for retrieval and inpainting: VOC splits with labels, or any folder.

Every image a run will read is decoded once up front, as the transfers check their splits (voc.devkit), so a
damaged file stops the run at once with one line naming it, not inside a DataLoader worker halfway through.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cebench.errors import CebenchError
from cebench.logs import progress
from pretrain.data import list_images
from voc.devkit import VOC_CLASSES, load_image, load_split, dataset_name as voc_dataset_name


@dataclass
class ImageSet:
    """Image ids and paths, with VOC labels [N, 20] in 1/0/-1 when known (None for an unlabelled folder)."""

    ids: list
    paths: list
    labels: np.ndarray = None
    source: str = ""

    def __len__(self):
        return len(self.ids)

    def subset(self, n, seed):
        """A seeded random subset of at most n images, kept in the original order (n=None keeps all)."""
        if n is None or n >= len(self):
            return self
        keep = np.sort(np.random.default_rng(seed).choice(len(self), n, replace=False))
        labels = None if self.labels is None else self.labels[keep]
        return ImageSet([self.ids[i] for i in keep], [self.paths[i] for i in keep], labels,
                        f"{self.source}, {n} drawn with seed {seed}")


def voc_images(voc_root, year, split):
    """A VOC split (ImageSets/Main/<split>.txt) with its image labels (images checked later: see check_images)."""
    s = load_split(voc_root, year, split, check_images=False)
    return ImageSet(list(s.ids), list(s.image_paths), s.labels, f"VOC{year} {split}")


def folder_images(root, image_list=None):
    """Every JPEG/PNG under a folder (recursive), optionally only the ids (file stems) of a list file."""
    paths = list_images(root, image_list)
    return ImageSet([p.stem for p in paths], paths, None, f"{root}" + (f" ({image_list})" if image_list else ""))


def gallery_and_queries(cfg):
    """(gallery, queries) of a resolved config: VOC splits, or a folder split by id lists (queries drawn with the
    seed when unlisted). Keys: voc_root, year, gallery_split, query_split, images, gallery_list, query_list,
    max_gallery, max_queries, seed."""
    images, seed, max_queries = cfg["images"], cfg["seed"], cfg["max_queries"]
    gallery_list, query_list = cfg["gallery_list"], cfg["query_list"]
    if images:
        if query_list:
            queries = folder_images(images, query_list)
            gallery = folder_images(images, gallery_list) if gallery_list else folder_images(images)
        elif gallery_list:
            gallery = folder_images(images, gallery_list)
            queries = folder_images(images)
        else:  # no lists: a seeded draw of queries, the rest is the gallery
            everything = folder_images(images)
            queries = everything.subset(max_queries or max(1, len(everything) // 5), seed)
            gallery = everything
        held = set(queries.ids)
        keep = [i for i, image_id in enumerate(gallery.ids) if image_id not in held]
        gallery = ImageSet([gallery.ids[i] for i in keep], [gallery.paths[i] for i in keep], None, gallery.source)
    else:
        year, gallery_split, query_split = cfg["year"], cfg["gallery_split"], cfg["query_split"]
        gallery = voc_images(cfg["voc_root"], year, gallery_split)
        queries = voc_images(cfg["voc_root"], year, query_split)
        overlap = set(gallery.ids) & set(queries.ids)
        if overlap:
            raise CebenchError(f"VOC{year} splits {gallery_split!r} and {query_split!r} share {len(overlap)} images; "
                               "queries must be held out from the gallery")
    if len(gallery) == 0 or len(queries) == 0:
        raise CebenchError(f"empty gallery ({len(gallery)}) or query set ({len(queries)})")
    gallery, queries = gallery.subset(cfg["max_gallery"], seed), queries.subset(max_queries, seed + 1)
    for images, name in ((gallery, "gallery"), (queries, "query")):
        check_images(images, name)
    return gallery, queries


def check_images(images, name="image"):
    """Decode every image of a set as the transfers' up-front check does (voc.devkit.load_image with draft: a
    JPEG at 1/8 scale, every byte still read): an unreadable file is a CebenchError naming it, before any work."""
    for path in progress(images.paths, desc=f"checking {name} images", unit="img", leave=False):
        load_image(path, draft=True)


def present(labels):
    """Bool [N, 20]: the image holds an object of the class (difficult ones included)."""
    return np.asarray(labels) >= 0


def class_names():
    return list(VOC_CLASSES)


def dataset_name(cfg):
    """Name of the data in records: VOC<year>, or the image folder's name."""
    return Path(cfg["images"]).name if cfg.get("images") else voc_dataset_name(cfg["voc_root"], cfg["year"])
