"""Training curves of every run: metrics.jsonl rows mirrored to TensorBoard (when installed) and drawn as a PNG.

    log = RunLog(run_dir / "metrics.jsonl", tensorboard_dir(args.tensorboard, run_dir / "tensorboard"),
                 enabled=runtime.is_main, start_step=start, curves=run_dir / "curves.png")
    log.write({"step": 20, "loss": 0.7, "lr": 0.001})        # one JSON line; scalars train/loss, train/lr
    log.write({"step": 100, "eval": True, "map": 0.41})      # scalars eval/map
    log.close()                                              # curves.png from metrics.jsonl (no TensorBoard needed)
"""

import importlib.util
import io
import json
import math
from pathlib import Path

from cebench.errors import CebenchError
from cebench.files import atomic_write_bytes
from cebench.files import append_jsonl

_NOT_SCALARS = {"step", "eval", "final"}


def tensorboard_installed():
    return importlib.util.find_spec("tensorboard") is not None


def tensorboard_dir(value, default):
    """--tensorboard value -> folder or None: 'auto' is `default` when the package is installed, 'off' none."""
    if value in (None, "", "off"):
        return None
    if value == "auto":
        return Path(default) if tensorboard_installed() else None
    if not tensorboard_installed():
        raise CebenchError(f"--tensorboard {value}: the tensorboard package is not installed "
                           "(pip install 'cebench[tensorboard]', or pass --tensorboard off)")
    return Path(value)


class RunLog:
    """A run's metrics.jsonl, and the same numbers as TensorBoard scalars; writes nothing when not `enabled`."""

    def __init__(self, metrics_path, tensorboard=None, *, enabled=True, start_step=0, curves=None):
        self.path, self.enabled, self.writer, self.curves = Path(metrics_path), enabled, None, curves
        if enabled and tensorboard is not None:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step: a resumed (or restarted) run hides the events its previous attempt logged past `start_step`
            self.writer = SummaryWriter(log_dir=str(tensorboard), purge_step=start_step)

    def write(self, row):
        """Append `row` (a dict with 'step') to metrics.jsonl; its numbers become train/* or eval/* scalars."""
        if not self.enabled:
            return
        append_jsonl(self.path, row)
        if self.writer is not None:
            section = "eval" if row.get("eval") or row.get("final") else "train"
            for key, value in row.items():
                if key not in _NOT_SCALARS and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.writer.add_scalar(f"{section}/{key}", value, row["step"])

    def close(self):
        """Flush the event file and, when `curves` names a PNG, draw metrics.jsonl into it."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        if self.enabled and self.curves is not None:
            draw_curves(self.path, self.curves, title=Path(self.curves).parent.name)


def read_metrics(path):
    """(training rows, evaluation rows) of a metrics.jsonl; unreadable lines (a crash mid-write) are skipped."""
    train, evals = [], []
    for line in Path(path).read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), (int, float)):
            (evals if row.get("eval") or row.get("final") else train).append(row)
    return train, evals


def _series(rows, key):
    points = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))
              and not isinstance(r.get(key), bool) and math.isfinite(r[key])]
    return [s for s, _ in points], [v for _, v in points]


def draw_curves(metrics_path, png_path, title=""):
    """Loss, learning rate and evaluations against the step, one panel each, written atomically; None if empty."""
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    train, evals = read_metrics(metrics_path) if Path(metrics_path).is_file() else ([], [])
    if not train and not evals:
        return None
    eval_keys = sorted({k for r in evals for k, v in r.items() if k not in _NOT_SCALARS
                        and isinstance(v, (int, float)) and not isinstance(v, bool)})
    panels = [("loss", "training loss"), ("lr", "learning rate")] + ([("eval", "evaluation")] if eval_keys else [])
    # one step axis for all panels: a single final evaluation sits at the end of training, not alone in a panel
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.2), squeeze=False, sharex=True)
    for ax, (key, label) in zip(axes[0], panels, strict=True):
        if key == "eval":  # the metric objects' fractions, drawn in percent as every table shows them
            for name in eval_keys:
                steps, values = _series(evals, name)
                fraction = all(0 <= v <= 1 for v in values)
                ax.plot(steps, [100 * v if fraction else v for v in values], marker="o", ms=3,
                        label=f"{name} (%)" if fraction else name)
            ax.legend(fontsize=7)
            label = "evaluation (%)" if all(line.get_label().endswith("(%)") for line in ax.get_lines()) else label
        else:  # a logged lr is that of the interval's last step: drawn as steps over the interval
            ax.plot(*_series(train, key), lw=1.2, drawstyle="steps-pre" if key == "lr" else "default")
        ax.set(xlabel="step", title=label)
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return atomic_write_bytes(png_path, buffer.getvalue())
