"""Ways to fill the central hole of held-out images (paper Table 1): paste a nearest neighbour's region, or decode.

Every fill keeps the context pixels of the query and replaces only the hole; fills are float (N, 3, S, S) in [0, 1].
"""

import numpy as np
import torch

from cebench.logs import progress
from cebench.runtime import default_num_workers, worker_seed_init
from evaluation.experiments.features import hole_mask, load_square
from evaluation.metrics.inpainting import hole_errors
from pretrain.data import denormalize, normalize
from pretrain.masks import apply_mask


class QueryAndNeighbour(torch.utils.data.Dataset):
    """Index i -> (query i, its nearest gallery image), both uint8 (3, S, S)."""

    def __init__(self, query_paths, gallery_paths, nearest, size):
        self.query_paths, self.gallery_paths = list(query_paths), list(gallery_paths)
        self.nearest, self.size = np.asarray(nearest), int(size)

    def __len__(self):
        return len(self.nearest)

    def __getitem__(self, i):
        query = load_square(self.query_paths[i], self.size)
        return query, load_square(self.gallery_paths[int(self.nearest[i])], self.size)


def paste(images, sources, mask):
    """images with their hole replaced by the same region of `sources` ((N, 3, S, S), one dtype)."""
    return torch.where(mask, sources, images)


@torch.inference_mode()
def decode(model, images, mask, device):
    """The context encoder's reconstruction of the hole, pasted into the context: float (N, 3, S, S) in [0, 1]."""
    x = apply_mask(normalize(images, device), mask.to(device))  # the hole = 0 = the dataset mean, as in training
    recon = denormalize(model(x).float()).cpu()  # (N, 3, S, S) in [0, 1]
    return paste(images.float() / 255.0, recon, mask)


def to_uint8(images):
    """float [0, 1] -> uint8, for figures."""
    return (images.clamp(0, 1) * 255.0).round().to(torch.uint8)


def evaluate_fills(query_paths, gallery_paths, nearest, size, *, model=None, device=None, batch_size=32,
                   workers=None, show_progress=True, keep=()):
    """Per-image hole errors of NN pasting (and of the decoder when `model`), plus the fills of images `keep`.

    Returns ({"nn": {l1, l2, psnr arrays}, "decoder": ...}, {"input"/"original"/"nn"/"decoder": [uint8]}).
    """
    workers = default_num_workers() if workers is None else workers
    loader = torch.utils.data.DataLoader(QueryAndNeighbour(query_paths, gallery_paths, nearest, size),
                                         batch_size=batch_size, num_workers=workers,
                                         worker_init_fn=worker_seed_init)
    mask = hole_mask(int(size))  # (1, 1, S, S)
    methods = ["nn"] + (["decoder"] if model is not None else [])
    errors = {m: {"l1": [], "l2": [], "psnr": []} for m in methods}
    examples = {name: [] for name in ["input", "nn", *methods[1:], "original"]}
    keep, start = set(int(i) for i in keep), 0
    if model is not None:
        model = model.to(device).eval()
    for queries, neighbours in progress(loader, enabled=show_progress, desc="inpainting", unit="batch"):
        fills = {"nn": paste(queries, neighbours, mask).float() / 255.0}
        if model is not None:
            fills["decoder"] = decode(model, queries, mask, device)
        target = queries.float() / 255.0
        for method, filled in fills.items():
            for name, values in hole_errors(filled, target, mask).items():
                errors[method][name].append(values)
        for j in range(len(queries)):
            if start + j in keep:
                examples["input"].append(queries[j])
                examples["original"].append(queries[j])
                for method, filled in fills.items():
                    examples[method].append(to_uint8(filled[j]))
        start += len(queries)
    return {m: {k: np.concatenate(v) for k, v in e.items()} for m, e in errors.items()}, examples
