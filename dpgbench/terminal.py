"""Terminal output shared by the CLI modules: consoles, progress bars with rate and ETA, short notes.

Only the `cli*.py` modules import this; library code never prints.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Protocol

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
)
from rich.table import Column
from rich.text import Text

console = Console(soft_wrap=True)  # long paths stay on one line (logs, grep)
err_console = Console(stderr=True, soft_wrap=True)


# ------------------------------------------------------------------------------------------- terminal


def average_speed(task: Task) -> float | None:
    """Items per second since the bar started, leaving out items that were already done (resumed work).

    Not rich's sliding-window speed: work that lands in bursts (4 images of a batch logged within a
    millisecond, 30 s apart) reads as thousands per second there, and its ETA as zero.
    """
    made = task.completed - task.fields.get("skipped", 0)
    elapsed = task.elapsed
    return made / elapsed if elapsed and made > 0 else None


class RateColumn(ProgressColumn):
    """Items per second, with the unit of the task (images/s, questions/s)."""

    def render(self, task: Task) -> Text:
        speed = average_speed(task)
        unit = task.fields.get("unit", "it")
        return Text(f"{speed:.2f} {unit}/s" if speed else f"- {unit}/s", style="progress.data.speed")


class RemainingColumn(ProgressColumn):
    """Time left at the average speed."""

    def render(self, task: Task) -> Text:
        speed = average_speed(task)
        if task.finished:
            return Text("0:00:00", style="progress.remaining")
        if not speed or task.total is None:
            return Text("-:--:--", style="progress.remaining")
        left = int((task.total - task.completed) / speed)
        return Text(f"{left // 3600}:{left // 60 % 60:02d}:{left % 60:02d}", style="progress.remaining")


class Advance(Protocol):
    def __call__(self, n: int, skipped: bool = False) -> None: ...


@contextmanager
def progress_bar(description: str, total: int, unit: str) -> Iterator[Advance]:
    """Yields advance(n, skipped=False); skipped items (done before, e.g. on resume) fill the bar but
    are left out of the rate and the ETA. Nothing to do (total 0, e.g. a rerun where every answer is
    cached): no bar at all, rather than an empty 0/0 one."""
    if total == 0:
        yield lambda n, skipped=False: None
        return
    # The bar takes what the numbers leave (at 80 columns a fixed 40-wide bar wrapped the rate's unit).
    columns = [
        TextColumn("[bold]{task.description}"),
        BarColumn(bar_width=None),
        MofNCompleteColumn(table_column=Column(no_wrap=True)),
        RateColumn(table_column=Column(no_wrap=True)),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        RemainingColumn(),
    ]
    with Progress(*columns, console=err_console, transient=False) as progress:
        task = progress.add_task(description, total=total, unit=unit, skipped=0)
        skipped_so_far = 0

        def advance(n: int, skipped: bool = False) -> None:
            nonlocal skipped_so_far
            if skipped:
                skipped_so_far += n
                progress.update(task, skipped=skipped_so_far)
            progress.advance(task, n)

        yield advance


def fmt(value: float) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.2f}"


def warn_notes(notes: Sequence[Any], what: str, show: int = 3) -> None:
    if not notes:
        return
    err_console.print(f"[yellow]warning[/]: {escape(f'{len(notes)} {what}; first: {notes[0]}')}")
    for note in notes[1:show]:
        err_console.print(f"         {escape(str(note))}")
