"""Trials whose worker is gone or hung, with real processes: the journal's owner check, the launcher's
watchdog, and a standalone worker stopped with SIGTERM. Nothing is left RUNNING and nothing is lost."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState

from hpsearch.liveness import fail_orphaned_trials, owner_is_alive, owner_record
from hpsearch.storage import open_storage
from hpsearch.vocabulary import FAIL_REASON_ATTR, OWNER_ATTR, RETRY_OF_ATTR, WORKER_ATTR
from searchutil import (
    EARLY_STEP, INTERRUPTIBLE, finish, hpsearch, load, pid_alive, running_with_a_step, trials_in, wait_for,
    write_tiny_study,
)


def dead_process_owner() -> dict:
    """The owner record of a real process that has exited since."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.2)"])
    owner = {**owner_record(), "pid": child.pid}
    from hpsearch.liveness import process_started_at

    owner["started"] = process_started_at(child.pid)
    child.wait()
    return owner


def test_owner_of_this_process_is_alive_and_of_an_exited_one_is_not():
    assert owner_is_alive(owner_record()) is True
    dead = dead_process_owner()
    assert dead["started"] is not None and owner_is_alive(dead) is False
    # A reused pid runs another program since: its start time differs.
    assert owner_is_alive({**owner_record(), "started": owner_record()["started"] - 100}) is False
    # Another machine's process cannot be checked from here.
    assert owner_is_alive({**owner_record(), "host": "another-host"}) is None
    assert owner_is_alive(None) is None


def test_an_orphaned_journal_trial_is_failed_and_requeued_once(tmp_path):
    storage = open_storage(str(tmp_path / "s.journal"))
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    space = {"x": FloatDistribution(0.1, 1.0)}
    orphan = study.ask(space)
    orphan.set_user_attr(OWNER_ATTR, dead_process_owner())
    orphan.set_user_attr(WORKER_ATTR, "vm/w0")
    alive = study.ask(space)
    alive.set_user_attr(OWNER_ATTR, owner_record())
    elsewhere = study.ask(space)
    elsewhere.set_user_attr(OWNER_ATTR, {**owner_record(), "host": "another-host"})

    assert fail_orphaned_trials(study) == [orphan.number]
    assert fail_orphaned_trials(study) == []  # once: the retry is not enqueued twice
    trials = study.get_trials(deepcopy=False)
    assert trials[orphan.number].state == TrialState.FAIL
    assert "vm/w0 (pid" in trials[orphan.number].user_attrs[FAIL_REASON_ATTR]
    assert "is gone" in trials[orphan.number].user_attrs[FAIL_REASON_ATTR]
    assert trials[alive.number].state == trials[elsewhere.number].state == TrialState.RUNNING
    [retry] = [t for t in trials if t.state == TrialState.WAITING]
    assert retry.user_attrs[RETRY_OF_ATTR] == orphan.number
    assert retry.system_attrs["fixed_params"] == orphan.params


@pytest.mark.slow
def test_launcher_and_worker_killed_together_on_the_journal_then_launch_reaches_the_target(tmp_path):
    """Power loss: SIGKILL to the launcher and its worker at once leaves a RUNNING trial in the journal."""
    journal = str(tmp_path / "study.journal")
    study_file = write_tiny_study(tmp_path / "studies", trials=2, **INTERRUPTIBLE)
    launch = hpsearch("launch", "--workers", "1", "--study", str(study_file), "--storage", journal)
    running = wait_for(lambda: running_with_a_step(journal, by_step=EARLY_STEP), timeout=240)
    worker = running.user_attrs["worker_pid"]
    launch.kill()
    os.kill(worker, signal.SIGKILL)
    launch.communicate(timeout=60)
    wait_for(lambda: not pid_alive(worker), timeout=30)
    assert [t.number for t in trials_in(journal, TrialState.RUNNING)] == [running.number]

    code, output = finish(hpsearch("launch", "--workers", "1", "--study", str(study_file), "--storage", journal), timeout=600)
    assert code == 0, output
    study = load(journal)
    assert len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))) == 2
    assert not study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    dead = study.trials[running.number]
    assert dead.state == TrialState.FAIL and "is gone" in dead.user_attrs[FAIL_REASON_ATTR]
    [retry] = [t for t in study.trials if t.user_attrs.get(RETRY_OF_ATTR) == running.number]
    assert retry.params == running.params and retry.state == TrialState.COMPLETE


