"""The objective in-process: reports, user attributes, stored model, NaN and surplus trials."""

from __future__ import annotations

import dataclasses
import time
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


@pytest.mark.backends
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
    # The only timing users see: the training, inside the trial's wall time.
    assert [name for name in attrs if name.endswith("_seconds")] == ["train_seconds"]
    assert attrs["train_seconds"] <= (trial.datetime_complete - trial.datetime_start).total_seconds() + 1e-3  # rounding


def test_training_callbacks_see_each_step_and_evaluation_of_each_trial(tiny):
    config, data = tiny
    steps, evaluations = [], []
    objective = Objective(
        config, data, worker="w",
        on_step=lambda trial, step, loss: steps.append((trial, step, time.time())),
        on_eval=lambda trial, step, iou: evaluations.append((trial, step, iou, time.time())),
    )
    study = optuna.create_study(direction="maximize", sampler=config.make_sampler())
    study.optimize(objective, n_trials=2)
    for trial in study.trials:
        assert trial.state == TrialState.COMPLETE
        ends = [t for number, _, t in steps if number == trial.number]
        assert [step for number, step, _ in steps if number == trial.number] == [1, 2, 3, 4, 5, 6]
        assert {step: iou for number, step, iou, _ in evaluations if number == trial.number} == trial.intermediate_values
        # A benchmark reads the callbacks' clock against Optuna's: the steps lie inside the trial and its training.
        assert trial.datetime_start.timestamp() <= ends[0] <= ends[-1] <= trial.datetime_complete.timestamp()
        assert ends[-1] - ends[0] <= trial.user_attrs["train_seconds"] + 1e-3  # rounding
    assert [number for number, *_ in evaluations] == [0, 0, 1, 1]


def test_a_training_callback_that_prunes_stops_the_trial_before_it_reports(tiny):
    config, data = tiny

    def prune(trial, step, iou):
        raise optuna.TrialPruned()

    study = optuna.create_study(direction="maximize", sampler=config.make_sampler())
    study.optimize(Objective(config, data, worker="w", on_eval=prune), n_trials=1)
    assert study.trials[0].state == TrialState.PRUNED
    assert study.trials[0].intermediate_values == {}
    assert study.trials[0].user_attrs["train_seconds"] > 0


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
    # A pruned trial still records its training time: it was spent on the search.
    assert study.trials[0].user_attrs["train_seconds"] > 0

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
