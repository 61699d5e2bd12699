"""k-nearest-neighbour search with faiss: exact (BLAS blocks + faiss heaps) or approximate (PCA + IVF/HNSW + re-rank).

Exact search streams the gallery in blocks: one float32 matrix product of the queries with a block (the
machine's BLAS, the same one a plain ``queries @ gallery.T`` uses) and faiss's k-selection heaps over it, so it
runs at matrix-product speed and never holds the full ``[Q, G]`` score matrix. Cosine scores divide each column
by the gallery row's norm, so the gallery is never copied.

Approximate search (for galleries of ~10^5 and more) compresses the normalised gallery with PCA (scikit-learn's
randomized PCA on a sample; faiss's own PCA eigendecomposes the full 9,216² covariance, minutes), indexes the
compressed vectors with faiss IVF-Flat or HNSW under L2 (for unit vectors L2 order = cosine order), and re-ranks
a short list of candidates with exact scores against the original gallery (faiss ``*_by_idx``). The search
breadth (``nprobe`` / ``efSearch``) is calibrated at build time on gallery rows used as queries (self excluded)
to reach ``target_recall`` at k=10 against exact search.
"""

import math
from contextlib import contextmanager

import numpy as np
from sklearn.decomposition import PCA


class _Faiss:
    """faiss, imported at its first use, so that modules importing this one run without it. A pure module imports
    nothing of ours: the stages that search check for faiss first, with one line naming the package
    (cebench.deps.require in retrieval and inpainting)."""

    def __getattr__(self, name):
        import faiss

        return getattr(faiss, name)


faiss = _Faiss()

METRICS = ("cosine", "l2")
KINDS = ("flat", "ivf", "hnsw")
_BLOCK_BYTES = 256 << 20  # gallery rows per BLAS block (~256 MB): few large products, bounded extra memory


def _check_inputs(gallery, queries, k):
    for name, x in (("gallery", gallery), ("queries", queries)):
        if not isinstance(x, np.ndarray) or x.ndim != 2 or x.dtype != np.float32:
            raise ValueError(f"{name} must be a 2-D float32 numpy array, got {getattr(x, 'dtype', type(x))} "
                             f"{getattr(x, 'shape', '')}")
    if gallery.shape[1] != queries.shape[1]:
        raise ValueError(f"gallery has dimension {gallery.shape[1]} but queries {queries.shape[1]}")
    if not 1 <= k <= len(gallery):
        raise ValueError(f"k={k} must be in [1, {len(gallery)}] (the gallery size)")


def _check_metric(metric):
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; use one of {METRICS}")


