"""Terminal output shared by the CLI modules: consoles, progress bars with rate and ETA, short notes.

Only the `cli*.py` modules import this; library code never prints.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

console = Console(soft_wrap=True)  # long paths stay on one line (logs, grep)
err_console = Console(stderr=True, soft_wrap=True)


# ------------------------------------------------------------------------------------------- terminal


class RateColumn(ProgressColumn):
    """Items per second, with the unit of the task (images/s, questions/s)."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        unit = task.fields.get("unit", "it")
        return Text(f"{speed:.2f} {unit}/s" if speed else f"- {unit}/s", style="progress.data.speed")


@contextmanager
def progress_bar(description: str, total: int, unit: str) -> Iterator[Callable[[int], None]]:
    columns = [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    ]
    with Progress(*columns, console=err_console, transient=False) as progress:
        task = progress.add_task(description, total=total, unit=unit)
        yield lambda n: progress.advance(task, n)


def fmt(value: float) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.2f}"


def warn_notes(notes: Sequence[Any], what: str, show: int = 3) -> None:
    if not notes:
        return
    err_console.print(f"[yellow]warning[/]: {escape(f'{len(notes)} {what}; first: {notes[0]}')}")
    for note in notes[1:show]:
        err_console.print(f"         {escape(str(note))}")
