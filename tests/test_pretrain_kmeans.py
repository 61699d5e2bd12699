"""Krähenbühl et al.'s k-means init (pretrain.kmeans, --weights kmeans): normalised layers, seeded, filters that
are k-means centres of whitened patches, and its record meta."""

import numpy as np
import pytest
import torch
from PIL import Image

from cebench.errors import CebenchError
from pretrain.kmeans import KMEANS, input_patches, kmeans_encoder, layer_inputs, whitened_kmeans_filters
from pretrain.weights import load_encoder

ARCH = {"arch": "caffenet", "width": 0.25}


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Twelve 72x64 images with smooth structure (gradients and blobs), enough patches for a width-0.25 net."""
    folder, rng, paths = tmp_path_factory.mktemp("img"), np.random.default_rng(0), []
    yy, xx = np.mgrid[0:64, 0:72] / 64.0
    for i in range(12):
        base = np.stack([np.sin(xx * (i + 1) + c) + np.cos(yy * (3 - c) * (i % 4 + 1)) for c in range(3)], -1)
        pixels = np.clip(127 + 60 * base + rng.normal(0, 10, base.shape), 0, 255).astype(np.uint8)
        paths.append(folder / f"{i}.jpg")
        Image.fromarray(pixels).save(paths[-1])
    return paths


def test_kmeans_layers_are_normalised_seeded_and_recorded(images):
    encoder, info = load_encoder(KMEANS, arch=ARCH, seed=3, train_images=images, image_size=64)
    assert info["init"] == KMEANS and info["source"] == KMEANS and info["arch"]["width"] == 0.25
    meta = info["meta"]
    assert meta["init_label"] == KMEANS and meta["n_images"] == 12 and meta["image_size"] == 64
    assert meta["wall_time_s"] >= 0 and meta["images_seen"] == 12 and len(meta["layers"]) == 5
    assert "MiniBatchKMeans" in meta["method"]
    # within-layer normalisation: every unit's pre-activation on the images has mean 0 and std 1 (float32
    # convolutions over ~10^4 values: 1e-3 covers summation order on any CPU or thread count)
    from pretrain.kmeans import training_images
    x, _ = training_images(images, 64, seed=3)
    for conv in encoder.conv_layers():
        out = conv(layer_inputs(encoder, conv, x)).detach().transpose(0, 1).flatten(1)
        assert torch.allclose(out.mean(1), torch.zeros(len(out)), atol=1e-3)
        assert torch.allclose(out.std(1), torch.ones(len(out)), atol=1e-3)
    again, _ = load_encoder(KMEANS, arch=ARCH, seed=3, train_images=images, image_size=64)
    assert all(torch.equal(a, b) for a, b in zip(encoder.state_dict().values(), again.state_dict().values(),
                                                 strict=True))  # deterministic under the seed


def test_filters_are_centres_of_whitened_clusters():
    # two tight clusters of patches along directions e0 and e1 (and noise): the two filters pick them apart
    rng = np.random.default_rng(0)
    centres = np.eye(6)[:2] * 5
    patches = np.concatenate([c + rng.normal(0, 0.1, (200, 6)) for c in centres])
    filters = whitened_kmeans_filters(patches, 2, seed=0)
    responses = (patches - patches.mean(0)) @ filters.T  # (400, 2)
    assert np.allclose(responses.std(0), 1.0, atol=1e-6)  # each filter scaled to a unit-std response
    first, second = responses[:200].mean(0), responses[200:].mean(0)
    assert np.sign(first[0]) != np.sign(second[0]) and abs(first[0] - second[0]) > 1.5  # separates the clusters


def test_patches_follow_the_groups_of_a_grouped_convolution():
    conv = torch.nn.Conv2d(4, 6, 3, padding=1, groups=2)
    inputs = torch.arange(1, 5, dtype=torch.float32).view(1, 4, 1, 1).expand(2, 4, 5, 5)  # channel c holds c + 1
    groups = input_patches(inputs, conv, max_patches=1000, generator=torch.Generator().manual_seed(0))
    assert len(groups) == 2 and groups[0].shape == (50, 18) and groups[1].shape == (50, 18)
    assert set(np.unique(groups[0])) == {0, 1, 2} and set(np.unique(groups[1])) == {0, 3, 4}  # 0: the padding
    capped = input_patches(inputs, conv, max_patches=20, generator=torch.Generator().manual_seed(0))
    assert capped[0].shape[0] == 20


def test_kmeans_needs_training_images(images):
    with pytest.raises(CebenchError, match="training images"):
        load_encoder(KMEANS, arch=ARCH)
    with pytest.raises(CebenchError, match="no images"):
        kmeans_encoder(load_encoder("random", arch=ARCH)[0], [], 64)
