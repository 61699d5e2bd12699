"""The paper's Table 1 and Table 2, and Table 3 (per-layer probes), as pandas DataFrames built only from result
records and published.csv.

Cells: our value (mean over the runs of one configuration of an initialisation, i.e. its seeds; see
evaluation.reporting.cells for which records a cell takes and which it leaves out), the 95% interval (mean of the runs'
bootstrap bounds), the number of runs, whether they ran their whole schedule, and the paper's value beside it.
A missing run is NaN: an empty cell in the CSV and Markdown, never a zero.
"""

import math
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pandas as pd

from cebench.errors import CebenchError
from cebench.files import read_json
from cebench.records import TASKS, read_record
from cebench.stages import STAGES
from evaluation.reporting.answer import arrow, format_cell
from evaluation.reporting.cells import is_complete, progress_note, select
from evaluation.reporting.flags import PUBLISHED

INIT_LABELS = {"supervised": "ImageNet (supervised)", "random": "Random Gaussian",
               "kmeans": "Krähenbühl et al. (k-means init)", "autoencoder": "Autoencoder",
               "agrawal": "Agrawal et al.", "wang": "Wang et al.", "doersch": "Doersch et al.",
               "ce": "Context encoder", "ce-untrained": "Context encoder, untrained (step 0)", "hog": "HOG",
               "lab-autoencoder": "Lab→Lab autoencoder (Zhang et al.)"}
# Table 3's published columns: (published.csv table, shown as '<layer> (<label>)'), Zhang, Isola & Efros 2017.
TABLE3_PUBLISHED = {"table3": "ImageNet top-1, paper", "table3-places": "Places top-1, paper"}
CLASSIFIER_ROWS = {"svm": "VOC07 SVM"}  # probe classifiers other than the logistic default get rows of their own
TABLE2_TASKS = tuple(s.table2 for s in STAGES if s.table2)  # its columns, in the order of the stages
TABLE1_TASK, TABLE3_TASK = "inpainting", "probe"  # the records of Table 1 and of Table 3
HOG_TASKS = tuple(s.task for s in STAGES if s.hog)  # runs on frozen features (or HOG), centred unless --no-center
TABLE1_ROWS = {"nn-inpainting:hog": "NN-inpainting (HOG features)",
               "nn-inpainting:ce": "NN-inpainting (context-encoder features)",
               "nn-inpainting:random": "NN-inpainting (random-init features)",
               "nn-inpainting:supervised": "NN-inpainting (ImageNet features)",
               "context-encoder:ce": "Context encoder (decoder)"}
TABLE1_SCORES = {"l1": "Mean L1", "l2": "Mean L2", "psnr": "PSNR"}


def _other_json(path):
    """Valid JSON that does not claim to be a record (a run's config.json, a rescaling summary): not worth naming.
    A damaged file, or one with a record's `task` that read_record refuses, is named in the footers instead."""
    try:
        data = read_json(path)
    except (OSError, ValueError):
        return False
    return not (isinstance(data, dict) and data.get("task") in TASKS)


def load_records(results_dir):
    """Every result record under results_dir (recursive) -> (records, other JSON files, [(unreadable, reason)])."""
    root = Path(results_dir)
    if not root.is_dir():
        raise CebenchError(f"results folder not found: {root}")
    records, other, unreadable = [], [], []
    for path in sorted(root.rglob("*.json")):
        try:
            record = read_record(path)
        except CebenchError as err:
            if _other_json(path):
                other.append(path)
            else:
                unreadable.append((path, str(err).removeprefix(f"{path}: ")))
            continue
        record["_path"] = str(path)
        records.append(record)
    return records, other, unreadable


def record_profile(record):
    """The benchmarks.yaml profile a record was made under (its resolved config's), or None for older records."""
    profile = (record.get("config") or {}).get("profile")
    return None if profile is None else str(profile)


def one_profile(records, results, wanted=None):
    """(profile, its records, [(path, profile)] of the others): a table never mixes profiles (smoke's synthetic data
    beside voc-mini's real VOC). The profile is `wanted` (an explicit --profile), else the results folder's name when
    records of that profile are there (results/<profile>/), else the one most records hold; a tie is refused.
    Records that name no profile (older versions) stay."""
    counts = Counter(p for p in map(record_profile, records) if p is not None)
    if wanted is None and len(counts) > 1:
        top = counts.most_common()
        if Path(results).name in counts:
            wanted = Path(results).name
        elif top[0][1] == top[1][1]:
            raise CebenchError(f"{results}: holds as many records of profile {top[0][0]!r} as of {top[1][0]!r}; pass "
                               "--profile to choose the one the tables show")
        else:
            wanted = top[0][0]
    wanted = wanted if wanted is not None else (next(iter(counts)) if counts else None)
    kept = [r for r in records if record_profile(r) in (None, wanted)]
    other = [(r["_path"], record_profile(r)) for r in records if record_profile(r) not in (None, wanted)]
    return wanted, kept, other


