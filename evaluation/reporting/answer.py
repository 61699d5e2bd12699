"""The answer the tables hold: does the context encoder beat random initialisation (and the paper's controls)?

One row per task metric (Table 2's columns, Table 3's probed layers, Table 1's NN-inpainting L2) and rival
(random, then the autoencoder, the untrained context encoder, HOG, ImageNet where they ran): the context
encoder's value, the rival's, their difference with a 95% interval, and a one-line verdict. It is computed from
the tables' own DataFrames (value, low, high per cell), so its numbers are the tables' numbers.

The interval of a difference is built from the two cells' intervals by MOVER (Zou & Donner 2008, "Construction
of confidence intervals for a difference"): low = d - sqrt((ce - ce_low)^2 + (rival_high - rival)^2), high =
d + sqrt((ce_high - ce)^2 + (rival - rival_low)^2). It treats the two runs as independent; they are scored on the
same test images, whose shared difficulty correlates them positively, so the interval is, if anything, wider than
a paired bootstrap's (the records do not keep per-image scores for one).
"""

import math

import numpy as np
import pandas as pd

RIVALS = ("random", "autoencoder", "ce-untrained", "hog", "supervised")
RIVAL_LABELS = {"random": "random init", "autoencoder": "autoencoder", "ce-untrained": "ce untrained (step 0)",
                "hog": "HOG", "supervised": "ImageNet (supervised)"}
LOWER_IS_BETTER = {"Mean L1", "Mean L2"}  # Table 1's errors; every other metric of the tables: higher is better
COLUMNS = ["task", "rival", "ce", "rival value", "ce - rival [95%]", "verdict"]


def arrow(column):
    """'↓' for a metric where lower is better, else '↑'."""
    return "↓" if column in LOWER_IS_BETTER else "↑"


def difference(a, b):
    """(a - b, low, high) of two cells given as (value, low, high): MOVER from their 95% intervals."""
    (va, la, ha), (vb, lb, hb) = a, b
    d = va - vb
    if not all(np.isfinite([la, ha, lb, hb])):
        return d, math.nan, math.nan
    return d, d - math.hypot(va - la, hb - vb), d + math.hypot(ha - va, vb - lb)


def format_cell(value, low=math.nan, high=math.nan):
    """'value [low, high]' from raw values, the one formatting of every table output (Markdown, HTML, answer):
    2 decimals below 10, else 1, the interval with the value's decimals; empty when there is no value."""
    if not np.isfinite(value):
        return ""
    digits = 2 if abs(value) < 10 else 1
    interval = f" [{low:.{digits}f}, {high:.{digits}f}]" if np.isfinite(low) and np.isfinite(high) else ""
    return f"{value:.{digits}f}{interval}"


_interval = format_cell


def verdict(d, low, high, lower_is_better=False):
    """One line: which side the interval of the difference lies on (or that it spans 0)."""
    if not (np.isfinite(low) and np.isfinite(high)):
        return "no interval: not decided"
    if low <= 0 <= high:
        return "not resolved (interval spans 0)"
    better = (high < 0) if lower_is_better else (low > 0)
    return "ce better" if better else "ce worse"


def _cell(table, key, column):
    if key not in table.index or column not in table:
        return None
    cell = tuple(float(table.at[key, c]) for c in (column, f"{column} low", f"{column} high"))
    return cell if np.isfinite(cell[0]) else None


def rows_of(table, columns, task_of, ce_key="ce", rival_key=lambda k: k):
    """Comparison rows of one table: for each column where ce has a value, one row per rival that has one."""
    rows = []
    for column in columns:
        ce = _cell(table, ce_key, column)
        if ce is None:
            continue
        lower = column in LOWER_IS_BETTER
        for rival in RIVALS:
            other = _cell(table, rival_key(rival), column)
            if other is None:
                continue
            d, low, high = difference(ce, other)
            rows.append({"task": f"{task_of(column)} {arrow(column)}", "rival": RIVAL_LABELS[rival],
                         "ce": _interval(*ce), "rival value": _interval(*other),
                         "ce - rival [95%]": _interval(d, low, high), "verdict": verdict(d, low, high, lower),
                         "_d": d, "_low": low, "_high": high})
    return rows


def answer(t2=None, columns2=(), t3=None, layers=(), t1=None, metrics2=None):
    """The answer table (COLUMNS, plus raw _d/_low/_high) from Tables 2, 3 and 1 as evaluation.paper_tables
    builds them (indexed by init key); metrics2: {Table 2 column: metric name} for the task labels."""
    metrics2 = metrics2 or {}
    rows = []
    if t2 is not None:
        rows += rows_of(t2, columns2, lambda c: f"{c} ({metrics2[c]})" if metrics2.get(c) else c)
    if t3 is not None:
        rows += rows_of(t3, layers, lambda c: f"probe {c} (mAP)")
    if t1 is not None:  # NN-inpainting with ce features against the other features' (Table 1's L2)
        rows += rows_of(t1, ["Mean L2"], lambda c: "NN-inpainting (mean L2)", ce_key="nn-inpainting:ce",
                        rival_key=lambda k: f"nn-inpainting:{k}")
    return pd.DataFrame(rows, columns=[*COLUMNS, "_d", "_low", "_high"])


def headline(table):
    """One sentence: how many task metrics ce wins, loses and leaves open against random init."""
    against = table[table["rival"] == RIVAL_LABELS["random"]]["verdict"]
    if against.empty:
        return "No task has both a context-encoder and a random-init value."
    counts = {v: int((against == v).sum()) for v in ("ce better", "ce worse")}
    return (f"Against random init, the context encoder is better on {counts['ce better']}, worse on "
            f"{counts['ce worse']} and not resolved on {len(against) - sum(counts.values())} of {len(against)} "
            "task metrics (95% intervals of the differences).")


def summary(table):
    """One line per task: the verdict against random init (the paper's question), e.g. for the terminal."""
    lines = []
    for _, row in table[table["rival"] == RIVAL_LABELS["random"]].iterrows():
        lines.append(f"{row['task']}: ce {row['ce']} vs random {row['rival value']}; difference "
                     f"{row['ce - rival [95%]']}: {row['verdict']}")
    return lines


NOTE = ("Differences are ce minus the rival (positive: ce higher; ↑ higher is better, ↓ lower is better); their 95% "
        "intervals combine the two cells' intervals by MOVER (Zou & Donner 2008), treating the runs as independent: "
        "conservative, since both are scored on the same test images.")


def markdown(table):
    """The answer as Markdown: the table and the note on its intervals."""
    if table.empty:
        return "No cell has both a context-encoder value and a rival's.\n"
    return f"{headline(table)}\n\n{table[COLUMNS].to_markdown(index=False)}\n\n{NOTE}\n"
