"""Whether a RUNNING trial still has a live worker, and what becomes of the trials that do not.

On a database, heartbeats answer (`hpsearch.storage.fail_stale_trials`). A journal file has
none, so each trial records its owner: host, pid and the process's start time. Any hpsearch
process on that host can then tell a live owner from a dead one (a pid that no longer runs, or
runs another program since) and fails the dead owner's trial, re-queued with the same
hyperparameters. Owners on other hosts cannot be checked from here; a journal file is for one
machine (use PostgreSQL for several).
"""

from __future__ import annotations

import os
import socket

import optuna
from optuna.trial import TrialState

from hpsearch.storage import mark_running_trials_failed, retry_trial
from hpsearch.vocabulary import FAIL_REASON_ATTR, OWNER_ATTR, RETRY_OF_ATTR, WORKER_ATTR, WORKER_PID_ATTR

INTERRUPTED = "interrupted"  # the fail_reason of a trial whose worker was stopped by a signal


def process_started_at(pid: int) -> float | None:
    """When process `pid` started, in seconds since the epoch (10 ms resolution); None if unknown or gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as file:
            # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
            fields = file.read().rsplit(")", 1)[1].split()
        with open("/proc/stat", encoding="ascii") as file:
            boot = next(float(line.split()[1]) for line in file if line.startswith("btime "))
    except (OSError, IndexError, StopIteration, ValueError):
        return None
    return round(boot + int(fields[19]) / os.sysconf("SC_CLK_TCK"), 2)  # field 22: starttime in clock ticks


def owner_record() -> dict:
    """This process as the owner of a trial: {"host", "pid", "started"} (JSON-safe)."""
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "started": process_started_at(pid)}


def owner_is_alive(owner: dict) -> bool | None:
    """True or False for an owner on this host; None where that cannot be told (another host, no /proc)."""
    if not isinstance(owner, dict) or owner.get("host") != socket.gethostname() or owner.get("started") is None:
        return None
    if not os.path.isdir("/proc/self"):
        return None
    started = process_started_at(int(owner.get("pid", -1)))
    return started is not None and abs(started - float(owner["started"])) < 0.05


def _has_heartbeats(storage) -> bool:
    interval = getattr(storage, "get_heartbeat_interval", None)
    return callable(interval) and interval() is not None


def fail_orphaned_trials(study: optuna.Study) -> list[int]:
    """FAIL the study's RUNNING trials whose owner process on this host is gone, and re-queue each once.

    A no-op on storages with heartbeats, where `fail_stale_trials` does the same. Returns the
    numbers of the trials this call failed.
    """
    storage = study._storage  # the study's own storage object, as Optuna's samplers and callbacks use it
    if _has_heartbeats(storage):
        return []
    dead = {}
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = trial.user_attrs.get(OWNER_ATTR)
        if owner_is_alive(owner) is False:
            dead[trial.number] = trial
    if not dead:
        return []
    failed = []
    for number, trial in dead.items():
        owner = trial.user_attrs[OWNER_ATTR]
        worker = trial.user_attrs.get(WORKER_ATTR, "its worker")
        reason = (f"{worker} (pid {owner['pid']} on {owner['host']}) is gone: it was killed, "
                  "or its machine restarted")
        failed += mark_running_trials_failed(storage, study.study_name, reason=reason, trial_numbers=[number])
    for number in failed:
        retry_trial(study, dead[number])
    return failed


def requeue_interrupted(study: optuna.Study, pids: set[int]) -> list[int]:
    """Re-queue, once each, the trials that workers with these pids ended as interrupted; their numbers."""
    trials = study.get_trials(deepcopy=False)
    requeued = {t.user_attrs.get(RETRY_OF_ATTR) for t in trials}
    numbers = []
    for trial in trials:
        if (
            trial.state == TrialState.FAIL
            and trial.user_attrs.get(FAIL_REASON_ATTR) == INTERRUPTED
            and trial.user_attrs.get(WORKER_PID_ATTR) in pids
            and trial.number not in requeued
        ):
            retry_trial(study, trial)
            numbers.append(trial.number)
    return numbers
