"""The launcher's live terminal view: each worker's trial, step and latest IoU, the best so far, how to watch."""

from __future__ import annotations

import time

import optuna
from optuna.trial import TrialState
from rich.console import Group
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from hpsearch.progress import stderr
from hpsearch.vocabulary import best_trial

STUDY_REFRESH_SECONDS = 2.0


class LiveView:
    """A rich Live display refreshed by `view(launcher)`; a plain line per change where stderr is not a terminal."""

    def __init__(self, *, study_name: str, storage, storage_text: str, dashboard_command: str, target: int) -> None:
        self.study_name = study_name
        self.storage = storage
        self.storage_text = storage_text
        self.dashboard_command = dashboard_command
        self.target = target
        self._live = Live(console=stderr, refresh_per_second=4, transient=False) if stderr.is_terminal else None
        self._summary = {"complete": 0, "failed": 0, "best": None}
        self._read_at = 0.0
        self._last_line = ""
        self._events_printed = 0  # launcher events already printed (when not on a terminal)

    def __enter__(self) -> LiveView:
        if self._live is not None:
            self._live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._live is not None:
            self._live.__exit__(*exc)

    def _read_study(self) -> None:
        if time.monotonic() - self._read_at < STUDY_REFRESH_SECONDS:
            return
        self._read_at = time.monotonic()
        study = optuna.load_study(study_name=self.study_name, storage=self.storage)
        trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL))
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        best = best_trial(complete, study.direction)
        self._summary = {"complete": len(complete), "failed": len(trials) - len(complete), "best": best}

    def __call__(self, launcher) -> None:
        self._read_study()
        summary = self._summary
        best = summary["best"]
        best_text = f"best IoU {best.value:.4f} (trial {best.number})" if best else "no complete trial yet"
        header = Text(
            f"study {self.study_name} · {self.storage_text} · {summary['complete']}/{self.target} complete, "
            f"{summary['failed']} failed · {best_text}"
        )
        table = Table(show_edge=False, pad_edge=False)
        for column in ("worker", "pid", "device", "trial", "step", "IoU", "state"):
            table.add_column(column)
        lines = []
        for slot in launcher.slots:
            status = slot.status()
            pid = str(slot.process.pid) if slot.process is not None else "-"
            state = slot.gave_up or ("done" if slot.finished else status.get("state", "starting"))
            trial = status.get("trial")
            steps = status.get("steps")
            step = f"{status.get('step', 0)}/{steps}" if steps else "-"
            iou = f"{status['iou']:.4f}" if isinstance(status.get("iou"), float) else "-"
            device = f"GPU {slot.gpu}" if slot.gpu is not None else f"CPU×{launcher.threads or 'all'}"
            row = [f"w{slot.index}", pid, device, "-" if trial is None else str(trial), step, iou, state]
            table.add_row(*(Text(cell) for cell in row))  # Text, not str: a cell's '[...]' is not rich markup
            lines.append(f"w{slot.index}: trial {row[3]} {state}, IoU {iou}")
        footer = Text(f"watch: {self.dashboard_command}    stop: Ctrl-C (the study resumes with the next launch)", style="dim")
        events = [Text(event, style="yellow") for event in launcher.events[-5:]]
        if self._live is not None:
            self._live.update(Group(header, table, *events, footer))
            return
        # Not a terminal (CI, a log file): print each new event, and a line when something changed. Both hold
        # the user's text (a log's last error, a GPU name, a path), so '[...]' is escaped, not read as rich markup.
        for event in launcher.events[self._events_printed:]:
            stderr.print(escape(event), soft_wrap=True)
        self._events_printed = len(launcher.events)
        line = f"{summary['complete']}/{self.target} complete; {best_text}; " + "; ".join(lines)
        if line != self._last_line:
            stderr.print(escape(line), soft_wrap=True)
            self._last_line = line
