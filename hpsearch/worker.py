"""One worker process: joins a study and runs trials until it holds its target of COMPLETE trials.

The launcher starts one per GPU (or per CPU share); `hpsearch worker` starts one by hand on any
machine that reaches the study's storage. Before a trial starts, the worker checks the count of
COMPLETE and RUNNING trials so a search does not overshoot its target; a failed trial (NaN loss,
an exception, a dead worker elsewhere) is recorded and the search goes on.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Callable

import optuna
from optuna.trial import TrialState

from hpsearch.config import StudyConfig
from hpsearch.errors import UsageError
from hpsearch.objective import Objective, worker_name
from hpsearch.liveness import fail_orphaned_trials, requeue_interrupted
from hpsearch.storage import fail_stale_trials
from hpsearch.vocabulary import CONFIG_ATTR, FAIL_REASON_ATTR, counts

# A worker whose trials keep failing stops rather than burn through the study.
MAX_CONSECUTIVE_FAILURES = 5
WAIT_SECONDS = 2.0


class StatusFile:
    """Writes this worker's state as JSON for the launcher's live display (atomically, at most 2×/s)."""

    def __init__(self, path: str | os.PathLike | None, worker: str) -> None:
        self.path = Path(path) if path else None
        self.state = {"worker": worker, "pid": os.getpid(), "state": "starting", "trial": None, "step": 0, "iou": None}
        self._written = 0.0

    def update(self, force: bool = False, **changes) -> None:
        self.state.update(changes, time=time.time())
        if self.path is None or (not force and time.monotonic() - self._written < 0.5):
            return
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.state), encoding="utf-8")
        os.replace(tmp, self.path)
        self._written = time.monotonic()


def stored_config(study: optuna.Study, *, check_data: bool = True) -> StudyConfig:
    """The study definition the launcher stored in the study (for workers joining by name)."""
    stored = study.user_attrs.get(CONFIG_ATTR)
    if stored is None:
        raise UsageError(
            f"study {study.study_name!r} holds no hpsearch definition; start it with 'hpsearch launch' "
            "or pass --study FILE."
        )
    return StudyConfig.from_dict(stored, check_data=check_data)


class _QuietSurplus(logging.Filter):
    """Drops Optuna's failed-trial warning (with its traceback) for a trial that only gave way to others."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "SurplusTrial" not in record.getMessage()


def _interrupt(signum, frame):
    # SIGTERM (the launcher, docker stop, Slurm preemption, Kubernetes eviction) ends the running
    # trial like Ctrl-C: Optuna marks it FAIL, and run_worker re-queues it.
    raise KeyboardInterrupt


def run_worker(
    config: StudyConfig,
    storage,
    *,
    index: int | str = 0,
    target: int,
    threads: int | None = None,
    artifact_store=None,
    status_path: str | os.PathLike | None = None,
    on_step: Callable[[int, int, float], None] | None = None,
    on_eval: Callable[[int, int, float], None] | None = None,
) -> int:
    """Run trials of `config`'s study in `storage` until it holds `target` COMPLETE trials; return an exit code.

    `on_step` and `on_eval` go to each trial's training as in `Objective` (called with the trial
    number, the step and the loss or validation IoU).
    """
    signal.signal(signal.SIGTERM, _interrupt)
    # Optuna logs each failed trial with its traceback; a surplus trial is routine, not a failure to read.
    logging.getLogger("optuna.study._optimize").addFilter(_QuietSurplus())
    name = worker_name(index)
    status = StatusFile(status_path, name)
    status.update(force=True, state="loading data")

    from hpsearch.devices import configure_tensorflow, given_gpu, require_gpu

    configure_tensorflow(threads)
    gpu = given_gpu()
    if gpu is not None:
        require_gpu(f"w{index}", gpu)  # a GPU the backend cannot see would mean training on the CPU unawares
    import model

    model.train  # Keras and the training core: loaded here, so the first trial starts at once
    data = load_data(config)

    sampler_config = config
    if config.sampler["name"] != "neighborhood" and config.seed is not None and str(index).isdigit():
        # Optuna's samplers draw from their seed alone: seeded alike, two workers would propose alike.
        sampler_config = dataclasses.replace(config, seed=config.seed + 7919 * int(index))
    study = optuna.load_study(
        study_name=config.name, storage=storage,
        sampler=sampler_config.make_sampler(), pruner=config.make_pruner(),
    )

    def on_progress(trial: int, step: int, iou: float | None) -> None:
        changes = {"state": "training", "trial": trial, "step": step, "steps": config.training["steps"]}
        if iou is not None or step == 0:
            changes["iou"] = iou  # a new trial starts without the last one's IoU
        status.update(force=iou is not None or step == 0, **changes)

    objective = Objective(
        config, data, worker=name, artifact_store=artifact_store, target=target,
        on_progress=on_progress, on_step=on_step, on_eval=on_eval,
    )
    failures = 0

    def after_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        nonlocal failures
        surplus = "SurplusTrial" in str(trial.user_attrs.get(FAIL_REASON_ATTR, ""))
        failures = failures + 1 if trial.state == TrialState.FAIL and not surplus else 0
        status.update(force=True, state="finished trial", last_trial=trial.number, last_state=trial.state.name, iou=trial.value)

    while True:
        # Optuna fails stale trials only when a trial starts; a waiting worker must do it too,
        # or a trial of a dead worker would keep it waiting forever.
        fail_stale_trials(study)
        fail_orphaned_trials(study)
        complete, running = counts(study)
        if complete >= target:
            status.update(force=True, state="done")
            return 0
        if complete + running >= target:
            status.update(state="waiting for other workers")
            time.sleep(WAIT_SECONDS)
            continue
        try:
            study.optimize(objective, n_trials=1, catch=(Exception,), callbacks=[after_trial], gc_after_trial=True)
        except KeyboardInterrupt:
            # Stopped from outside: the trial keeps its hyperparameters for the next worker.
            requeued = requeue_interrupted(study, {os.getpid()})
            status.update(force=True, state="interrupted")
            if requeued:
                print(f"hpsearch worker {name}: stopped; trial {requeued[0]} re-queued with the same hyperparameters.",
                      file=sys.stderr, flush=True)
            raise
        if failures >= MAX_CONSECUTIVE_FAILURES:
            status.update(force=True, state="stopped: trials keep failing")
            print(
                f"hpsearch worker {name}: {failures} trials failed in a row; stopping. "
                "See the trials' fail_reason in 'hpsearch status'.",
                file=sys.stderr,
            )
            return 1


def load_data(config: StudyConfig):
    """The study's training and validation cases (writing the synthetic dataset first if the study asks for it)."""
    from model import load_dataset, load_train_data, split_cases

    ensure_dataset(config)
    dataset = load_dataset(config.data_path)
    split = split_cases(dataset.case_names, **config.split)
    return load_train_data(dataset, split)


def ensure_dataset(config: StudyConfig, progress=None) -> bool:
    """Write the study's synthetic dataset if its folder does not exist yet; True if it wrote one."""
    if config.data_path.exists() or config.synth is None:
        return False
    from model import InputError, write_dataset

    try:
        write_dataset(config.data_path, **config.synth, progress=progress)
    except (InputError, OSError):
        # Another process wrote it meanwhile (the folder appeared, or our rename lost): use theirs.
        if not (config.data_path / "dataset.json").is_file():
            raise
        return False
    return True

