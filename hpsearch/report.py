"""`hpsearch report`: one self-contained HTML page of plotly figures about a study.

Five figures: the optimisation history, every trial's validation-IoU learning curve (its
intermediate values), parallel coordinates, hyperparameter importances, and the search's path
(each trial drawn from its parent, the `parent_trial` user attribute the paper's scheme records).
plotly.js is embedded once, inline, so the page needs no network. A figure the study cannot
support yet (no COMPLETE trial, no varying hyperparameter ...) becomes a sentence saying why.

Importances use optuna's PED-ANOVA evaluator (optuna 5's default, pure numpy/optuna); fANOVA
would need scikit-learn, which hpsearch does not install.
"""

from __future__ import annotations

import dataclasses
import html
import math
import warnings
from collections import Counter

import optuna
import plotly.graph_objects as go
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from model import format_number
from hpsearch.config import StudyConfig
from hpsearch.export import ExportedTrial, exported_trial, training_text
from hpsearch.vocabulary import COLLAPSED_ATTR, PARENT_ATTR

REPORT_MARKER = b"hpsearch report:"  # in the title of every report: a later report may replace the file

TARGET_NAME = "validation IoU"

# (key, title): the figures in page order; the key is the section id, the figure's div id is "figure-KEY".
FIGURES = (
    ("history", "Optimisation history"),
    ("learning-curves", "Validation IoU during training, all trials"),
    ("parallel", "Parallel coordinates of the hyperparameters"),
    ("importance", "Hyperparameter importances (PED-ANOVA)"),
    ("search-path", "The search's path: each trial drawn from its parent"),
)
_TITLES = dict(FIGURES)
_PLOT_CONFIG = {"displaylogo": False, "responsive": True}


@dataclasses.dataclass
class Section:
    """One figure of the report, or the note that replaces it."""

    key: str
    figure: go.Figure | None = None
    note: str | None = None

    @property
    def title(self) -> str:
        return _TITLES[self.key]


def build_sections(study: optuna.Study) -> list[Section]:
    """The five sections of the report, in page order."""
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    return [
        _history(study, complete),
        _learning_curves(study, trials),
        _parallel(study, complete),
        _importance(study, complete),
        _search_path(study, trials),
    ]


def render_report(study: optuna.Study, config: StudyConfig | None, *, storage_text: str) -> str:
    """The whole report as one HTML document with plotly.js inline."""
    from plotly.offline import get_plotlyjs

    sections = build_sections(study)
    trials = study.get_trials(deepcopy=False)
    counts = Counter(t.state.name for t in trials)
    held = ", ".join(f"{n} {state}" for state, n in sorted(counts.items())) or "no trials yet"
    best = None
    if counts.get("COMPLETE"):
        best = exported_trial(study, config)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        f"<title>{REPORT_MARKER.decode()} {_e(study.study_name)}</title>",
        "<style>"
        "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
        "table{border-collapse:collapse}td,th{padding:.2em .8em;border-bottom:1px solid #ddd;text-align:left}"
        "td.num{text-align:right;font-variant-numeric:tabular-nums}.note{color:#555;font-style:italic}"
        "section{margin-top:2.5em}"
        "</style>",
        # plotly.js once, inline: the page works offline and loads nothing from elsewhere.
        '<script type="text/javascript">window.PlotlyConfig = {MathJaxConfig: "local"};</script>',
        f'<script type="text/javascript">{get_plotlyjs()}</script>',
        "</head>",
        "<body>",
        f"<h1>Study {_e(study.study_name)}</h1>",
        f"<p>{_e(storage_text)}: {_e(held)}.</p>",
        _collapsed_note(trials),
        _best_table(best),
        '<nav><ul>' + "".join(f'<li><a href="#{key}">{_e(title)}</a></li>' for key, title in FIGURES) + "</ul></nav>",
    ]
    for section in sections:
        parts.append(f'<section id="{section.key}">')
        parts.append(f"<h2>{_e(section.title)}</h2>")
        if section.figure is not None:
            section.figure.update_layout(title=section.title)
            parts.append(section.figure.to_html(
                full_html=False, include_plotlyjs=False, div_id=f"figure-{section.key}", config=_PLOT_CONFIG,
            ))
        if section.note:
            parts.append(f'<p class="note">{_e(section.note)}</p>')
        parts.append("</section>")
    parts += ["</body>", "</html>"]
    return "\n".join(parts) + "\n"


