"""Which records one table cell combines: the runs of ONE configuration, seeds aside; what is left out and why.

A cell (an initialisation × a task column, or a Table 1 row) may find several records in a results folder: seeds
of one run (averaged), a quick `--max-steps` trial beside the full run, a rerun with another learning rate, the
same run under two file names. Averaging them would give a number that no configuration produced, so

- a record's configuration is its resolved `config` without what does not change the measurement (seed, output
  paths, device, threads, resume flags, log intervals; see IGNORED), its data (dataset, split, metric), and the
  ce.pt meta of its weights (a ce.pt pretrained for 20 steps is another configuration than one of 1,500);
- a partial run (`complete: false`: stopped before its schedule's end) is also keyed by how far it got;
- the cell takes one configuration: complete before partial, then the most seeds, then the newest run, then
  the key itself (so the choice never depends on file order); of each seed it keeps the newest record.

Every record left out is returned with its reason, for the tables' footers.
"""

import json
import os
import time
from collections import defaultdict

# Config keys that do not change what a run measures, or that the key represents otherwise: `voc_root` and
# `images` by the record's dataset, `weights` by the meta of the ce.pt it names (paths differ between machines).
IGNORED = {"seed", "out", "device", "threads", "workers", "resume", "overwrite", "ckpt_every", "log_every",
           "eval_every", "profile", "cache", "max_steps", "save_predictions", "n_examples", "examples",
           "grid_queries", "grid_neighbours", "draw", "write_devkit", "proposals_cache", "voc_root", "images",
           "weights", "runtime", "compile", "data_path"}  # the last three: how the device computed (issue 22)
# ce.pt meta that says where and how fast it was made, not what was learned.
META_IGNORED = {"wall_time_s", "device", "world_size", "versions", "ddp_ranks_identical", "ddp_rank_checksums",
                "images", "profile", "runtime", "data_path"}


def is_complete(record):
    """The record's `complete`; records written before it existed: partial when --max-steps cut the schedule."""
    if "complete" in record:
        return bool(record["complete"])
    config = record.get("config") or {}
    cap, steps = config.get("max_steps"), config.get("steps")
    return cap is None or (steps is not None and cap >= steps)


def progress_note(record):
    """How far a partial run got, e.g. '20 of 2500 iterations'; pretraining too when it was cut short."""
    schedule = record.get("schedule") or {}
    parts = []
    if schedule.get("steps_run", 0) < schedule.get("steps", 0):
        parts.append(f"{schedule['steps_run']} of {schedule['steps']} {schedule.get('unit', 'steps')}")
    pre = schedule.get("pretraining") or {}
    if pre.get("steps_run", 0) < pre.get("steps", 0):
        parts.append(f"weights pretrained {pre['steps_run']} of {pre['steps']} steps")
    if not parts and not is_complete(record):
        parts.append(f"--max-steps {(record.get('config') or {}).get('max_steps')}")
    return ", ".join(parts) or "complete"


def weights_fingerprint(record):
    """What identifies the weights a record was computed from, without their path."""
    config = record.get("config") or {}
    meta = record.get("weights_meta") or (record.get("protocol") or {}).get("pretrain_meta") or {}
    weights = config.get("weights")
    return {"name": os.path.basename(str(weights)) if weights else None,
            "meta": {k: v for k, v in meta.items() if k not in META_IGNORED}}


def configuration(record):
    """The comparable part of a record's configuration, as a plain dict."""
    config = {k: v for k, v in (record.get("config") or {}).items() if k not in IGNORED}
    key = {"config": config, "dataset": record.get("dataset"), "split": record.get("split"),
           "metric": record.get("metric"), "weights": weights_fingerprint(record)}
    if not is_complete(record):
        key["partial"] = record.get("schedule") or (record.get("config") or {}).get("max_steps")
    return key


def configuration_key(record):
    return json.dumps(configuration(record), sort_keys=True, default=str)


def _newest(record):
    """When the run finished (the record's `finished`, else the file's modification time), for ordering."""
    if record.get("finished"):
        return str(record["finished"])
    try:
        stamp = os.path.getmtime(record["_path"])
    except (KeyError, OSError):
        return ""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(stamp))


def _flat(record):
    c = configuration(record)
    return {**c["config"], "dataset": c["dataset"], "split": c["split"], "reported metric": c["metric"],
            "weights": c["weights"]}  # (config may have a `metric` of its own: retrieval's cosine or l2)


def _differences(record, chosen):
    """The fields in which a record's configuration differs from the chosen one: 'lr 0.01 (shown: 0.001)'."""
    a, b = _flat(record), _flat(chosen)
    diffs = [f"{k} {a.get(k)!r} (shown: {b.get(k)!r})" for k in sorted(set(a) | set(b))
             if a.get(k) != b.get(k)]
    return "; ".join(diffs[:3]) + (f"; {len(diffs) - 3} more" if len(diffs) > 3 else "") if diffs else "?"


def select(records):
    """(kept, left_out): the records of one configuration (one per seed), and [(record, reason)] for the rest."""
    if not records:
        return [], []
    groups = defaultdict(list)
    for r in records:
        groups[configuration_key(r)].append(r)

    def rank(key):
        runs = groups[key]
        return (is_complete(runs[0]), len({str(r.get("seed")) for r in runs}), max(map(_newest, runs)), key)

    chosen_key = max(groups, key=rank)
    by_seed = defaultdict(list)
    for r in groups[chosen_key]:
        by_seed[str(r.get("seed"))].append(r)
    kept, left_out = [], []
    for seed in sorted(by_seed):
        runs = sorted(by_seed[seed], key=lambda r: (_newest(r), r.get("_path", "")), reverse=True)
        kept.append(runs[0])
        left_out += [(r, f"an older run of the same configuration and seed {seed} "
                         f"({os.path.basename(runs[0].get('_path', '?'))} is shown)") for r in runs[1:]]
    chosen = kept[0]
    for key in sorted(groups):
        if key == chosen_key:
            continue
        for r in groups[key]:
            if not is_complete(r) and is_complete(chosen):
                reason = f"partial run ({progress_note(r)})"
            else:
                reason = f"another configuration: {_differences(r, chosen)}"
            left_out.append((r, reason))
    return kept, left_out