def read_published(path=PUBLISHED):
    """The paper's numbers, one per line: table, key, row, column, value, unit, source, note."""
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError) as err:
        raise CebenchError(f"{path}: unreadable published numbers ({err})") from None
    missing = {"table", "key", "row", "column", "value", "source"} - set(table.columns)
    if missing:
        raise CebenchError(f"{path}: lacks columns {sorted(missing)}")
    return table


def _number(text):
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


def variant_of(record):
    """What sets a run's protocol apart from the default one (runs of different variants are never averaged)."""
    protocol = record.get("protocol") or {}
    marks = [protocol["mode"]] if protocol.get("mode") and protocol["mode"] != "fine-tune" else []
    if record["task"] in HOG_TASKS and (record.get("config") or {}).get("center") is False:
        marks.append("uncentred")
    return ", ".join(marks)


def column_of(record):
    """Table 2 column of a transfer/retrieval record: the task, marked when it is not the default protocol."""
    variant = variant_of(record)
    return record["task"] + (f" ({variant})" if variant else "")


def aggregate(records, value_of=lambda r: (r["value"], *(r["ci95"] or (None, None)))):
    """Mean value and interval over the runs of one cell (one configuration, so one metric: see select_cell)."""
    rows = np.array([[np.nan if v is None else float(v) for v in value_of(r)] for r in records], dtype=float)
    finite = np.isfinite(rows)
    mean = np.where(finite.any(axis=0), np.where(finite, rows, 0).sum(axis=0) / np.maximum(finite.sum(axis=0), 1),
                    np.nan)  # per column, over the runs that have it
    return {"value": mean[0], "low": mean[1], "high": mean[2], "runs": len(records), "metric": records[0]["metric"]}


def pretrain_meta(record):
    """ce.pt meta of a record's weights: protocol.pretrain_meta, weights_meta, else read from config.weights."""
    for meta in ((record.get("protocol") or {}).get("pretrain_meta"), record.get("weights_meta")):
        if meta:
            return meta
    weights = (record.get("config") or {}).get("weights")
    if record.get("init") not in ("random", "supervised", "hog") and weights and Path(weights).is_file():
        from pretrain.weights import read_checkpoint  # only for records that carry no meta: loads the file

        try:
            return read_checkpoint(weights)["meta"]
        except CebenchError:  # a labelled state_dict, not a ce.pt: no pretraining meta to show
            return {}
    return {}


