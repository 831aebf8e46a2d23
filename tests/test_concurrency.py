"""Eight workers on one study, on the journal file and on PostgreSQL: every trial counted once.

Real launcher, real worker processes, real training (one step of the tiny study at depth 1: the trials
are short, so the workers create, report and finish trials on the storage at the same time).
"""

from __future__ import annotations

import re

import pytest
from optuna.trial import TrialState

from searchutil import STRESS_TRIALS, STRESS_WORKERS, load, stress_search

pytestmark = pytest.mark.slow

# What a storage under contention says when it goes wrong.
TROUBLE = re.compile(
    r"database is locked|deadlock|could not serialize|duplicate key|Traceback|StorageInternalError|"
    r"OperationalError|IntegrityError|lost the connection|hpsearch: error|timed out",
    re.IGNORECASE,
)


def most_at_once(trials) -> int:
    """The largest number of trials that were running at the same moment."""
    events = sorted([(t.datetime_start, 1) for t in trials] + [(t.datetime_complete, -1) for t in trials])
    running = most = 0
    for _, change in events:
        running += change
        most = max(most, running)
    return most


def check_every_trial_counted_once(run: dict, storage_url: str) -> None:
    assert run["code"] == 0, run["output"]
    study = load(storage_url)
    trials = study.get_trials(deepcopy=False)
    assert [t.number for t in trials] == list(range(len(trials)))  # unique, no gap
    assert len({t._trial_id for t in trials}) == len(trials)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == STRESS_TRIALS  # exactly the target, not one more
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    # The only failures allowed: a worker giving way when others already run the last trials.
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert all(t.user_attrs.get("fail_reason", "").startswith("SurplusTrial") for t in failed), [t.user_attrs for t in failed]
    # Every complete trial kept what it measured and its model, each model once.
    for trial in complete:
        assert trial.intermediate_values and "per_class_iou" in trial.user_attrs, trial.number
    models = [t.user_attrs["model_artifact"] for t in complete]
    artifacts = run["study_file"].parent / "artifacts"
    assert len(set(models)) == len(models) and all((artifacts / m).is_file() for m in models)
    # The workers really ran trials side by side: that is the contention this test is about.
    workers = len({t.user_attrs["worker_pid"] for t in complete})
    side_by_side = most_at_once(trials)
    assert workers > STRESS_WORKERS // 2 and side_by_side > STRESS_WORKERS // 2, (workers, side_by_side)
    logs = sorted((run["study_file"].parent / "logs" / "tiny").glob("w*.log"))
    assert len(logs) == STRESS_WORKERS
    for log in logs:
        trouble = [line for line in log.read_text().splitlines() if TROUBLE.search(line)]
        assert not trouble, f"{log.name}: {trouble[:5]}"
    print(f"{STRESS_WORKERS} workers, {len(trials)} trials, {workers} workers finished trials, up to {side_by_side} at once: {run['seconds']:.0f} s")


def test_eight_workers_on_the_journal_file(tmp_path):
    storage_url = str(tmp_path / "study.journal")
    run = stress_search(tmp_path / "studies", storage_url)
    check_every_trial_counted_once(run, storage_url)


@pytest.mark.postgres
def test_eight_workers_on_postgres(postgres_stress_search):
    check_every_trial_counted_once(postgres_stress_search, postgres_stress_search["storage_url"])
