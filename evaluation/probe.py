"""Per-layer linear probes (Zhang et al. 2016; Goyal et al. 2019): VOC classification mAP of frozen conv1..conv5.

Table 3 of `python -m evaluation.tables` (inits x layers). The backbone comes from --weights through the path of
the classification transfer, Krähenbühl et al.'s rescaling included; each layer (after ReLU) is average-pooled
to Zhang et al.'s ~9,000-d grid and a linear classifier per class is fitted on the training split's centre views,
then scored on the test split with bootstrap intervals: `--classifier logistic` (Zhang et al.'s; C chosen on a
held-out part of the training views) or `--classifier svm` (Goyal et al.'s VOC07 SVM benchmark as VISSL runs it:
L2-normalised features, LinearSVC per class, cost per class by 3-fold cross-validated AP). Features and
classifiers: transfer.classification.probe, shared with `transfer.classify --probe`.

    python -m evaluation.probe --profile voc-mini --weights results/voc-mini/ce.pt
    python -m evaluation.probe --profile voc-mini --weights kmeans --classifier svm --threads 2
"""

import time
from pathlib import Path

from cebench.config import entry_parser, non_negative_int, parse_config, positive_int
from cebench.errors import CebenchError, run_cli
from cebench.files import refuse_overwrite
from cebench.flags import add_precision_flag, add_threads_flag
from cebench.locks import hold_outputs
from cebench.records import default_record_path, write_record
from evaluation.experiments.flags import PROBE_CLASSIFIERS, probe_variant
from transfer.flags import PROBE_LAYERS, SVM_COSTS, add_init_args, add_n_boot_flag, add_voc_args


def get_args_parser():
    p = entry_parser("python -m evaluation.probe", __doc__.split("\n")[0])
    g = p.add_argument_group("data")
    add_voc_args(g, "the training and test splits")
    g.add_argument("--train-split", default="trainval", help="split the probes are fitted on (paper: trainval)")
    g.add_argument("--test-split", default="test", help="split to score (voc-mini: val, a development split)")
    g = p.add_argument_group("model (as transfer.classify builds and rescales it)")
    add_init_args(g, rescale_images=160, rescale_what="training views (as transfer.classify draws them)")
    g.add_argument("--input-size", type=positive_int,
                   default=227, help="square centre view fed to the network (Zhang et "
                   "al.: 227; voc-mini: 128, the size its encoder was pretrained at)")
    g.add_argument("--fc-dim", type=positive_int, default=4096, help="fc6/fc7 width of the rescaled backbone (match "
                   "transfer.classify: rescaling equalises every layer up to fc7)")
    g.add_argument("--base-size", type=positive_int,
                   default=500, help="longer image side at scale 1 of the rescaling views "
                   "(match transfer.classify)")
    g = p.add_argument_group("probe")
    g.add_argument("--layers", nargs="+", default=list(PROBE_LAYERS), choices=PROBE_LAYERS, help="layers to probe")
    g.add_argument("--classifier", default="logistic", choices=list(PROBE_CLASSIFIERS), help="logistic: Zhang et al.'s "
                   "logistic regression per class (--cs, --held-out); svm: the VOC07 linear-SVM benchmark of Goyal "
                   "et al. 2019 as VISSL runs it (--svm-costs; its records are a Table 3 row of their own)")
    g.add_argument("--cs", type=float, nargs="+", default=[1.0e-3, 1.0e-2, 1.0e-1], help="logistic: inverse L2 "
                   "strengths tried per layer on the held-out part of the training split; one value fixes C")
    g.add_argument("--svm-costs", type=float, nargs="+", default=list(SVM_COSTS), help="svm: the cost grid each "
                   "class's 3-fold cross-validation chooses from (default VISSL's VOC07 AlexNet grid)")
    g.add_argument("--held-out", type=float, default=0.2, help="share of the training images that picks C")
    g.add_argument("--max-iter", type=positive_int, default=500, help="L-BFGS iterations per logistic regression (the "
                   "SVM's is VISSL's 2000)")
    add_n_boot_flag(g, "the test images per layer")
    g = p.add_argument_group("run")
    g.add_argument("--seed", type=int, default=0, help="random init, rescaling views, held-out draw, bootstrap")
    g.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    add_precision_flag(g)
    add_threads_flag(g, "torch threads, and classes fitted in parallel (each with one BLAS thread; 0: one class "
                     "at a time)")
    g.add_argument("--max-steps", type=positive_int, default=None, help="cap on feature batches per split (quick runs)")
    g.add_argument("--batch-size", type=positive_int, default=64, help="images per feature batch")
    g.add_argument("--workers", type=non_negative_int,
                   default=None, help="DataLoader workers (default: one per spare core)")
    g.add_argument("--out", default=None, help="result record (default results/<profile>/probe_<init>.json; "
                   "probe_<init>_svm.json for --classifier svm)")
    g.add_argument("--overwrite", action="store_true", help="replace an existing record")
    return p


