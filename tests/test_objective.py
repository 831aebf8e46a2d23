"""The objective in-process: reports, user attributes, stored model, NaN and surplus trials."""

from __future__ import annotations

import dataclasses
import zipfile

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

from hpsearch.config import load_study
from hpsearch.objective import Objective
from hpsearch.worker import load_data

from searchutil import write_tiny_study


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    config = load_study(write_tiny_study(tmp_path_factory.mktemp("studies"), trials=2))
    return config, load_data(config)


def test_a_trial_reports_its_curve_attributes_and_model(tiny, tmp_path):
    config, data = tiny
    store = optuna.artifacts.FileSystemArtifactStore(str(tmp_path))
    study = optuna.create_study(direction="maximize", sampler=config.make_sampler())
    study.optimize(Objective(config, data, worker="host/w0", artifact_store=store), n_trials=1)
    trial = study.trials[0]
    assert trial.state == TrialState.COMPLETE
    assert sorted(trial.intermediate_values) == [3, 6]
    assert trial.value == trial.intermediate_values[6]  # the IoU after the last step
    assert trial.params == {"learning rate": 3.0e-3, "channels in first conv layer": 2}  # the start point
    attrs = trial.user_attrs
    assert attrs["worker"] == "host/w0" and attrs["train_seconds"] > 0
    assert set(attrs["per_class_iou"]) == {"left ventricle"}
    path = tmp_path / attrs["model_artifact"]
    with zipfile.ZipFile(path) as archive:
        assert sorted(archive.namelist()) == ["model.keras", "params.yaml", "run.json"]

    # Where the trial's time went (benchmarks/service.py reads these).
    seconds = {name: value for name, value in trial.user_attrs.items() if name.endswith("_seconds")}
    assert set(seconds) == {
        "ask_seconds", "prepare_seconds", "train_seconds", "setup_seconds", "first_step_seconds",
        "step_seconds", "eval_seconds", "save_seconds",
    }
    assert all(value >= 0 for value in seconds.values()), seconds
    assert all(seconds[name] > 0 for name in ("train_seconds", "setup_seconds", "step_seconds", "eval_seconds", "save_seconds"))
    rounding = 1e-3  # each attribute is rounded to 0.1 ms
    assert seconds["first_step_seconds"] <= seconds["setup_seconds"]
    assert seconds["setup_seconds"] + seconds["step_seconds"] + seconds["eval_seconds"] <= seconds["train_seconds"] + rounding
    wall = (trial.datetime_complete - trial.datetime_start).total_seconds()
    parts = seconds["ask_seconds"] + seconds["prepare_seconds"] + seconds["train_seconds"] + seconds["save_seconds"]
    assert parts <= wall + rounding


def test_a_model_that_cannot_be_stored_leaves_the_trial_complete_with_the_reason(tiny, tmp_path, capsys):
    config, data = tiny
    # An artifact folder that is gone (an unmounted share, say): writing the model fails.
    store = optuna.artifacts.FileSystemArtifactStore(str(tmp_path / "unmounted"))
    study = optuna.create_study(direction="maximize", sampler=config.make_sampler())
    study.optimize(Objective(config, data, worker="host/w0", artifact_store=store), n_trials=1)
    trial = study.trials[0]
    assert trial.state == TrialState.COMPLETE
    assert trial.value == trial.intermediate_values[6]
    assert "model_artifact" not in trial.user_attrs
    assert trial.user_attrs["model_error"].startswith("FileNotFoundError: ")
    assert "host/w0: trial 0's model was not stored (FileNotFoundError" in capsys.readouterr().err
    assert not (tmp_path / "unmounted").exists()


def test_each_trial_records_its_training_seed(tiny):
    config, data = tiny  # seed 0
    for trial_seeds, expected in (("per_trial", [0, 1]), ("shared", [0, 0])):
        study = optuna.create_study(direction="maximize", sampler=config.make_sampler())
        seeded = dataclasses.replace(config, trial_seeds=trial_seeds)
        study.optimize(Objective(seeded, data, worker="w"), n_trials=2)
        assert [t.user_attrs["train_seed"] for t in study.trials] == expected, trial_seeds


def test_a_pruner_stops_a_trial_between_evaluations_but_never_after_the_last(tiny):
    config, data = tiny
    always = optuna.pruners.ThresholdPruner(lower=2.0)  # an IoU is never above 2: prune at every chance
    study = optuna.create_study(direction="maximize", sampler=config.make_sampler(), pruner=always)
    study.optimize(Objective(config, data, worker="w"), n_trials=1)
    assert study.trials[0].state == TrialState.PRUNED
    assert sorted(study.trials[0].intermediate_values) == [3]  # stopped at the first of 3 and 6
    # A pruned trial still says where its time went, so its training is not counted as overhead.
    pruned = study.trials[0].user_attrs
    for name in ("train_seconds", "setup_seconds", "first_step_seconds", "step_seconds", "eval_seconds"):
        assert pruned[name] > 0, (name, pruned)
    assert pruned["setup_seconds"] + pruned["step_seconds"] + pruned["eval_seconds"] <= pruned["train_seconds"] + 1e-3

    one_evaluation = dataclasses.replace(config, training={**config.training, "eval_every": 6})
    study.optimize(Objective(one_evaluation, data, worker="w"), n_trials=1)
    assert study.trials[1].state == TrialState.COMPLETE  # its only evaluation is after the last step


def test_a_nan_loss_fails_the_trial_with_its_reason_and_the_study_goes_on(tiny):
    config, data = tiny
    poisoned = dataclasses.replace(data.train[0], image=np.full_like(data.train[0].image, np.nan))
    broken = dataclasses.replace(data, train=[poisoned])
    study = optuna.create_study(direction="maximize", sampler=config.make_sampler())
    study.optimize(Objective(config, broken, worker="w"), n_trials=2, catch=(Exception,))
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.FAIL]
    assert "loss became nan" in study.trials[0].user_attrs["fail_reason"]


def test_a_trial_beyond_the_target_gives_way(tiny):
    config, data = tiny
    study = optuna.create_study(direction="maximize")
    study.add_trial(optuna.trial.create_trial(value=0.5))
    study.optimize(Objective(config, data, worker="w", target=1), n_trials=1, catch=(Exception,))
    surplus = study.trials[1]
    assert surplus.state == TrialState.FAIL
    assert surplus.user_attrs["fail_reason"].startswith("SurplusTrial")
