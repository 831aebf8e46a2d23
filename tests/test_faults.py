"""Faults during a search, with real processes and real storages: nothing paid for is lost.

SIGTERM on the launcher, a trial folder that stops being writable, a worker on "another
machine" that dies without a word (heartbeats), and a PostgreSQL server that restarts or cuts
its connections mid-search. (Two SIGKILLed workers and Ctrl-C are in test_launch.py.)
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from optuna.trial import TrialState
from sqlalchemy.engine import make_url

from hpsearch.config import load_study
from hpsearch.launcher import prepare_study
from hpsearch.storage import open_storage
from hpsearch.worker import ensure_dataset

from searchutil import (
    EARLY_STEP, INTERRUPTIBLE, finish, hpsearch, interrupt_and_resume, load, running_with_a_step, trials_in, wait_for, write_tiny_study,
)

pytestmark = pytest.mark.slow


def worker_logs(study_file: Path) -> str:
    return "".join(path.read_text() for path in sorted((study_file.parent / "logs" / "tiny").glob("w*.log")))


def test_sigterm_stops_the_workers_within_seconds_and_launch_resumes(tmp_path):
    study_file = write_tiny_study(tmp_path / "studies", trials=2, **INTERRUPTIBLE)
    interrupt_and_resume(str(tmp_path / "study.journal"), study_file, signal.SIGTERM, trials=2)  # what `kill`, systemd and `docker stop` send

def test_a_trial_whose_model_cannot_be_written_keeps_its_iou_and_the_search_goes_on(tmp_path):
    """The trial model folder becomes unusable mid-search (a file where the folder was: a real OSError even for root).

    The trial's training is paid for: it completes with its IoU and says why it has no model.
    """
    storage_url = str(tmp_path / "study.journal")
    study_file = write_tiny_study(tmp_path / "studies", trials=3)
    artifacts = study_file.parent / "artifacts"
    launch = hpsearch("launch", "--workers", "1", "--study", str(study_file), "--storage", storage_url)
    wait_for(lambda: trials_in(storage_url, TrialState.COMPLETE), timeout=180)
    artifacts.rename(tmp_path / "artifacts-aside")
    artifacts.write_text("the disk is not what it was")

    def completed_without_model():
        """a trial that completed though its model could not be written"""
        return [t for t in trials_in(storage_url, TrialState.COMPLETE) if "Not a directory" in t.user_attrs.get("model_error", "")]

    try:
        unstored = wait_for(completed_without_model, timeout=120)[0]
    finally:
        artifacts.unlink()
        (tmp_path / "artifacts-aside").rename(artifacts)
    code, output = finish(launch)
    assert code == 0, output
    study = load(storage_url)
    assert str(artifacts) in unstored.user_attrs["model_error"]  # the reason names the folder
    assert unstored.value is not None and "model_artifact" not in unstored.user_attrs
    assert f"trial {unstored.number}'s model was not stored" in worker_logs(study_file)
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    assert len(complete) == 3 and not study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
    assert "model_artifact" in complete[0].user_attrs  # stored before the folder went
    assert not study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    code, output = finish(hpsearch("status", "--study", "tiny", "--storage", storage_url, env={"COLUMNS": "400"}))
    assert code == 0 and "model not stored: NotADirectoryError" in output


@pytest.mark.postgres
def test_a_worker_elsewhere_that_dies_silently_is_failed_by_heartbeat_and_its_trial_retried(postgres_url, tmp_path):
    """Two bare `hpsearch worker` processes (as on two machines, no launcher); the one training is SIGKILLed."""
    grace = 3
    config = load_study(write_tiny_study(tmp_path / "studies", trials=1, **INTERRUPTIBLE))
    ensure_dataset(config)
    prepare_study(config, open_storage(postgres_url, heartbeat_interval=None), target=1)
    env = {"HPSEARCH_STORAGE": postgres_url, "HPSEARCH_HEARTBEAT_INTERVAL": "1", "HPSEARCH_HEARTBEAT_GRACE": str(grace)}
    workers = [
        hpsearch("worker", "--study", "tiny", "--index", str(i), "--artifacts", str(tmp_path / "artifacts"), env=env)
        for i in range(2)
    ]
    try:
        victim = wait_for(lambda: running_with_a_step(postgres_url, by_step=EARLY_STEP), timeout=180)
        [survivor] = [w for w in workers if w.pid != victim.user_attrs["worker_pid"]]
        os.kill(victim.user_attrs["worker_pid"], signal.SIGKILL)
        killed_at = time.monotonic()

        def failed():
            """the killed trial FAIL"""
            return trials_in(postgres_url)[victim.number].state == TrialState.FAIL

        wait_for(failed, timeout=60, interval=0.2)
        # Grace period, plus the survivor's 2 s between checks, plus a margin for a loaded machine.
        assert time.monotonic() - killed_at < grace + 2 + 5
        code, output = finish(survivor, timeout=180)
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
    assert code == 0, output
    study = load(postgres_url)
    dead = study.trials[victim.number]
    assert dead.state == TrialState.FAIL
    assert dead.user_attrs["fail_reason"].startswith("no heartbeat from ")
    [retry] = [t for t in study.trials if t.user_attrs.get("retry_of") == victim.number]
    assert retry.params == dead.params and retry.state == TrialState.COMPLETE
    assert retry.user_attrs["worker_pid"] == survivor.pid
    assert "fail_reason" not in retry.user_attrs  # the dead run's attributes stay with it
    assert len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))) == 1


@pytest.mark.postgres
def test_postgres_restarting_and_cutting_connections_mid_search_loses_no_trial(private_postgres, tmp_path):
    """The server of the test's own stops for 3 s mid-trial, then later ends every session; the workers wait and go on."""
    storage_url = private_postgres.create_database()
    database = make_url(storage_url).database
    # Trials long enough that the search is still running when the test looks after the restart
    # (40-step trials could all end between two of its polls on a fast CPU).
    study_file = write_tiny_study(tmp_path / "studies", trials=3, **INTERRUPTIBLE)
    env = {"HPSEARCH_HEARTBEAT_INTERVAL": "1", "HPSEARCH_HEARTBEAT_GRACE": "30"}
    launch = hpsearch("launch", "--workers", "2", "--study", str(study_file), "--storage", storage_url, env=env)
    try:
        wait_for(lambda: running_with_a_step(storage_url, by_step=EARLY_STEP), timeout=180)
        last_steps = {t.number: max(t.intermediate_values, default=-1) for t in trials_in(storage_url)}
        private_postgres.stop()
        time.sleep(3)  # heartbeats and reports fail meanwhile
        private_postgres.start()

        def a_step_after_the_restart():
            """a trial reporting a step after the restart"""
            return [t for t in trials_in(storage_url) if max(t.intermediate_values, default=-1) > last_steps.get(t.number, -1)]

        wait_for(a_step_after_the_restart, timeout=180)
        # Without a pool a worker holds a session only inside a call (a heartbeat every second here):
        # end sessions until one was caught mid-call.
        wait_for(lambda: private_postgres.terminate_connections(database) > 0, timeout=120, interval=0.05)
        code, output = finish(launch)
    finally:
        if launch.poll() is None:
            launch.send_signal(signal.SIGINT)
            finish(launch, timeout=30)
    assert code == 0, output
    study = load(storage_url)
    assert len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))) == 3
    assert not study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING))
    # No trial failed (two workers starting at once may still refuse a surplus trial).
    assert all(t.user_attrs["fail_reason"].startswith("SurplusTrial") for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)))
    logs = worker_logs(study_file)
    assert "lost the connection to" in logs  # the outage was felt ...
    assert private_postgres.password not in logs + output
    assert "Traceback" not in logs  # ... and ridden out
