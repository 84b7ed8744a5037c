"""One look for every progress bar: description, bar, counts, rate, time, and live figures."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
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
