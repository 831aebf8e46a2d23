"""Trials that resume: a training run goes on from a checkpoint exactly as if it had not stopped, and a search
trial re-run after its worker died starts at its predecessor's last checkpoint, not at step 0."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest
from optuna.trial import TrialState

import model
from model.checkpoint import Checkpoint
from model.config import TrainConfig
from model.params import Hyperparameters
from model.training import train
from searchutil import EARLY_STEP, INTERRUPTIBLE, finish, hpsearch, load, trials_in, wait_for, write_tiny_study


def test_a_run_resumed_from_a_checkpoint_ends_as_the_uninterrupted_run(synth_dataset, tmp_path):
    dataset = model.load_dataset(synth_dataset)
    data = model.load_train_data(dataset, model.split_cases(dataset.case_names, seed=0, val_fraction=0.25,
                                                            test_fraction=0.0))
    params = Hyperparameters(channels=2, learning_rate=3e-3, keep_prob=0.8)  # dropout on: its random state counts
    config = TrainConfig(steps=12, eval_every=3, patch_shape=(16, 16, 8), depth=2, checkpoint_every=1, seed=0)
    checkpoints = []
    whole = train(params, data, config, on_checkpoint=checkpoints.append)
    assert [c.step for c in checkpoints] == [3, 6, 9]  # after each evaluation but the last
    stored = Checkpoint.load(checkpoints[1].save(tmp_path / "at6.npz"))  # through the file, as a search does
    resumed = train(params, data, config, resume=stored)
    assert [e.step for e in resumed.history] == [3, 6, 9, 12]
    assert [e.iou for e in resumed.history] == [e.iou for e in whole.history]
    for a, b in zip(whole.model.get_weights(), resumed.model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_a_checkpoint_of_another_network_is_refused(synth_dataset, tmp_path):
    dataset = model.load_dataset(synth_dataset)
    data = model.load_train_data(dataset, model.split_cases(dataset.case_names, seed=0, val_fraction=0.25,
                                                            test_fraction=0.0))
    config = TrainConfig(steps=6, eval_every=3, patch_shape=(16, 16, 8), depth=2, checkpoint_every=1, seed=0)
    checkpoints = []
    train(Hyperparameters(channels=2), data, config, on_checkpoint=checkpoints.append)
    with pytest.raises(model.InputError, match="different network"):
        train(Hyperparameters(channels=3), data, config, resume=checkpoints[0])


@pytest.mark.slow
def test_a_trial_rerun_after_its_worker_died_starts_at_the_checkpoint(tmp_path):
    journal = str(tmp_path / "study.journal")
    study_file = write_tiny_study(tmp_path / "studies", trials=1, **INTERRUPTIBLE)  # a checkpoint every 20 steps
    launch = hpsearch("launch", "--workers", "1", "--study", str(study_file), "--storage", journal)

    def checkpointed():
        """a running trial with a stored checkpoint, not yet past the early step"""
        running = [t for t in trials_in(journal, TrialState.RUNNING)
                   if (t.user_attrs.get("checkpoint") or {}).get("step") and max(t.intermediate_values) <= EARLY_STEP]
        return running[0] if running else None

    victim = wait_for(checkpointed, timeout=300, interval=0.2)
    os.kill(victim.user_attrs["worker_pid"], signal.SIGKILL)
    code, output = finish(launch, timeout=600)
    assert code == 0, output
    study = load(journal)
    dead = study.trials[victim.number]
    [retry] = [t for t in study.trials if t.user_attrs.get("retry_of") == victim.number]
    step = dead.user_attrs["checkpoint"]["step"]
    assert step >= victim.user_attrs["checkpoint"]["step"] > 0
    assert retry.state == TrialState.COMPLETE
    assert retry.user_attrs["resumed_from"] == {"trial": victim.number, "step": step}
    # Its learning curve goes on from the checkpoint: the evaluations before it are the dead run's.
    before = {s: v for s, v in dead.intermediate_values.items() if s <= step}
    assert {s: v for s, v in retry.intermediate_values.items() if s <= step} == before
    assert max(retry.intermediate_values) == 300
    assert retry.user_attrs["checkpoint"] is None  # finished: its checkpoint was removed
