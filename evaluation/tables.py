"""Rebuild the paper's Tables 1 (inpainting) and 2 (transfer), and Table 3 (per-layer probes), from result records.

Reads every result record under --results (nothing else), writes table1.csv/.md, table2.csv/.md and a bar chart
of Table 2 with 95% intervals (table2.png); with probe records (python -m evaluation.probe) also Table 3, the
per-layer linear probes (inits x layers, table3.csv/.md) and its figure (table3.png, mAP vs layer). Missing runs
are empty cells, never zeros. A cell averages the seeds of one configuration only (complete runs before partial
ones, see evaluation.reporting.cells); each table's footer names the records it left out and why, and the unreadable
files. The tables show one profile (--profile when given, else the folder's: see paper_tables.one_profile); records
of other profiles are left out and named. The set of files is written as one unit (cebench.files.staged_files).

    python -m evaluation.tables --results results/voc-mini
    python -m evaluation.tables --profile smoke          # results/smoke
"""

import textwrap
from collections import Counter
from pathlib import Path

from cebench.config import benchmarks_path, command_line_dests, entry_parser, parse_with_profile
from cebench.errors import CebenchError, run_cli
from cebench.files import atomic_write_text, display_path, staged_files
from cebench.logs import get_logger
from cebench.records import results_dir
from evaluation.reporting.flags import add_results_args

# pandas and matplotlib (evaluation.reporting's tables, answer and figures) are imported where they are used, once
# the command line is parsed: --help and --print-config answer without them


def get_args_parser():
    return add_results_args(entry_parser("python -m evaluation.tables", __doc__.split("\n")[0]),
                            out_help="folder for the tables and chart (default: --results)",
                            published_help="the paper's numbers (CSV with a source column)")


def column_notes(records, columns, column_of):
    """One line per column: the metric, test data and protocol of the runs behind it."""
    lines = []
    for col in columns:
        runs = [r for r in records if column_of(r) == col]
        if not runs:
            continue
        what = Counter(f"{r['metric']} on {r['dataset']} {r['split']} ({r['n_images']} images)" for r in runs)
        extra = {str((r.get("protocol") or {}).get(k)) for r in runs for k in ("ap", "mode") if
                 (r.get("protocol") or {}).get(k)}
        chance = sorted({f"{r['chance']:.1f}%" for r in runs if r.get("chance") is not None})
        if chance:  # precision@k means little without the share of random neighbours that would be relevant
            extra.add(f"chance level (random neighbours) {', '.join(chance)}")
        lines.append(f"- {col}: " + "; ".join(what) + (f"; {'; '.join(sorted(extra))}" if extra else ""))
    return lines


def provenance(profile, results, records, other, published):
    """The footer: where the numbers come from."""
    commits = sorted({(r.get("versions") or {}).get("git_commit", "?")[:12]
                      + ("+dirty" if (r.get("versions") or {}).get("git_dirty") else "") for r in records})
    data = sorted({f"{r['task']}: {r['dataset']} {r['split']}" for r in records})
    seeds = sorted({str(r["seed"]) for r in records})
    # Records say how their interval was made (protocol.interval); older ones, without it, were percentile ones.
    kinds = sorted({"BCa" if str((r.get("protocol") or {}).get("interval", "")).startswith("BCa") else "percentile"
                    for r in records}) or ["BCa"]
    return [f"Provenance: profile {profile}; {len(records)} records from {results}"
            + (f" ({len(other)} other JSON files ignored)" if other else "") + ".",
            f"Data: {'; '.join(data) or '-'}. Seeds: {', '.join(seeds) or '-'}. Commits: {', '.join(commits) or '-'}.",
            f"Paper values: {published} (source column). Intervals: {' and '.join(kinds)} bootstrap 95% over test "
            "images (queries for retrieval; each record's protocol.interval says how), averaged over runs; 'runs' "
            "columns of the CSV count the records behind each cell."]


def left_out_notes(report, unreadable, results, other_profiles=()):
    """Footer lines naming every record a table left out and why, the cells shown from partial runs only, the
    records of other profiles, and the files that could not be read at all."""
    def name(path):
        path = Path(path)
        return str(path.relative_to(results)) if path.is_relative_to(results) else str(path)

    lines = []  # each part a Markdown paragraph of its own
    if report["left_out"]:
        lines += ["", "Left out (a cell averages the seeds of one configuration; complete runs before partial ones, "
                  "then the most seeds, then the newest):"]
        lines += [f"- {cell}: {name(path)}: {reason}" for cell, path, reason in report["left_out"]]
    if report["partial"]:
        lines += ["", "Partial runs shown (no complete run of the cell): "
                  + "; ".join(f"{cell} ({note})" for cell, note in report["partial"]) + "."]
    if other_profiles:
        lines += ["", "Other profiles (left out: a table shows one profile's data): "
                  + "; ".join(f"{name(p)} (profile {profile})" for p, profile in other_profiles) + "."]
    if unreadable:
        lines += ["", "Unreadable files (left out): " + "; ".join(f"{name(p)}: {why}" for p, why in unreadable) + "."]
    return lines


