"""evaluation.metrics.knn / evaluation.retrieval.search: exact search equals brute force; approximate search recalls.

Neighbour lists computed by float32 products of other shapes (blocks, BLAS kernels, libraries) are compared with
`differ_beyond_ties`: rows whose scores tie to float32 rounding may come out in either order on another CPU.
"""

import numpy as np
import pytest

from evaluation.metrics.knn import KnnIndex, differ_beyond_ties, exact_search, recall_at_k, row_norms
from evaluation.retrieval import search


def _brute(gallery, queries, k, metric):
    g, q = gallery.astype(np.float64), queries.astype(np.float64)
    if metric == "cosine":
        sim = (q / np.linalg.norm(q, axis=1, keepdims=True)) @ (g / np.linalg.norm(g, axis=1, keepdims=True)).T
        order = np.argsort(-sim, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(sim, order, 1), order
    dist = ((q[:, None, :] - g[None, :, :]) ** 2).sum(-1)
    order = np.argsort(dist, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(dist, order, 1), order


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_exact_search_matches_brute_force(metric):
    rng = np.random.default_rng(0)
    gallery = rng.standard_normal((700, 48), dtype=np.float32)
    queries = rng.standard_normal((37, 48), dtype=np.float32)
    scores, indices = search(gallery, queries, 9, metric=metric, exact=True)
    ref_scores, ref_indices = _brute(gallery, queries, 9, metric)
    assert scores.dtype == np.float32 and indices.shape == (37, 9)
    assert not differ_beyond_ties(indices, ref_indices, gallery, queries, metric).any()  # float32 vs float64
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-4, atol=1e-4)


def test_exact_search_blocks_agree_with_one_block(monkeypatch):
    """Many gallery and query blocks (heaps merged across blocks) give the one-block answer."""
    import evaluation.metrics.knn as knn

    rng = np.random.default_rng(1)
    gallery = rng.standard_normal((1000, 16), dtype=np.float32)
    queries = rng.standard_normal((300, 16), dtype=np.float32)
    whole = exact_search(gallery, queries, 5, "l2")
    monkeypatch.setattr(knn, "_BLOCK_BYTES", 256 * 16 * 4)  # 256-row gallery blocks x 16-query blocks
    blocked = exact_search(gallery, queries, 5, "l2")
    # other block shapes, other BLAS blocking: the same lists up to the order of rows tied to rounding
    assert not differ_beyond_ties(whole[1], blocked[1], gallery, queries, "l2").any()


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_differ_beyond_ties_forgives_ties_only(metric):
    gallery = np.array([[1, 0], [1, 0], [0, 1], [-1, 0]], dtype=np.float32)  # rows 0 and 1 tie exactly
    queries = np.array([[2, 0], [0, 3]], dtype=np.float32)
    found = np.array([[0, 1], [2, 0]])
    assert not differ_beyond_ties(found, np.array([[1, 0], [2, 0]]), gallery, queries, metric).any()
    assert differ_beyond_ties(found, np.array([[0, 3], [2, 0]]), gallery, queries, metric).tolist() == [True, False]
    assert differ_beyond_ties(found, np.array([[1, 0], [0, 2]]), gallery, queries, metric).tolist() == [False, True]


def test_nearest_of_a_gallery_row_is_itself_and_scores_are_ordered():
    rng = np.random.default_rng(2)
    gallery = rng.standard_normal((200, 32), dtype=np.float32)
    scores, indices = search(gallery, gallery[:20].copy(), 5)
    assert (indices[:, 0] == np.arange(20)).all()
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-5)
    assert (np.diff(scores, axis=1) <= 1e-6).all()  # cosine: larger first
    dist, _ = search(gallery, gallery[:20].copy(), 5, metric="l2")
    assert (np.diff(dist, axis=1) >= -1e-5).all() and (dist >= 0).all()  # l2: smaller first, never negative


