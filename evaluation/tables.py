"""Rebuild the paper's Table 1 (inpainting) and Table 2 (transfer) from result records, the paper's numbers beside.

Reads every result record under --results (nothing else), writes table1.csv/.md, table2.csv/.md and a bar chart
of Table 2 with 95% intervals (table2.png); with probe records (python -m evaluation.probe) also Table 3, the
per-layer linear probes (inits x layers, table3.csv/.md) and its figure (table3.png, mAP vs layer). Missing runs
are empty cells, never zeros.

    python -m evaluation.tables --results results/voc-mini
    python -m evaluation.tables --profile smoke          # results/smoke
"""

import argparse
from collections import Counter
from pathlib import Path

from cebench.config import add_profile_flag, benchmarks_path, parse_with_profile
from cebench.errors import CebenchError, run_cli
from cebench.files import atomic_write_text, display_path
from cebench.logs import get_logger
from evaluation.figures import layer_lines, table_bars
from evaluation.paper_tables import (PUBLISHED, TABLE2_TASKS, column_of, load_records, markdown, read_published,
                                     table1, table2, table3)


def get_args_parser():
    p = argparse.ArgumentParser("python -m evaluation.tables", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_profile_flag(p)
    p.add_argument("--results", default=None, help="folder of result records (default results/<profile>)")
    p.add_argument("--out", default=None, help="folder for the tables and chart (default: --results)")
    p.add_argument("--published", default=str(PUBLISHED), help="the paper's numbers (CSV with a source column)")
    return p


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


def provenance(profile, results, records, skipped, published):
    """The footer: where the numbers come from."""
    commits = sorted({(r.get("versions") or {}).get("git_commit", "?")[:12]
                      + ("+dirty" if (r.get("versions") or {}).get("git_dirty") else "") for r in records})
    data = sorted({f"{r['task']}: {r['dataset']} {r['split']}" for r in records})
    seeds = sorted({str(r["seed"]) for r in records})
    return [f"Provenance: profile {profile}; {len(records)} records from {results}"
            + (f" ({len(skipped)} other JSON files ignored)" if skipped else "") + ".",
            f"Data: {'; '.join(data) or '-'}. Seeds: {', '.join(seeds) or '-'}. Commits: {', '.join(commits) or '-'}.",
            f"Paper values: {published} (source column). Intervals: bootstrap 95% over test images, averaged over "
            "runs; 'runs' columns of the CSV count the records behind each cell."]


def write_table(out_dir, name, title, table, columns, text_columns, notes, footer):
    """<name>.csv (every number; empty when missing) and <name>.md (formatted, with notes and provenance)."""
    csv_path, md_path = out_dir / f"{name}.csv", out_dir / f"{name}.md"
    atomic_write_text(csv_path, table.to_csv(na_rep="", float_format="%.4g"))
    text = f"# {title}\n\n{markdown(table, columns, text_columns)}\n\n"
    text += ("Columns:\n" + "\n".join(notes) + "\n\n" if notes else "") + "\n".join(footer) + "\n"
    atomic_write_text(md_path, text)
    return csv_path, md_path


def main(argv=None):
    # config: parser defaults < benchmarks.yaml profile < command line
    args = parse_with_profile(get_args_parser(), argv, "tables")
    log = get_logger("tables")
    results = Path(args.results or benchmarks_path().parent / "results" / args.profile)
    out_dir = Path(args.out) if args.out else results
    # data: the records and the paper's numbers
    records, skipped = load_records(results)
    if not records:
        raise CebenchError(f"no result records under {results}: run the transfer/evaluation entry points first")
    published = read_published(args.published)
    profile = ", ".join(sorted({str((r.get("config") or {}).get("profile")) for r in records} - {"None"}))
    profile = profile or args.profile  # the records know which profile made them
    # files inside the checkout are named by their place in it, not by this machine's absolute path
    repo = benchmarks_path().parent
    footer = provenance(profile, display_path(results, repo), records, skipped, display_path(args.published, repo))
    out_dir.mkdir(parents=True, exist_ok=True)
    # Table 2: transfer tasks (and retrieval) per initialisation
    t2, columns2, dropped = table2(records, published)
    for path in dropped:
        log.warning("%s reports another metric than the other runs of its cell; left out of Table 2", path)
    notes2 = column_notes([r for r in records if r["task"] in TABLE2_TASKS], columns2, column_of)
    text2 = ["supervision (paper)", "pretraining time (ours)", "images seen (ours)", "pretraining time (paper)"]
    paths = write_table(out_dir, "table2", "Table 2: transfer of the features (%)", t2, columns2, text2, notes2,
                        footer)
    ours = t2[columns2].notna().any(axis=1)  # rows with at least one run of ours
    chart = table_bars(out_dir / "table2.png", t2[ours].set_index("row"), columns2,
                       f"Table 2 ({profile}): ours with 95% intervals; paper as black ticks")
    # Table 1: inpainting of held-out images
    t1, columns1 = table1(records, published)
    inpainting = [r for r in records if r["task"] == "inpainting"]
    notes1 = column_notes(inpainting, ["inpainting"], lambda r: r["task"])
    paths += write_table(out_dir, "table1", "Table 1: inpainting of the central hole of held-out images (L1, L2 "
                         "in %, PSNR in dB)", t1, columns1, (), notes1, footer)
    charts, t3 = [chart], None
    # Table 3: per-layer linear probes, inits x layers
    probes = [r for r in records if r["task"] == "probe"]
    if probes:
        t3, layers = table3(probes)
        notes3 = column_notes(probes, ["probe"], lambda r: r["task"])
        paths += write_table(out_dir, "table3", "Table 3: linear probes of frozen layers (mAP %, per layer)", t3,
                             layers, (), notes3, footer)
        charts.append(layer_lines(out_dir / "table3.png", t3.set_index("row"), layers,
                                  f"Table 3 ({profile}): linear probe per layer, 95% intervals"))
    for path in (*paths, *charts):
        log.info("wrote %s", path)
    return {"table1": t1, "table2": t2, "table3": t3, "files": [str(p) for p in (*paths, *charts)]}


if __name__ == "__main__":
    run_cli(main)