def _collapsed_note(trials: list[FrozenTrial]) -> str:
    """A warning paragraph naming the trials that ended with a foreground class at IoU 0, or ''."""
    collapsed = [f"trial {t.number} ({', '.join(t.user_attrs[COLLAPSED_ATTR])})"
                 for t in trials if t.user_attrs.get(COLLAPSED_ATTR)]
    if not collapsed:
        return ""
    return (f'<p class="note">Class collapse: {len(collapsed)} trial(s) ended with a foreground class at validation '
            f"IoU 0, swallowed by another class: {_e('; '.join(collapsed))}.</p>")


# ---------------------------------------------------------------- the figures


def _history(study: optuna.Study, complete: list[FrozenTrial]) -> Section:
    if not complete:
        return Section("history", note="No COMPLETE trial yet: the history starts with the first one.")
    return Section("history", figure=optuna.visualization.plot_optimization_history(study, target_name=TARGET_NAME))


def _learning_curves(study: optuna.Study, trials: list[FrozenTrial]) -> Section:
    shown = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
    if not any(t.intermediate_values for t in trials if t.state in shown):
        return Section("learning-curves", note="No trial has reported a validation IoU during training yet.")
    figure = optuna.visualization.plot_intermediate_values(study)
    figure.update_layout(xaxis_title="training step", yaxis_title=TARGET_NAME)
    return Section("learning-curves", figure=figure)


def _parallel(study: optuna.Study, complete: list[FrozenTrial]) -> Section:
    if not complete:
        return Section("parallel", note="No COMPLETE trial yet.")
    if not any(t.params for t in complete):
        return Section("parallel", note="The COMPLETE trials searched no hyperparameter.")
    return Section("parallel", figure=optuna.visualization.plot_parallel_coordinate(study, target_name=TARGET_NAME))


def _importance(study: optuna.Study, complete: list[FrozenTrial]) -> Section:
    if len(complete) < 2:
        return Section("importance", note=f"Importances need at least 2 COMPLETE trials; the study has {len(complete)}.")
    varying = _varying_params(complete)
    if not varying:
        return Section("importance", note="Every COMPLETE trial has the same hyperparameters, so none can be told apart.")
    if len({t.value for t in complete}) < 2:
        return Section("importance", note="Every COMPLETE trial has the same validation IoU, so no hyperparameter made a difference yet.")
    evaluator = optuna.importance.PedAnovaImportanceEvaluator()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            optuna.importance.get_param_importances(study, evaluator=evaluator, params=varying)
            figure = optuna.visualization.plot_param_importances(study, evaluator=evaluator, params=varying, target_name=TARGET_NAME)
        except Exception as error:  # noqa: BLE001 - the rest of the report is still worth writing
            return Section("importance", note=f"Importances could not be computed ({type(error).__name__}: {error}).")
    # PED-ANOVA says so when there are too few trials to rank: it then rates all equal, which would mislead.
    doubts = [str(w.message).split(".")[0] for w in caught if "importance" in str(w.message).lower()]
    if doubts:
        return Section("importance", note=f"Too few COMPLETE trials ({len(complete)}) to rank the hyperparameters: {doubts[0]}.")
    note = None
    fixed = [name for name in _all_params(complete) if name not in varying]
    if fixed:
        note = f"Not shown (the same in every COMPLETE trial): {', '.join(fixed)}."
    return Section("importance", figure=figure, note=note)


