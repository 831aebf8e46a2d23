"""`hpsearch launch` with real worker processes, on the journal file and on a real PostgreSQL server."""

from __future__ import annotations

import os
import re
import shlex
import signal

import pytest
from optuna.trial import TrialState

from searchutil import (
    EARLY_STEP, INTERRUPTIBLE, finish, hpsearch, interrupt_and_resume, load, running_with_a_step, wait_for, write_tiny_study,
)

pytestmark = pytest.mark.slow


@pytest.fixture(params=["journal", pytest.param("postgres", marks=pytest.mark.postgres)])
def storage_url(request, tmp_path):
    if request.param == "journal":
        return str(tmp_path / "study.journal")
    return request.getfixturevalue("postgres_url")


def states(study) -> dict[str, int]:
    result: dict[str, int] = {}
    for trial in study.get_trials(deepcopy=False):
        result[trial.state.name] = result.get(trial.state.name, 0) + 1
    return result


def test_two_workers_reach_exactly_the_target(storage_url, tmp_path):
    study_file = write_tiny_study(tmp_path / "studies", trials=4)
    code, output = finish(hpsearch("launch", "--workers", "2", "--study", str(study_file), "--storage", storage_url))
    assert code == 0, output
    study = load(storage_url)
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    assert len(complete) == 4
    assert not study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    assert len({t.user_attrs["worker_pid"] for t in complete}) == 2  # two distinct worker processes
    assert all(t.intermediate_values for t in complete)  # the learning curve was reported
    assert all("per_class_iou" in t.user_attrs and "model_artifact" in t.user_attrs for t in complete)
    assert "best validation IoU" in output
    # The trials' models were stored next to the study file.
    assert any((tmp_path / "studies" / "artifacts").iterdir())
    # The next steps it prints run as printed (the export here; training would take minutes).
    lines = output.splitlines()
    hint = lines.index("next: write the best trial as Table 1, then train the final model with it:")
    export, train = (shlex.split(line) for line in lines[hint + 1:hint + 3])
    assert export[:2] == ["hpsearch", "export"] and train[:2] == ["hpsearch", "train"]
    code, exported = finish(hpsearch(*export[1:], cwd=tmp_path))
    assert code == 0, exported
    assert "channels in first conv layer" in (tmp_path / "best.yaml").read_text()
    assert (tmp_path / train[train.index("--data") + 1]).is_dir() and train[-2:] == ["--params", "best.yaml"]


def _another_running_trial_with_a_step(storage_url, first):
    """a RUNNING trial with a reported IoU and far from its end, other than `first` and not run by its (dead) worker"""
    trial = running_with_a_step(storage_url, by_step=EARLY_STEP)
    if trial is None or trial.number == first.number or trial.user_attrs["worker_pid"] == first.user_attrs["worker_pid"]:
        return None
    return trial


def test_a_killed_worker_is_restarted_and_its_trial_retried(storage_url, tmp_path):
    """Two workers are killed mid-trial, one after the other: both trials FAIL and are re-run."""
    study_file = write_tiny_study(tmp_path / "studies", trials=3, **INTERRUPTIBLE)
    launch = hpsearch("launch", "--workers", "2", "--study", str(study_file), "--storage", storage_url)
    victim = wait_for(lambda: running_with_a_step(storage_url, by_step=EARLY_STEP), timeout=180)
    os.kill(victim.user_attrs["worker_pid"], signal.SIGKILL)
    second = wait_for(lambda: _another_running_trial_with_a_step(storage_url, victim), timeout=180)
    os.kill(second.user_attrs["worker_pid"], signal.SIGKILL)
    code, output = finish(launch)
    assert code == 0, output
    study = load(storage_url)
    killed = study.trials[victim.number]
    assert killed.state == TrialState.FAIL
    assert "SIGKILL" in killed.user_attrs["fail_reason"]
    retries = [t for t in study.trials if t.user_attrs.get("retry_of") == victim.number]
    assert len(retries) == 1 and retries[0].params == killed.params
    assert len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))) == 3
    assert not study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    # The second kill, too: its trial failed with the reason and was re-run with the same hyperparameters.
    killed_again = study.trials[second.number]
    assert killed_again.state == TrialState.FAIL
    assert "SIGKILL" in killed_again.user_attrs["fail_reason"]
    retries = [t for t in study.trials if t.user_attrs.get("retry_of") == second.number]
    assert len(retries) == 1 and retries[0].params == killed_again.params


def test_ctrl_c_stops_workers_and_the_next_launch_resumes(storage_url, tmp_path):
    study_file = write_tiny_study(tmp_path / "studies", trials=3, **INTERRUPTIBLE)
    interrupt_and_resume(storage_url, study_file, signal.SIGINT, trials=3)


def _one_fake_gpu(tmp_path, monkeypatch) -> dict:
    """The environment of a launch on a machine where a fake nvidia-smi lists one GPU (and CUDA_VISIBLE_DEVICES is unset)."""
    from test_devices import fake_nvidia_smi, listing

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    folder = fake_nvidia_smi(tmp_path / "bin", listing(1))
    return {"PATH": f"{folder}{os.pathsep}{os.environ['PATH']}"}


@pytest.mark.backends
def test_two_workers_on_one_gpu_refuse_a_backend_without_gpus(tmp_path, monkeypatch):
    """Not refused for the GPU count: both workers get GPU 0; this machine's backend sees no GPU, so they stop."""
    from test_devices import backend_name, skip_where_a_gpu_is_real

    skip_where_a_gpu_is_real()
    env = _one_fake_gpu(tmp_path, monkeypatch)
    study_file = write_tiny_study(tmp_path / "studies", trials=1)
    code, output = finish(hpsearch("launch", "--workers", "2", "--study", str(study_file),
                                   "--storage", str(tmp_path / "study.journal"), env=env))
    assert code == 2, output
    assert "starting 2 worker(s) on GPU 0 (2 workers)" in output
    assert "Traceback" not in output
    errors = [line for line in output.splitlines() if line.startswith("hpsearch: error:")]
    assert len(errors) == 1, output
    sentence = (rf"hpsearch: error: worker w[01] was given GPU 0, but {backend_name()} sees no GPU \([^)]+\): .+, "
                r"or pass --cpu to train on the CPU on purpose \(log: \S+w[01]\.log\)\.")
    assert re.fullmatch(sentence, errors[0]), errors[0]
    if backend_name() == "TensorFlow":
        assert "pip install 'hpsearch[gpu]'" in errors[0]
    assert not load(str(tmp_path / "study.journal")).get_trials(deepcopy=False)  # no trial ran on the CPU


@pytest.mark.backends
def test_two_workers_on_one_gpu_train_on_the_cpu_with_cpu(tmp_path, monkeypatch):
    env = _one_fake_gpu(tmp_path, monkeypatch)
    study_file = write_tiny_study(tmp_path / "studies", trials=1, steps=2, eval_every=2, depth=1)
    code, output = finish(hpsearch("launch", "--workers", "2", "--cpu", "--study", str(study_file),
                                   "--storage", str(tmp_path / "study.journal"), env=env))
    assert code == 0, output
    assert re.search(r"starting 2 worker\(s\) on CPU, \d+ thread\(s\) each", output), output
    complete = load(str(tmp_path / "study.journal")).get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    assert len(complete) == 1
