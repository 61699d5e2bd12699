"""Inpainting of held-out images' central hole (paper Table 1): mean L1, mean L2 (%) and PSNR (dB) over the hole.

Fills each held-out image's hole by pasting the same region of its nearest gallery neighbour, found with the
context's features (HOG: the paper's "NN-inpainting (HOG features)"; pool5 of --weights: "NN-inpainting
(context-encoder features)"), and, for a ce.pt with a decoder, with the context encoder's own reconstruction.
One record per method: the NN record at --out, the decoder's next to it (<out>_decoder.json).

    python -m evaluation.inpainting --profile voc-mini --features hog --out results/voc-mini/inpainting_hog.json
    python -m evaluation.inpainting --profile voc-mini --weights results/voc-mini/ce.pt
"""

import time
from pathlib import Path

import numpy as np

from cebench.config import entry_parser, parse_config
from cebench.deps import require
from cebench.errors import CebenchError, run_cli
from cebench.files import check_writable, refuse_overwrite
from cebench.locks import hold_outputs
from cebench.flags import weights_spec
from cebench.records import default_record_path, make_record, schedule_fields, write_record
from evaluation.experiments.flags import HOG, add_data_args, add_feature_args, add_run_args, features_label

N_BOOT = 1000  # bootstrap resamples of the held-out images for the intervals


def get_args_parser():
    p = entry_parser("python -m evaluation.inpainting", __doc__.split("\n")[0])
    add_data_args(p, "held-out")
    add_feature_args(p)
    g = p.add_argument_group("inpainting")
    g.add_argument("--decoder", default="auto", choices=["auto", "on", "off"], help="also score the context "
                   "encoder's decoder (auto: when --weights is a ce.pt that holds one)")
    g.add_argument("--examples", type=int, default=4, help="held-out images drawn in the examples PNG")
    add_run_args(p, seed_help="random init, subsets, examples and bootstrap", batches="batches",
                 out_help="record of NN-inpainting (default results/<profile>/inpainting_<init>.json); the "
                 "decoder's record and the examples PNG go next to it", overwrite_help="replace existing records")
    return p


def load_decoder(cfg, info):
    """The ContextEncoder to score, or None (HOG, random or supervised weights; or --decoder off)."""
    if cfg["decoder"] == "off" or (cfg["decoder"] == "auto" and not info.get("ce_pt")):
        return None
    if not info.get("ce_pt"):
        raise CebenchError(f"--decoder on needs a ce.pt as --weights, got {cfg['weights']!r}")
    from pretrain.weights import NoDecoderError, load_context_encoder

    try:
        model, _ = load_context_encoder(cfg["weights"])
    except NoDecoderError:
        if cfg["decoder"] == "on":
            raise
        return None  # auto: an encoder-only ce.pt has no decoder to score (any other defect is an error)
    if model.input_size != cfg["input_size"]:
        raise CebenchError(f"{cfg['weights']}: its decoder was trained at {model.input_size} px; pass --input-size "
                           f"{model.input_size} (or --decoder off)")
    return model


def method_record(cfg, info, method, errors, queries, started, extra, schedule, feature_health=None):
    """One result record: value = mean L2 (%), with L1, L2 and PSNR and their intervals in `scores`."""
    from evaluation.experiments.imagesets import class_names, dataset_name, present
    from evaluation.metrics.inpainting import summarize

    stats = summarize(errors, n_boot=N_BOOT, seed=cfg["seed"])
    scores = {name: {"value": round((1 if name == "psnr" else 100) * mean, 4),
                     "ci95": [round((1 if name == "psnr" else 100) * v, 4) for v in (low, high)],
                     "unit": "dB" if name == "psnr" else "%"} for name, (mean, low, high) in stats.items()}
    per_class = {}
    if queries.labels is not None:
        holds = present(queries.labels[:len(errors["l2"])])
        per_class = {c: float(errors["l2"][holds[:, i]].mean()) for i, c in enumerate(class_names())
                     if holds[:, i].any()}
    return make_record(
        task="inpainting", init=info["init"], dataset=dataset_name(cfg), split=cfg["query_split"], metric="mean L2",
        value=stats["l2"][0], ci95=stats["l2"][1:], per_class=per_class, n_images=len(errors["l2"]),
        seed=cfg["seed"], wall_time_s=time.time() - started, config=cfg, protocol=extra, method=method,
        features=cfg["features"] if method == "nn-inpainting" else "decoder", scores=scores,
        weights_meta=info["meta"], feature_health=feature_health, **schedule)


def record_paths(cfg, label):
    """The NN-inpainting record (--out, else results/<profile>/inpainting_<label>.json) and the decoder's beside it."""
    out = Path(cfg["out"] or default_record_path(cfg["profile"], "inpainting", label))
    return out, out.with_name(f"{out.stem}_decoder.json")  # by default record_name(..., "decoder")


def refuse_existing(cfg):
    """Before any data is loaded: the records this run would write exist (unless --overwrite), named by the label
    its --weights will get; the decoder's record counts when a decoder will be scored (--decoder on, or auto with
    a ce.pt that holds one). The check runs again once the outputs are locked."""
    if cfg["overwrite"]:
        return
    label = features_label(cfg)
    out, out_decoder = record_paths(cfg, label)
    refuse_overwrite(out)
    if cfg["decoder"] == "on" or (cfg["decoder"] == "auto" and label != HOG and _holds_decoder(cfg["weights"])):
        refuse_overwrite(out_decoder)


