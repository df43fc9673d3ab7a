"""All the project's plots, written as PNG files with matplotlib's Agg renderer.

Figures are built with the object API (`Figure` + `FigureCanvasAgg`), never pyplot, so nothing
depends on a display or on pyplot's global state, and plotting is safe from any thread.

  plot_roc, plot_precision_recall,
  plot_confusion_matrix, plot_reliability   the evaluation plots (bert_tf2.evaluate)
  plot_training_curves                     loss / accuracy / AUC per epoch from history.csv
"""

import csv
import functools
import math
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from matplotlib import font_manager
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
import numpy as np

from bert_tf2 import data
from bert_tf2 import io_utils

DPI = 110
TRAIN_COLOR, DEV_COLOR, MODEL_COLOR, CHANCE_COLOR = "tab:blue", "tab:orange", "tab:blue", "0.6"


def _new_figure(width: float, height: float, rows: int = 1, cols: int = 1, **kwargs):
    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure, figure.subplots(rows, cols, squeeze=False, **kwargs)


def _save(figure: Figure, output_png: str) -> str:
    """Writes `figure` to `output_png` (local or a URL) atomically: matplotlib writes a local
    file, which replaces `output_png` whole (`io_utils.local_output`)."""
    with io_utils.local_output(output_png) as local_png:
        figure.savefig(local_png, format="png")
    return output_png


def plot_roc(false_positive_rate: Sequence[float], true_positive_rate: Sequence[float],
             auc: float, output_png: str) -> str:
    """The ROC curve with its area and the chance diagonal."""
    figure, axes = _new_figure(5, 5)
    ax = axes[0, 0]
    ax.plot(false_positive_rate, true_positive_rate, color=MODEL_COLOR, lw=2,
            label=f"model (AUC = {auc:.3f})")
    ax.plot([0, 1], [0, 1], color=CHANCE_COLOR, ls="--", label="chance (AUC = 0.5)")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="False positive rate",
           ylabel="True positive rate", title="ROC curve", aspect="equal")
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    return _save(figure, output_png)


def plot_precision_recall(recall: Sequence[float], precision: Sequence[float],
                          average_precision: float, positive_rate: float,
                          output_png: str) -> str:
    """The precision-recall curve (of the positive class) with its average precision."""
    figure, axes = _new_figure(5, 5)
    ax = axes[0, 0]
    ax.step(recall, precision, where="post", color=MODEL_COLOR, lw=2,
            label=f"model (AP = {average_precision:.3f})")
    ax.axhline(positive_rate, color=CHANCE_COLOR, ls="--",
               label=f"chance (positive rate = {positive_rate:.3f})")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="Recall (positive)",
           ylabel="Precision (positive)", title="Precision-recall curve", aspect="equal")
    ax.legend(loc="lower left")
    ax.grid(alpha=0.3)
    return _save(figure, output_png)


def plot_confusion_matrix(matrix: Sequence[Sequence[int]], class_names: Sequence[str],
                          output_png: str, threshold: Optional[float] = 0.5) -> str:
    """Counts (and the share of each true class) with true classes as rows, colored by share.

    Scales to many classes (the counts are left out of the cells past 12). Chinese class names
    are drawn in a CJK font when one is installed (`cjk_font`); without one, non-ASCII names
    are replaced by their class index, which report.json maps back to the names.
    """
    counts = np.asarray(matrix, dtype=np.int64)
    row_totals = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, row_totals, out=np.zeros(counts.shape), where=row_totals > 0)
    size = len(class_names)
    figure, axes = _new_figure(max(5.0, 1.6 + 0.5 * size), max(4.4, 1.2 + 0.5 * size))
    ax = axes[0, 0]
    image = ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    if size <= 12:
        for (row, col), count in np.ndenumerate(counts):
            ax.text(col, row, f"{count}\n{shares[row, col]:.0%}" if size > 2 else
                    f"{count}\n{shares[row, col]:.1%}", ha="center", va="center",
                    fontsize=12 if size <= 4 else 8,
                    color="white" if shares[row, col] > 0.5 else "black")
    names, font = tick_labels(class_names)
    ticks = range(size)
    ax.set(xticks=ticks, yticks=ticks, xlabel="Predicted label", ylabel="True label",
           title="Confusion matrix" + (f" (threshold {threshold:g})" if threshold is not None
                                       else " (rows: share of the true class)"))
    ax.set_xticklabels(names, rotation=45 if size > 4 else 0, ha="right" if size > 4 else "center",
                       fontfamily=font)
    ax.set_yticklabels(names, fontfamily=font)
    figure.colorbar(image, ax=ax, label="share of the true class")
    return _save(figure, output_png)


# Families that draw Chinese, most common first (Linux, macOS, Windows).
_CJK_FAMILIES = ("Noto Sans CJK SC", "Noto Sans SC", "Source Han Sans SC", "WenQuanYi Zen Hei",
                 "WenQuanYi Micro Hei", "PingFang SC", "Heiti SC", "Microsoft YaHei", "SimHei")


@functools.lru_cache(maxsize=None)
def cjk_font() -> Optional[str]:
    """The first installed font family of _CJK_FAMILIES, or None."""
    installed = {font.name for font in font_manager.fontManager.ttflist}
    return next((family for family in _CJK_FAMILIES if family in installed), None)


