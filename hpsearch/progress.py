"""Terminal progress and tables (rich), drawn on stderr so stdout stays clean for results."""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

stderr = Console(stderr=True)
stdout = Console(soft_wrap=True)


@contextlib.contextmanager
def bar(description: str, *, total: int) -> Iterator[Callable[[int], None]]:
    """A progress bar; yields `advance_to(done)`."""
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=stderr, transient=True,
    ) as progress:
        task = progress.add_task(description, total=total)
        yield lambda done: progress.update(task, completed=done)


@contextlib.contextmanager
def training_bar(steps: int) -> Iterator[tuple[Callable[[int, float], None], Callable[[int, float], None]]]:
    """A training progress bar showing loss and the latest validation IoU; yields (on_step, on_eval)."""
    state = {"loss": float("nan"), "iou": "-", "best": None}
    with Progress(
        TextColumn("training"), BarColumn(), MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}  val IoU {task.fields[iou]}"),
        TimeElapsedColumn(), TimeRemainingColumn(), console=stderr,
    ) as progress:
        task = progress.add_task("training", total=steps, loss=state["loss"], iou=state["iou"])

        def on_step(step: int, loss: float) -> None:
            state["loss"] = loss
            progress.update(task, completed=step, loss=loss)

        def on_eval(step: int, iou: float) -> None:
            state["best"] = iou if state["best"] is None else max(state["best"], iou)
            progress.update(task, iou=f"{iou:.4f} (best {state['best']:.4f})")
            # A line per evaluation also reaches logs, where the live bar is not drawn.
            progress.console.print(f"step {step}/{steps}: loss {state['loss']:.4f}, validation IoU {iou:.4f}")

        yield on_step, on_eval


def print_table(title: str, columns: list[str], rows: list[list[str]]) -> None:
    """A plain table on stdout; every cell is printed as written (Text, not rich markup: a case or
    class named "[rv]" stays "[rv]")."""
    table = Table(title=Text(title), title_justify="left")
    for column in columns:
        table.add_column(Text(column))
    for row in rows:
        table.add_row(*(Text(str(cell)) for cell in row))
    stdout.print(table)
