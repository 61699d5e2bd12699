"""Figures of the evaluation: retrieval grids (paper Fig. 8 style), inpainting examples, Table 2 bar chart,
Table 3 per-layer lines."""

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from cebench.files import atomic_write  # noqa: E402

HOLE_GREY = 128


def _hwc(image):
    """uint8 (3, S, S) tensor/array -> (S, S, 3) array."""
    image = image.numpy() if hasattr(image, "numpy") else np.asarray(image)
    return image.transpose(1, 2, 0)


def with_hole(image, mask):
    """The image as the context encoder sees it: hole painted grey. mask: (S, S) bool."""
    out = _hwc(image).copy()
    out[mask] = HOLE_GREY
    return out


def _hole_box(mask):
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return cols[0] - 0.5, rows[0] - 0.5, cols[-1] - cols[0] + 1, rows[-1] - rows[0] + 1


def _frame(ax, colour):
    for spine in ax.spines.values():
        spine.set_edgecolor(colour)
        spine.set_linewidth(3)


def retrieval_grid(path, queries, neighbours, mask, relevant=None, title=""):
    """One row per query: the query with its hole, then its neighbours nearest first (hole outlined).

    queries: list of uint8 (3, S, S); neighbours: list (per query) of lists of uint8 (3, S, S);
    relevant: optional bool [Q, k], neighbours that share a class with their query (green frame, else red).
    """
    rows, cols = len(queries), 1 + max(len(n) for n in neighbours)
    fig, axes = plt.subplots(rows, cols, figsize=(1.3 * cols, 1.3 * rows + 0.4), squeeze=False)
    x, y, w, h = _hole_box(mask)
    for r, (query, found) in enumerate(zip(queries, neighbours, strict=True)):
        axes[r, 0].imshow(with_hole(query, mask))
        _frame(axes[r, 0], "black")
        for c, image in enumerate(found, start=1):
            ax = axes[r, c]
            ax.imshow(_hwc(image))
            ax.add_patch(plt.Rectangle((x, y), w, h, fill=False, edgecolor="white", linewidth=0.8, linestyle="--"))
            if relevant is not None:
                _frame(ax, "tab:green" if relevant[r][c - 1] else "tab:red")
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0, 0].set_title("query", fontsize=8)
    for c in range(1, cols):
        axes[0, c].set_title(f"NN {c}", fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)


def inpainting_grid(path, columns, mask, title=""):
    """Examples of filled holes: columns = {name: list of uint8 (3, S, S)}, one row per image."""
    names = list(columns)
    rows = len(columns[names[0]])
    fig, axes = plt.subplots(rows, len(names), figsize=(1.5 * len(names), 1.5 * rows + 0.4), squeeze=False)
    x, y, w, h = _hole_box(mask)
    for c, name in enumerate(names):
        axes[0, c].set_title(name, fontsize=7)
        for r, image in enumerate(columns[name]):
            axes[r, c].imshow(with_hole(image, mask) if name == "input" else _hwc(image))
            if name != "input":
                axes[r, c].add_patch(plt.Rectangle((x, y), w, h, fill=False, edgecolor="white", linewidth=0.6,
                                                   linestyle=":"))
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)


def _error_bars(values, low, high):
    """(2, n) distances to the interval ends, clipped at 0. BCa intervals contain their estimate unless nearly
    every resample falls on one side of it (a handful of test images), and older records hold percentile ones:
    matplotlib refuses negative error bars."""
    return np.clip(np.vstack([np.nan_to_num(values - low), np.nan_to_num(high - values)]), 0.0, None)


def layer_lines(path, table, layers, title="", ylabel="probe mAP (%)"):
    """One line per row of `table` over `layers` (x axis), 95% intervals as error bars; missing runs are gaps.

    table: DataFrame indexed by row label with columns '<layer>', '<layer> low', '<layer> high'.
    """
    fig, ax = plt.subplots(figsize=(max(4.5, 1.1 * len(layers) + 2), 3.6))
    x = np.arange(len(layers))
    for i, label in enumerate(table.index):
        values = np.array([table.at[label, n] for n in layers], dtype=float)
        low = np.array([table.at[label, f"{n} low"] for n in layers], dtype=float)
        high = np.array([table.at[label, f"{n} high"] for n in layers], dtype=float)
        ax.errorbar(x + (i - (len(table) - 1) / 2) * 0.04, values, yerr=_error_bars(values, low, high), marker="o",
                    capsize=3, label=label, color=f"C{i}")
    ax.set_xticks(x, layers)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path, dpi=120)


def curve_plot(path, table, layers, title=""):
    """Two panels over images seen: probe mAP per layer (95% intervals) and the val inpainting loss.

    table: one row per checkpoint with 'images_seen', 'val_inpainting_l2' and '<layer>', '<layer> low/high'.
    """
    seen = table["images_seen"].to_numpy(dtype=float)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    for i, layer in enumerate(layers):
        values = table[layer].to_numpy(dtype=float)
        err = _error_bars(values, table[f"{layer} low"].to_numpy(dtype=float),
                          table[f"{layer} high"].to_numpy(dtype=float))
        left.errorbar(seen, values, yerr=err, marker="o", capsize=3, label=layer, color=f"C{i}")
    right.plot(seen, table["val_inpainting_l2"].to_numpy(dtype=float), marker="o", color="black")
    positive = seen[seen > 0]
    for ax, ylabel in ((left, "probe mAP (%)"), (right, "val inpainting loss (masked L2)")):
        if len(positive):  # 0 images seen (the untrained weights) stays on the axis
            ax.set_xscale("symlog", linthresh=float(positive.min()))
        ax.set_xlabel("pretraining images seen")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    left.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path, dpi=120)


def table_bars(path, table, tasks, title=""):
    """Grouped bars: one group per task, one bar per row of `table` (ours), 95% intervals as error bars.

    table: pandas DataFrame indexed by row label with columns '<task>' (value), '<task> low', '<task> high' and,
    when published, '<task> paper' (drawn as a black tick beside the bar).
    """
    labels = list(table.index)
    width = 0.8 / max(1, len(labels))
    fig, ax = plt.subplots(figsize=(max(5.0, 1.9 * len(tasks)), 3.6))
    for i, label in enumerate(labels):
        pos = np.arange(len(tasks)) + (i - (len(labels) - 1) / 2) * width
        values = np.array([table.at[label, t] for t in tasks], dtype=float)
        low = np.array([table.at[label, f"{t} low"] for t in tasks], dtype=float)
        high = np.array([table.at[label, f"{t} high"] for t in tasks], dtype=float)
        err = _error_bars(values, low, high)
        ok = np.isfinite(values)  # a missing run draws no bar (never a bar of height zero)
        ax.bar(pos[ok], values[ok], width, yerr=err[:, ok], capsize=3, label=label, color=f"C{i}")
        paper = np.array([table.at[label, f"{t} paper"] if f"{t} paper" in table else np.nan for t in tasks],
                         dtype=float)
        ax.scatter(pos, paper, marker="_", s=200, color="black", zorder=3,
                   label="paper" if i == 0 and np.isfinite(paper).any() else None)
    ax.set_xticks(np.arange(len(tasks)), tasks)
    ax.set_ylabel("%")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return save_figure(fig, path, dpi=120)


def save_figure(fig, path, dpi):
    """Write a figure as PNG atomically (a full disk leaves no half-written file) and close it."""
    try:
        return atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=dpi))
    finally:
        plt.close(fig)
