"""Speed of `evaluation.retrieval.search` against the machine's bound, scikit-learn, and exact vs approximate.

Measures in one run, on pool5-sized vectors (9,216-d = 256×6×6):
  1. exact search of Q queries in a G gallery vs one float32 matrix product `queries @ gallery.T` (the bound:
     target <= 1.3x) and vs scikit-learn's brute-force NearestNeighbors (target >= 2x faster, identical
     neighbours up to the order of rows tied to float32 rounding);
  2. approximate search (IVF or HNSW) vs exact on a larger gallery (target >= 10x faster at recall@10 >= 0.95).
Runs are interleaved in --repeats rounds; each ratio is the median over rounds of two runs made seconds apart
(a shared machine's load changes from minute to minute), and scikit-learn runs once, in the last round, beside
our search of that round. Benchmarks are not tests: run them on a quiet machine.

    python -m evaluation.speed --out results/speed.json              # 50K exact, 200K approximate: ~16 GB RAM
    python -m evaluation.speed --gallery 5000 --approx-gallery 20000  # a quick look
"""

import argparse
import platform
import time

import numpy as np

from cebench.deps import require
from cebench.errors import run_cli
from cebench.files import atomic_write_json
from cebench.flags import add_threads_flag
from cebench.logs import get_logger
from cebench.records import versions
from evaluation.experiments.flags import INDEX_KINDS, SEARCH_METRICS

SKLEARN_METRIC = {"cosine": "cosine", "l2": "euclidean"}


ROW_TILE = 256  # rows per matrix product in pool5_like: every product has this one shape, whatever n


def pool5_like(n, dim, seed, stream=0, *, latent=128, clusters=1000, spread=0.7, noise=0.3, bias=0.5, block=8192):
    """Synthetic pool5-like features: sparse non-negative, clustered, of low intrinsic dimension (float32 [n, dim]).

    x = relu(A (c + spread·z) + noise·e - bias): a cluster centre c (one of `clusters`) moved by z in a `latent`-d
    space, mapped by a fixed random A to `dim`, per-element noise e, then ReLU as after conv5. A and the centres
    depend on `seed` only; rows come from (seed, stream, block) streams, so a gallery (stream 0) and held-out
    queries (stream 1) share one distribution, and row i is the same whatever n, to the bit: the random streams
    are drawn in order (a prefix of a longer draw), and A is applied in zero-padded tiles of ROW_TILE rows, so
    every row goes through a matrix product of the same shape at the same place in it (BLAS blocks a product
    by its shape, so the last bits of a row would otherwise depend on n).
    """
    base = np.random.default_rng([seed, 0])  # the shared "network": A and the cluster centres
    mapping = (base.standard_normal((latent, dim), dtype=np.float32) / np.float32(np.sqrt(latent)))
    centres = base.standard_normal((clusters, latent), dtype=np.float32)
    out = np.empty((n, dim), dtype=np.float32)
    tile_in = np.zeros((ROW_TILE, latent), dtype=np.float32)
    tile_out = np.empty((ROW_TILE, dim), dtype=np.float32)
    for b, i in enumerate(range(0, n, block)):
        labels, moves, noises = (np.random.default_rng([seed, 1 + stream, b, part]) for part in range(3))
        m = min(block, n - i)  # separate streams per draw: the first rows do not depend on n
        h = centres[labels.integers(0, clusters, m)] + np.float32(spread) * moves.standard_normal((m, latent),
                                                                                                 np.float32)
        x = out[i:i + m]
        for t in range(0, m, ROW_TILE):
            rows = min(ROW_TILE, m - t)
            tile_in[:rows] = h[t:t + rows]
            tile_in[rows:] = 0.0
            np.matmul(tile_in, mapping, out=tile_out)  # (ROW_TILE, dim): one shape for every row
            x[t:t + rows] = tile_out[:rows]
        x += np.float32(noise) * noises.standard_normal((m, dim), dtype=np.float32)
        x -= np.float32(bias)
        np.maximum(x, 0.0, out=x)
    return out


def data_params(args):
    """The synthetic data's shape parameters from the command line."""
    return {"clusters": args.clusters, "spread": args.spread, "noise": args.noise}