@pytest.mark.slow
def test_a_stopped_worker_is_killed_by_the_watchdog_and_its_trial_rerun(tmp_path):
    """SIGSTOP stands for a deadlocked driver or a stalled NFS mount: the worker is alive but silent."""
    journal = str(tmp_path / "study.journal")
    study_file = write_tiny_study(tmp_path / "studies", trials=2, **INTERRUPTIBLE)
    launch = hpsearch("launch", "--workers", "1", "--study", str(study_file), "--storage", journal,
                      env={"HPSEARCH_STALL_TIMEOUT": "15"})
    running = wait_for(lambda: running_with_a_step(journal, by_step=EARLY_STEP), timeout=240)
    worker = running.user_attrs["worker_pid"]
    os.kill(worker, signal.SIGSTOP)
    try:
        code, output = finish(launch, timeout=900)
    finally:
        if pid_alive(worker):
            os.kill(worker, signal.SIGKILL)
    assert code == 0, output
    assert "made no progress" in output
    study = load(journal)
    assert len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))) == 2
    stopped = study.trials[running.number]
    assert stopped.state == TrialState.FAIL and "SIGKILL" in stopped.user_attrs[FAIL_REASON_ATTR]
    [retry] = [t for t in study.trials if t.user_attrs.get(RETRY_OF_ATTR) == running.number]
    assert retry.params == running.params and retry.state == TrialState.COMPLETE


def _sigterm_requeues(storage_url: str, study_file, env: dict | None = None) -> None:
    worker = hpsearch("worker", "--study", str(study_file), "--storage", storage_url, env=env)
    running = wait_for(lambda: running_with_a_step(storage_url, by_step=EARLY_STEP), timeout=240)
    started = time.monotonic()
    worker.send_signal(signal.SIGTERM)
    code, output = finish(worker, timeout=120)
    stopping = time.monotonic() - started
    assert code == 130, output
    assert f"trial {running.number} re-queued" in output, output
    study = load(storage_url)
    assert not study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    assert study.trials[running.number].user_attrs[FAIL_REASON_ATTR] == "interrupted"
    [retry] = [t for t in study.trials if t.user_attrs.get(RETRY_OF_ATTR) == running.number]
    assert retry.state == TrialState.WAITING and retry.system_attrs["fixed_params"] == running.params
    # "Within seconds": one training step and the bookkeeping, not the rest of the trial.
    assert stopping < 60, f"the worker took {stopping:.0f} s to stop"


@pytest.mark.slow
def test_sigterm_to_a_standalone_worker_requeues_its_trial_on_the_journal(tmp_path):
    study_file = write_tiny_study(tmp_path / "studies", trials=2, **INTERRUPTIBLE)
    _sigterm_requeues(str(tmp_path / "study.journal"), study_file)


@pytest.mark.slow
@pytest.mark.postgres
def test_sigterm_to_a_standalone_worker_requeues_its_trial_on_postgresql(tmp_path, postgres_url):
    study_file = write_tiny_study(tmp_path / "studies", trials=2, **INTERRUPTIBLE)
    _sigterm_requeues(postgres_url, study_file, env={"HPSEARCH_HEARTBEAT_INTERVAL": "1"})


def test_the_stall_timeout_comes_from_the_environment_else_the_study_file(tmp_path, monkeypatch):
    import json

    from hpsearch.config import StudyConfig, load_study
    from hpsearch.errors import UsageError
    from hpsearch.launcher import DEFAULT_STALL_SECONDS, stall_timeout

    monkeypatch.delenv("HPSEARCH_STALL_TIMEOUT", raising=False)
    config = load_study(write_tiny_study(tmp_path / "a", stall_timeout=600))
    assert config.stall_timeout == 600.0
    assert StudyConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert stall_timeout(config.stall_timeout) == 600.0
    assert stall_timeout(None) == DEFAULT_STALL_SECONDS
    monkeypatch.setenv("HPSEARCH_STALL_TIMEOUT", "45")
    assert stall_timeout(config.stall_timeout) == 45.0  # the environment wins, as for the other settings
    with pytest.raises(UsageError, match="stall_timeout is 2.0 s; give at least 10 seconds"):
        load_study(write_tiny_study(tmp_path / "b", stall_timeout=2))
