"""Quantitative context retrieval: precision@k of neighbours that share a VOC class with their query."""

import numpy as np

from evaluation.metrics import bootstrap_ci, interval_description


def shared_class(query_present, gallery_present, neighbours):
    """Bool [Q, k]: neighbour j of query i holds an object of a class that query i holds."""
    q = np.asarray(query_present, dtype=bool)  # (Q, C)
    g = np.asarray(gallery_present, dtype=bool)  # (G, C)
    return np.einsum("qc,qkc->qk", q.astype(np.int32), g[neighbours].astype(np.int32)) > 0


def precision_at_k(query_present, gallery_present, neighbours, n_boot=1000, seed=0):
    """dict: precision (mean over queries), ci95, per-query values, per-class precision, chance level."""
    relevant = shared_class(query_present, gallery_present, neighbours)
    per_query = relevant.mean(axis=1)
    low, high = bootstrap_ci(lambda counts: float(np.dot(counts, per_query) / counts.sum()), len(per_query),
                             n_boot=n_boot, seed=seed)
    q = np.asarray(query_present, dtype=bool)
    g = np.asarray(gallery_present, dtype=bool)
    # Per class c: among queries holding c, the fraction of their neighbours that hold c too.
    hits = g[neighbours].mean(axis=1)  # (Q, C): share of each query's neighbours holding each class
    per_class = [float(hits[q[:, c], c].mean()) if q[:, c].any() else float("nan") for c in range(q.shape[1])]
    # Chance: the expected precision of k neighbours drawn at random from the gallery.
    chance = float((q.astype(np.float64) @ g.T.astype(np.float64) > 0).mean())
    return {"precision": float(per_query.mean()), "ci95": (low, high), "per_query": per_query,
            "interval": interval_description(n_boot, over="queries"),
            "per_class": per_class, "chance": chance, "relevant": relevant}
