"""Check every stage of a profile on a device in minutes, and project what its full run costs (`bash run_all.sh
PROFILE --check` runs this).

Each stage (pretraining, the three transfers, the probes, retrieval, inpainting) runs its own step for a few steps at
the profile's precision on one process, alone on a batch in memory and in the whole loop with its loader, side by
side, then its evaluation pass on the check's test images. One table: stage, device, precision, data path, images/s
of both and their ratio, peak memory, the projected wall time of the stage's full schedule (its steps x the measured
whole-loop time per step, plus its evaluation passes measured on the check's images and scaled to the full splits)
and of all its runs (one per initialisation); then the projected total. Written to results/<profile>-check/
(check.json and check.md), never into results/<profile>/: a trial is never a row of the tables.

Data: a profile with synthetic data of its own (smoke) is checked on it. Any other profile is checked on a small
synthetic stand-in VOCdevkit drawn at the profile's image size (results/<profile>-check/standin, labelled in every
row), whether or not its data is present, so that the paper profile can be checked before its data is downloaded;
the full splits' sizes come from the profile's data when present, else from the VOC devkit's counts (labelled).

    python -m evaluation.check --profile smoke --threads 1                      # about a minute on a CPU
    python -m evaluation.check --profile paper --device cuda --check-steps 8
"""

import argparse
import time
import traceback
from pathlib import Path

from cebench.config import get_profile, parse_with_profile, resolved_config
from cebench.errors import CebenchError, one_line, run_cli
from cebench.logs import get_logger
from cebench.stages import CHECKED
from cebench.stages import stage as stage_row

# What a stage checks is its own package's (its hooks: evaluation.experiments.stage_checks); this module reads them
# through the stage table and imports them, and torch with them, only once its flags are parsed (a fast --help).
VOC_LONGER_SIDE = 500  # PASCAL VOC photos are at most 500 px (most 500 x 375)


def get_args_parser():
    p = argparse.ArgumentParser("python -m evaluation.check", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter, allow_abbrev=False)
    p.add_argument("--profile", default=None, help="profile of benchmarks.yaml to check (default: the file's)")
    p.add_argument("--stages", nargs="+", default=None, choices=CHECKED, help="stages to check (default: those "
                   "the profile's run section runs)")
    p.add_argument("--check-steps", type=int, default=6, help="timed steps of the step alone, and as many of the "
                   "whole loop, per stage")
    p.add_argument("--check-warmup", type=int, default=2, help="untimed steps before each measurement")
    g = p.add_argument_group("data")
    g.add_argument("--voc-root", default=None, help="the profile's VOCdevkit, if not where the profile says (used "
                   "for the full splits' sizes and the stand-in's image size)")
    g.add_argument("--images", default=None, help="the profile's pretraining images (not read: the check pretrains "
                   "on the stand-in)")
    g.add_argument("--check-images", type=int, default=64, help="training (and gallery) images of the stand-in")
    g.add_argument("--check-test-images", type=int, default=16, help="test (and query) images of the stand-in")
    g.add_argument("--image-size", type=int, default=None, help="longer side of the stand-in's images (default: the "
                   f"profile's first image when its data is present, else VOC's {VOC_LONGER_SIDE} or the detection "
                   "section's --max-size when smaller)")
    g = p.add_argument_group("run (passed to every stage)")
    g.add_argument("--device", default=None, choices=["auto", "cpu", "cuda"])
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--threads", type=int, default=None, help="torch threads (1 when other jobs share the cores)")
    g.add_argument("--out-dir", default=None, help="default results/<profile>-check")
    return p


def _run_flags(opts):
    return [x for key in ("device", "seed", "threads") if getattr(opts, key) is not None
            for x in (f"--{key}", str(getattr(opts, key)))]


def _profile_path(profile, value):
    return Path(value) if Path(value).is_absolute() else (Path(profile["_dir"]) / value).resolve()


def _hooks(stage):
    from evaluation.experiments.stage_checks import hooks
    return hooks(stage)


def _stage_config(profile, stage, argv=()):
    """A stage's resolved configuration under the profile (parser defaults < profile < argv)."""
    from evaluation.experiments.stage_checks import stage_parser
    return resolved_config(parse_with_profile(stage_parser(stage), ["--profile", profile["_name"], *argv], stage))


def _voc_flags(opts):
    return ["--voc-root", opts.voc_root] if opts.voc_root else []


def _full_counts(profile, stage, opts):
    """(train or gallery, test or query) images of the full run and where the numbers come from."""
    from voc.devkit import DEVKIT_SIZES
    own = _hooks(stage)
    if own.SPLITS is None:
        return (0, 0), "the profile's schedule (steps)"
    cfg = _stage_config(profile, stage, _voc_flags(opts))
    if Path(cfg["voc_root"]).is_dir():
        try:
            return own.counts(cfg), f"the profile's data ({cfg['voc_root']})"
        except CebenchError:
            pass
    years = ("2012", "2007") if cfg["year"] == "auto" else (str(cfg["year"]),)
    for year in years:
        sizes = [DEVKIT_SIZES.get((own.IMAGE_SETS, year, cfg[k])) for k in own.SPLITS]
        if None not in sizes:  # plus what a stage adds to its training split (segmentation: SBD's images)
            extra, words = own.devkit_extra(cfg) if hasattr(own, "devkit_extra") else (0, "")
            return (sizes[0] + extra, sizes[1]), f"VOC{year}'s devkit counts (the profile's data is absent){words}"
    return None, "the check's images (the profile's data is absent and its splits are not VOC's)"


