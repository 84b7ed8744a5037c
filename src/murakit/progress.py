"""One look for every progress bar (description, bar, counts, rate, time, live figures), and
the trainer's progress on the terminal (:class:`RichTrainProgress`, a training callback).
This module and murakit.cli are the only ones that draw on the terminal."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from murakit.train.callbacks import (
    BatchEnd,
    Callback,
    EpochEnd,
    EpochStart,
    RunResult,
    TrainStart,
    format_epoch,
    start_lines,
    stop_line,
)


def progress_bar(
    console: Console | None = None, transient: bool = False, disable: bool = False
) -> Progress:
    """A rich Progress; tasks may set a `status` field (e.g. "loss 0.53  41 img/s")."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("<"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[status]}"),
        console=console or Console(stderr=True),
        transient=transient,
        disable=disable,
        refresh_per_second=4,
    )


class RichTrainProgress(Callback):
    """The trainer's callbacks on a rich console: a bar for the epoch in progress (running
    loss and img/s), one for validation, and a line per epoch, skipped image and stop.

    Use it as a context manager around the training call (the bars live inside it)."""

    def __init__(self, console: Console, show_bars: bool = True, resume_hint: bool = True):
        self.console = console
        self.bar = progress_bar(console=console, disable=not show_bars)
        self.resume_hint = resume_hint
        self._task: TaskID | None = None
        self._phase = ""

    def __enter__(self) -> RichTrainProgress:
        self.bar.start()
        return self

    def __exit__(self, *exc) -> None:
        self._drop_task()
        self.bar.stop()

    def _drop_task(self) -> None:
        if self._task is not None:
            self.bar.remove_task(self._task)
            self._task, self._phase = None, ""

    def _show(self, phase: str, completed: int, total: int, status: str = "") -> None:
        if phase != self._phase:
            self._drop_task()
            self._task = self.bar.add_task(phase, total=total, completed=completed, status="")
            self._phase = phase
        self.bar.update(self._task, completed=completed, total=total, status=status)

    def on_log(self, message: str, warning: bool = False) -> None:
        if warning and ": " in message:
            head, rest = message.split(": ", 1)
            self.console.print(f"[yellow]{escape(head)}:[/] {escape(rest)}", highlight=False)
        else:
            self.console.print(escape(message), highlight=False)

    def on_train_start(self, start: TrainStart) -> None:
        for line in start_lines(start):
            self.console.print(escape(line))

    def on_epoch_start(self, epoch: EpochStart) -> None:
        self._show(f"epoch {epoch.epoch}/{epoch.epochs}", epoch.images, epoch.total)

    def on_batch_end(self, batch: BatchEnd) -> None:
        status = f"loss {batch.loss:.4f}  {batch.img_per_s:.1f} img/s"
        self._show(f"epoch {batch.epoch}/{batch.epochs}", batch.images, batch.total, status)

    def on_validation_progress(self, phase: str, done: int, total: int) -> None:
        self._show(phase, done, total)
        if done >= total:
            self._drop_task()

    def on_epoch_end(self, end: EpochEnd) -> None:
        self._drop_task()
        mark = " [green]* best[/]" if end.improved else ""
        self.console.print(format_epoch(end.row) + mark)

    def on_train_end(self, result: RunResult) -> None:
        self._drop_task()
        if result.interrupted:
            hint = f" Continue with: murakit train --out {result.out} --resume"
            line = stop_line(result) + (hint if self.resume_hint else "")
            self.console.print(f"[yellow]{escape(line)}")
