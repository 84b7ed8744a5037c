"""What the trainer tells the outside world while it trains: callbacks.

The trainer (:func:`murakit.train.loop.train_run`) calls, on the main process only:

- ``on_log(message, warning)``: a one-line note (an image skipped, the image cache built);
- ``on_train_start(start)``: the run is set up (:class:`TrainStart`: sizes, device, the
  resume position, and the :class:`StopRequest` a callback may set to stop the run);
- ``on_epoch_start(epoch)``: an epoch's training pass begins (:class:`EpochStart`);
- ``on_batch_end(batch)``: after each optimisation step (:class:`BatchEnd`: running loss,
  images done, throughput);
- ``on_validation_progress(phase, done, total)``: while scoring images, "validating" each
  epoch and "threshold slice" after a new best; first with ``done=0``, last with
  ``done == total``;
- ``on_epoch_end(end)``: the epoch's row is final, best.pt and last.pt are saved
  (:class:`EpochEnd`);
- ``on_train_end(result)``: the run finished or stopped (:class:`RunResult`).

:class:`Callback` implements every hook as a no-op; subclass it and override what you need.
The run's record is itself written by callbacks that :func:`train_run` always installs first:
:class:`MetricsCSV` (metrics.csv) and :class:`LossCurve` (loss_curve.png), then
:class:`murakit.train.provenance.RunProvenance` (provenance.json). :class:`TextLog`
prints plain lines (ensemble members' train.log); :class:`TensorBoard` writes event files
(``pip install murakit[tensorboard]``). The command line's progress bars are a callback too
(``murakit.progress.RichTrainProgress``); nothing here draws on a terminal or imports torch.
"""

from __future__ import annotations

import csv
import io
import math
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from murakit.fsutil import atomic_write_text

if TYPE_CHECKING:
    from murakit.config import TrainConfig

METRIC_COLUMNS = (
    "epoch",
    "train_loss",
    "val_loss",
    "val_image_accuracy",
    "val_study_accuracy",
    "val_study_kappa",
    "lr",
    "seconds",
    "img_per_s",
)


class StopRequest:
    """Ask a run to stop: it saves last.pt at the next batch boundary (or before the next
    epoch) and returns with ``interrupted=True``. Set by signal handlers (``train_run(...,
    stop_signals=True)``), by a callback (``start.stop.request()``) or by another thread."""

    def __init__(self) -> None:
        self.requested = False

    def request(self) -> None:
        self.requested = True


@dataclass
class RunResult:
    """What :func:`~murakit.train.loop.train_run` and :func:`~murakit.train.fit` return."""

    out: Path
    history: list[dict] = field(default_factory=list)  # metrics.csv's rows
    best_epoch: int = 0
    best_val_loss: float = math.inf
    interrupted: bool = False
    skipped: list[str] = field(default_factory=list)  # "<path>: <problem>" per skipped item
    stopped_epoch: int = 0  # the epoch during (or before) which an interrupted run stopped
    stopped_mid_epoch: bool = False  # True: last.pt holds a position inside that epoch


@dataclass(frozen=True)
class TrainStart:
    out: Path
    config: TrainConfig
    train_images: int
    valid_images: int
    slice_images: int  # training images held out to choose the threshold (0 = none)
    device: str  # e.g. "cpu (bf16 autocast, channels_last)"
    world_size: int  # processes (torchrun); 1 without
    epochs_done: int  # > 0 or step > 0: the run resumes from last.pt
    step: int  # batches already done in epoch epochs_done + 1
    stop: StopRequest
    precision: str = ""  # what autocast actually runs: "bf16", "fp16" or "fp32"

    @property
    def resumed(self) -> bool:
        return bool(self.epochs_done or self.step)


@dataclass(frozen=True)
class EpochStart:
    epoch: int
    epochs: int
    images: int  # already done in this epoch on this process (after a mid-epoch resume)
    total: int  # this process's share of the epoch


@dataclass(frozen=True)
class BatchEnd:
    epoch: int
    epochs: int
    step: int  # batches done in this epoch
    images: int  # images done in this epoch on this process
    total: int
    loss: float  # mean training loss so far this epoch (this process)
    img_per_s: float


@dataclass(frozen=True)
class EpochEnd:
    out: Path
    row: dict[str, float]  # metrics.csv's row (METRIC_COLUMNS)
    improved: bool  # lowest validation loss so far: best.pt was just written
    history: Sequence[dict[str, float]]  # every row so far, this one last


class Callback:
    """Base class: every hook does nothing. Callbacks run on the main process only."""

    def on_log(self, message: str, warning: bool = False) -> None: ...

    def on_train_start(self, start: TrainStart) -> None: ...

    def on_epoch_start(self, epoch: EpochStart) -> None: ...

    def on_batch_end(self, batch: BatchEnd) -> None: ...

    def on_validation_progress(self, phase: str, done: int, total: int) -> None: ...

    def on_epoch_end(self, end: EpochEnd) -> None: ...

    def on_train_end(self, result: RunResult) -> None: ...


class CallbackList(Callback):
    """Several callbacks called in order, as one."""

    def __init__(self, callbacks: Iterable[Callback] = ()) -> None:
        self.callbacks = list(callbacks)

    def on_log(self, message: str, warning: bool = False) -> None:
        for c in self.callbacks:
            c.on_log(message, warning)

    def on_train_start(self, start: TrainStart) -> None:
        for c in self.callbacks:
            c.on_train_start(start)

    def on_epoch_start(self, epoch: EpochStart) -> None:
        for c in self.callbacks:
            c.on_epoch_start(epoch)

    def on_batch_end(self, batch: BatchEnd) -> None:
        for c in self.callbacks:
            c.on_batch_end(batch)

    def on_validation_progress(self, phase: str, done: int, total: int) -> None:
        for c in self.callbacks:
            c.on_validation_progress(phase, done, total)

    def on_epoch_end(self, end: EpochEnd) -> None:
        for c in self.callbacks:
            c.on_epoch_end(end)

    def on_train_end(self, result: RunResult) -> None:
        for c in self.callbacks:
            c.on_train_end(result)