def _standin_size(profile, opts):
    """The stand-in's longer image side: the profile's first VOC image when present (where the first stage on VOC
    splits reads them), else VOC's 500 px or a stage's cap when smaller (detection's --max-size)."""
    if opts.image_size:
        return opts.image_size
    from PIL import Image
    first_voc = next(s for s in CHECKED if _hooks(s).SPLITS is not None)
    cfg = _stage_config(profile, first_voc, _voc_flags(opts))
    folder = Path(cfg["voc_root"]) / f"VOC{cfg['year']}" / "JPEGImages"
    first = next(iter(sorted(folder.glob("*.jpg"))), None) if folder.is_dir() else None
    if first is None:  # a stage's cap on the longer side tells a profile of reduced images (voc-mini: 224 px)
        caps = [_hooks(s).max_image_side(_stage_config(profile, s)) for s in CHECKED
                if hasattr(_hooks(s), "max_image_side")]
        return min([VOC_LONGER_SIDE, *caps])
    with Image.open(first) as image:
        return max(image.size)


def check_data(profile, opts, out_dir, log):
    """(label, {stage: its data flags}, the stand-in's image size or None): the profile's own synthetic data, or a
    stand-in drawn for the check."""
    from voc.synthetic import main as synthetic
    own = (profile.get("run") or {}).get("synthetic")
    if own:  # smoke: the data the profile's run makes for itself (reused when it exists)
        settings = dict(own)
        out = _profile_path(profile, settings.pop("out"))
        synthetic(["--out", str(out), *[x for k, v in settings.items() for x in (f"--{k.replace('_', '-')}", str(v))]])
        return f"synthetic: the profile's own data ({out})", {stage: [] for stage in CHECKED}, None
    size = _standin_size(profile, opts)
    out = out_dir / "standin"
    # at least one batch of every transfer's training set (their samplers refuse fewer items than a batch)
    n_train = max([opts.check_images] + [_hooks(s).min_train_images(_stage_config(profile, s)) for s in CHECKED
                                         if hasattr(_hooks(s), "min_train_images")])
    synthetic(["--out", str(out), "--n-train", str(n_train), "--n-val", str(opts.check_test_images),
               "--size", str(size), "--seg-fraction", "1.0", "--seed", "0"])
    root = out / "VOCdevkit"
    flags = {stage: _standin_flags(profile, stage, root) for stage in CHECKED}
    log.info("checking on a synthetic stand-in: %d + %d images, longer side %d px, in %s", n_train,
             opts.check_test_images, size, out)
    return (f"SYNTHETIC STAND-IN: {n_train} train + {opts.check_test_images} test images drawn at {size} px "
            f"(the profile's image size), not the profile's data"), flags, size


def _standin_flags(profile, stage, root):
    """A stage's data flags on the stand-in devkit `root`: its two splits as the stand-in's train and val."""
    own = _hooks(stage)
    if hasattr(own, "standin_flags"):
        return own.standin_flags(root, _stage_config(profile, stage))
    train, test = (f"--{key.replace('_', '-')}" for key in own.SPLITS)
    return ["--voc-root", str(root), "--year", "2007", train, "train", test, "val"]


def full_run_cache(profile, stage, counts, size):
    """The --cache flags that give the check the full run's data path: a stand-in of a few dozen images always fits
    in memory, the full splits may not (pretraining's and the transfers' own --cache auto rules, on their sizes)."""
    own = _hooks(stage)
    if not hasattr(own, "cache_fits") or "cache" in (profile.get(stage) or {}):
        return []
    fits = own.cache_fits(_stage_config(profile, stage), counts, size)
    return [] if fits is None else ["--cache", "on" if fits else "off"]


def runs_of(profile, stage):
    """The runs of a stage in the profile's full run: one per initialisation that trains or extracts features
    (ce-untrained's pretraining is 0 steps; hog is computed on the CPU, not checked; supervised needs its file)."""
    spec = ((profile.get("run") or {}).get("stages") or {}).get(stage) or {}
    inits = spec.get("inits", ["ce"] if stage_row(stage).runs == "pretrain" else [])
    skip = {"hog", "ce-untrained"} if stage_row(stage).runs == "pretrain" else {"hog"}
    if not (profile.get("run") or {}).get("supervised"):
        skip.add("supervised")
    return [i for i in inits if i not in skip]


def _hours(seconds):
    return f"{seconds / 3600:.2f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min" if seconds >= 60 else \
        f"{seconds:.0f} s"


def stage_total(row):
    """A stage's projected seconds over all its runs, plus what it computes once for all of them."""
    return row["projected_s"] * len(row["runs"]) + row.get("once_s", 0.0)


