"""Feature health of an AlexNet encoder (issue 15): dead units per conv layer and the effective rank of pool5.

    views = health_views(image_paths, 400, input_size, seed=0)       # fixed, seeded centre crops, uint8
    health = feature_health(encoder, views, device)                   # one pass, a few seconds on a CPU

A unit (channel) is dead when its ReLU output is <= 0 at every position of every image: it passes no signal and
receives no gradient. The effective rank of pool5 is exp(entropy) of the PCA spectrum of the standardised
pool5 features, normalised to sum 1 (Roy & Vetterli 2007, on the variance spectrum): D for isotropic features,
1 when one direction holds all the variance. Collapsed features (issue 15: ~6-10 after short pretraining,
against ~60 at random init) show up here before any transfer runs.
"""

import numpy as np
import torch

from cebench.errors import CebenchError
from pretrain.data import normalize, read_image



def dead_unit_fraction(activations):
    """Share of channels of ReLU outputs (N, C, H, W) that never fire (max <= 0 over images and positions)."""
    per_channel_max = activations.transpose(0, 1).flatten(1).amax(dim=1)  # (C,)
    return float((per_channel_max <= 0).float().mean())


def pca_spectrum(features):
    """Variance share of each principal component of standardised features (N, D), largest first."""
    x = features.flatten(1).double()
    x = x - x.mean(dim=0)
    std = x.std(dim=0)
    x = x[:, std > 0] / std[std > 0]  # constant dimensions (dead units) carry no variance and no direction
    if x.shape[1] == 0 or x.shape[0] < 2:
        return torch.zeros(0, dtype=torch.float64)
    variances = torch.linalg.svdvals(x).pow(2)  # eigenvalues of the covariance, up to 1/(N-1)
    return variances / variances.sum()


def effective_rank(features):
    """exp(entropy) of the normalised PCA spectrum of standardised features (N, D); 0 for constant features."""
    share = pca_spectrum(features)
    share = share[share > 0]
    return float(torch.exp(-(share * share.log()).sum())) if share.numel() else 0.0


def health_views(image_paths, n, size, seed=0):
    """uint8 (n', 3, size, size): centre crops of n' = min(n, #paths) seeded distinct images, shorter side `size`."""
    paths = list(image_paths)
    chosen = np.sort(np.random.default_rng([seed, 15]).choice(len(paths), min(n, len(paths)), replace=False))
    crops = []
    for i in chosen:
        try:
            image = read_image(paths[i], size)  # (H, W, 3), shorter side = size
        except CebenchError:
            continue  # a diagnostic never stops a run: the data path reports (or skips) unreadable files itself
        top, left = (image.shape[0] - size) // 2, (image.shape[1] - size) // 2
        crops.append(torch.from_numpy(np.ascontiguousarray(image[top:top + size, left:left + size].transpose(2, 0, 1))))
    return torch.stack(crops) if crops else None  # None: nothing readable to measure on


@torch.no_grad()
def feature_health(encoder, views, device, batch_size=50):
    """Dead-unit fractions of conv1..conv5 and pool5's effective rank and top-component share on uint8 views."""
    was_training = encoder.training
    encoder.eval()
    maxima = {}

    def keep_max(name, output):  # (N, C, H, W) -> running per-channel maximum, so no activation map is kept
        batch_max = output.detach().transpose(0, 1).flatten(1).amax(dim=1)
        maxima[name] = batch_max if name not in maxima else torch.maximum(maxima[name], batch_max)

    hooks = [relu.register_forward_hook(lambda m, i, o, name=f"conv{k + 1}": keep_max(name, o))
             for k, relu in enumerate(encoder.conv_relus())]
    try:
        pool5 = torch.cat([encoder(normalize(batch, device)).flatten(1).float().cpu()
                           for batch in views.split(batch_size)])  # (N, C*h*w)
    finally:
        for h in hooks:
            h.remove()
        encoder.train(was_training)
    share = pca_spectrum(pool5)
    return {"dead_units": {name: dead_unit_fraction(m.view(1, -1, 1, 1)) for name, m in maxima.items()},
            "pool5_effective_rank": round(effective_rank(pool5), 3),
            "pool5_top_pc_share": round(float(share[0]), 4) if share.numel() else None,
            "pool5_dim": int(pool5.shape[1]), "n_images": int(views.shape[0]), "image_size": int(views.shape[-1])}


def health_record(encoder, image_paths, n, size, *, seed, device, source, weights):
    """The `feature_health` field of a transfer record: feature_health on `n` fixed views of the task's training
    images (`source` names them), with which weights it measured (e.g. "after Krähenbühl rescaling"); None if n=0."""
    views = health_views(image_paths, n, size, seed) if n > 0 else None
    if views is None:
        return None
    health = feature_health(encoder, views, device)
    return dict(health, images=f"{health['n_images']} seeded centre crops at {size} px of {source}", weights=weights)