def test_zero_rows_do_not_produce_nan():
    gallery = np.zeros((10, 4), dtype=np.float32)
    gallery[3] = [1, 0, 0, 0]
    scores, indices = search(gallery, np.array([[2, 0, 0, 0]], dtype=np.float32), 2)
    assert indices[0, 0] == 3 and np.isfinite(scores).all()
    np.testing.assert_array_equal(row_norms(gallery)[[0, 3]], [0.0, 1.0])


@pytest.mark.parametrize("bad", [
    lambda g, q: (g.astype(np.float64), q, 3),
    lambda g, q: (g, q[:, :5], 3),
    lambda g, q: (g, q, 0),
    lambda g, q: (g, q, 51),
])
def test_bad_inputs_are_refused(bad):
    rng = np.random.default_rng(3)
    g, q = rng.standard_normal((50, 8), dtype=np.float32), rng.standard_normal((4, 8), dtype=np.float32)
    with pytest.raises(ValueError):
        search(*bad(g, q))
    with pytest.raises(ValueError):
        search(g, q, 3, metric="manhattan")


def _clustered(n, dim, rng, centres):
    labels = rng.integers(0, len(centres), n)
    return (centres[labels] + 0.4 * rng.standard_normal((n, dim))).astype(np.float32)


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_search_reaches_its_calibrated_recall(kind):
    rng = np.random.default_rng(4)
    centres = rng.standard_normal((40, 64)) * 2
    gallery, queries = _clustered(2000, 64, rng, centres), _clustered(100, 64, rng, centres)
    index = KnnIndex(gallery, "cosine", kind, pca_dim=32, target_recall=0.95, seed=0)
    scores, found = index.search(queries, 10)
    exact_scores, truth = search(gallery, queries, 10)
    assert recall_at_k(found, truth) >= 0.9
    assert index.params["calibration_recall"] >= 0.95 and index.params["breadth"] >= 1
    # re-ranked with exact scores: every returned score is the true cosine of that pair
    gn = gallery / np.linalg.norm(gallery, axis=1, keepdims=True)
    qn = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    np.testing.assert_allclose(scores, np.einsum("qd,qkd->qk", qn, gn[found]), atol=1e-4)


def test_recall_at_k_counts_overlap():
    assert recall_at_k(np.array([[1, 2, 3], [4, 5, 6]]), np.array([[3, 2, 9], [7, 8, 9]])) == pytest.approx(2 / 6)


def test_speed_benchmark_runs_small(tmp_path):
    """The benchmark entry point end to end at toy size (its numbers mean nothing here)."""
    from evaluation import speed

    report = speed.main(["--gallery", "600", "--queries", "20", "--dim", "64", "--approx-gallery", "3000",
                         "--repeats", "1", "--out", str(tmp_path / "speed.json")])
    # faiss heaps over BLAS blocks vs scikit-learn: the data holds near-ties (cosine gaps of ~2e-6 between
    # neighbours), which either may order differently on another CPU; nothing else may differ
    assert report["exact"]["cosine"]["rows_differing_beyond_ties"] == 0
    assert report["exact"]["l2"]["rows_differing_beyond_ties"] == 0
    assert 0 <= report["approximate"]["recall_at_k"] <= 1 and (tmp_path / "speed.json").is_file()
    assert speed.pool5_like(5, 64, 0).min() >= 0  # ReLU features
    # row i is the same whatever n, to the bit: products in fixed tiles, random streams drawn in order
    whole = speed.pool5_like(3 * speed.ROW_TILE, 64, 0)
    for n in (5, speed.ROW_TILE - 1, speed.ROW_TILE + 1):
        np.testing.assert_array_equal(whole[:n], speed.pool5_like(n, 64, 0))
    blocks = speed.pool5_like(2 * speed.ROW_TILE + 7, 64, 0, block=speed.ROW_TILE + 3)  # tiles restart per block
    np.testing.assert_array_equal(blocks[:speed.ROW_TILE + 5], speed.pool5_like(speed.ROW_TILE + 5, 64, 0,
                                                                               block=speed.ROW_TILE + 3))
