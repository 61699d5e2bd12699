"""The flags of the experiment entry points (retrieval, inpainting, probe) and the constants their choices come
from, without torch, scikit-learn or faiss: `--help` and `--print-config` answer before the code that runs is
imported (tests/test_fast_help.py). The modules that act on these values import them from here; where a pure
metrics module owns a constant (knn's metrics, which import scikit-learn), a test checks the copy.
"""

from cebench.config import non_negative_int, positive_float, positive_int
from cebench.flags import RANDOM, add_precision_flag, add_threads_flag, weights_spec
from transfer.flags import add_health_arg

POOL5, HOG = "pool5", "hog"  # --features; HOG is also the init label of its records (the paper's HOG row)
FEATURES = (POOL5, HOG)
SEARCH_METRICS = ("cosine", "l2")  # = evaluation.metrics.knn.METRICS
INDEX_KINDS = ("flat", "ivf", "hnsw")  # = evaluation.metrics.knn.KINDS
PROBE_CLASSIFIERS = ("logistic", "svm")  # the keys of evaluation.experiments.probe_run.CLASSIFIERS


def add_data_args(parser, queries="query"):
    """Data flags shared by retrieval and inpainting: a VOCdevkit's splits, or a folder with optional id lists."""
    g = parser.add_argument_group("data")
    g.add_argument("--voc-root", default="data/VOCdevkit", help="VOCdevkit folder that holds VOC<year>/")
    g.add_argument("--year", default="2007", help="VOC year folder to read")
    g.add_argument("--gallery-split", default="train", help="ImageSets/Main split searched for neighbours")
    g.add_argument("--query-split", default="val", help=f"split of the {queries} images (never in the gallery)")
    g.add_argument("--images", default=None, help="any folder of JPEG/PNG images (recursive) instead of VOC; no "
                   "labels, so no precision score. Queries come from --query-list or a seeded draw")
    g.add_argument("--gallery-list", default=None, help="with --images: file of gallery image ids (file stems)")
    g.add_argument("--query-list", default=None, help=f"with --images: file of {queries} image ids")
    g.add_argument("--max-gallery", type=positive_int,
                   default=None, help="seeded random subset of the gallery (quick runs)")
    g.add_argument("--max-queries", type=positive_int,
                   default=None, help=f"seeded random subset of the {queries} images")
    return g


def add_feature_args(parser):
    """--features/--weights/--arch/--width/--input-size, shared by retrieval and inpainting."""
    g = parser.add_argument_group("features")
    g.add_argument("--features", default=POOL5, choices=list(FEATURES),
                   help="pool5 of --weights, or HOG (the paper's hand-made baseline; --weights is then ignored)")
    g.add_argument("--weights", default=RANDOM, type=weights_spec, help="ce.pt from pretrain, a torchvision "
                   "AlexNet state_dict (the ImageNet row), 'random' (the paper's Gaussian initialisation, seeded) or "
                   "'kmeans' (Krähenbühl et al.'s k-means init on the gallery images, seeded)")
    g.add_argument("--arch", default="caffenet", choices=["caffenet", "torchvision"],
                   help="trunk for --weights random; weight files bring their own")
    g.add_argument("--width", type=positive_float,
                   default=1.0, help="channel multiplier for --weights random (match the "
                   "ce.pt you compare with)")
    g.add_argument("--center", dest="center", action="store_true", help="centre features on the gallery mean "
                   "before the (cosine) search: removes the component shared by all images that otherwise makes a "
                   "few images everyone's neighbours (on by default)")
    g.add_argument("--no-center", dest="center", action="store_false", help="search the raw features")
    parser.set_defaults(center=True)
    add_health_arg(g)
    g.add_argument("--input-size", type=positive_int, default=227, help="images are resized and centre-cropped to this "
                   "square; the hole is its central half (paper: 227 for features; voc-mini: 128)")
    add_precision_flag(g)
    return g


def add_run_args(parser, *, seed_help, batches, out_help, overwrite_help="replace an existing record"):
    """The run group of retrieval and inpainting: seed, device, threads, batches, workers, the record's path."""
    g = parser.add_argument_group("run")
    g.add_argument("--seed", type=int, default=0, help=seed_help)
    g.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    add_threads_flag(g)
    g.add_argument("--max-steps", type=positive_int, default=None, help=f"cap on {batches} per image set (quick runs)")
    g.add_argument("--batch-size", type=positive_int, default=64, help=f"images per {batches[:-2]}")
    g.add_argument("--workers", type=non_negative_int,
                   default=None, help="DataLoader workers (default: one per spare core)")
    g.add_argument("--out", default=None, help=out_help)
    g.add_argument("--overwrite", action="store_true", help=overwrite_help)
    return g


def probe_variant(cfg):
    """The record-name variant of a probe's classifier: '' for the logistic probe (probe_<init>.json), else its
    name (probe_<init>_svm.json)."""
    return "" if cfg["classifier"] == "logistic" else cfg["classifier"]


def features_label(cfg):
    """The init label the records of a retrieval or inpainting run get, known before anything is loaded: hog for
    --features hog, else the label of --weights (pretrain.weights.weights_label: a weights file is read for it)."""
    if cfg["features"] == HOG:
        return HOG
    if cfg["weights"] in weights_spec.keywords:  # random, kmeans: their own labels, as weights_label gives them
        return cfg["weights"]
    from pretrain.weights import weights_label  # torch: only once no --help or --print-config is to be answered

    return weights_label(cfg["weights"])
