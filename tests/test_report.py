"""`hpsearch report`: one offline HTML page with the five figures, and notes where a study is too young for one."""

from __future__ import annotations

import json
import re

import pytest
from optuna.trial import TrialState
from plotly.offline import get_plotlyjs

from hpsearch.cli import main
from hpsearch.report import FIGURES, build_sections
from test_export import SPACE, TRIALS, make_study

PRUNED = {"params": {"l2 regularization weight": 1.0e-4, "learning rate": 2.0e-3, "channels in first conv layer": 2},
          "state": TrialState.PRUNED, "steps": {3: 0.05}, "attrs": {"parent_trial": 1}}


def report(journal: str, out) -> int:
    return main(["report", "--study", "tiny", "--storage", journal, "-o", str(out)])


def test_the_report_holds_five_figures_and_plotly_inline(tmp_path, capsys):
    journal = str(tmp_path / "study.journal")
    make_study(journal, tmp_path / "studies", [*TRIALS, PRUNED], search_space=SPACE)
    out = tmp_path / "report.html"
    assert report(journal, out) == 0
    assert "wrote the report of study 'tiny' (5 trials)" in capsys.readouterr().out
    page = out.read_text(encoding="utf-8")
    for key, title in FIGURES:
        assert page.count(f'<div id="figure-{key}"') == 1, key  # each figure drawn once, in its own div
        assert len(re.findall(rf'Plotly\.newPlot\(\s*"figure-{key}"', page)) == 1, key
        assert f'"title":{{"text":{json.dumps(title)}' in page, title
    assert 'class="note"' not in page  # every figure could be drawn
    # plotly.js once, inline; nothing loaded from the network.
    assert page.count(get_plotlyjs()[:500]) == 1
    assert not re.search(r"<script[^>]*\bsrc=", page)
    assert not re.search(r"""<(?:link|img|iframe)[^>]*\b(?:src|href)=["']?https?:""", page)
    # The best trial's Table 1 is at the top.
    assert "Best trial: 1" in page and "7.6e-5" in page
    assert not list(tmp_path.glob(".report.html.*"))  # written atomically: no temporary file left


def test_the_search_path_joins_each_trial_to_its_parent(tmp_path):
    journal = str(tmp_path / "study.journal")
    _, _, study = make_study(journal, tmp_path / "studies", [*TRIALS, PRUNED], search_space=SPACE)
    sections = {s.key: s for s in build_sections(study)}
    assert [s.key for s in build_sections(study)] == [key for key, _ in FIGURES]
    lines = sections["search-path"].figure.data[0]
    segments = {(lines.x[i], lines.x[i + 1]) for i in range(0, len(lines.x), 3)}
    # 0 -> 1 and 1 -> 2 (COMPLETE), 1 -> 4 (PRUNED, at its last IoU); the FAIL trial 3 has no IoU.
    assert segments == {(0, 1), (1, 2), (1, 4)}
    assert list(lines.y[6:8]) == [0.63, 0.05]
    markers = {trace.name: list(trace.x) for trace in sections["search-path"].figure.data[1:]}
    assert markers["new best (kept)"] == [0, 1]
    assert markers["pruned (last IoU)"] == [4]
    # The learning curves are the trials' intermediate values.
    curves = {trace.name: list(trace.y) for trace in sections["learning-curves"].figure.data}
    assert curves["Trial0"] == [0.205, 0.41]
    importances = sections["importance"].figure.data[0]
    assert set(importances.y) == set(SPACE)


@pytest.mark.parametrize(
    ("trials", "notes"),
    [
        ([], 5),  # nothing to draw at all
        ([TRIALS[0]], 1),  # one COMPLETE trial: everything but importances
        ([TRIALS[0], {**TRIALS[0], "value": 0.5}], 1),  # two trials, same hyperparameters: no importances
    ],
)
def test_a_young_study_gets_notes_instead_of_a_crash(trials, notes, tmp_path, capsys):
    journal = str(tmp_path / "study.journal")
    make_study(journal, tmp_path / "studies", trials, search_space=SPACE)
    out = tmp_path / "report.html"
    assert report(journal, out) == 0
    page = out.read_text(encoding="utf-8")
    assert page.count('<p class="note">') == notes
    assert page.count('<section id="') == 5
    if len(trials) >= 1:
        assert "Importances need at least 2" in page or "same hyperparameters" in page


def test_an_unknown_study_is_a_usage_error(tmp_path, capsys):
    journal = str(tmp_path / "study.journal")
    make_study(journal, tmp_path / "studies", TRIALS[:1], search_space=SPACE)
    assert main(["report", "--study", "nope", "--storage", journal, "-o", str(tmp_path / "r.html")]) == 2
    assert "no study named 'nope'" in capsys.readouterr().err
    assert not (tmp_path / "r.html").exists()