def timed_rounds(fns, repeats):
    """Run the callables one after another, `repeats` rounds; per-name wall times [rounds] and last results."""
    times, results = {k: [] for k in fns}, {}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            results[name] = fn()
            times[name].append(time.perf_counter() - start)
    return times, results


def round_ratio(times, a, b):
    """Median over rounds of time[a] / time[b]: each ratio compares runs made seconds apart, so a machine
    whose load changes between rounds (shared CPUs) biases it far less than a ratio of overall minima."""
    return float(np.median(np.asarray(times[a]) / np.asarray(times[b])))


def exact_benchmark(args, log):
    """Exact search (cosine and l2) vs one matrix product and vs scikit-learn, on a G x D gallery."""
    from sklearn.neighbors import NearestNeighbors

    from evaluation.metrics.knn import differ_beyond_ties, search  # search = evaluation.retrieval.search

    gallery = pool5_like(args.gallery, args.dim, args.seed, **data_params(args))
    queries = pool5_like(args.queries, args.dim, args.seed, stream=1, **data_params(args))  # held out, same law
    log.info("exact: gallery %s, queries %s (%.1f GB)", gallery.shape, queries.shape, gallery.nbytes / 1e9)
    runs = {"matmul": lambda: queries @ gallery.T,  # (Q, G) float32: the BLAS bound, no selection
            **{m: (lambda m=m: search(gallery, queries, args.k, m, exact=True)) for m in SEARCH_METRICS}}
    if not args.skip_sklearn:  # sklearn's default metric is Euclidean (minkowski, p=2); once per metric, slow
        for m in SEARCH_METRICS:
            runs[f"sklearn_{m}"] = lambda m=m: NearestNeighbors(
                n_neighbors=args.k, algorithm="brute", metric=SKLEARN_METRIC[m]).fit(gallery).kneighbors(
                queries, return_distance=False)
    times, results = timed_rounds({k: runs[k] for k in ("matmul", *SEARCH_METRICS)}, args.repeats - 1)
    last, last_results = timed_rounds(runs, 1)  # the last round adds scikit-learn beside the same runs
    for k, v in last.items():
        times.setdefault(k, []).extend(v)
    results.update(last_results)
    out = {"gallery": list(gallery.shape), "queries": list(queries.shape), "k": args.k,
           "matmul_s": min(times["matmul"]), "times_s": times}
    for metric in SEARCH_METRICS:
        row = {"search_s": min(times[metric]), "search_over_matmul": round_ratio(times, metric, "matmul")}
        if not args.skip_sklearn:
            sk = results[f"sklearn_{metric}"]
            row.update(sklearn_s=times[f"sklearn_{metric}"][0],
                       sklearn_over_search=times[f"sklearn_{metric}"][0] / times[metric][-1],  # same round
                       identical_neighbours=bool(np.array_equal(results[metric][1], sk)),
                       rows_differing=int((results[metric][1] != sk).any(axis=1).sum()),
                       # two float32 products may order rows tied to rounding either way: not a disagreement
                       rows_differing_beyond_ties=int(differ_beyond_ties(results[metric][1], sk, gallery, queries,
                                                                         metric).sum()))
        out[metric] = row
    return out


def approximate_benchmark(args, log):
    """Approximate (IVF/HNSW) vs exact search on a larger gallery, with recall@k against exact."""
    from evaluation.metrics.knn import KnnIndex, exact_search, recall_at_k

    gallery = pool5_like(args.approx_gallery, args.dim, args.seed, **data_params(args))
    queries = pool5_like(args.queries, args.dim, args.seed, stream=1, **data_params(args))
    log.info("approximate: gallery %s (%.1f GB), index %s", gallery.shape, gallery.nbytes / 1e9, args.approx_kind)
    start = time.perf_counter()
    index = KnnIndex(gallery, args.metric, args.approx_kind, target_recall=args.target_recall, seed=args.seed)
    build_s = time.perf_counter() - start
    times, results = timed_rounds({
        "exact": lambda: exact_search(gallery, queries, args.k, args.metric, gallery_norms=index.norms),
        "approximate": lambda: index.search(queries, args.k)}, args.repeats)
    recall = recall_at_k(results["approximate"][1], results["exact"][1])
    return {"gallery": list(gallery.shape), "queries": list(queries.shape), "k": args.k, "index": index.params,
            "build_s": build_s, "exact_s": min(times["exact"]), "approximate_s": min(times["approximate"]),
            "times_s": times, "speedup": round_ratio(times, "exact", "approximate"), "recall_at_k": recall}