def squared_norms(x):
    """Squared L2 norm of every row (float32 [N]), with faiss's multithreaded SIMD kernel (numpy's is one core)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    out = np.empty(len(x), dtype=np.float32)
    faiss.fvec_norms_L2sqr(faiss.swig_ptr(out), faiss.swig_ptr(x), x.shape[1], len(x))
    return out


def row_norms(x):
    """L2 norm of every row (float32 [N])."""
    return np.sqrt(squared_norms(x))


def _inverse(norms):
    """1/norm, with 0 for all-zero rows so that their cosine scores are 0 rather than NaN."""
    return np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)


def normalized(x):
    """Unit-norm copy of the rows of x (all-zero rows stay zero)."""
    return np.ascontiguousarray(x * _inverse(row_norms(x))[:, None], dtype=np.float32)


@contextmanager
def _faiss_threads(n):
    """faiss's OpenMP thread count inside the block; restored after."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def exact_search(gallery, queries, k, metric="cosine", gallery_norms=None):
    """Exact top-k: blocked float32 products and faiss heaps. Cosine/IP: larger first; l2: squared, smaller first."""
    _check_metric(metric)
    _check_inputs(gallery, queries, k)
    nq, dim = queries.shape
    queries = normalized(queries) if metric == "cosine" else np.ascontiguousarray(queries)
    if metric == "cosine":
        column_scale = _inverse(gallery_norms if gallery_norms is not None else row_norms(gallery))
    else:  # ||q - g||^2 ranks like ||g||^2 - 2 q.g; ||q||^2 is added back at the end
        gallery_sq = squared_norms(gallery)
    result = faiss.ResultHeap(nq, k, keep_max=metric != "l2")
    block_rows = max(256, _BLOCK_BYTES // (4 * dim))
    query_rows = max(1, _BLOCK_BYTES // (4 * block_rows))  # bounds the [queries, block] score matrix too
    # The BLAS threads own the cores; the heaps (~1% of the work) run on one thread, so that faiss's OpenMP
    # workers never spin on cores that the next block's matrix product needs.
    buffer = np.empty(min(nq, query_rows) * min(len(gallery), block_rows), dtype=np.float32)  # reused scores
    with _faiss_threads(1):
        for j0 in range(0, len(gallery), block_rows):
            block = gallery[j0:j0 + block_rows]
            for i0 in range(0, nq, query_rows):
                part = queries[i0:i0 + query_rows]
                scores = buffer[:len(part) * len(block)].reshape(len(part), len(block))
                np.matmul(part, block.T, out=scores)  # (q, b) float32, numpy's BLAS
                if metric == "cosine":
                    scores *= column_scale[j0:j0 + block_rows]
                else:
                    scores *= -2.0
                    scores += gallery_sq[j0:j0 + block_rows]
                result.heaps.addn(len(block), faiss.swig_ptr(scores), j0, i0, len(scores))
        result.finalize()
    scores, indices = result.D, result.I
    if metric == "l2":
        scores += squared_norms(queries)[:, None]
        np.maximum(scores, 0.0, out=scores)  # rounding can dip just below zero for duplicates
    return scores, indices


class KnnIndex:
    """A gallery prepared for repeated k-NN queries; `kind` flat (exact), ivf or hnsw (approximate).

    Approximate kinds are calibrated to `target_recall` on gallery rows; the default sits a little above 0.95
    because held-out queries come out slightly harder than gallery rows (measured: ~0.01 lower).
    """

    def __init__(self, gallery, metric="cosine", kind="flat", *, pca_dim=256, nlist=None, hnsw_m=32,
                 target_recall=0.96, n_train=None, seed=0):
        _check_metric(metric)
        if kind not in KINDS:
            raise ValueError(f"unknown index kind {kind!r}; use one of {KINDS}")
        _check_inputs(gallery, gallery[:1], 1)
        gallery = np.ascontiguousarray(gallery)  # no copy for a C-ordered array or memmap
        self.gallery, self.metric, self.kind = gallery, metric, kind
        self.rerank, self.seed = 4, seed  # shortlist = rerank x k candidates, re-ranked exactly; calibrated
        self.norms = row_norms(gallery) if metric == "cosine" else None
        self.params = {"kind": kind, "metric": metric}
        if kind != "flat":
            self._build_compressed(pca_dim, nlist, hnsw_m, n_train)
            self.params["breadth"] = self.calibrate(target_recall)

    @property
    def exact(self):
        return self.kind == "flat"

    def search(self, queries, k):
        """(scores, indices) [Q, k], nearest first; exact scores even in approximate mode (re-ranked)."""
        _check_inputs(self.gallery, queries, k)
        if self.exact:
            return exact_search(self.gallery, queries, k, self.metric, gallery_norms=self.norms)
        return self._approximate_search(queries, k)

    # --- approximate mode ---
    def _prepare(self, x):
        """Rows as the compressed index sees them: unit-norm for cosine, then PCA-projected (float32)."""
        x = normalized(x) if self.metric == "cosine" else x
        if self.pca is None:
            return np.ascontiguousarray(x, dtype=np.float32)
        return np.ascontiguousarray((x - self.pca_mean) @ self.pca_components.T, dtype=np.float32)

    def _build_compressed(self, pca_dim, nlist, hnsw_m, n_train):
        size, dim = self.gallery.shape
        rng = np.random.default_rng(self.seed)
        nlist = nlist or int(min(4096, max(1, 2 ** round(math.log2(2 * math.sqrt(size))))))
        nlist = max(1, min(nlist, size // 39))  # faiss k-means wants >= 39 training points per centroid
        n_train = min(size, n_train or max(40 * nlist, 10000))
        sample = self.gallery[np.sort(rng.choice(size, n_train, replace=False))]
        self.pca = None
        if pca_dim and pca_dim < dim:
            n_pca = min(len(sample), 4096)
            pca = PCA(pca_dim, svd_solver="randomized", random_state=self.seed)
            pca.fit(normalized(sample[:n_pca]) if self.metric == "cosine" else sample[:n_pca])
            self.pca, self.pca_mean = pca, pca.mean_.astype(np.float32)
            self.pca_components = pca.components_.astype(np.float32)  # (pca_dim, dim)
            self.params["pca_explained_variance"] = round(float(pca.explained_variance_ratio_.sum()), 4)
        reduced_dim = pca_dim if self.pca is not None else dim
        if self.kind == "ivf":
            self.index = faiss.index_factory(reduced_dim, f"IVF{nlist},Flat", faiss.METRIC_L2)
            self.index.cp.seed = self.seed
            self.index.train(self._prepare(sample))
            self.params.update(nlist=nlist)
        else:
            self.index = faiss.IndexHNSWFlat(reduced_dim, hnsw_m)
            self.index.hnsw.efConstruction = 80
            self.params.update(hnsw_m=hnsw_m, ef_construction=80)
        block_rows = max(1, _BLOCK_BYTES // (4 * dim))
        for j0 in range(0, size, block_rows):
            self.index.add(self._prepare(self.gallery[j0:j0 + block_rows]))
        self.params.update(pca_dim=reduced_dim, n_train=n_train)

    def _set_breadth(self, breadth):
        if self.kind == "ivf":
            self.index.nprobe = int(breadth)
        else:
            self.index.hnsw.efSearch = int(breadth)
        self.breadth = int(breadth)

    def _approximate_search(self, queries, k, shortlist=None):
        shortlist = min(len(self.gallery), shortlist or max(self.rerank * k, 32))
        if self.kind == "hnsw" and self.index.hnsw.efSearch < shortlist:
            self.index.hnsw.efSearch = shortlist
        _, candidates = self.index.search(self._prepare(queries), shortlist)  # (Q, shortlist), -1 = none
        return self._rerank(queries, candidates, k)

    def _rerank(self, queries, candidates, k):
        """Exact scores of the candidates against the original gallery, best k kept."""
        missing = candidates < 0
        ids = np.ascontiguousarray(np.where(missing, 0, candidates), dtype=np.int64)
        nq, width = ids.shape
        q = normalized(queries) if self.metric == "cosine" else np.ascontiguousarray(queries)
        scores = np.empty((nq, width), dtype=np.float32)
        args = (faiss.swig_ptr(scores), faiss.swig_ptr(q), faiss.swig_ptr(self.gallery), faiss.swig_ptr(ids),
                q.shape[1], nq, width)
        if self.metric == "cosine":
            faiss.fvec_inner_products_by_idx(*args)
            scores *= _inverse(self.norms)[ids]
            order_scores = -scores
        else:
            faiss.fvec_L2sqr_by_idx(*args)
            order_scores = scores
        order_scores[missing] = np.inf
        best = np.argsort(order_scores, axis=1, kind="stable")[:, :k]
        out_scores = np.take_along_axis(scores, best, axis=1)
        out_ids = np.take_along_axis(np.where(missing, -1, candidates), best, axis=1)
        return out_scores, out_ids

    def calibrate(self, target_recall=0.95, k=10, n_queries=200):
        """Cheapest shortlist and breadth (IVF nprobe / HNSW efSearch) with recall@k >= target on gallery rows.

        First the shortlist re-ranked exactly (a multiple of k) that PCA compression needs at full breadth, then
        the smallest breadth (powers of two) that reaches the target with it.
        """
        k = min(k, len(self.gallery) - 1)
        rng = np.random.default_rng(self.seed + 1)
        rows = np.sort(rng.choice(len(self.gallery), min(n_queries, len(self.gallery)), replace=False))
        probe = np.ascontiguousarray(self.gallery[rows])
        # Gallery rows as queries: drop each row's own match (an exact duplicate elsewhere counts as a neighbour).
        truth = _drop_self(exact_search(self.gallery, probe, k + 1, self.metric, self.norms)[1], rows, k)

        def recall(breadth):
            self._set_breadth(breadth)
            found = self._approximate_search(probe, k + 1, shortlist=max(self.rerank * k, 32) + 1)[1]
            return recall_at_k(_drop_self(found, rows, k), truth)

        widest = self.index.nlist if self.kind == "ivf" else 1024
        for factor in (4, 8, 16, 32, 64):
            self.rerank = factor
            if factor * (k + 1) >= len(self.gallery) or recall(widest) >= target_recall:
                break
        breadth = 1 if self.kind == "ivf" else 16
        while (reached := recall(breadth)) < target_recall and breadth < widest:
            breadth = min(widest, breadth * 2)
        self.params.update(rerank=self.rerank, calibration_recall=round(reached, 4))
        return breadth


def _drop_self(indices, rows, k):
    """Remove each probe row's own index from its neighbour list (or the last entry if absent)."""
    out = np.empty((len(rows), k), dtype=np.int64)
    for i, (row, found) in enumerate(zip(rows, indices, strict=True)):
        kept = found[found != row]
        out[i] = kept[:k]
    return out


def recall_at_k(found, truth):
    """Fraction of true k nearest neighbours present in the found lists (both [Q, k])."""
    hits = sum(len(np.intersect1d(f, t)) for f, t in zip(found, truth, strict=True))
    return hits / truth.size


def _pair_scores(gallery, queries, query_rows, gallery_rows, metric):
    """float64 (score, float32 rounding scale) of (query, gallery row) pairs: cosine with scale 1, or squared L2
    with scale |q|^2 + |g|^2 (the terms a float32 ||q||^2 + ||g||^2 - 2 q.g rounds against)."""
    q, g = queries[query_rows].astype(np.float64), gallery[gallery_rows].astype(np.float64)
    if metric == "l2":
        return ((q - g) ** 2).sum(axis=1), (q * q).sum(axis=1) + (g * g).sum(axis=1)
    norms = np.maximum(np.linalg.norm(q, axis=1) * np.linalg.norm(g, axis=1), np.finfo(np.float64).tiny)
    return (q * g).sum(axis=1) / norms, 1.0


def differ_beyond_ties(found, other, gallery, queries, metric, rtol=1e-4):
    """Per query [Q] bool: whether two neighbour lists [Q, k] differ other than in the order of tied rows.

    Two float32 searches (other BLAS blocking, other library) may order rows whose scores agree to float32
    rounding either way. A position where the lists differ counts only when the float64 scores of its two rows
    differ by more than `rtol` of the scale float32 rounds against. 1e-4 is far above the rounding of a float32
    dot product of ~10^4 terms (about sqrt(D) * 6e-8) and far below what a wrong neighbour of a broken search costs.
    """
    _check_metric(metric)
    q, j = np.nonzero(found != other)
    a, scale = _pair_scores(gallery, queries, q, found[q, j], metric)
    b, other_scale = _pair_scores(gallery, queries, q, other[q, j], metric)
    out = np.zeros(len(found), dtype=bool)
    out[q[np.abs(a - b) > rtol * np.maximum(scale, other_scale)]] = True
    return out


def search(gallery, queries, k, metric="cosine", exact=True, kind="ivf", **index_params):
    """k-NN of queries in gallery (DESIGN.md contract): (scores, indices) [Q, k], nearest first."""
    return KnnIndex(gallery, metric, "flat" if exact else kind, **index_params).search(queries, k)
