"""One self-contained HTML page of a results folder: the tables, charts, per-class AP, training curves, example
grids and provenance, readable offline (images inline as data URIs, CSS inline, nothing fetched at view time).

    python -m evaluation.report --results results/voc-mini        # writes results/voc-mini/report.html
    python -m evaluation.report --profile smoke --out /tmp/smoke.html
"""

import re
import time
from pathlib import Path

from cebench.config import benchmarks_path, command_line_dests, entry_parser, parse_with_profile
from cebench.errors import CebenchError, run_cli
from cebench.files import atomic_write_text, display_path, read_json
from cebench.logs import get_logger
from cebench.records import git_info, results_dir
from cebench.stages import STAGES
from evaluation.reporting.flags import add_results_args
from evaluation.tables import provenance

# pandas (evaluation.reporting's tables and HTML pieces) is imported where it is used, once the command line is
# parsed: --help and --print-config answer without it

EXAMPLE_TITLES = {s.examples: s.example_title for s in STAGES if s.examples}  # file-name prefix -> heading
SAMPLE_ROWS = ("rows: the input as the encoder sees it (hole grey), the output pasted into the hole, the original "
               "(the autoencoder has no hole: its output is the whole image)")
MAX_PER_FOLDER = 6  # example folders (e.g. detect_ce_examples/) can hold many images; the page shows the first


def get_args_parser():
    return add_results_args(entry_parser("python -m evaluation.report", __doc__.split("\n")[0]),
                            out_help="HTML file to write (default: <results>/report.html)",
                            published_help="the paper's numbers the tables used (provenance)")


def _natural(path):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", Path(path).name)]


def tables_html(results, shown_elsewhere):
    """Every table*.csv of the folder (Table 1, 2 and any later one), with the notes of its .md."""
    from evaluation.reporting import report_html as h

    parts, seen = [], set(shown_elsewhere)
    for csv in sorted(results.glob("table*.csv"), key=_natural):
        title, notes = h.markdown_notes(csv.with_suffix(".md"))
        notes = [n for n in notes if n not in seen or n.startswith("- ")]  # a footer shared by the tables: once
        seen.update(notes)
        parts.append(f"<h3>{h.esc(title or csv.stem)}</h3>{h.frame(h.read_table_csv(csv))}{h.notes_html(notes)}")
    return "".join(parts)


def _read_cells(path):
    """A table CSV of evaluation.tables as numbers, indexed by its key (None when the file is absent)."""
    import pandas as pd

    if not path.is_file():
        return None, []
    table = pd.read_csv(path, keep_default_na=False, na_values=[""]).set_index("key")
    columns = [c for c in table.columns if f"{c} low" in table and f"{c} high" in table]
    for name in (n for c in columns for n in (c, f"{c} low", f"{c} high")):
        table[name] = pd.to_numeric(table[name], errors="coerce")
    return table, columns


def answer_html(results, records):
    """The first section: ce against random init and the controls, from the tables' CSVs (the same cells)."""
    from evaluation.reporting import answer, report_html as h
    from evaluation.reporting.paper_tables import column_of

    (t2, columns2), (t3, layers), (t1, _) = (_read_cells(results / f"table{n}.csv") for n in (2, 3, 1))
    metrics2 = {column_of(r): r["metric"] for r in records if column_of(r) in columns2}
    found = answer.answer(t2, columns2, t3, layers, t1, metrics2)
    if found.empty:
        return ""
    shown = found[answer.COLUMNS].copy()
    for col in ("ce", "rival value", "ce - rival [95%]"):
        shown[col] = shown[col].str.replace(" ", "\u00a0")  # 'v [low, high]' never breaks
    kinds = found["verdict"].map({"ce better": "better", "ce worse": "worse"}).fillna("open")
    body = h.answer_table(shown, kinds)  # each verdict coloured (the word says it too)
    return (f"<p><strong>{h.esc(answer.headline(found))}</strong></p>"
            f"{body}{h.notes_html([answer.NOTE])}")


def charts_html(results):
    """The charts evaluation.tables drew (table2.png: Table 2 with intervals, the paper's values as ticks)."""
    from evaluation.reporting import report_html as h

    return h.grid([h.image(p, p.name) for p in sorted(results.glob("table*.png"), key=_natural)], kind="wide")