def _duration(seconds):
    if seconds is None:
        return ""
    for unit, size in (("days", 86400), ("hours", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.0f} s"


def pretraining_columns(key, records):
    """(our pretraining time, images seen) of an initialisation, from the ce.pt meta its records carry."""
    if key == "random":
        return "none (initialisation)", ""  # kmeans: its k-means time and images, from its records' meta
    if key == "hog":
        return "none (hand-made)", ""
    metas = [m for m in (pretrain_meta(r) for r in records) if m.get("wall_time_s") is not None]
    if not metas:
        return "", ""
    meta = metas[0]
    device = f" ({meta['device']})" if meta.get("device") else ""
    seen = meta.get("images_seen")
    return _duration(meta["wall_time_s"]) + device, (f"{seen:,}" if isinstance(seen, int) else "")


def select_cell(label, runs, report):
    """The records a cell shows (one configuration, see evaluation.reporting.cells); the rest go to
    report["left_out"]."""
    kept, left_out = select(runs)
    report["shown"] += kept
    report["left_out"] += [(label, r["_path"], reason) for r, reason in left_out]
    if kept and not is_complete(kept[0]):
        report["partial"].append((label, progress_note(kept[0])))
    return kept


def _ordered(keys):
    order = list(INIT_LABELS)
    return sorted(keys, key=lambda k: (order.index(k) if k in order else len(order), k))


def table2(records, published):
    """Rows per initialisation; per task our value, interval, runs, completeness and the paper's value;
    pretraining columns. Returns (table, columns, report of the records left out and of partial cells)."""
    pub = published[published["table"] == "table2"]
    found, cells, by_init = defaultdict(list), {}, defaultdict(list)
    for r in records:
        if r["task"] in TABLE2_TASKS:
            found[(r["init"], column_of(r))].append(r)
    report = {"shown": [], "left_out": [], "partial": []}
    for (init, col), runs in sorted(found.items()):
        cells[(init, col)] = select_cell(f"{INIT_LABELS.get(init, init)}, {col}", runs, report)
        by_init[init] += cells[(init, col)]
    # The paper's three tasks always (its numbers stand beside empty cells), then retrieval and protocol variants.
    present = {c for _, c in cells} | {t for t in TABLE2_TASKS[:3] if (pub["column"] == t).any()}
    base = {t: i for i, t in enumerate(TABLE2_TASKS)}
    columns = sorted(present, key=lambda c: (base.get(c.split(" (")[0], len(base)), c))
    rows = []
    for key in _ordered(set(by_init) | set(pub["key"])):
        paper = dict(zip(pub[pub["key"] == key]["column"], pub[pub["key"] == key]["value"], strict=True))
        ours_time, seen = pretraining_columns(key, by_init.get(key, []))
        row = {"key": key, "row": INIT_LABELS.get(key, key), "supervision (paper)": paper.get("supervision", ""),
               "pretraining time (ours)": ours_time, "images seen (ours)": seen,
               "pretraining time (paper)": paper.get("pretraining_time", "")}
        for col in columns:
            runs = cells.get((key, col))
            cell = aggregate(runs) if runs else {}
            row.update({col: cell.get("value", math.nan), f"{col} low": cell.get("low", math.nan),
                        f"{col} high": cell.get("high", math.nan), f"{col} runs": cell.get("runs", 0),
                        f"{col} complete": is_complete(runs[0]) if runs else None,
                        f"{col} paper": _number(paper.get(col))})
        rows.append(row)
    return pd.DataFrame(rows).set_index("key"), columns, report


def _table1_key(record):
    variant = variant_of(record) if record.get("method", "nn-inpainting") == "nn-inpainting" else ""
    return f"{record.get('method', 'nn-inpainting')}:{record['init']}" + (f" ({variant})" if variant else "")


def table1(records, published):
    """Rows per inpainting method and features; mean L1, mean L2 (%) and PSNR (dB) with intervals and the paper's.
    Returns (table, columns, report of the records left out and of partial rows)."""
    pub = published[published["table"] == "table1"]
    found, report = defaultdict(list), {"shown": [], "left_out": [], "partial": []}
    for r in records:
        if r["task"] == TABLE1_TASK and isinstance(r.get("scores"), dict):
            found[_table1_key(r)].append(r)
    groups = {key: select_cell(key, runs, report) for key, runs in sorted(found.items())}
    order = list(TABLE1_ROWS)
    keys = sorted(set(groups) | set(pub["key"]), key=lambda k: (order.index(k) if k in order else len(order), k))
    rows = []
    for key in keys:
        paper = dict(zip(pub[pub["key"] == key]["column"], pub[pub["key"] == key]["value"], strict=True))
        base, _, variant = key.partition(" (")
        label = TABLE1_ROWS.get(base, base) + (f" ({variant}" if variant else "")
        row = {"key": key, "row": label}
        for score, title in TABLE1_SCORES.items():
            cell, runs = {}, groups.get(key)
            if runs:
                cell = aggregate(runs, lambda r, s=score: (r["scores"][s]["value"], *r["scores"][s]["ci95"]))
            row.update({title: cell.get("value", math.nan), f"{title} low": cell.get("low", math.nan),
                        f"{title} high": cell.get("high", math.nan), f"{title} runs": cell.get("runs", 0),
                        f"{title} complete": is_complete(runs[0]) if runs else None,
                        f"{title} paper": _number(paper.get(score))})
        rows.append(row)
    return pd.DataFrame(rows).set_index("key"), list(TABLE1_SCORES.values()), report


def probe_classifier(record):
    """The classifier of a probe record: protocol.classifier, logistic for records written before the SVM."""
    return (record.get("protocol") or {}).get("classifier") or "logistic"


def table3(records, published=None):
    """Rows per initialisation and probe classifier (a cell never mixes two), a column per probed layer: mean
    probe mAP over the runs of one configuration (evaluation.reporting.cells), with its interval; beside it Zhang et al.
    2017's published top-1 per layer (other datasets and classifiers: the ordering compares, the values do not),
    whose rows stand also where we have no run. Returns (table, layers, report of the records left out)."""
    published = read_published() if published is None else published
    pub = published[published["table"].isin(list(TABLE3_PUBLISHED))]
    found = defaultdict(list)
    for r in records:
        if r["task"] == TABLE3_TASK and isinstance(r.get("layers"), dict):
            classifier = probe_classifier(r)
            found[r["init"] if classifier == "logistic" else f"{r['init']}:{classifier}"].append(r)
    report = {"shown": [], "left_out": [], "partial": []}
    groups = {key: select_cell(f"{_table3_label(key)}, probe", runs, report) for key, runs in sorted(found.items())}
    layers = sorted({name for runs in groups.values() for r in runs for name in r["layers"]} | set(pub["column"]))
    rows = []
    inits = _ordered({k.split(":")[0] for k in set(groups) | set(pub["key"])})
    for key in sorted(set(groups) | set(pub["key"]), key=lambda k: (inits.index(k.split(":")[0]), k)):
        row = {"key": key, "row": _table3_label(key)}
        for layer in layers:
            runs = [r for r in groups.get(key, []) if layer in r["layers"]]
            value_of = lambda r, n=layer: (r["layers"][n]["value"], *r["layers"][n]["ci95"])  # noqa: E731
            cell = aggregate(runs, value_of) if runs else {}
            row.update({layer: cell.get("value", math.nan), f"{layer} low": cell.get("low", math.nan),
                        f"{layer} high": cell.get("high", math.nan), f"{layer} runs": cell.get("runs", 0),
                        f"{layer} complete": is_complete(runs[0]) if runs else None,
                        f"{layer} paper": math.nan})  # Pathak et al. probe no layer
            for table, label in TABLE3_PUBLISHED.items():
                hit = pub[(pub["table"] == table) & (pub["key"] == key) & (pub["column"] == layer)]["value"]
                row[f"{layer} paper:{label}"] = _number(hit.iloc[0]) if len(hit) else math.nan
        rows.append(row)
    return pd.DataFrame(rows).set_index("key"), layers, report


def _table3_label(key):
    init, _, classifier = key.partition(":")
    label = INIT_LABELS.get(init, init)
    return f"{label} ({CLASSIFIER_ROWS.get(classifier, classifier)})" if classifier else label


def table3_notes(published=None):
    """The footer lines of Table 3 that say where its published columns come from and how far they compare."""
    published = read_published() if published is None else published
    pub = published[published["table"].isin(list(TABLE3_PUBLISHED))]
    sources = "; ".join(f"'{TABLE3_PUBLISHED[t]}': {src}" for t, src in
                        pub.drop_duplicates("table")[["table", "source"]].itertuples(index=False))
    return [f"- published ({sources}): top-1 accuracy of linear classifiers on frozen AlexNet layers resized to "
            "~9k dims, on ImageNet or Places-205; ours is VOC classification mAP. The datasets and classifiers "
            "differ: compare the orderings (across layers, across initialisations), not the values.",
            "- probe rows marked (VOC07 SVM): Goyal et al. 2019's linear-SVM protocol (evaluation.probe "
            "--classifier svm); unmarked rows: the logistic probe. A cell never mixes the two."]


def markdown(table, columns, text_columns=()):
    """Markdown of a table: 'value [low, high]' for ours and the paper's value beside it; empty when missing."""
    return display_table(table, columns, text_columns).to_markdown(index=False)


def display_table(table, columns, text_columns=()):
    """The table as shown (Markdown, the HTML report): Method, text columns, then per column ours (its header says
    with ↑/↓ which way is better) and the paper's."""
    shown = pd.DataFrame(index=table.index)
    shown["Method"] = table["row"]
    for col in text_columns:
        shown[col] = table[col]
    for col in columns:
        shown[f"{col} (ours) {arrow(col)}"] = [format_cell(v, lo, hi) for v, lo, hi in
                                  zip(table[col], table[f"{col} low"], table[f"{col} high"], strict=True)]
        papers = [(f"{col} paper", "paper")] + [(c, c.split(":", 1)[1]) for c in table.columns
                                                 if c.startswith(f"{col} paper:")]
        for name, label in papers:
            values = pd.to_numeric(table[name], errors="coerce")  # read back from a CSV: '' is no number
            if values.notna().any():  # no paper column where the paper has no number
                shown[f"{col} ({label})"] = ["" if not np.isfinite(p) else f"{p:g}" for p in values]
    return shown


TERMINAL = 100  # columns of a terminal


def narrow(table, columns, width=TERMINAL):
    """The table for a terminal: init keys and our values only (rows with at least one), 'value [low, high]'
    when that fits in `width` columns, else the values alone (the .md keeps everything)."""
    ours = table[table[list(columns)].notna().any(axis=1)]
    for with_interval in (True, False):
        shown = pd.DataFrame(index=ours.index.rename("init"))  # the row keys are initialisations
        for col in columns:
            low, high = (ours[f"{col} low"], ours[f"{col} high"]) if with_interval else (ours[col] * np.nan,) * 2
            shown[f"{col} {arrow(col)}"] = [format_cell(v, lo, hi) for v, lo, hi in
                                            zip(ours[col], low, high, strict=True)]
        text = shown.to_markdown(tablefmt="simple", index=True, stralign="right", disable_numparse=True)
        if max(map(len, text.splitlines())) <= width or not with_interval:
            return text + ("" if with_interval else "\n(values only, to fit the terminal; intervals in the .md)")
    return text