def _search_path(study: optuna.Study, trials: list[FrozenTrial]) -> Section:
    """Trial number against IoU, with a line from each trial's parent to it."""
    points: dict[int, float] = {}
    for trial in trials:
        value = _shown_value(trial)
        if value is not None:
            points[trial.number] = value
    if not points:
        return Section("search-path", note="No trial has a validation IoU yet.")
    by_number = {t.number: t for t in trials}
    maximize = study.direction != StudyDirection.MINIMIZE
    improved = _new_bests([t for t in trials if t.state == TrialState.COMPLETE and t.value is not None], maximize)

    line_x: list[float | None] = []
    line_y: list[float | None] = []
    for number in points:
        parent = _parent(by_number[number])
        if parent is not None and parent in points:
            line_x += [parent, number, None]
            line_y += [points[parent], points[number], None]
    figure = go.Figure()
    figure.add_trace(go.Scatter(
        x=line_x, y=line_y, mode="lines", name="parent → trial",
        line={"color": "rgba(120,120,120,0.6)", "width": 1}, hoverinfo="skip",
    ))
    groups = {
        "from the start point": lambda t: _parent(t) is None and t.number not in improved,
        "drawn around a parent": lambda t: _parent(t) is not None and t.number not in improved and t.state == TrialState.COMPLETE,
        "pruned (last IoU)": lambda t: t.state == TrialState.PRUNED,
        "running (last IoU)": lambda t: t.state == TrialState.RUNNING,
        "new best (kept)": lambda t: t.number in improved,
    }
    symbols = {"from the start point": "diamond", "drawn around a parent": "circle", "pruned (last IoU)": "x",
               "running (last IoU)": "circle-open", "new best (kept)": "star"}
    for name, member in groups.items():
        chosen = [by_number[n] for n in points if member(by_number[n])]
        if not chosen:
            continue
        figure.add_trace(go.Scatter(
            x=[t.number for t in chosen], y=[points[t.number] for t in chosen], mode="markers", name=name,
            marker={"symbol": symbols[name], "size": 12 if name == "new best (kept)" else 8},
            text=[_hover(t, points[t.number]) for t in chosen], hovertemplate="%{text}<extra></extra>",
        ))
    figure.update_layout(xaxis_title="trial", yaxis_title=TARGET_NAME, hovermode="closest")
    note = None
    if not any(PARENT_ATTR in by_number[n].user_attrs for n in points):
        note = "No trial records a parent (user attribute 'parent_trial'): the sampler was not the paper's neighbourhood search."
    return Section("search-path", figure=figure, note=note)


# ---------------------------------------------------------------- helpers


def _shown_value(trial: FrozenTrial) -> float | None:
    if trial.state == TrialState.COMPLETE and trial.value is not None:
        return float(trial.value)
    if trial.state in (TrialState.PRUNED, TrialState.RUNNING) and trial.intermediate_values:
        value = trial.intermediate_values[max(trial.intermediate_values)]
        return float(value) if math.isfinite(value) else None
    return None


def _parent(trial: FrozenTrial) -> int | None:
    parent = trial.user_attrs.get(PARENT_ATTR)
    return parent if isinstance(parent, int) and not isinstance(parent, bool) else None


def _new_bests(complete: list[FrozenTrial], maximize: bool) -> set[int]:
    """Trials that beat every trial completed before them (the paper's 'keep the better')."""
    ordered = sorted(complete, key=lambda t: (t.datetime_complete is None, t.datetime_complete or 0, t.number))
    best = None
    kept = set()
    for trial in ordered:
        if best is None or (trial.value > best if maximize else trial.value < best):
            best = trial.value
            kept.add(trial.number)
    return kept


def _hover(trial: FrozenTrial, value: float) -> str:
    parent = trial.user_attrs.get(PARENT_ATTR)
    origin = "start point" if parent in (None, "start") else f"parent trial {parent}"
    params = "<br>".join(f"{_e(k)}: {_e(format_number(v) if isinstance(v, (int, float)) else str(v))}" for k, v in trial.params.items())
    return f"trial {trial.number} ({trial.state.name.lower()}, from {_e(origin)})<br>{TARGET_NAME} {value:.4f}<br>{params}"


def _all_params(trials: list[FrozenTrial]) -> list[str]:
    names: dict[str, None] = {}
    for trial in trials:
        names.update(dict.fromkeys(trial.params))
    return list(names)


def _varying_params(trials: list[FrozenTrial]) -> list[str]:
    return [name for name in _all_params(trials) if len({repr(t.params.get(name)) for t in trials}) > 1]


def _best_table(best: ExportedTrial | None) -> str:
    if best is None:
        return "<p>No COMPLETE trial yet, so no best hyperparameters.</p>"
    per_class = ""
    if best.per_class:
        per_class = " (" + ", ".join(f"{_e(name)} {v:.4f}" for name, v in best.per_class.items()) + ")"
    rows = "".join(
        f"<tr><td>{_e(name)}</td><td class=\"num\">{_e(format_number(value))}</td>"
        f"<td>{'searched' if name in best.searched else 'start value (not searched)'}</td></tr>"
        for name, value in best.params.as_table1().items()
    )
    trained = f"<p>Trained with {_e(training_text(best))}.</p>" if best.training else ""
    return (
        f"<h2>Best trial: {best.trial}, {TARGET_NAME} {best.iou:.4f}{per_class}</h2>"
        f"<table><tr><th>hyperparameter</th><th>value</th><th></th></tr>{rows}</table>{trained}"
        f"<p>Export it with <code>hpsearch export --study {_e(best.study)} -o best.yaml</code> "
        "and train the final model with <code>hpsearch train --params best.yaml</code>.</p>"
    )


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)