def per_class_html(records):
    """One table per task and metric: classes down, runs across, the mean in the last row."""
    import pandas as pd

    from evaluation.reporting import report_html as h
    from evaluation.reporting.cells import is_complete
    from evaluation.reporting.paper_tables import variant_of

    groups = {}
    for r in records:
        if any(v is not None for v in (r.get("per_class") or {}).values()):
            groups.setdefault((r["task"], r["metric"]), []).append(r)
    cards = []
    for (task, metric), runs in sorted(groups.items()):
        runs = sorted(runs, key=lambda r: (r["init"], str(r.get("method")), r["seed"]))
        labels = [" · ".join(str(x) for x in (r["init"], r.get("method"), variant_of(r)) if x) for r in runs]
        labels = [f"{lab} (seed {r['seed']})" if labels.count(lab) > 1 else lab
                  for lab, r in zip(labels, runs, strict=True)]
        # a run cut short stands beside the others here (the tables leave it out): say so in its column
        labels = [lab if is_complete(r) else f"{lab} (partial run)" for lab, r in zip(labels, runs, strict=True)]
        table = pd.DataFrame({lab: {**r["per_class"], f"mean ({metric})": r["value"]} for lab, r in
                              zip(labels, runs, strict=True)}).dropna(how="all")  # classes absent from the data
        shown = table.map(lambda v: "" if v is None or pd.isna(v) else f"{v:.1f}")
        cards.append(f"<div><h3>{h.esc(task)}: per-class {h.esc(metric)} (%)</h3>{h.frame(shown, index=True)}</div>")
    return f'<div class="cards">{"".join(cards)}</div>' if cards else ""


def curves_html(results):
    """Pretraining loss curves and each fine-tuning run's curves.png (drawn from its metrics.jsonl)."""
    from evaluation.reporting import report_html as h

    figures = [h.image(p, f"pretraining: {p.name}") for p in sorted(results.glob("*.loss.png"))]
    figures += [h.image(p, f"{p.parent.name}: loss, learning rate, evaluations") for p in
                sorted(results.glob("*/curves.png"), key=lambda p: _natural(p.parent))]
    return h.grid(figures, kind="rows")  # three panels side by side: full width to be legible


def examples_html(results):
    """The example grids the runs drew (inpainting, retrieval, segmentation, detection, pretraining samples)."""
    from evaluation.reporting import report_html as h

    found = [p for p in results.glob("*.png") if not p.name.startswith("table") and not p.name.endswith(".loss.png")]
    notes = []
    for folder in sorted(p for p in results.iterdir() if p.is_dir() and re.search(r"[._]examples$", p.name)):
        images = sorted(folder.glob("*.png"), key=_natural)
        found += images[:MAX_PER_FOLDER]
        if len(images) > MAX_PER_FOLDER:
            notes.append(f"{folder.name}/: the first {MAX_PER_FOLDER} of {len(images)} images are shown.")
    groups = {}
    for path in sorted(found, key=_natural):
        name = path.relative_to(results).as_posix()
        if name.endswith(".samples.png"):  # every pretraining's grid (ce, autoencoder, ce-untrained)
            title, caption = EXAMPLE_TITLES["ce"], f"{name}: {SAMPLE_ROWS}"
        else:
            title, caption = EXAMPLE_TITLES.get(re.split(r"[._]", name)[0], "Other figures"), name
        groups.setdefault(title, []).append(h.image(path, caption))
    return "".join(f"<h3>{h.esc(title)}</h3>{h.grid(figs, kind='wide')}" for title, figs in groups.items()) + (
        h.notes_html(notes) if groups else "")


def _precision(record):
    for source in (record.get("protocol") or {}, record.get("config") or {}):
        for key in ("precision", "amp_dtype", "dtype", "amp"):
            if source.get(key) is not None:
                return str(source[key])
    return "not recorded"


def _stamps(results):
    import pandas as pd

    rows = []
    for path in sorted(results.glob("*.stamp")):
        try:
            stamp = read_json(path)
        except (OSError, ValueError):  # damaged, not a regular file, too large or too deep
            continue
        if not isinstance(stamp, dict):
            continue
        rows.append({"output": path.name.removesuffix(".stamp"), "status": stamp.get("status", ""),
                     "wall time (s)": stamp.get("wall_time_s", ""), "command": " ".join(stamp.get("command", []))})
    return pd.DataFrame(rows)


