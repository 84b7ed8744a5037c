"""Figures a person opens: loss curves, ROC curves, confusion matrices (matplotlib, no display)."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from murakit.fsutil import atomic_write_bytes  # noqa: E402


def save_figure(fig, path: Path, dpi: int = 110) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())


def plot_loss_curve(history: Sequence[Mapping[str, float]], path: Path, title: str = "") -> None:
    """Train and validation loss per epoch, like the reference report's figure."""
    epochs = [int(row["epoch"]) for row in history]
    fig, ax = plt.subplots(figsize=(5, 3.4))
    ax.plot(epochs, [float(r["train_loss"]) for r in history], "o-", label="train loss")
    ax.plot(epochs, [float(r["val_loss"]) for r in history], "s-", label="validation loss")
    best = min(range(len(history)), key=lambda i: float(history[i]["val_loss"]))
    ax.axvline(epochs[best], color="gray", ls=":", lw=1, label=f"best (epoch {epochs[best]})")
    ax.set_xlabel("epoch")
    ax.set_ylabel("binary cross-entropy")
    ax.set_title(title or "loss")
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, path)
