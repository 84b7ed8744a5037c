"""The report's study-level figures: ROC curves (overall and per body part) and the confusion
matrix, drawn from study_predictions.csv and returned as PNG bytes for embedding in HTML.

The numbers behind each figure are computed first (roc_curves, confusion_counts) and kept
apart from the drawing, so tests and the HTML text can use exactly what the figure shows.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import roc_auc_score, roc_curve  # noqa: E402

OVERALL = "all studies"
CLASS_NAMES = ("normal", "abnormal")


@dataclass
class RocCurve:
    """One ROC curve: false and true positive rates, its AUC and how many studies made it."""

    name: str
    fpr: np.ndarray
    tpr: np.ndarray
    auc: float
    n: int
    n_abnormal: int

    @property
    def label(self) -> str:
        """The legend entry: name, AUC and counts, so the figure reads on its own."""
        return f"{self.name}: AUC {self.auc:.3f} (n={self.n}, {self.n_abnormal} abn.)"


def _curve(name: str, labels: np.ndarray, probs: np.ndarray) -> RocCurve | None:
    """None where the curve is undefined (only one class among the studies)."""
    if len(labels) == 0 or labels.min() == labels.max():
        return None
    fpr, tpr, _ = roc_curve(labels, probs)
    auc = float(roc_auc_score(labels, probs))
    return RocCurve(name, fpr, tpr, auc, len(labels), int(labels.sum()))


def roc_curves(labels, probs, parts: Sequence[str]) -> list[RocCurve]:
    """The overall curve first, then one per body part (sorted); single-class groups skipped."""
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    probs = np.asarray(probs, dtype=np.float64).reshape(-1)
    parts_arr = np.asarray(list(parts), dtype=str)
    curves = [_curve(OVERALL, labels, probs)]
    for part in sorted(set(parts_arr.tolist())):
        mask = parts_arr == part
        curves.append(_curve(part, labels[mask], probs[mask]))
    return [c for c in curves if c is not None]


def roc_figure(curves: Sequence[RocCurve]):
    """Two panels: the overall curve alone (it is the headline) and the body parts overlaid."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(10.5, 4.6))
    overall = [c for c in curves if c.name == OVERALL]
    per_part = [c for c in curves if c.name != OVERALL]
    for curve in overall:
        left.plot(curve.fpr, curve.tpr, lw=2.2, color="#1f4e9c", label=curve.label)
    colours = plt.get_cmap("tab10")
    for i, curve in enumerate(per_part):
        right.plot(curve.fpr, curve.tpr, lw=1.4, color=colours(i % 10), label=curve.label)
    for ax, title in ((left, "ROC, all studies"), (right, "ROC per body part")):
        ax.plot([0, 1], [0, 1], ls="--", lw=0.8, color="gray")
        ax.set_xlim(-0.01, 1.01)
        ax.set_ylim(-0.01, 1.01)
        ax.set_aspect("equal")
        ax.set_xlabel("false positive rate (1 - specificity)")
        ax.set_ylabel("true positive rate (sensitivity)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        if ax.lines[:-1]:
            ax.legend(loc="lower right", fontsize=7.5 if ax is right else 8.5, framealpha=0.9)
    fig.tight_layout()
    return fig


def confusion_counts(labels, predictions) -> np.ndarray:
    """2x2 counts, rows = true class, columns = predicted class, both normal then abnormal."""
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    predictions = np.asarray(predictions, dtype=np.int64).reshape(-1)
    counts = np.zeros((2, 2), dtype=np.int64)
    np.add.at(counts, (labels, predictions), 1)
    return counts


def confusion_figure(counts: np.ndarray, title: str = "Confusion matrix, studies"):
    """Counts with the share of each true class (row %) beneath: the diagonal reads as
    specificity and sensitivity, which a colour scale of raw counts would hide."""
    counts = np.asarray(counts)
    totals = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, totals, out=np.zeros(counts.shape), where=totals > 0)
    fig, ax = plt.subplots(figsize=(4.4, 3.9))
    ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    for (row, col), count in np.ndenumerate(counts):
        colour = "white" if shares[row, col] > 0.55 else "black"
        ax.text(
            col,
            row,
            f"{count:,}\n{100 * shares[row, col]:.1f}%",
            ha="center",
            va="center",
            color=colour,
            fontsize=12,
        )
    ax.set_xticks([0, 1], [f"predicted\n{n}" for n in CLASS_NAMES])
    ax.set_yticks([0, 1], [f"true\n{n}" for n in CLASS_NAMES])
    ax.set_title(f"{title}\n(count, % of true class; n={int(counts.sum()):,})", fontsize=10)
    fig.tight_layout()
    return fig


def figure_png(fig, dpi: int = 110) -> bytes:
    """Render and close a figure: the report embeds bytes, it never writes figure files."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()
