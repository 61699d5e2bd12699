"""Context retrieval (paper §5.1, Fig. 8): nearest neighbours of a masked image's context in a gallery, with faiss.

Embeds each image with its central hole (pool5 of a weights spec, or HOG), searches the gallery (exact flat
search by default; IVF/HNSW for large galleries), draws the neighbours as a grid and scores precision@k: the
share of neighbours holding an object of a class their query holds (VOC labels), with its chance level.

    python -m evaluation.retrieval --profile voc-mini --weights results/voc-mini/ce.pt
    python -m evaluation.retrieval --profile voc-mini --features hog --out results/voc-mini/retrieval_hog.json
"""

import time
from pathlib import Path

import numpy as np

from cebench.config import entry_parser, parse_config
from cebench.deps import require
from cebench.errors import CebenchError, run_cli
from cebench.files import check_writable, refuse_overwrite
from cebench.locks import hold_outputs
from cebench.records import default_record_path, make_record, schedule_fields, write_record
from evaluation.experiments.flags import (HOG, INDEX_KINDS, SEARCH_METRICS, add_data_args, add_feature_args,
                                          add_run_args, features_label)


def __getattr__(name):  # evaluation.retrieval.search, DESIGN.md's entry point: faiss and numpy only when used
    if name == "search":
        from evaluation.metrics.knn import search

        return search
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def get_args_parser():
    p = entry_parser("python -m evaluation.retrieval", __doc__.split("\n")[0])
    add_data_args(p, "query")
    add_feature_args(p)
    g = p.add_argument_group("search")
    g.add_argument("--k", type=int, default=10, help="neighbours per query (precision@k)")
    g.add_argument("--metric", default="cosine", choices=SEARCH_METRICS, help="cosine: L2-normalised features")
    g.add_argument("--index", default="flat", choices=INDEX_KINDS, help="flat = exact; ivf/hnsw = approximate (PCA + "
                   "faiss index + exact re-ranking), for galleries of ~100K images and more")
    g.add_argument("--grid-queries", type=int, default=8, help="queries drawn in the grid PNG (seeded choice)")
    g.add_argument("--grid-neighbours", type=int, default=6, help="neighbours per query in the grid")
    add_run_args(p, seed_help="random init, query/gallery subsets, grid and bootstrap", batches="feature batches",
                 out_help="result record (default results/<profile>/retrieval_<init>.json); the grid PNG goes next "
                 "to it")
    return p


def draw_grid(path, cfg, gallery, queries, neighbours, relevant, title):
    """The grid PNG of a seeded choice of queries and their nearest neighbours."""
    from evaluation.experiments.features import hole_mask, load_square
    from evaluation.reporting.figures import retrieval_grid

    rng = np.random.default_rng(cfg["seed"])
    rows = np.sort(rng.choice(len(neighbours), min(cfg["grid_queries"], len(neighbours)), replace=False))
    size, shown = cfg["input_size"], min(cfg["grid_neighbours"], neighbours.shape[1])
    images = [load_square(queries.paths[r], size) for r in rows]
    found = [[load_square(gallery.paths[j], size) for j in neighbours[r, :shown]] for r in rows]
    marks = None if relevant is None else relevant[rows, :shown]
    return retrieval_grid(path, images, found, hole_mask(size)[0, 0].numpy(), marks, title)


def record_path(cfg, label):
    """--out, else results/<profile>/retrieval_<label>.json."""
    return Path(cfg["out"] or default_record_path(cfg["profile"], "retrieval", label))


