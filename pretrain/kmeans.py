"""Krähenbühl et al.'s data-dependent k-means initialisation (ICLR 2016; their code `magic_init.py -t kmeans`).

For each of conv1..conv5 in order, with the layers below already initialised: patches of the layer's input on
seeded training images, centred and whitened (PCA onto the layer's number of output channels of leading
directions, scaled to unit variance), each whitened patch L2-normalised, clustered by scikit-learn's
MiniBatchKMeans into as many centres as the layer (its group, for a grouped convolution) has output channels; the
centres mapped back to patch space are the filters, each scaled to a unit-std response, zero bias; then the
within-layer normalisation (as transfer.rescale.normalize_layers_: zero-mean, unit-std pre-activations on the
images) before the next layer sees them. The transfer stages then treat the encoder like `random`: every layer
normalised on the task's data and the between-layer rescaling (transfer.rescale) on top.
"""

import time

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.cluster import MiniBatchKMeans

from cebench.errors import CebenchError
from cebench.flags import KMEANS
from cebench.logs import progress
from pretrain.data import normalize, read_image

N_IMAGES = 128  # training images the patches and the normalisation come from (fewer when the split has fewer)
MAX_PATCHES = 10_000  # patches clustered per layer and group (10k x 2,304 dims: ~90 MB at conv3 full width)
MAX_SIZE = 227  # images at most 227 px (AlexNet's input), whatever the task's scale: the cost stays bounded
EIG_FLOOR, EIG_EPS = 1e-6, 1e-3  # magic_init's whitening: drop eigenvalues below 1e-6, 1/sqrt(s + 1e-3) for the rest


def training_images(paths, size, n=N_IMAGES, seed=0):
    """A seeded choice of `n` training images: shorter side resized to `size`, centre square, normalised
    (N, 3, S, S); and their paths."""
    if not paths:
        raise CebenchError("--weights kmeans: the training split has no images to cluster patches of")
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(len(paths), size=min(n, len(paths)), replace=False).tolist())
    crops = []
    for i in chosen:
        image = read_image(paths[i], size)  # (h, w, 3) uint8, shorter side = size
        top, left = (image.shape[0] - size) // 2, (image.shape[1] - size) // 2
        crops.append(torch.from_numpy(np.ascontiguousarray(image[top:top + size, left:left + size].transpose(2, 0, 1))))
    return normalize(torch.stack(crops), torch.device("cpu")), [str(paths[i]) for i in chosen]


class _Stop(Exception):
    pass


@torch.no_grad()
def layer_inputs(encoder, conv, images):
    """The input of `conv` (N, C, H, W) when `images` go through the encoder (stops there)."""
    captured = {}

    def hook(module, inputs):
        captured["x"] = inputs[0].detach().clone()
        raise _Stop

    handle = conv.register_forward_pre_hook(hook)
    try:
        encoder(images)
    except _Stop:
        pass
    finally:
        handle.remove()
    return captured["x"]