def _holds_decoder(weights):
    """Whether --weights is a ce.pt that holds a decoder (what --decoder auto scores); random and kmeans hold none."""
    if weights in weights_spec.keywords:
        return False
    from pretrain.weights import holds_decoder  # torch: imported already, to read the file's label

    return holds_decoder(weights)


def main(argv=None):
    # config: parser defaults < benchmarks.yaml profile < command line
    started = time.time()
    cfg = parse_config(get_args_parser(), argv, "inpainting")  # --help and --print-config exit here
    refuse_existing(cfg)  # an existing record is refused before any data is loaded (or the model code imported)
    # what runs: torch, the features, faiss's search (imported once --help and --print-config have answered)
    from cebench.runtime import start_run
    from evaluation.experiments.features import (build_extractor, center_on_gallery, encoder_health,
                                                 extract_features, hole_mask)
    from evaluation.experiments.fills import evaluate_fills
    from evaluation.experiments.imagesets import dataset_name, gallery_and_queries
    from evaluation.metrics import interval_description
    from evaluation.metrics.knn import KnnIndex
    from evaluation.reporting.figures import inpainting_grid

    # distributed, threads, seed, logger
    rt, log = start_run(cfg, "inpainting")
    require("faiss", "NN-inpainting (nearest neighbours)")  # before any data is read
    # data: gallery to borrow regions from, held-out images to fill
    gallery, queries = gallery_and_queries(cfg)
    # model: the feature extractor, and the decoder when there is one
    extractor, info = build_extractor(cfg, rt.device, rt.precision, train_images=gallery.paths)
    decoder = load_decoder(cfg, info)
    out, out_decoder = record_paths(cfg, info["init"])
    with hold_outputs([out, out_decoder], rt):  # a second run on the same --out is refused (cebench.locks)
        for path in (out, out_decoder) if decoder is not None else (out,):
            refuse_overwrite(path, cfg["overwrite"])
        check_writable(out.parent)  # created when the outputs are written, at the end
        # nearest neighbour of every held-out context in the gallery (exact cosine search, faiss)
        opts = {"batch_size": cfg["batch_size"], "workers": cfg["workers"], "max_batches": cfg["max_steps"]}
        gallery_feats = extract_features(gallery.paths, extractor, cfg["input_size"], desc="gallery", **opts)
        query_feats = extract_features(queries.paths, extractor, cfg["input_size"], desc="held-out", **opts)
        if cfg["center"]:
            center_on_gallery(gallery_feats, query_feats)
        _, nearest = KnnIndex(gallery_feats, "cosine").search(query_feats, 1)
        # fill and score, streaming held-out images and their neighbours
        keep = np.random.default_rng(cfg["seed"]).choice(len(nearest), min(cfg["examples"], len(nearest)),
                                                          replace=False)
        errors, examples = evaluate_fills(queries.paths[:len(nearest)], gallery.paths, nearest[:, 0], cfg["input_size"],
                                          model=decoder, device=rt.device, batch_size=cfg["batch_size"],
                                          workers=cfg["workers"], keep=keep)
        examples_png = inpainting_grid(out.with_name(f"{out.stem}.png"), examples, hole_mask(cfg["input_size"])[0, 0]
                                       .numpy(), f"held-out {dataset_name(cfg)} {cfg['query_split']}: NN with "
                                       + ("HOG" if cfg["features"] == HOG else f"pool5 of {info['init']}"))
        # result records
        protocol = {"hole": "central, half the height and width (1/4 of the area)", "pixels": "[0, 1], RGB",
                    "input": f"shorter side resized to {cfg['input_size']}, centre crop", "gallery": gallery.source,
                    "held_out": queries.source, "nn": "exact cosine search of context features"
                    + (" centred on the gallery mean" if cfg["center"] else "")
                    + "; the neighbour's hole region pasted",
                    "metrics": "per image mean over hole pixels and channels of |error| (L1) and error^2 (L2); PSNR = "
                               "10 log10(1/L2) per image; means over images",
                    "interval": interval_description(N_BOOT, over="held-out images"),
                    "architecture": info["arch"], "weights": info["source"], "pretrain_meta": info["meta"],
                    "examples_png": str(examples_png)}
        # --max-steps caps the batches of each image set: fewer images than the sets hold make a partial run
        schedule = schedule_fields(len(gallery_feats) + len(query_feats), len(gallery) + len(queries), "images",
                                   info["meta"])
        records = {out: method_record(cfg, info, "nn-inpainting", errors["nn"], queries, started, protocol, schedule,
                                      encoder_health(extractor.encoder, gallery, cfg, rt.device))}
        if decoder is not None:
            records[out_decoder] = method_record(cfg, info, "context-encoder", errors["decoder"], queries, started,
                                                 dict(protocol, nn=None, decoder_arch=decoder.decoder_args(),
                                                      trained_mask=info["meta"].get("mask")), schedule,
                                                 encoder_health(decoder.encoder, gallery, cfg, rt.device))
        for path, record in records.items():
            write_record(path, record)
            s = record["scores"]
            log.info("%s %s: L1 %.2f%%, L2 %.2f%%, PSNR %.2f dB -> %s", record["method"], record["init"],
                     s["l1"]["value"], s["l2"]["value"], s["psnr"]["value"], path)
        return {"records": {str(p): r["scores"] for p, r in records.items()}, "examples": str(examples_png)}


if __name__ == "__main__":
    run_cli(main)
