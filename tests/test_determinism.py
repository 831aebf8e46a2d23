"""A seeded 1-worker search in deterministic mode repeats trial by trial."""

from __future__ import annotations

import pytest
from optuna.trial import TrialState

from searchutil import finish, hpsearch, load, write_tiny_study

pytestmark = pytest.mark.slow


def test_a_seeded_deterministic_search_repeats(tmp_path):
    runs = []
    for attempt in ("first", "second"):
        study_file = write_tiny_study(tmp_path / attempt, trials=3, steps=8, eval_every=4, seed=11)
        journal = str(tmp_path / attempt / "study.journal")
        code, output = finish(hpsearch("launch", "--workers", "1", "--deterministic", "--study", str(study_file), "--storage", journal))
        assert code == 0, output
        runs.append([t for t in load(journal).get_trials(deepcopy=False) if t.state == TrialState.COMPLETE])
    first, second = runs
    assert len(first) == len(second) == 3
    for a, b in zip(first, second):
        assert a.number == b.number
        assert a.params == b.params
        assert a.value == pytest.approx(b.value, abs=1e-6)
        assert a.intermediate_values == pytest.approx(b.intermediate_values, abs=1e-6)
    # Not a constant search: the sampler moved away from the start point.
    assert len({tuple(sorted(t.params.items())) for t in first}) > 1
