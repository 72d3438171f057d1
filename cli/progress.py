"""Progress on stderr for long steps (rich, CLI layer only; library code reports through
callbacks). Nothing is drawn when stderr is not a terminal, so piped output stays clean."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


def _console() -> Console:
    return Console(stderr=True)


@contextmanager
def counting(description: str) -> Iterator[Callable[[int, int], None]]:
    """A progress bar; yields ``update(done, total)`` for the library's ``progress`` callback."""
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=_console(),
        transient=True,
    ) as bar:
        task = bar.add_task(description, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


@contextmanager
def stages(description: str) -> Iterator[Callable[[str], None]]:
    """A spinner with the time elapsed; yields ``say(message)``, which prints the message
    (a step that finished) above the spinner."""
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=_console(),
        transient=True,
    ) as spinner:
        spinner.add_task(description, total=None)

        def say(message: str) -> None:
            spinner.console.print(message, markup=False, highlight=False)

        yield say
