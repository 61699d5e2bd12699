"""evaluation.experiments.features: HOG and pool5 of the context, streamed in batches, with the hole applied."""

import numpy as np
import pytest
import torch
from PIL import Image

from evaluation.experiments.features import (HOG_PARAMS, Extractor, center_on_gallery, extract_features, hog_of_context,
                                 hole_mask, load_square)
from pretrain.model import AlexNetEncoder


@pytest.fixture()
def image_files(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(5):
        size = (80 + 8 * i, 64)  # not square: resized and centre-cropped
        path = tmp_path / f"{i:03d}.jpg"
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def test_hog_shape_follows_the_cells():
    image = torch.randint(0, 255, (3, 64, 64), dtype=torch.uint8)
    feats = hog_of_context(image, hole_mask(64))
    cells = 64 // HOG_PARAMS["pixels_per_cell"][0]
    blocks = cells - HOG_PARAMS["cells_per_block"][0] + 1
    assert feats.dtype == np.float32 and feats.shape == (blocks * blocks * 4 * HOG_PARAMS["orientations"],)


def test_hog_ignores_what_is_inside_the_hole():
    rng = np.random.default_rng(1)
    a = torch.from_numpy(rng.integers(0, 255, (3, 64, 64), dtype=np.uint8))
    b = a.clone()
    b[:, 16:48, 16:48] = 255 - b[:, 16:48, 16:48]  # change only the hole
    np.testing.assert_array_equal(hog_of_context(a, hole_mask(64)), hog_of_context(b, hole_mask(64)))
    c = a.clone()
    c[:, :4, :] = 0  # change the context
    assert not np.array_equal(hog_of_context(a, hole_mask(64)), hog_of_context(c, hole_mask(64)))


def test_load_square_is_a_centre_crop(image_files):
    image = load_square(image_files[3], 32)
    assert image.shape == (3, 32, 32) and image.dtype == torch.uint8


def test_pool5_features_stream_in_batches_and_agree(image_files):
    encoder = AlexNetEncoder(width=0.25)
    extractor = Extractor("pool5", encoder)
    whole = extract_features(image_files, extractor, 96, batch_size=8, workers=0, show_progress=False)
    pieces = extract_features(image_files, extractor, 96, batch_size=2, workers=0, show_progress=False)
    c, h, w = encoder.feature_shape(96)
    assert whole.shape == (5, c * h * w) and whole.dtype == np.float32
    np.testing.assert_allclose(whole, pieces, rtol=1e-4, atol=1e-5)
    capped = extract_features(image_files, extractor, 96, batch_size=2, workers=0, max_batches=2,
                              show_progress=False)
    np.testing.assert_allclose(capped, whole[:4], rtol=1e-4, atol=1e-5)


def test_hog_extractor_in_workers(image_files):
    feats = extract_features(image_files, Extractor("hog"), 64, batch_size=2, workers=1, show_progress=False)
    direct = hog_of_context(load_square(image_files[4], 64), hole_mask(64))
    np.testing.assert_allclose(feats[4], direct)


def test_centering_uses_the_gallery_mean_in_place():
    gallery = np.array([[1.0, 2.0], [3.0, 4.0]], dtype=np.float32)
    queries = np.array([[2.0, 3.0]], dtype=np.float32)
    mean = center_on_gallery(gallery, queries)
    np.testing.assert_allclose(mean, [2.0, 3.0])
    np.testing.assert_allclose(gallery.mean(0), 0.0)
    np.testing.assert_allclose(queries, 0.0)


def test_unknown_feature_kind_is_refused():
    with pytest.raises(ValueError):
        Extractor("sift")
    with pytest.raises(ValueError):
        Extractor("pool5")  # no encoder
