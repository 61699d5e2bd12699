"""A pretraining curve: per-layer probes and the val inpainting loss at checkpoints along one pretraining run.

Does more pretraining help, and at which layers? One command pretrains with the profile's settings, saving the
weights at fractions of the budget (0, 1/16, 1/8, 1/4, 1/2, 1 by default), then at each checkpoint runs the
per-layer linear probes (python -m evaluation.probe, the profile's probe section) and the masked L2 inpainting loss
on the test split's images (the pretraining loss and masks, one seeded crop and mask per image, the same at every
checkpoint). Writes curve.csv and curve.png; finished pieces are reused when the command is run again.

    python -m evaluation.curve --profile voc-mini
    python -m evaluation.curve --profile voc-mini --max-steps 400 --out-dir results/voc-mini/curve-400
"""

from pathlib import Path

from cebench.config import benchmarks_path, entry_parser, parse_config, positive_int
from cebench.errors import run_cli
from cebench.files import atomic_write_text
from cebench.flags import add_threads_flag
from cebench.locks import hold_outputs
from cebench.logs import get_logger
from transfer.flags import add_voc_args

FRACTIONS = (0.0, 1 / 16, 1 / 8, 1 / 4, 1 / 2, 1.0)


def get_args_parser():
    p = entry_parser("python -m evaluation.curve", __doc__.split("\n")[0])
    g = p.add_argument_group("data")
    add_voc_args(g, "the probes and the loss images")
    g.add_argument("--loss-split", default="val", help="split whose images score the inpainting loss (never "
                   "pretrained on)")
    g = p.add_argument_group("curve")
    g.add_argument("--fractions", type=float, nargs="+", default=list(FRACTIONS), help="checkpoints as fractions "
                   "of the pretraining budget")
    g.add_argument("--max-steps", type=positive_int, default=None, help="pretraining budget in steps (default: the "
                   "profile's pretrain steps); the fractions are of this")
    g.add_argument("--loss-images", type=positive_int,
                   default=None, help="at most this many loss images (default: all)")
    g.add_argument("--batch-size", type=positive_int, default=64, help="images per batch of the loss")
    g = p.add_argument_group("run")
    g.add_argument("--seed", type=int, default=0, help="pretraining, probes, loss crops and masks")
    g.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    add_threads_flag(g, "torch and BLAS threads of the pretraining and the probes")
    g.add_argument("--out-dir", default=None, help="folder of the run, its checkpoints, probe records, curve.csv and "
                   "curve.png (default results/<profile>-curve: apart from results/<profile>, so that its "
                   "checkpoints are not rows of Tables 2 and 3)")
    return p


def main(argv=None):
    # config: parser defaults < benchmarks.yaml profile < command line (--help and --print-config exit here)
    cfg = parse_config(get_args_parser(), argv, "curve")
    # what runs: pretraining, the probes, pandas and matplotlib
    import pandas as pd

    from cebench.runtime import resolve_device, set_threads
    from evaluation.experiments import curve_run as run
    from evaluation.reporting.figures import curve_plot
    from pretrain import train
    from voc.devkit import load_split

    pretrain_cfg = parse_config(train.get_args_parser(), ["--profile", cfg["profile"]], "pretrain")
    set_threads(cfg["threads"])
    log = get_logger("curve")
    out_dir = Path(cfg["out_dir"] or benchmarks_path().parent / "results" / f"{cfg['profile']}-curve")
    budget, steps = run.budget_steps(cfg, pretrain_cfg)
    with hold_outputs([out_dir]):  # a second curve into the same folder is refused (cebench.locks)
        # pretraining with a checkpoint at every fraction of the budget
        weights = run.pretrain_with_snapshots(cfg, out_dir, budget, steps, log)
        # data: the held-out images of the inpainting loss
        loss_paths = load_split(cfg["voc_root"], cfg["year"], cfg["loss_split"], check_images=False).image_paths
        loss_paths = loss_paths[:cfg["loss_images"]] if cfg["loss_images"] else loss_paths
        # probes and loss at each checkpoint
        device = resolve_device(cfg["device"])
        rows = [run.checkpoint_row(w, s, budget, cfg, out_dir, loss_paths, pretrain_cfg["load_size"], device, log)
                for w, s in zip(weights, steps, strict=True)]
        table = pd.DataFrame(rows)
        csv = out_dir / "curve.csv"
        atomic_write_text(csv, table.to_csv(index=False, float_format="%.6g"))
        layers = [c for c in table.columns if c.startswith("conv") and " " not in c]
        png = curve_plot(out_dir / "curve.png", table, layers, f"pretraining curve ({cfg['profile']}, {budget} steps)")
        log.info("wrote %s and %s", csv, png)
        return {"csv": str(csv), "png": str(png), "table": table}


if __name__ == "__main__":
    run_cli(main)