def get_args_parser():
    p = argparse.ArgumentParser("python -m evaluation.speed", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter, allow_abbrev=False)
    p.add_argument("--gallery", type=int, default=50_000, help="gallery size of the exact benchmark")
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--dim", type=int, default=9216, help="feature dimension (pool5 at 227 px: 256x6x6)")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--metric", default="cosine", choices=list(SEARCH_METRICS), help="metric of the approximate "
                   "benchmark (the exact one measures both)")
    p.add_argument("--approx-gallery", type=int, default=200_000, help="gallery size of the approximate benchmark")
    p.add_argument("--approx-kind", default="ivf", choices=[k for k in INDEX_KINDS if k != "flat"])
    p.add_argument("--target-recall", type=float, default=0.96, help="recall@10 the index is calibrated to on "
                   "gallery rows (held-out queries score ~0.01 lower)")
    p.add_argument("--repeats", type=int, default=3, help="interleaved repetitions; the best time counts")
    add_threads_flag(p, "faiss and torch threads")
    g = p.add_argument_group("synthetic data (see pool5_like; larger spread/noise, more clusters = harder for ANN)")
    g.add_argument("--clusters", type=int, default=1000)
    g.add_argument("--spread", type=float, default=0.7, help="within-cluster spread (centres have unit spread)")
    g.add_argument("--noise", type=float, default=0.3, help="per-element noise before the ReLU")
    p.add_argument("--skip-exact", action="store_true")
    p.add_argument("--skip-sklearn", action="store_true")
    p.add_argument("--skip-approx", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="JSON file for the measurements")
    return p


def main(argv=None):
    args = get_args_parser().parse_args(argv)  # --help exits here, before torch, faiss or scikit-learn
    from cebench.runtime import set_threads

    log = get_logger("speed")
    faiss = require("faiss", "python -m evaluation.speed (a faiss benchmark)")
    if args.threads:
        faiss.omp_set_num_threads(args.threads)
    set_threads(args.threads)
    report = {"config": vars(args), "machine": {"cpu": platform.processor() or platform.machine(),
                                                "faiss_threads": faiss.omp_get_max_threads()},
              "versions": versions()}
    report["passed"] = {}
    e = {} if args.skip_exact else exact_benchmark(args, log)
    report["exact"] = e
    for metric in SEARCH_METRICS if e else ():
        r = e[metric]
        log.info("exact %s: search %.2f s, matmul %.2f s (best) -> %.2fx the bound (median over rounds; target <= "
                 "1.3)", metric, r["search_s"], e["matmul_s"], r["search_over_matmul"])
        report["passed"][f"exact_{metric}_within_1.3x_matmul"] = r["search_over_matmul"] <= 1.3
        if "sklearn_s" in r:
            log.info("exact %s: scikit-learn (%s) %.2f s -> ours %.2fx faster (target >= 2); neighbour lists "
                     "differing: %d (%d beyond float32 ties)", metric, SKLEARN_METRIC[metric], r["sklearn_s"],
                     r["sklearn_over_search"], r["rows_differing"], r["rows_differing_beyond_ties"])
            report["passed"][f"exact_{metric}_2x_faster_than_sklearn_identical"] = (
                r["sklearn_over_search"] >= 2 and r["rows_differing_beyond_ties"] == 0)
    if not args.skip_approx:
        report["approximate"] = a = approximate_benchmark(args, log)
        log.info("approximate (%s): %.3f s vs exact %.2f s (best) -> %.1fx faster (median over rounds; target >= "
                 "10) at recall@%d %.4f (target >= 0.95); build %.1f s", args.approx_kind, a["approximate_s"],
                 a["exact_s"], a["speedup"], args.k, a["recall_at_k"], a["build_s"])
        report["passed"]["approx_10x_at_recall_0.95"] = a["speedup"] >= 10 and a["recall_at_k"] >= 0.95
    if args.out:
        atomic_write_json(args.out, report)
        log.info("wrote %s", args.out)
    return report


if __name__ == "__main__":
    run_cli(main)
