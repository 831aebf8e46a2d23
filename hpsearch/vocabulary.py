"""The study's vocabulary: the attribute names hpsearch writes on studies and trials, and the two
questions every command asks of a study (its best trial; how many trials are complete or running).

Each name is defined here once; the dashboard shows the trial attributes as they are spelled here.
"""

from __future__ import annotations

from collections.abc import Iterable

import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

# Study user attributes, written by the launcher (or the first worker) when it creates the study.
CONFIG_ATTR = "hpsearch_config"  # the study definition the trials run with, as a dict
TARGET_ATTR = "target_trials"  # COMPLETE trials the search stops at
SLURM_JOBS_ATTR = "slurm_jobs"  # [{"job", "tasks", "submitted"}]: the Slurm job arrays launched for the study
# Study system attribute: the number of the trial NeighborhoodSampler gave the start point (claimed once).
START_CLAIM_ATTR = "NeighborhoodSampler:start_trial"

# Trial user attributes.
PARENT_ATTR = "parent_trial"  # NeighborhoodSampler: the trial number drawn around, or "start"; a retry keeps it
RETRY_OF_ATTR = "retry_of"  # the number of the failed trial this one re-runs
FAIL_REASON_ATTR = "fail_reason"  # one line: why the trial is FAIL
WORKER_ATTR = "worker"  # 'host/w0': who ran the trial
WORKER_PID_ATTR = "worker_pid"
OWNER_ATTR = "worker_owner"  # {"host", "pid", "started"}: tells a live worker from a dead one on a journal
TRAIN_SEED_ATTR = "train_seed"  # seeds the trial's initialisation, training blocks and dropout masks
PER_CLASS_ATTR = "per_class_iou"  # {class name: validation IoU} at the final evaluation
COLLAPSED_ATTR = "collapsed_classes"  # foreground class names at validation IoU 0 in the final evaluation
BEST_ATTR = "best_validation_iou"
BEST_STEP_ATTR = "best_step"
TRAIN_SECONDS_ATTR = "train_seconds"
MODEL_ARTIFACT_ATTR = "model_artifact"  # artifact id of the trial's model folder (a .tar)
MODEL_ERROR_ATTR = "model_error"  # why a complete trial has no stored model
CHECKPOINT_ATTR = "checkpoint"  # {"artifact", "step"}: the trial's latest training checkpoint (an artifact)
RESUMED_FROM_ATTR = "resumed_from"  # {"trial", "step"}: the checkpoint a re-run went on from


def best_trial(
    trials: Iterable[FrozenTrial], direction: StudyDirection = StudyDirection.MAXIMIZE
) -> FrozenTrial | None:
    """The COMPLETE trial with the best value, the lowest number among equals; None if there is none."""
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    if not complete:
        return None
    sign = -1.0 if direction == StudyDirection.MINIMIZE else 1.0
    return max(complete, key=lambda t: (sign * t.value, -t.number))


def study_best_trial(study: optuna.Study) -> FrozenTrial | None:
    """`best_trial` over the study's trials, in the study's direction."""
    return best_trial(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)), study.direction)


def counts(study: optuna.Study) -> tuple[int, int]:
    """(COMPLETE, RUNNING) trial counts."""
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING))
    complete = sum(t.state == TrialState.COMPLETE for t in trials)
    return complete, len(trials) - complete