def write_table(out_dir, name, title, table, columns, text_columns, notes, footer):
    """<name>.csv (every number; empty when missing) and <name>.md (formatted, with notes and provenance)."""
    from evaluation.reporting.paper_tables import markdown

    csv_path, md_path = out_dir / f"{name}.csv", out_dir / f"{name}.md"
    # raw values (no rounding here): the .md, the report and answer.* format them once, alike
    atomic_write_text(csv_path, table.to_csv(na_rep=""))
    text = f"# {title}\n\n{markdown(table, columns, text_columns)}\n\n"
    text += ("Columns:\n" + "\n".join(notes) + "\n\n" if notes else "") + "\n".join(footer) + "\n"
    atomic_write_text(md_path, text)
    return csv_path, md_path


def terminal_text(t1, columns1, t2, columns2, t3, layers, found):
    """What evaluation.tables prints: the tables narrowed to 100 columns, then the answer against random."""
    from evaluation.reporting.paper_tables import narrow

    parts = [("Table 2: transfer (%)", narrow(t2, columns2)), ("Table 1: inpainting", narrow(t1, columns1))]
    if t3 is not None:
        parts.append(("Table 3: linear probes (mAP %)", narrow(t3, layers)))
    text = "\n\n".join(f"{title}\n{body}" for title, body in parts)
    wrapped = answer_text(found)
    return text + ("\n\nThe answer (ce against random init; answer.md has the controls too):\n" + wrapped
                   if wrapped else "")


def answer_text(found):
    """The answer against random init as terminal lines within 100 columns ('' when nothing compares)."""
    from evaluation.reporting import answer

    lines = [answer.headline(found), *answer.summary(found)] if not found.empty else []
    return "\n".join(textwrap.fill(line, 100, subsequent_indent="  ") for line in lines)


def main(argv=None):
    # config: parser defaults < benchmarks.yaml profile < command line
    parser = get_args_parser()
    args = parse_with_profile(parser, argv, "tables")  # --help and --print-config exit here
    from evaluation.reporting.paper_tables import load_records, one_profile, read_published

    log = get_logger("tables")
    results = Path(args.results or results_dir(args.profile))
    out_dir = Path(args.out) if args.out else results
    # data: the records of one profile and the paper's numbers
    records, other, unreadable = load_records(results)
    if not records:
        raise CebenchError(f"no result records under {results}: run the transfer/evaluation entry points first")
    wanted = args.profile if "profile" in command_line_dests(parser, argv) else None
    profile, records, other_profiles = one_profile(records, results, wanted)
    if not records:
        raise CebenchError(f"no result records of profile {profile!r} under {results} (it holds records of "
                           f"{', '.join(sorted({p for _, p in other_profiles}))})")
    published = read_published(args.published)
    profile = profile or args.profile  # the records know which profile made them
    # files inside the checkout are named by their place in it, not by this machine's absolute path
    repo = benchmarks_path().parent

    def footer(report):  # provenance of the records shown, then what was left out
        lines = provenance(profile, display_path(results, repo), report["shown"], other,
                           display_path(args.published, repo))
        return lines + left_out_notes(report, unreadable, results, other_profiles)

    # every file into a temporary folder first, moved in together once all are written (a full disk or a crash
    # leaves the previous set whole, never old and new tables mixed); a table no longer made is removed
    with staged_files(out_dir) as stage:
        tables, charts, left_out = write_tables(stage, records, published, profile, footer)
    stale = [out_dir / f"table3.{ext}" for ext in ("csv", "md", "png")] if tables["table3"] is None else []
    for path in stale:
        if path.exists():
            path.unlink()
            log.info("removed %s (no probe records now)", path)
    paths = [out_dir / Path(p).name for p in (*tables["files"], *charts)]
    for cell, path, reason in left_out:
        log.warning("left out of %s: %s (%s)", cell, display_path(path, repo), reason)
    for path, name in other_profiles:
        log.warning("left out, profile %s (the tables show %s): %s", name, profile, display_path(path, repo))
    for path, reason in unreadable:
        log.warning("unreadable, left out: %s (%s)", display_path(path, repo), reason)
    for path in paths:
        log.info("wrote %s", path)
    print(tables["terminal"])
    return {"table1": tables["table1"], "table2": tables["table2"], "table3": tables["table3"],
            "answer": tables["answer"], "files": [str(p) for p in paths], "profile": profile,
            "left_out": [(cell, str(path), reason) for cell, path, reason in left_out],
            "other_profiles": [(str(path), name) for path, name in other_profiles],
            "unreadable": [(str(path), reason) for path, reason in unreadable]}