class MetricsCSV(Callback):
    """metrics.csv: one row per epoch (METRIC_COLUMNS, floats to 6 significant digits),
    rewritten whole and atomically after each epoch."""

    def on_epoch_end(self, end: EpochEnd) -> None:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=METRIC_COLUMNS, lineterminator="\n")
        writer.writeheader()
        for row in end.history:
            writer.writerow(
                {k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()}
            )
        atomic_write_text(end.out / "metrics.csv", buffer.getvalue())


class LossCurve(Callback):
    """loss_curve.png: training and validation loss per epoch, redrawn after each epoch."""

    def on_epoch_end(self, end: EpochEnd) -> None:
        from murakit.evaluate.plots import plot_loss_curve

        plot_loss_curve(list(end.history), end.out / "loss_curve.png", title=end.out.name)


def record_callbacks() -> list[Callback]:
    """The callbacks that write a run's record; train_run always runs them first."""
    return [MetricsCSV(), LossCurve()]


class TensorBoard(Callback):
    """Every metric of each epoch as a TensorBoard scalar (``train_loss``, ``val_loss``, ...,
    step = epoch), and the running training loss per step (``batch/train_loss``, step =
    global step), in ``log_dir`` (default: the run's ``tensorboard/`` folder).

    Needs the ``tensorboard`` package: ``pip install 'murakit[tensorboard]'``."""

    def __init__(self, log_dir: str | Path | None = None, batch_loss: bool = True) -> None:
        self.log_dir = Path(log_dir) if log_dir is not None else None
        self.batch_loss = batch_loss
        self._writer: Any = None
        self._steps_per_epoch = 0

    def on_train_start(self, start: TrainStart) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:  # tensorboard missing: torch raises ImportError
            raise ImportError(
                "the TensorBoard callback needs tensorboard: pip install 'murakit[tensorboard]'"
            ) from err
        log_dir = self.log_dir or start.out / "tensorboard"
        self._writer = SummaryWriter(log_dir=str(log_dir))
        per_process = -(-start.train_images // start.world_size)
        self._steps_per_epoch = -(-per_process // start.config.batch_size)

    def on_batch_end(self, batch: BatchEnd) -> None:
        if self._writer is not None and self.batch_loss:
            step = (batch.epoch - 1) * self._steps_per_epoch + batch.step
            self._writer.add_scalar("batch/train_loss", batch.loss, step)

    def on_epoch_end(self, end: EpochEnd) -> None:
        if self._writer is None:
            return
        epoch = int(end.row["epoch"])
        for key, value in end.row.items():
            if key != "epoch":
                self._writer.add_scalar(key, value, epoch)
        self._writer.flush()

    def on_train_end(self, result: RunResult) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class TextLog(Callback):
    """Plain lines on a text stream (default: stdout): the run's set-up, each epoch's
    figures, skipped items and a stop. No progress bars."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream

    def _print(self, text: str) -> None:
        print(text, file=self.stream or sys.stdout, flush=True)

    def on_log(self, message: str, warning: bool = False) -> None:
        self._print(message)

    def on_train_start(self, start: TrainStart) -> None:
        for line in start_lines(start):
            self._print(line)

    def on_epoch_end(self, end: EpochEnd) -> None:
        self._print(format_epoch(end.row) + (" * best" if end.improved else ""))

    def on_train_end(self, result: RunResult) -> None:
        if result.interrupted:
            self._print(stop_line(result))
        elif result.history:
            self._print(
                f"best epoch {result.best_epoch} (val loss {result.best_val_loss:.4f}); "
                f"run directory: {result.out}"
            )


def start_lines(start: TrainStart) -> list[str]:
    """What a run says when it starts: where it resumes, and what it trains on."""
    lines = []
    if start.resumed:
        lines.append(
            f"resuming {start.out} at epoch {start.epochs_done + 1}"
            + (f", batch {start.step + 1}" if start.step else "")
        )
    lines.append(
        f"training {start.config.arch} on {start.train_images} images "
        f"(validating on {start.valid_images}"
        + (f"; {start.slice_images} held out to choose the threshold" if start.slice_images else "")
        + f") on {start.device}"
        + (f" x {start.world_size} processes" if start.world_size > 1 else "")
    )
    return lines


def format_epoch(row: dict) -> str:
    """One epoch's figures on one line."""
    return (
        f"epoch {row['epoch']:>3}: train loss {row['train_loss']:.4f}  "
        f"val loss {row['val_loss']:.4f}  val acc {row['val_image_accuracy']:.3f} (image) "
        f"{row['val_study_accuracy']:.3f} (study)  kappa {row['val_study_kappa']:.3f}  "
        f"{row['img_per_s']:.1f} img/s"
    )


def stop_line(result: RunResult) -> str:
    """Where an interrupted run stopped and what last.pt holds."""
    last = result.out / "last.pt"
    if result.stopped_mid_epoch:
        return f"stopped during epoch {result.stopped_epoch}; saved {last}."
    return f"stopped before epoch {result.stopped_epoch}; {last} is current."