def check_table(rows):
    """The check as Markdown: a line per stage, the evaluation passes and what is not projected below it."""
    lines = ["| stage | device | precision | data path | step alone img/s | whole loop img/s | whole / alone | "
             "peak memory | projected per run | runs | projected, all runs |", "|---" * 11 + "|"]
    notes = []
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['stage']} | FAILED: {r['error']} |" + " |" * 9)
            continue
        lines.append(f"| {r['stage']} | {r['device']} | {r['precision']} | {r['data_path']} | "
                     f"{r['model_only_images_per_s']:.1f} | {r['whole_loop_images_per_s']:.1f} | {r['ratio']:.2f} | "
                     f"{r['peak_memory_mib']:.0f} MiB | {_hours(r['projected_s'])} | {len(r['runs'])} | "
                     f"{_hours(stage_total(r))} |")
        evals = "; ".join(f"{e['what']}: {_hours(e['seconds'])} ({e['how']})" for e in r["evaluations"])
        what = f" ({r['step_what']})" if r.get("step_what") else ""
        notes.append(f"- {r['stage']}: {r['projection']}{what} = {_hours(r['train_s'])}"
                     + (f"; {evals}" if evals else "") + f". Full splits: {r['full_sizes_from']}. Not projected: "
                     + "; ".join(r["not_projected"]) + ".")
    return "\n".join(lines + [""] + notes)


def main(argv=None):
    opts = get_args_parser().parse_args(argv)
    if opts.check_steps < 1 or opts.check_warmup < 0 or opts.check_images < 2 or opts.check_test_images < 1:
        raise CebenchError("--check-steps, --check-images (at least 2) and --check-test-images must be positive")
    from cebench.files import atomic_write_json, atomic_write_text, make_dirs  # after parsing: they import torch
    from cebench.records import git_info, results_dir
    from evaluation.experiments.stage_checks import check_stage
    profile, log = get_profile(opts.profile), get_logger("check")
    name = profile["_name"]
    out_dir = make_dirs(Path(opts.out_dir) if opts.out_dir else results_dir(f"{name}-check"))
    label, data_flags, size = check_data(profile, opts, out_dir, log)
    stages = opts.stages or [s for s in CHECKED if s in ((profile.get("run") or {}).get("stages") or {})]
    started, rows = time.time(), []
    for stage in stages:
        log.info("checking %s (%d + %d steps)", stage, opts.check_warmup, opts.check_steps)
        counts, sizes_from = _full_counts(profile, stage, opts)
        cache = full_run_cache(profile, stage, counts, size) if size else []
        if hasattr(_hooks(stage), "check_flags"):  # e.g. detection's proposals: kept with the check
            cache += _hooks(stage).check_flags(out_dir)
        try:
            row = check_stage(stage, ["--profile", name, *data_flags[stage], *cache, *_run_flags(opts)],
                              steps=opts.check_steps, warmup=opts.check_warmup, counts=counts, data_label=label,
                              sizes_from=sizes_from)
        except Exception as err:  # noqa: BLE001 -- a check reports every stage that breaks, not only the first
            log.error("%s failed: %s\n%s", stage, one_line(err), traceback.format_exc())
            row = {"stage": stage, "error": one_line(err)}
        row["runs"] = runs_of(profile, stage)
        atomic_write_json(out_dir / f"{stage}.json", row)
        rows.append(row)
    done = [r for r in rows if "error" not in r]
    total = sum(stage_total(r) for r in done)
    result = {"profile": name, "data": label, "check_steps": opts.check_steps, "check_warmup": opts.check_warmup,
              "created": time.strftime("%Y-%m-%d %H:%M:%S"), "check_wall_s": round(time.time() - started, 1),
              "commit": git_info().get("git_commit"), "rows": rows, "projected_total_s": total,
              "failed": [r["stage"] for r in rows if "error" in r],
              "projection": "per stage: its steps x the measured whole-loop time per step, plus its evaluation passes "
                            "(measured on the check's images, scaled to the full splits); times its runs (one per "
                            "init), plus what a stage computes once for all its runs (selective search); summed. "
                            "One process: under torchrun the training stages divide by the GPUs."}
    table = (f"check of profile {name!r} on {label}\n\n{check_table(rows)}\n\nprojected total of `bash run_all.sh "
             f"{name}`: {_hours(total)} ({total:.0f} s)" + (f", WITHOUT the failed stages {result['failed']}"
                                                           if result["failed"] else "") + "\n")
    atomic_write_json(out_dir / "check.json", result)
    atomic_write_text(out_dir / "check.md", table)
    print("\n" + table)
    print(f"wrote {out_dir / 'check.json'} and check.md (the check took {result['check_wall_s']:.0f} s)")
    if result["failed"]:
        raise CebenchError(f"check of {name!r}: {len(result['failed'])} stage(s) failed: {', '.join(result['failed'])}"
                           " (their errors are in the table and the log above)")
    return result


if __name__ == "__main__":
    run_cli(main)