def input_patches(inputs, conv, max_patches, generator, chunk=16):
    """A seeded sample of about `max_patches` patches of a conv's input: per group (P, C_in/g * k * k), float64.

    Unfolded `chunk` images at a time (conv1's patches of 128 images at 227 px would be 0.5 GB at once)."""
    per_chunk = -(-max_patches * chunk // len(inputs))
    rows = []
    for start in range(0, len(inputs), chunk):
        cols = F.unfold(inputs[start:start + chunk], conv.kernel_size, padding=conv.padding, stride=conv.stride)
        flat = cols.transpose(1, 2).reshape(-1, cols.shape[1])  # (n*L, C_in*k*k), channel-major columns
        rows.append(flat[torch.randperm(len(flat), generator=generator)[:per_chunk]])
    flat = torch.cat(rows)[:max_patches]
    per_group = flat.shape[1] // conv.groups
    return [flat[:, g * per_group:(g + 1) * per_group].double().numpy() for g in range(conv.groups)]


def whitened_kmeans_filters(patches, n_out, seed):
    """magic_init's `initializeWeight(D, 'kmeans', n_out)`: (n_out, D) filters from k-means of whitened patches."""
    data = patches - patches.mean(axis=0, keepdims=True)
    eigval, eigvec = np.linalg.eigh(data.T @ data)
    keep = np.argsort(eigval)[-n_out:]  # the leading directions, at most n_out of them
    eigval, eigvec = eigval[keep], eigvec[:, keep]
    scale = np.where(eigval >= EIG_FLOOR, 1.0 / np.sqrt(np.maximum(eigval, 0) + EIG_EPS), 0.0)
    white = data @ (eigvec * scale)  # (P, r)
    white /= np.maximum(np.linalg.norm(white, axis=1, keepdims=True), 1e-12)
    km = MiniBatchKMeans(n_clusters=n_out, batch_size=10 * white.shape[1], random_state=seed, n_init=1)
    centres = km.fit(white).cluster_centers_  # (n_out, r)
    filters = (centres * scale) @ eigvec.T  # back to patch space: (n_out, D)
    response_std = (data @ filters.T).std(axis=0)
    return filters / np.maximum(response_std, 1e-12)[:, None]


@torch.no_grad()
def _normalise_(conv, inputs, eps=1e-8):
    """Scale a conv so its units' pre-activations on `inputs` have zero mean and unit std (normalize_layers_'s
    rule; pretrain does not import transfer); returns the mean std before."""
    out = conv(inputs).transpose(0, 1).flatten(1)  # (C, N*H*W)
    mean, std = out.mean(dim=1), out.std(dim=1).clamp_min(eps)
    conv.weight.div_(std.view(-1, 1, 1, 1))
    conv.bias.copy_((conv.bias - mean) / std)
    return float(std.mean())


def kmeans_init_(encoder, images, seed=0, max_patches=MAX_PATCHES):
    """k-means filters for every conv of `encoder` in order, each layer then normalised on `images`; a summary."""
    gen = torch.Generator().manual_seed(seed)
    encoder.eval()
    layers = []
    for i, conv in enumerate(progress(encoder.conv_layers(), desc="k-means init", unit="layer")):
        inputs = layer_inputs(encoder, conv, images)
        out_per_group = conv.out_channels // conv.groups
        weights = []
        for g, patches in enumerate(input_patches(inputs, conv, max_patches, gen)):
            if len(patches) < out_per_group:
                raise CebenchError(f"--weights kmeans: conv{i + 1} has {out_per_group} filters but only "
                                   f"{len(patches)} patches (more or larger training images needed)")
            filters = whitened_kmeans_filters(patches, out_per_group, seed + 10 * i + g)
            weights.append(filters)
        with torch.no_grad():
            conv.weight.copy_(torch.from_numpy(np.concatenate(weights)).view_as(conv.weight))
            conv.bias.zero_()
        _normalise_(conv, inputs)
        layers.append({"layer": f"conv{i + 1}", "patches": len(patches), "dims": int(patches.shape[1]),
                       "groups": conv.groups, "centres_per_group": out_per_group})
    return layers


def kmeans_encoder(encoder, paths, size, seed=0, n_images=N_IMAGES):
    """Krähenbühl's k-means init of a fresh encoder on training images at `paths` -> (encoder, meta for records)."""
    started = time.time()
    size = min(int(size), MAX_SIZE)
    images, chosen = training_images(paths, size, n_images, seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        layers = kmeans_init_(encoder, images, seed)
    meta = {"init_label": KMEANS, "method": "Krähenbühl et al. 2016 k-means init (magic_init -t kmeans): per conv "
            "layer in order, input patches PCA-whitened onto out_channels directions and L2-normalised, "
            "sklearn MiniBatchKMeans centres as filters (unit response std, zero bias), then the layer normalised "
            "to zero-mean unit-std pre-activations", "seed": seed, "n_images": len(chosen), "image_size": size,
            "images": "shorter side resized, centre square, of a seeded choice of the task's training images",
            "max_patches": MAX_PATCHES, "layers": layers,
            "wall_time_s": round(time.time() - started, 2), "device": "cpu", "images_seen": len(chosen)}
    return encoder, meta