def check_config(cfg):
    from transfer.driver import check_positive

    check_positive(cfg, ("input_size", "fc_dim", "base_size", "rescale_images", "max_iter", "n_boot", "batch_size"))
    for flag in ("cs", "svm_costs"):
        if any(c <= 0 for c in cfg[flag]):
            raise CebenchError(f"--{flag.replace('_', '-')} must be positive")
    if len(cfg["cs"]) > 1 and not 0 < cfg["held_out"] < 1:
        raise CebenchError("--held-out must be in (0, 1) when --cs offers a choice")
    if cfg["max_steps"] is not None and cfg["max_steps"] < 1:
        raise CebenchError("--max-steps must be positive")


def features(encoder, split, cfg, device, desc):
    """{layer: (N, D)} of the centre views of a split (no hole: the probe sees whole images)."""
    import torch

    from cebench.runtime import default_num_workers
    from evaluation.experiments.features import ContextImages
    from transfer.classification.probe import ZHANG_GRIDS, frozen_features

    workers = default_num_workers() if cfg["workers"] is None else cfg["workers"]
    loader = torch.utils.data.DataLoader(ContextImages(split.image_paths, cfg["input_size"]),
                                         batch_size=cfg["batch_size"], num_workers=workers)
    grids = {n: ZHANG_GRIDS[n] for n in cfg["layers"]}
    return frozen_features(encoder, loader, device, grids, max_batches=cfg["max_steps"], desc=desc)


def _out_path(cfg, label):
    return Path(cfg["out"] or default_record_path(cfg["profile"], "probe", label, probe_variant(cfg)))


def main(argv=None):
    # config: parser defaults < benchmarks.yaml profile < command line
    started = time.time()
    cfg = parse_config(get_args_parser(), argv, "probe")  # --help and --print-config exit here
    # what runs: torch, the backbone and rescaling of the classification transfer, scikit-learn's probes
    from threadpoolctl import threadpool_limits

    from cebench.runtime import autocast, start_run
    from evaluation.experiments import probe_run as run
    from pretrain.weights import weights_label
    from transfer.classification.probe import assert_unchanged, layer_shapes, state_fingerprint
    from transfer.driver import init_label
    from voc.devkit import load_split

    # distributed, threads, seed, logger
    rt, log = start_run(cfg, "probe", check=check_config)
    if not cfg["overwrite"]:  # an existing record is refused before any data is loaded
        refuse_overwrite(_out_path(cfg, cfg["init_label"] or weights_label(cfg["weights"])))
    # data: the two splits with their VOC labels (1 / -1 / 0 difficult); no boxes are used, so the images are
    # not decoded up front: a bad one stops the feature pass with one line naming it
    train, test = (load_split(cfg["voc_root"], cfg["year"], cfg[k], check_images=False)
                   for k in ("train_split", "test_split"))
    # model: backbone from --weights, rescaled on training views exactly as transfer.classify does
    backbone, info = run.build(cfg, train.image_paths)
    label = init_label(cfg, info)
    out = _out_path(cfg, label)
    with hold_outputs([out], rt):  # a second run on the same --out is refused (cebench.locks)
        refuse_overwrite(out, cfg["overwrite"])
        rescaling = run.rescale(backbone, info, train, cfg, rt.device, log)
        # features: conv1..conv5 after ReLU, pooled to Zhang et al.'s grids; the frozen weights must not change
        before = state_fingerprint(backbone)
        with autocast(rt.device, rt.precision):  # features come out float32 whatever the arithmetic
            train_x = features(backbone.encoder, train, cfg, rt.device, "train features")
            test_x = features(backbone.encoder, test, cfg, rt.device, "test features")
        assert_unchanged(backbone, before)
        # probes: per layer a linear classifier per class (logistic: C on held-out training images; svm: cost per
        # class by 3-fold cross-validated AP), scored on test
        train_y = train.labels[:len(train_x[cfg["layers"][0]])]
        test_y = test.labels[:len(test_x[cfg["layers"][0]])]
        layers = {}
        with threadpool_limits(limits=1 if cfg["threads"] else None):  # --threads: one BLAS thread per class fitted
            for name in cfg["layers"]:
                layers[name] = run.probe_layer(train_x.pop(name), train_y, test_x.pop(name), test_y, cfg)
                log.info("%s %s (%s): mAP %.2f [%.2f, %.2f]", label, name, cfg["classifier"], layers[name]["value"],
                         *layers[name]["ci95"])
        # result record: one per initialisation, every layer in it; value = the deepest layer probed
        shapes = layer_shapes(backbone.encoder, cfg["input_size"])
        record = run.make_probe_record(cfg, info, label, rescaling, layers, shapes, len(train_y), len(test_y),
                                       time.time() - started)
        write_record(out, record)
        log.info("%s: wrote %s (%.0f s)", label, out, record["wall_time_s"])
        return {"out": str(out), "init": label, "layers": {n: (v["value"], v["ci95"]) for n, v in layers.items()},
                "wall_time_s": record["wall_time_s"]}


if __name__ == "__main__":
    run_cli(main)