def write_tables(out_dir, records, published, profile, footer):
    """Tables 2, 1 and (with probe records) 3 with their charts into `out_dir`: ({table1, table2, table3, files},
    charts, [(cell, path, reason) left out])."""
    from evaluation.reporting import answer
    from evaluation.reporting.figures import layer_lines, table_bars
    from evaluation.reporting.paper_tables import (TABLE1_TASK, TABLE3_TASK, column_of, narrow, table1, table2, table3,
                                                   table3_notes)

    # Table 2: transfer tasks (and retrieval) per initialisation, one configuration per cell
    t2, columns2, report2 = table2(records, published)
    notes2 = column_notes(report2["shown"], columns2, column_of)
    text2 = ["supervision (paper)", "pretraining time (ours)", "images seen (ours)", "pretraining time (paper)"]
    paths = write_table(out_dir, "table2", "Table 2: transfer of the features (%)", t2, columns2, text2, notes2,
                        footer(report2))
    ours = t2[columns2].notna().any(axis=1)  # rows with at least one run of ours
    chart = table_bars(out_dir / "table2.png", t2[ours].set_index("row"), columns2,
                       f"Table 2 ({profile}): ours with 95% intervals; paper as black ticks")
    # Table 1: inpainting of held-out images
    t1, columns1, report1 = table1(records, published)
    notes1 = column_notes(report1["shown"], [TABLE1_TASK], lambda r: r["task"]) + [
        "- Mean L1 ↓, Mean L2 ↓: mean over hole pixels and colour channels of |prediction - target| and of its "
        "square, in % of the [0, 1] pixel range; PSNR ↑ = 10 log10(1 / L2) in dB, mean over images "
        "(evaluation.metrics.inpainting)"]
    paths += write_table(out_dir, "table1", "Table 1: inpainting of the central hole of held-out images (L1, L2 "
                         "in %, PSNR in dB)", t1, columns1, (), notes1, footer(report1))
    charts, t3, left_out = [chart], None, report2["left_out"] + report1["left_out"]
    # Table 3: per-layer linear probes, inits x layers
    if any(r["task"] == TABLE3_TASK for r in records):
        t3, layers, report3 = table3(records, published)
        notes3 = column_notes(report3["shown"], [TABLE3_TASK], lambda r: r["task"]) + table3_notes(published)
        paths += write_table(out_dir, "table3", "Table 3: linear probes of frozen layers (mAP %, per layer)", t3,
                             layers, (), notes3, footer(report3))
        ours3 = t3[layers].notna().any(axis=1)  # rows with a run of ours (published-only rows are not drawn)
        charts.append(layer_lines(out_dir / "table3.png", t3[ours3].set_index("row"), layers,
                                  f"Table 3 ({profile}): linear probe per layer, 95% intervals"))
        left_out += report3["left_out"]
    # the answer: ce against random and the controls, from the same cells
    layers = layers if t3 is not None else ()
    metrics2 = {c: next((r["metric"] for r in report2["shown"] if column_of(r) == c), None) for c in columns2}
    found = answer.answer(t2, columns2, t3, layers, t1, metrics2)
    answer_csv, answer_md = out_dir / "answer.csv", out_dir / "answer.md"
    atomic_write_text(answer_csv, found.to_csv(index=False))
    atomic_write_text(answer_md, f"# The answer: context encoder (ce) against random init and the controls\n\n"
                      f"{answer.markdown(found)}")
    paths += (answer_csv, answer_md)
    # what run_all.sh prints at its end, as text (the suite reads files only: it imports no evaluation code)
    narrow_txt, answer_txt = out_dir / "table2.txt", out_dir / "answer.txt"
    atomic_write_text(narrow_txt, narrow(t2, columns2) + "\n")
    atomic_write_text(answer_txt, answer_text(found) + "\n")
    paths += (narrow_txt, answer_txt)
    return ({"table1": t1, "table2": t2, "table3": t3, "answer": found, "files": paths,
             "terminal": terminal_text(t1, columns1, t2, columns2, t3, layers, found)}, charts, left_out)


if __name__ == "__main__":
    run_cli(main)