def tick_labels(class_names: Sequence[str]) -> Tuple[List[str], Optional[str]]:
    """Axis labels for `class_names` and the font family to draw them in (None: the default).

    Without a CJK font, a non-ASCII name would be drawn as empty boxes: it becomes its index.
    """
    font = cjk_font()
    if font or all(name.isascii() for name in class_names):
        return list(class_names), font
    return [name if name.isascii() else str(i) for i, name in enumerate(class_names)], None


def plot_reliability(bins: Sequence[Mapping[str, object]], ece: float, output_png: str) -> str:
    """Reliability diagram: fraction positive vs mean predicted probability, per bin.

    `bins` are evaluate.calibration()'s: lower, upper, count, mean_probability,
    fraction_positive (None for an empty bin). Below it, how many examples fall in each bin.
    """
    lower = np.array([b["lower"] for b in bins], dtype=float)
    upper = np.array([b["upper"] for b in bins], dtype=float)
    counts = np.array([b["count"] for b in bins], dtype=float)
    filled = counts > 0
    mean_p = np.array([b["mean_probability"] for b in bins if b["count"]], dtype=float)
    fraction = np.array([b["fraction_positive"] for b in bins if b["count"]], dtype=float)
    figure, axes = _new_figure(5, 6, rows=2, gridspec_kw={"height_ratios": [3, 1]},
                               sharex=True)
    top, bottom = axes[0, 0], axes[1, 0]
    top.bar(lower[filled], fraction, width=(upper - lower)[filled], align="edge",
            color=MODEL_COLOR, alpha=0.35, edgecolor=MODEL_COLOR,
            label="fraction positive in bin")
    top.plot(mean_p, fraction, "o-", color=MODEL_COLOR, label="model")
    top.plot([0, 1], [0, 1], color=CHANCE_COLOR, ls="--", label="perfectly calibrated")
    top.set(xlim=(0, 1), ylim=(0, 1.01), ylabel="Fraction positive",
            title=f"Reliability diagram (ECE = {ece:.3f})")
    top.legend(loc="upper left")
    top.grid(alpha=0.3)
    bottom.bar(lower, counts, width=upper - lower, align="edge", color="0.5",
               edgecolor="white")
    bottom.set(xlabel="Predicted probability of positive", ylabel="Examples")
    bottom.grid(alpha=0.3)
    return _save(figure, output_png)


# Columns of the Keras CSVLogger's history.csv that are plotted: (train, dev, title).
TRAINING_CURVES = (("loss", "val_loss", "Loss"),
                   ("accuracy", "val_accuracy", "Accuracy"),
                   ("auc", "val_auc", "AUC"))


def read_history(history_csv: str) -> Dict[str, List[float]]:
    """history.csv as columns of floats, one value per epoch (1-based `epoch`).

    An epoch logged twice (a run resumed from a backup appends to the same file) keeps its
    last row; "NA" or empty cells become NaN.
    """
    try:
        with io_utils.open(history_csv, encoding="utf-8-sig", newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as error:
        raise data.DataError(f"{history_csv}: cannot read file: {error.strerror}") from error
    by_epoch: Dict[int, Mapping[str, str]] = {}
    for line_number, row in enumerate(rows, start=2):
        try:
            by_epoch[int(row["epoch"])] = row
        except (KeyError, TypeError, ValueError) as error:
            raise data.DataError(f"{history_csv}:{line_number}: expected an integer 'epoch' "
                                 "column (a Keras CSVLogger file)") from error
    if not by_epoch:
        raise data.DataError(f"{history_csv}: no epochs logged")
    columns: Dict[str, List[float]] = {"epoch": [epoch + 1 for epoch in sorted(by_epoch)]}
    names = [name for name in rows[-1] if name and name != "epoch"]
    for name in names:
        columns[name] = [_to_float(by_epoch[epoch].get(name)) for epoch in sorted(by_epoch)]
    return columns


def _to_float(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def plot_training_curves(history_csv: str, output_png: str) -> str:
    """Loss, accuracy and AUC per epoch, train and dev, from a training run's history.csv.

    history.csv is what bert_tf2.train's CSVLogger writes to model_dir (columns epoch, loss,
    accuracy, auc, val_loss, val_accuracy, val_auc); a run without a dev split has no val_*
    columns and gets train curves only. Returns `output_png`.
    """
    history = read_history(history_csv)
    panels = [spec for spec in TRAINING_CURVES if spec[0] in history or spec[1] in history]
    if not panels:
        raise data.DataError(f"{history_csv}: none of the columns "
                             f"{', '.join(s[0] for s in TRAINING_CURVES)} to plot")
    epochs = history["epoch"]
    figure, axes = _new_figure(4.2 * len(panels), 3.8, cols=len(panels))
    for ax, (train_key, dev_key, title) in zip(axes[0], panels):
        for key, name, color in ((train_key, "train", TRAIN_COLOR), (dev_key, "dev", DEV_COLOR)):
            if key in history:
                ax.plot(epochs, history[key], "o-", color=color, label=name)
        ax.set(title=title, xlabel="Epoch", xlim=(epochs[0] - 0.5, epochs[-1] + 0.5))
        if len(epochs) <= 20:
            ax.set_xticks(epochs)
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend()
    run_name = io_utils.basename(io_utils.dirname(history_csv))
    figure.suptitle(f"Training curves ({run_name})" if run_name else "Training curves")
    return _save(figure, output_png)
