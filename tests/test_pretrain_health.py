"""Feature health: dead units and the effective rank of pool5, on hand-made activations and a small encoder."""

import numpy as np
import pytest
import torch
from PIL import Image

from pretrain.health import dead_unit_fraction, effective_rank, feature_health, health_views, pca_spectrum
from pretrain.model import AlexNetEncoder


def test_dead_units_are_channels_that_never_fire():
    acts = torch.rand(4, 8, 5, 5) + 0.1
    acts[:, 2] = 0.0  # never fires
    acts[:, 5] = -1.0  # not a ReLU output, but also never positive
    acts[:, 6] = 0.0
    acts[3, 6, 4, 4] = 1e-3  # fires once, at one position of one image: alive
    assert dead_unit_fraction(acts) == pytest.approx(2 / 8)
    assert dead_unit_fraction(torch.zeros(2, 3, 1, 1)) == 1.0


@pytest.mark.parametrize("k", [1, 3, 7])
def test_rank_k_features_have_effective_rank_at_most_k(k):
    gen = torch.Generator().manual_seed(k)
    features = torch.randn(300, k, generator=gen) @ torch.randn(k, 40, generator=gen)  # (N, D) of rank k
    rank = effective_rank(features)
    assert rank <= k + 1e-6
    assert rank > (0.99 if k == 1 else 0.5 * k)  # and not far below: the k directions share the variance


def test_effective_rank_of_isotropic_and_constant_features():
    gen = torch.Generator().manual_seed(0)
    iso = torch.randn(4000, 20, generator=gen)
    assert 19.0 < effective_rank(iso) <= 20.0  # sampling noise keeps the spectrum slightly uneven
    spectrum = pca_spectrum(iso)
    assert spectrum.sum() == pytest.approx(1.0) and torch.all(spectrum[:-1] >= spectrum[1:])
    # standardised: one dimension with a huge scale does not dominate; constant dimensions are ignored
    scaled = torch.cat([iso * torch.tensor([1000.0] + [1.0] * 19), torch.zeros(4000, 5)], dim=1)
    assert effective_rank(scaled) == pytest.approx(effective_rank(iso), rel=1e-6)
    assert effective_rank(torch.ones(10, 4)) == 0.0


def _reference_channel_maxima(encoder, x):
    """Per conv layer the per-channel max of its ReLU output, by running the layers one by one."""
    maxima, relus = [], {id(r) for r in encoder.conv_relus()}
    for layer in encoder.features:
        x = layer(x)
        if id(layer) in relus:
            maxima.append(x.transpose(0, 1).flatten(1).amax(dim=1))
    return maxima


def test_feature_health_of_an_encoder_with_a_dead_channel():
    torch.manual_seed(0)
    encoder = AlexNetEncoder("caffenet", width=0.25)
    with torch.no_grad():
        encoder.conv_layers()[2].bias[0] = -1e6  # conv3, channel 0: dead for any input
    views = torch.randint(0, 256, (12, 3, 67, 67), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    health = feature_health(encoder, views, torch.device("cpu"), batch_size=5)
    from pretrain.data import normalize

    with torch.no_grad():
        reference = _reference_channel_maxima(encoder.eval(), normalize(views, torch.device("cpu")))
    for k, maxima in enumerate(reference):
        assert health["dead_units"][f"conv{k + 1}"] == pytest.approx(float((maxima <= 0).float().mean()))
    assert health["dead_units"]["conv3"] >= 1 / len(reference[2])
    assert 1.0 <= health["pool5_effective_rank"] <= 12  # at most the number of images
    assert 0 < health["pool5_top_pc_share"] <= 1 and health["n_images"] == 12 and health["image_size"] == 67
    assert encoder.training is False  # left as found (eval() above)
    encoder.train()
    feature_health(encoder, views[:3], torch.device("cpu"))
    assert encoder.training


def test_health_views_are_seeded_centre_crops(tmp_path):
    paths = []
    for i in range(6):
        path = tmp_path / f"{i}.png"
        Image.fromarray(np.full((40, 60 + i, 3), 40 * i, dtype=np.uint8)).save(path)
        paths.append(path)
    views = health_views(paths, 4, 32, seed=3)
    assert views.shape == (4, 3, 32, 32) and views.dtype == torch.uint8
    assert torch.equal(views, health_views(paths, 4, 32, seed=3))
    assert len({int(v[0, 0, 0]) for v in views}) == 4  # four distinct images
    assert health_views(paths, 10, 32).shape[0] == 6  # at most every image once
