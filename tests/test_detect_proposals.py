"""Selective-search proposals: the verified cache (hit, miss, corrupt entry recomputed) and user proposal files."""

import json
import os
import pickle

import numpy as np
import pytest
from PIL import Image

from cebench.errors import CebenchError
from transfer.detection.proposals import (cached_proposals, load_proposal_file, selective_search_settings, settings_key,
                                          unique_boxes)


@pytest.fixture
def images(tmp_path):
    """Three small images with coloured rectangles on noise."""
    rng = np.random.default_rng(0)
    paths = {}
    for k in range(3):
        image = rng.normal(120, 20, (48, 64, 3))
        image[10 + k:30, 8:40 - k] = (200, 40 + 30 * k, 60)
        path = tmp_path / f"img{k}.jpg"
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(path, quality=95)
        paths[f"{k:06d}"] = path
    return paths


def _entries(cache, settings):
    return sorted((cache / settings_key(settings)).glob("*.npz"))


def test_cache_miss_then_hit(images, tmp_path):
    settings = selective_search_settings(max_boxes=50)
    cache = tmp_path / "cache"
    first, info = cached_proposals(images, cache, settings, workers=1, show_progress=False)
    assert info["computed"] == 3 and info["hits"] == 0 and len(_entries(cache, settings)) == 3
    for image_id, boxes in first.items():
        w, h = Image.open(images[image_id]).size
        assert boxes.dtype == np.float32 and boxes.shape[1] == 4 and 0 < len(boxes) <= 50
        assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
        assert boxes.min() >= 0 and (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all()
    second, info = cached_proposals(images, cache, settings, workers=1, show_progress=False)
    assert info["computed"] == 0 and info["hits"] == 3
    assert all(np.array_equal(first[i], second[i]) for i in images)


def test_other_settings_or_changed_image_miss(images, tmp_path):
    cache = tmp_path / "cache"
    cached_proposals(images, cache, selective_search_settings(max_boxes=50), workers=1, show_progress=False)
    _, info = cached_proposals(images, cache, selective_search_settings(max_boxes=20), workers=1,
                               show_progress=False)
    assert info["computed"] == 3  # other settings, other key
    Image.new("RGB", (64, 48), (10, 200, 30)).save(images["000001"])  # same id, new content
    _, info = cached_proposals(images, cache, selective_search_settings(max_boxes=50), workers=1,
                               show_progress=False)
    assert info["computed"] == 1 and info["hits"] == 2


def test_corrupt_or_foreign_entries_are_recomputed(images, tmp_path):
    settings = selective_search_settings(max_boxes=50)
    cache = tmp_path / "cache"
    first, _ = cached_proposals(images, cache, settings, workers=1, show_progress=False)
    entries = _entries(cache, settings)
    entries[0].write_bytes(b"not a zip file at all")  # damaged
    with open(entries[1], "wb") as f:  # well-formed, but boxes outside the image: never trusted
        np.savez(f, boxes=np.array([[0, 0, 5000, 5000]], np.float32), image_sha256=np.str_(entries[1].stem),
                 image_size=np.array([48, 64]), settings=np.str_(json.dumps(settings, sort_keys=True)))
    again, info = cached_proposals(images, cache, settings, workers=1, show_progress=False)
    assert info["computed"] == 2 and info["hits"] == 1
    assert all(np.array_equal(first[i], again[i]) for i in images)  # seeded: the same boxes come back


def test_parallel_workers_match_one_process(images, tmp_path):
    settings = selective_search_settings(max_boxes=50)
    one, _ = cached_proposals(images, tmp_path / "a", settings, workers=1, show_progress=False)
    two, info = cached_proposals(images, tmp_path / "b", settings, workers=2, show_progress=False)
    assert info["computed"] == 3
    assert all(np.array_equal(one[i], two[i]) for i in images)


def test_unique_boxes_keeps_rank_order():
    boxes = np.array([[3, 3, 9, 9], [0, 0, 5, 5], [3, 3, 9, 9], [1, 1, 2, 2]], np.float32)
    assert unique_boxes(boxes).tolist() == [[3, 3, 9, 9], [0, 0, 5, 5], [1, 1, 2, 2]]


def test_user_npz_and_pkl_are_one_based(tmp_path):
    boxes = {"000001": np.array([[1, 1, 10, 20]], np.float32), "000002": np.zeros((0, 4), np.float32)}
    np.savez(tmp_path / "p.npz", **boxes)
    loaded = load_proposal_file(tmp_path / "p.npz")
    assert loaded["000001"].tolist() == [[0, 0, 10, 20]] and loaded["000002"].shape == (0, 4)
    with open(tmp_path / "p.pkl", "wb") as f:
        pickle.dump({"boxes": [boxes["000001"]], "ids": ["000001"]}, f)
    assert load_proposal_file(tmp_path / "p.pkl")["000001"].tolist() == [[0, 0, 10, 20]]
    assert load_proposal_file(tmp_path / "p.npz", one_based=False)["000001"].tolist() == [[1, 1, 10, 20]]


def test_user_files_that_need_code_or_are_malformed_are_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    with open(tmp_path / "evil.pkl", "wb") as f:
        pickle.dump({"000001": Evil()}, f)
    with pytest.raises(CebenchError, match="evil.pkl"):
        load_proposal_file(tmp_path / "evil.pkl")
    np.savez(tmp_path / "bad.npz", **{"000001": np.zeros((3, 2), np.float32)})
    with pytest.raises(CebenchError, match="bad.npz"):
        load_proposal_file(tmp_path / "bad.npz")
    with pytest.raises(CebenchError, match="not found"):
        load_proposal_file(tmp_path / "missing.npz")
