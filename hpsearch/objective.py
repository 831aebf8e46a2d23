"""The Optuna objective: a trial's hyperparameters -> a trained U-Net -> validation IoU.

It reports validation IoU at every evaluation (the dashboard's learning curve; what a pruner
reads), records per-class IoU, the training time (`train_seconds`, pruned trials too) and the
worker in user attributes, stores the model as an Optuna artifact, and returns the validation IoU
after the last step. A model that cannot be stored leaves its reason in the `model_error`
attribute; the trial still completes.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from hpsearch.config import StudyConfig
from hpsearch.liveness import INTERRUPTED, owner_record
from hpsearch.vocabulary import (
    BEST_ATTR,
    BEST_STEP_ATTR,
    CHECKPOINT_ATTR,
    COLLAPSED_ATTR,
    FAIL_REASON_ATTR,
    MODEL_ARTIFACT_ATTR,
    MODEL_ERROR_ATTR,
    OWNER_ATTR,
    PER_CLASS_ATTR,
    RESUMED_FROM_ATTR,
    RETRY_OF_ATTR,
    TRAIN_SECONDS_ATTR,
    TRAIN_SEED_ATTR,
    WORKER_ATTR,
    WORKER_PID_ATTR,
)

class SurplusTrial(Exception):
    """Raised when the study already has enough COMPLETE or RUNNING trials for its target."""


def worker_name(index: int | str) -> str:
    """'host/w0' style name of this worker process."""
    return f"{socket.gethostname()}/w{index}"


def suggest(trial: optuna.Trial, config: StudyConfig) -> dict[str, float | int | str | bool]:
    """Ask the trial for each searched dimension: Table 1 names, then the training choices (loss, block, augment)."""
    values: dict[str, float | int | str | bool] = {}
    for name, distribution in config.distributions().items():
        if isinstance(distribution, IntDistribution):
            values[name] = trial.suggest_int(name, distribution.low, distribution.high, step=distribution.step, log=distribution.log)
        elif isinstance(distribution, FloatDistribution):
            values[name] = trial.suggest_float(name, distribution.low, distribution.high, step=distribution.step, log=distribution.log)
        elif isinstance(distribution, CategoricalDistribution):
            values[name] = trial.suggest_categorical(name, distribution.choices)
        else:
            raise TypeError(f"search dimension {name!r} has a distribution hpsearch cannot suggest: {distribution!r}.")
    return values


class Objective:
    """Callable objective for `study.optimize`.

    Args:
        config: the study definition.
        data: training and validation cases (model.data.TrainData), loaded once per worker.
        worker: this worker's name, recorded on each trial.
        artifact_store: where trial models go (an Optuna artifact store), or None to keep none.
        target: COMPLETE trials the search aims for; a trial started beyond it is refused.
        on_progress: called as on_progress(trial_number, step, iou or None) for live display.
        on_step: called as on_step(trial_number, step, loss) after every training step.
        on_eval: called as on_eval(trial_number, step, iou) after every evaluation, before the
            trial reports it. What either raises ends the trial: optuna.TrialPruned prunes it,
            anything else fails it.
    """

    def __init__(
        self,
        config: StudyConfig,
        data,
        *,
        worker: str,
        artifact_store=None,
        target: int | None = None,
        on_progress: Callable[[int, int, float | None], None] | None = None,
        on_step: Callable[[int, int, float], None] | None = None,
        on_eval: Callable[[int, int, float], None] | None = None,
    ) -> None:
        self.config = config
        self.data = data
        self.worker = worker
        self.artifact_store = artifact_store
        self.target = target
        self.on_progress = on_progress
        self.on_step = on_step
        self.on_eval = on_eval
        self._checkpoints: dict[int, str] = {}  # trial number -> artifact id of the checkpoint stored last
        self._networks = None  # the worker's model.NetworkCache: one traced training step per network shape

    def __call__(self, trial: optuna.Trial) -> float:
        trial.set_user_attr(WORKER_ATTR, self.worker)
        trial.set_user_attr(WORKER_PID_ATTR, os.getpid())
        trial.set_user_attr(OWNER_ATTR, owner_record())
        try:
            self._refuse_surplus(trial)
            return self._run(trial)
        except KeyboardInterrupt:
            trial.set_user_attr(FAIL_REASON_ATTR, INTERRUPTED)
            raise
        except optuna.TrialPruned:
            raise
        except Exception as error:
            trial.set_user_attr(FAIL_REASON_ATTR, f"{type(error).__name__}: {error}"[:500])
            raise

    def _refuse_surplus(self, trial: optuna.Trial) -> None:
        """Two workers can start a trial at the same moment; the later one gives way."""
        if self.target is None:
            return
        trials = trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING))
        ahead = [t for t in trials if t.state == TrialState.COMPLETE or t.number < trial.number]
        if len(ahead) >= self.target:
            raise SurplusTrial(f"the study already has {len(ahead)} complete or running trials for its target of {self.target}")

    def _run(self, trial: optuna.Trial) -> float:
        from model import NetworkCache, train  # TensorFlow loads here, in the worker, not in the launcher

        if self._networks is None:
            self._networks = NetworkCache()

        suggested = suggest(trial, self.config)
        params = self.config.hyperparameters(suggested)
        config = self.config.train_config(trial.number, suggested)  # with the trial's loss, block, augment
        if self.on_progress:
            self.on_progress(trial.number, 0, None)

        def on_eval(step: int, iou: float) -> None:
            if self.on_eval:
                self.on_eval(trial.number, step, iou)
            trial.report(iou, step)
            if self.on_progress:
                self.on_progress(trial.number, step, iou)
            # After the last step the trial has spent all its compute: it completes, never prunes.
            if step < config.steps and trial.should_prune():
                raise optuna.TrialPruned(f"validation IoU {iou:.4f} at step {step}")

        def on_step(step: int, loss: float) -> None:
            if self.on_step:
                self.on_step(trial.number, step, loss)
            if self.on_progress and step % 10 == 0:
                self.on_progress(trial.number, step, None)

        resume, config = self._resume(trial, config)
        store = self.artifact_store is not None and config.checkpoint_every
        on_checkpoint = functools.partial(self._store_checkpoint, trial) if store else None

        # Before training, so that a trial that fails still says how to repeat it.
        trial.set_user_attr(TRAIN_SEED_ATTR, config.seed)
        started = time.perf_counter()
        try:
            result = train(params, self.data, config, on_eval=on_eval, on_step=on_step,
                           on_checkpoint=on_checkpoint, resume=resume, networks=self._networks)
        except optuna.TrialPruned:
            self._drop_checkpoint(trial, finished=True)  # a pruned trial is never re-run
            # A pruned trial's training was spent on the search too.
            trial.set_user_attr(TRAIN_SECONDS_ATTR, round(time.perf_counter() - started, 4))
            raise
        trial.set_user_attr(TRAIN_SECONDS_ATTR, round(time.perf_counter() - started, 4))
        self._drop_checkpoint(trial, finished=True)  # trained to the end: nothing left to resume
        trial.set_user_attr(PER_CLASS_ATTR, dict(zip(self.data.class_names[1:], result.final.per_class[1:])))
        if result.collapsed:  # foreground classes at IoU 0 in the final evaluation: swallowed by another
            trial.set_user_attr(COLLAPSED_ATTR, [self.data.class_names[c] for c in result.collapsed])
        trial.set_user_attr(BEST_ATTR, result.best.iou)
        trial.set_user_attr(BEST_STEP_ATTR, result.best.step)
        if self.artifact_store is not None:
            try:
                self._store_model(trial, result, params, config)
            except Exception as error:
                # The IoU is what the search needs, and the final model is trained from the exported
                # settings: a full disk or a lost artifact folder must not throw away a trained trial.
                reason = f"{type(error).__name__}: {error}"[:500]
                trial.set_user_attr(MODEL_ERROR_ATTR, reason)
                print(f"hpsearch worker {self.worker}: trial {trial.number}'s model was not stored ({reason}); "
                      "the trial keeps its IoU.", file=sys.stderr, flush=True)
        if not math.isfinite(result.final.iou):
            raise ValueError(f"validation IoU is {result.final.iou}")
        return result.final.iou

    def _resume(self, trial: optuna.Trial, config):
        """(checkpoint or None, training config) for `trial`: a re-run of a trial that stored a checkpoint
        goes on from it, with that trial's seed; its learning curve so far is reported to this trial."""
        parent = trial.user_attrs.get(RETRY_OF_ATTR)
        if parent is None or self.artifact_store is None:
            return None, config
        stored = trial.study.trials[parent].user_attrs.get(CHECKPOINT_ATTR)
        if not stored:
            return None, config
        from model import Checkpoint

        with tempfile.TemporaryDirectory(prefix="hpsearch-resume-") as folder:
            path = Path(folder) / "checkpoint.npz"
            try:
                optuna.artifacts.download_artifact(
                    artifact_store=self.artifact_store, file_path=str(path), artifact_id=stored["artifact"],
                )
                checkpoint = Checkpoint.load(path)
            except Exception as error:  # a lost or unreadable checkpoint costs compute, not the trial
                print(f"hpsearch worker {self.worker}: trial {trial.number} starts from step 0: the checkpoint of "
                      f"trial {parent} could not be read ({type(error).__name__}: {error}).", file=sys.stderr, flush=True)
                return None, config
        # This trial holds the checkpoint too until it stores its own: a retry of a retry resumes from it.
        trial.set_user_attr(CHECKPOINT_ATTR, stored)
        trial.set_user_attr(RESUMED_FROM_ATTR, {"trial": parent, "step": checkpoint.step})
        for evaluation in checkpoint.state["history"]:
            trial.report(evaluation["iou"], evaluation["step"])
        seed = trial.study.trials[parent].user_attrs.get(TRAIN_SEED_ATTR, config.seed)
        return checkpoint, dataclasses.replace(config, seed=seed)

    def _store_checkpoint(self, trial: optuna.Trial, checkpoint) -> None:
        """Upload `checkpoint` as an artifact of `trial` and name it in the trial's checkpoint attribute."""
        with tempfile.TemporaryDirectory(prefix="hpsearch-checkpoint-") as folder:
            path = checkpoint.save(Path(folder) / f"trial-{trial.number}-step-{checkpoint.step}.npz")
            artifact_id = optuna.artifacts.upload_artifact(
                artifact_store=self.artifact_store, file_path=str(path), study_or_trial=trial,
                mimetype="application/octet-stream",
            )
        trial.set_user_attr(CHECKPOINT_ATTR, {"artifact": artifact_id, "step": checkpoint.step})
        self._drop_checkpoint(trial)
        self._checkpoints[trial.number] = artifact_id

    def _drop_checkpoint(self, trial: optuna.Trial, *, finished: bool = False) -> None:
        """Remove the checkpoint this worker stored last for `trial`: superseded, or (`finished`) no longer
        needed, in which case the trial's checkpoint attribute is cleared too."""
        artifact_id = self._checkpoints.pop(trial.number, None)
        if artifact_id is None:
            return
        if finished:
            trial.set_user_attr(CHECKPOINT_ATTR, None)
        try:
            self.artifact_store.remove(artifact_id)
        except Exception:  # noqa: BLE001 - a checkpoint left behind costs disk space, nothing else
            pass

    def _store_model(self, trial: optuna.Trial, result, params, config) -> None:
        """Save the trial's model (best validation weights) as an artifact `hpsearch train` could have written."""
        from model import save_run

        with tempfile.TemporaryDirectory(prefix="hpsearch-trial-") as folder:
            run = save_run(
                Path(folder) / "run", result, params, config,
                class_names=self.data.class_names,
                channel_names=self.data.channel_names,
                extra={"study": self.config.name, "trial": trial.number},
            )
            archive = Path(folder) / f"trial-{trial.number}-model.zip"
            _zip_folder(run, archive)
            artifact_id = optuna.artifacts.upload_artifact(
                artifact_store=self.artifact_store, file_path=str(archive), study_or_trial=trial,
                mimetype="application/zip",
            )
        trial.set_user_attr(MODEL_ARTIFACT_ATTR, artifact_id)


def _zip_folder(folder: Path, archive: Path) -> None:
    import zipfile

    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_STORED) as zipped:
        for path in sorted(folder.iterdir()):
            zipped.write(path, arcname=path.name)