def _value(record):
    low, high = record["ci95"] or (None, None)
    interval = f" [{low:.3g}, {high:.3g}]" if low is not None and high is not None else ""
    return "" if record["value"] is None else f"{record['value']:.3g}{interval}"


def provenance_html(results, records, lines):
    """Where the numbers come from: commits, data, seeds, precision, devices, wall times, library versions."""
    import pandas as pd

    from evaluation.reporting import report_html as h

    runs = pd.DataFrame([{
        "record": Path(r["_path"]).relative_to(results).as_posix(), "task": r["task"], "init": r["init"],
        "metric": r["metric"], "value [95% interval]": _value(r), "images": r["n_images"], "seed": r["seed"],
        "device": r.get("device") or f"{(r.get('config') or {}).get('device', '?')} (asked; not recorded)",
        "precision": _precision(r),
        "wall time (s)": r["wall_time_s"]} for r in records])
    versions = {}
    for r in records:
        for name, value in (r.get("versions") or {}).items():
            if not name.startswith("git"):
                versions.setdefault(name, set()).add(str(value))
    libs = ", ".join(f"{k} {'/'.join(sorted(v))}" for k, v in sorted(versions.items()))
    stamps = _stamps(results)
    return (h.notes_html(lines) + f"<h3>Runs</h3>{h.frame(runs)}"
            + (f"<h3>Stages of run_all.sh</h3>{h.frame(stamps)}" if len(stamps) else "")
            + f'<p class="note">Libraries: {h.esc(libs or "-")}</p>')


def main(argv=None):
    # config: parser defaults < benchmarks.yaml profile < command line
    parser = get_args_parser()
    args = parse_with_profile(parser, argv, "report")  # --help and --print-config exit here
    from evaluation.reporting import report_html as h
    from evaluation.reporting.paper_tables import load_records, one_profile

    repo = benchmarks_path().parent
    results = Path(args.results or results_dir(args.profile))
    out = Path(args.out) if args.out else results / "report.html"
    # data: the records (the tables' only input) and the files the runs wrote beside them
    records, other, _unreadable = load_records(results)  # the tables' footers name what they left out
    wanted = args.profile if "profile" in command_line_dests(parser, argv) else None
    _, records, _other_profiles = one_profile(records, results, wanted)  # one profile, as the tables show
    if not records and not list(results.glob("table*.csv")):
        raise CebenchError(f"no result records or tables under {results}: run the transfer/evaluation entry points "
                           "first")
    profiles = {str((r.get("config") or {}).get("profile")) for r in records} - {"None"}
    profile = ", ".join(sorted(profiles)) or args.profile  # tables alone (e.g. results/reference/): the flag's
    synthetic = any("synthetic" in str(r["dataset"]).lower() for r in records)
    lines = provenance(profile, display_path(results, repo), records, other, display_path(args.published, repo))
    # the page
    sections = [("answer", "The answer: context encoder against random init and the controls",
                 answer_html(results, records), "No cell has both a context-encoder value and a rival's."),
                ("tables", "Tables", tables_html(results, lines), "No table files: run python -m evaluation.tables."),
                ("charts", "Charts", charts_html(results), "No charts."),
                ("per-class", "Per-class results", per_class_html(records), "No per-class numbers in the records."),
                ("curves", "Training curves", curves_html(results), "No training curves in this folder."),
                ("examples", "Examples", examples_html(results), "No example grids in this folder."),
                ("provenance", "Provenance", provenance_html(results, records, lines), "")]
    commit = git_info().get("git_commit", "not a git checkout")[:12]
    subtitle = (f"{display_path(results, repo)} · profile {profile} · {len(records)} records · written "
                f"{time.strftime('%Y-%m-%d %H:%M')} at commit {commit}")
    banner = ("Synthetic data: these numbers check the pipeline, not the paper." if synthetic else "")
    text = h.page(f"cebench report: {profile}", subtitle, banner,
                  [(a, t, h.section(a, t, body, empty)) for a, t, body, empty in sections])
    atomic_write_text(out, text)
    get_logger("report").info("wrote %s (%.0f kB)", out, out.stat().st_size / 1024)
    return {"out": str(out), "records": len(records), "bytes": out.stat().st_size}


if __name__ == "__main__":
    run_cli(main)