def main(argv=None):
    # config: parser defaults < benchmarks.yaml profile < command line
    started = time.time()
    cfg = parse_config(get_args_parser(), argv, "retrieval")  # --help and --print-config exit here
    if not cfg["overwrite"]:  # an existing record is refused before any data is loaded (or the model code imported)
        refuse_overwrite(record_path(cfg, features_label(cfg)))
    # what runs: torch, the features, faiss's search (imported once --help and --print-config have answered)
    from cebench.runtime import start_run
    from evaluation.experiments.features import build_extractor, center_on_gallery, encoder_health, extract_features
    from evaluation.experiments.imagesets import class_names, dataset_name, gallery_and_queries, present
    from evaluation.metrics.knn import KnnIndex
    from evaluation.metrics.retrieval import precision_at_k

    # distributed, threads, seed, logger
    rt, log = start_run(cfg, "retrieval")
    require("faiss", "retrieval (nearest neighbours)")  # before any data is read
    # data: gallery and held-out queries
    gallery, queries = gallery_and_queries(cfg)
    # features: pool5 of --weights or HOG; the output path follows the init it turned out to be
    extractor, info = build_extractor(cfg, rt.device, rt.precision, train_images=gallery.paths)
    out = record_path(cfg, info["init"])
    with hold_outputs([out], rt):  # a second run on the same --out is refused (cebench.locks)
        refuse_overwrite(out, cfg["overwrite"])
        check_writable(out.parent)  # created when the outputs are written, at the end
        opts = {"batch_size": cfg["batch_size"], "workers": cfg["workers"], "max_batches": cfg["max_steps"]}
        gallery_feats = extract_features(gallery.paths, extractor, cfg["input_size"], desc="gallery", **opts)
        query_feats = extract_features(queries.paths, extractor, cfg["input_size"], desc="queries", **opts)
        n_gallery, n_queries = len(gallery_feats), len(query_feats)
        if cfg["center"]:
            center_on_gallery(gallery_feats, query_feats)
        if cfg["k"] > n_gallery:
            raise CebenchError(f"--k {cfg['k']} exceeds the gallery's {n_gallery} images")
        # search: faiss, exact by default
        index = KnnIndex(gallery_feats, cfg["metric"], cfg["index"], seed=cfg["seed"])
        _, neighbours = index.search(query_feats, cfg["k"])  # (Q, k) gallery rows, nearest first
        # score: precision@k when both sets have VOC labels
        score = None
        if gallery.labels is not None and queries.labels is not None:
            score = precision_at_k(present(queries.labels[:n_queries]), present(gallery.labels[:n_gallery]),
                                   neighbours, seed=cfg["seed"])
        title = ("HOG" if cfg["features"] == HOG else f"pool5 of {info['init']}") + f", {n_queries} queries: " + (
            f"precision@{cfg['k']} {100 * score['precision']:.1f}% (chance {100 * score['chance']:.1f}%)"
            if score else "unlabelled images")
        grid = draw_grid(out.with_suffix(".png"), cfg, gallery, queries, neighbours,
                         score["relevant"] if score else None, title)
        # result record
        protocol = {"features": cfg["features"], "input": f"shorter side resized to {cfg['input_size']}, centre crop",
                    "hole": "central, half the height and width (1/4 of the area), filled with the dataset mean",
                    "centered": cfg["center"], "search": index.params, "k": cfg["k"], "gallery": gallery.source,
                    "queries": queries.source,
                    "relevance": "a neighbour is relevant when it holds an object (difficult included) of a class "
                                 "its query holds; per_class: among queries holding the class, share of neighbours "
                                 "holding it",
                    "architecture": info["arch"], "weights": info["source"], "pretrain_meta": info["meta"]}
        if score:
            protocol["interval"] = score["interval"]
        if "hog_params" in info:
            protocol["hog_params"] = info["hog_params"]
        record = make_record(
            task="retrieval", init=info["init"], dataset=dataset_name(cfg), split=cfg["query_split"],
            metric=f"precision@{cfg['k']}", value=score["precision"] if score else None,
            ci95=score["ci95"] if score else None,
            per_class=dict(zip(class_names(), score["per_class"], strict=True)) if score else {}, n_images=n_queries,
            seed=cfg["seed"], wall_time_s=time.time() - started, config=cfg, protocol=protocol,
            chance=round(100 * score["chance"], 4) if score else None, n_gallery=n_gallery,
            feature_dim=int(gallery_feats.shape[1]), grid_png=str(grid), weights_meta=info["meta"],
            feature_health=encoder_health(extractor.encoder, gallery, cfg, rt.device),
            **schedule_fields(n_gallery + n_queries, len(gallery) + len(queries), "images", info["meta"]))
        write_record(out, record)
        log.info("%s: %s = %s (chance %s), wrote %s and %s", record["init"], record["metric"], record["value"],
                 record["chance"], out, grid)
        return {"out": str(out), "grid": str(grid), "value": record["value"], "ci95": record["ci95"],
                "chance": record["chance"], "neighbours": neighbours}


if __name__ == "__main__":
    run_cli(main)
