"""One stage of a profile checked for a few steps: its own step at the profile's precision, timed alone on a batch
in memory and in the whole loop with its loader (cebench.speed.measure), peak memory, and the projected wall time
of its full schedule. `python -m evaluation.check` (`bash run_all.sh PROFILE --check`) runs every stage with it.

What is particular to a stage lives in its own package, in the hooks its row of the stage table names (`check`:
a module, or `module:object`, e.g. pretrain/check.py, transfer/<task>/check.py,
evaluation/experiments/feature_checks.py). Every stage's hooks have these names:

- `SPLITS`: the config keys of its (training or gallery, test or query) VOC splits, None without VOC splits;
  `IMAGE_SETS`: the devkit folder listing them (ImageSets/Main or ImageSets/Segmentation);
- `counts(cfg)`: the images of those two splits;
- `bench(cfg, rt, log, n_train, n_test)`: {bench (cebench.speed.Bench), images_per_step, steps (of the full
  schedule), data_path, evaluations (a callable: the evaluation passes, each {what, seconds, how, once?}),
  not_projected, and optionally step_unit, step_what};

and where a stage needs them: `parser()` (default: its entry point's get_args_parser), `check_args(args, given)`
(flags checked as its run checks them), `standin_flags(devkit, cfg)` (its data on the stand-in devkit; default
its two splits as train and val), `min_train_images(cfg)` (the stand-in's training images it needs),
`max_image_side(cfg)` (a cap on the stand-in's image size), `cache_fits(cfg, counts, size)` (whether the full run's
images fit its --cache auto: True, False or None for unknown), `check_flags(out_dir)` (flags that keep its files
with the check), `devkit_extra(cfg)` (training images its full run adds to the devkit's count where the data is
absent, and the words that say so: segmentation's SBD).
"""

import gc
import importlib
import platform

import torch

from cebench.config import command_line_dests, parse_with_profile, resolved_config
from cebench.logs import get_logger
from cebench.runtime import Runtime, resolve_device, resolve_precision, seed_everything, set_threads
from cebench.speed import measure, peak_memory, reset_peak_memory
from cebench.stages import stage as stage_row


def hooks(stage):
    """The check hooks of a stage: what its row's `check` names (a module, or an object of one: `module:object`)."""
    module, _, name = stage_row(stage).check.partition(":")
    found = importlib.import_module(module)
    return getattr(found, name) if name else found


def stage_parser(stage):
    """The stage's own parser: its flags and the profile's section apply as in a run."""
    own = getattr(hooks(stage), "parser", None)
    return own() if own else importlib.import_module(stage_row(stage).module).get_args_parser()


def check_stage(stage, argv, *, steps, warmup, counts=None, data_label="", sizes_from="the data checked on"):
    """The row of one stage: its flags `argv` (the profile's section applies), `steps` timed steps per side;
    `counts`: (training or gallery, test or query) images of the full run (default: those checked on)."""
    own = hooks(stage)
    parser = stage_parser(stage)
    args = parse_with_profile(parser, argv, stage)
    if hasattr(own, "check_args"):
        own.check_args(args, command_line_dests(parser, argv))
    cfg = resolved_config(args)
    set_threads(cfg["threads"])
    seed_everything(cfg["seed"])
    device = resolve_device(cfg["device"])
    rt = Runtime(device=device, precision=resolve_precision(cfg["precision"], device))
    log = get_logger("check")
    n_train, n_test = counts or own.counts(cfg)
    gc.collect()  # the previous stage's model and batches go before this stage's peak is counted
    if device.type == "cuda":
        torch.cuda.empty_cache()
    reset_peak_memory(device)
    built = own.bench(cfg, rt, log, n_train, n_test)
    rates = measure({rt.precision: built["bench"]}, images_per_step=built["images_per_step"], device=device,
                    rounds=1, warmup=warmup, steps=steps)[rt.precision]
    evaluations = built["evaluations"]()
    memory, memory_how = peak_memory(device)
    step_s = built["images_per_step"] / rates["end_to_end_images_per_s"]
    unit = built.get("step_unit", "step")
    data_path = built["data_path"] if not cfg.get("data_path") else f"{cfg['data_path']}: {built['data_path']}"
    return {"stage": stage, "profile": cfg["profile"], "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else
            (platform.processor() or platform.machine()),
            "threads": torch.get_num_threads(), "precision": rt.precision, "data": data_label, "data_path": data_path,
            "images_per_step": built["images_per_step"], "step_unit": unit, "step_what": built.get("step_what"),
            "model_only_images_per_s": rates["model_only_images_per_s"],
            "whole_loop_images_per_s": rates["end_to_end_images_per_s"], "ratio": rates["ratio"],
            "steps_timed": rates["steps_timed"], "peak_memory_mib": round(memory, 1), "peak_memory_how": memory_how,
            "schedule_steps": built["steps"], "full_images": {"train": n_train, "test": n_test},
            "full_sizes_from": sizes_from, "train_s": built["steps"] * step_s, "evaluations": evaluations,
            # per run: the steps and the evaluation passes; once per stage: what later runs reuse (cached proposals)
            "projected_s": built["steps"] * step_s + sum(e["seconds"] for e in evaluations if not e.get("once")),
            "once_s": sum(e["seconds"] for e in evaluations if e.get("once")),
            "projection": f"{built['steps']} {unit}{'es' if unit.endswith('ch') else 's'} x {step_s:.4f} s (the "
                          "whole loop's, measured)",
            "not_projected": built["not_projected"]}
