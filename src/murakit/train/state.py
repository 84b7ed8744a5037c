"""A run's training state, saved and restored as one unit: last.pt.

last.pt holds only tensors, plain containers, numbers and strings (the config as a dict), so
it loads with ``torch.load(..., weights_only=True)``, which is how the trainer reads it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from murakit.config import TrainConfig
from murakit.fsutil import atomic_torch_save
from murakit.model.densenet import unwrap

CHECKPOINT_FORMAT = "murakit-run/1"


class RunDirError(RuntimeError):
    """The run directory cannot be used as asked (exists without --resume, or is incomplete)."""


@dataclass
class TrainState:
    """Everything needed to continue a run exactly where it stopped, even mid-epoch.

    ``model``, ``optimizer``, ``scheduler`` and ``scaler`` are the live objects (saved as
    their state dicts); the rest is plain data. Each field is one key of last.pt, beside
    ``format``. There is no RNG state to keep: every random draw of training comes from a
    generator seeded by (seed, epoch, step or image, rank) -- the epoch's order, each image's
    augmentation, each step's dropout -- so a resumed run draws what it would have drawn.
    """

    config: TrainConfig
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any | None  # an lr scheduler, or None for a constant lr
    scaler: torch.amp.GradScaler | None  # AMP on CUDA only
    epochs_done: int = 0
    step: int = 0  # batches done in epoch epochs_done + 1 (a mid-epoch stop), else 0
    # that epoch's training loss sum, images and seconds so far (this process)
    partial: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    best_val_loss: float = math.inf
    best_epoch: int = 0
    history: list[dict] = field(default_factory=list)  # metrics.csv's rows

    def checkpoint(self) -> dict[str, Any]:
        """last.pt's content: every field, the objects as their state dicts."""
        ckpt: dict[str, Any] = {"format": CHECKPOINT_FORMAT}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "config":
                value = value.to_dict()
            elif f.name in _OBJECTS and value is not None:
                value = _stateful(f.name, value).state_dict()
            ckpt[f.name] = value
        return ckpt

    def save(self, path: Path) -> None:
        atomic_torch_save(path, self.checkpoint())

    def restore(self, path: Path) -> None:
        """Load last.pt into this state: the objects' state dicts and the progress. The
        config stays this state's (a resumed run may ask for more epochs)."""
        ckpt = read_checkpoint(path)
        for f in fields(self):
            saved = ckpt[f.name]
            if f.name == "config":
                continue
            if f.name in _OBJECTS:
                current = getattr(self, f.name)
                if current is not None and saved:
                    _stateful(f.name, current).load_state_dict(saved)
            else:
                setattr(self, f.name, list(saved) if isinstance(saved, list) else saved)

    def end_epoch(self, row: dict) -> bool:
        """Record a finished epoch's row; True when its validation loss is the lowest yet."""
        self.history.append(row)
        self.epochs_done = int(row["epoch"])
        self.step, self.partial = 0, [0.0, 0.0, 0.0]
        improved = row["val_loss"] < self.best_val_loss
        if improved:
            self.best_val_loss, self.best_epoch = row["val_loss"], self.epochs_done
        return improved


_OBJECTS = ("model", "optimizer", "scheduler", "scaler")  # saved as their state dicts


def _stateful(name: str, obj: Any) -> Any:
    return unwrap(obj) if name == "model" else obj


def save_best(path: Path, config: TrainConfig, epoch: int, row: dict, model) -> None:
    """best.pt: the model at its lowest validation loss, with its config and figures."""
    atomic_torch_save(
        path,
        {
            "format": CHECKPOINT_FORMAT,
            "config": config.to_dict(),
            "epoch": epoch,
            "metrics": row,
            "model": unwrap(model).state_dict(),
        },
    )


def read_checkpoint(path: Path) -> dict[str, Any]:
    """A murakit training checkpoint (last.pt or best.pt), loaded with weights_only=True."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable checkpoint gets the same message
        raise RunDirError(f"{path}: cannot read checkpoint ({err})") from err
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise RunDirError(f"{path}: not a murakit training checkpoint")
    return ckpt
