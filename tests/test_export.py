"""`hpsearch export`: the best trial as Table 1, its numbers, Markdown, the round trip into `hpsearch train`, errors.

`make_study` (also used by test_report and test_dashboard) writes a study the way `hpsearch launch`
does (definition and target stored in it) and adds finished trials without training anything.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml
from optuna.trial import TrialState, create_trial

from hpsearch.cli import main
from hpsearch.config import load_study
from hpsearch.launcher import prepare_study
from hpsearch.storage import open_storage
from model.params import METADATA_KEYS, TABLE1_NAMES, load_params
from searchutil import write_tiny_study

TINY_TRAIN = ["--steps", "4", "--eval-every", "4", "--patch", "16x16x8", "--depth", "2", "--seed", "0"]
# The searched space of the export tests: l2 and learning rate as well as the tiny study's channels.
SPACE = {
    "l2 regularization weight": {"low": 1.0e-7, "high": 1.0e-1, "log": True},
    "learning rate": {"low": 1.0e-6, "high": 1.0e-2, "log": True},
    "channels in first conv layer": {"low": 2, "high": 3},
}
NOISY_L2 = 3 * 1.0e-4  # 0.00030000000000000003: what a multiplicative search really produces


def make_study(storage_url: str, folder: Path, trials: list[dict], *, name: str = "tiny", **study_keys):
    """A study as `hpsearch launch` leaves it, holding `trials` (dicts of create_trial arguments).

    Each trial dict: params (searched names only), value, state (default COMPLETE), steps
    ({step: IoU}, default {3: value/2, 6: value}), attrs (user attrs). Returns (study file, config, study).
    """
    study_file = write_tiny_study(folder, name=name, **study_keys)
    config = load_study(study_file)
    storage = open_storage(storage_url, heartbeat_interval=None)
    study = prepare_study(config, storage, target=config.trials)
    distributions = config.distributions()
    for spec in trials:
        state = spec.get("state", TrialState.COMPLETE)
        value = spec.get("value")
        steps = spec.get("steps", {3: value / 2, 6: value} if value is not None else {})
        study.add_trial(create_trial(
            state=state,
            params=spec["params"],
            distributions={k: distributions[k] for k in spec["params"]},
            value=value if state == TrialState.COMPLETE else None,
            intermediate_values=steps,
            user_attrs=spec.get("attrs", {}),
        ))
    return study_file, config, study


TRIALS = [
    {"params": {"l2 regularization weight": 3.0e-4, "learning rate": 3.0e-3, "channels in first conv layer": 2}, "value": 0.41,
     "attrs": {"parent_trial": "start", "per_class_iou": {"left ventricle": 0.41}}},
    {"params": {"l2 regularization weight": NOISY_L2, "learning rate": 7.6e-05, "channels in first conv layer": 3}, "value": 0.63,
     "attrs": {"parent_trial": 0, "per_class_iou": {"left ventricle": 0.63}}},
    {"params": {"l2 regularization weight": 1.0e-5, "learning rate": 1.0e-3, "channels in first conv layer": 2}, "value": 0.5,
     "attrs": {"parent_trial": 1}},
    {"params": {"l2 regularization weight": 2.0e-3, "learning rate": 5.0e-3, "channels in first conv layer": 3}, "state": TrialState.FAIL},
]


@pytest.fixture
def journal_study(tmp_path):
    journal = str(tmp_path / "study.journal")
    study_file, config, study = make_study(journal, tmp_path / "studies", TRIALS, search_space=SPACE)
    return journal, study_file, config, study


def export(*args: str) -> int:
    return main(["export", *args])


def test_export_writes_table1_in_the_papers_order_with_readable_numbers(journal_study, capsys):
    journal, _, config, _ = journal_study
    assert export("--study", "tiny", "--storage", journal) == 0
    text = capsys.readouterr().out
    document = yaml.safe_load(text)
    # Descriptive keys are the ones load_params allows, then the training choices, then the seven paper names in order.
    assert list(document)[-2:] == ["training", "hyperparameters"]
    assert set(document) - {"training", "hyperparameters"} <= METADATA_KEYS
    # The study searched no choice: the trial trained with the study's training values, and so will `train`.
    trained = config.train_config(1)
    assert document["training"] == {"loss": trained.loss, "block": trained.block, "augment": trained.augment} == config.training_choices()
    assert (f"training:\n  loss: {trained.loss}\n  block: {trained.block}\n  augment: {str(trained.augment).lower()}\n"
            "hyperparameters:\n") in text
    assert document["study"] == "tiny" and document["trial"] == 1
    assert document["validation IoU"] == 0.63
    assert document["per-class validation IoU"] == {"left ventricle": 0.63}
    assert list(document["hyperparameters"]) == list(TABLE1_NAMES.values())
    # As a person writes them: no float noise, YAML floats that read back as floats.
    assert "  l2 regularization weight: 3.0e-4\n" in text
    assert "  learning rate: 7.6e-5\n" in text
    assert "  channels in first conv layer: 3\n" in text
    # Unsearched ones come from the study's start point (the tiny study starts beside Table 1).
    assert document["hyperparameters"]["dropout keep probability"] == config.start["dropout keep probability"] == 0.85
    assert document["hyperparameters"]["beta2"] == 0.999
    assert "0.00030000000000000003" not in text


def test_a_study_file_names_the_same_study(journal_study, capsys):
    journal, study_file, _, _ = journal_study
    assert export("--study", "tiny", "--storage", journal) == 0
    by_name = capsys.readouterr().out
    assert export("--study", str(study_file), "--storage", journal) == 0
    assert capsys.readouterr().out == by_name


def test_the_exported_file_loads_as_the_trials_hyperparameters(journal_study, tmp_path, capsys):
    journal, _, config, study = journal_study
    out = tmp_path / "best.yaml"
    out.write_text("old content\n")
    assert export("--study", "tiny", "--storage", journal, "-o", str(out)) == 2  # an existing file needs --force
    assert "--force" in capsys.readouterr().err and out.read_text() == "old content\n"
    assert export("--study", "tiny", "--storage", journal, "-o", str(out), "--force") == 0
    assert "wrote trial 1" in capsys.readouterr().out
    loaded = load_params(out)
    expected = config.hyperparameters(study.trials[1].params)
    for name in TABLE1_NAMES:
        got, want = getattr(loaded, name), getattr(expected, name)
        assert type(got) is type(want)
        assert math.isclose(got, want, rel_tol=1e-12, abs_tol=0.0), name
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".best.yaml")] == []  # no temporary file left


def test_the_best_is_the_lowest_numbered_among_equal_values(tmp_path, capsys):
    journal = str(tmp_path / "study.journal")
    same = [{"params": {"learning rate": lr, "channels in first conv layer": 2}, "value": 0.5} for lr in (3e-3, 1e-3, 2e-3)]
    make_study(journal, tmp_path / "studies", [{"params": {"learning rate": 4e-3, "channels in first conv layer": 3}, "value": 0.1}, *same])
    assert export("--study", "tiny", "--storage", journal) == 0
    document = yaml.safe_load(capsys.readouterr().out)
    assert document["trial"] == 1 and document["hyperparameters"]["learning rate"] == 3e-3


def test_markdown_is_the_same_as_a_table(journal_study, capsys):
    journal = journal_study[0]
    assert export("--study", "tiny", "--storage", journal, "--format", "markdown") == 0
    text = capsys.readouterr().out
    assert "trial 1" in text and "validation IoU 0.63" in text and "left ventricle 0.63" in text
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| hyperparameter")]
    assert [row.split(" | ")[0].removeprefix("| ") for row in rows] == list(TABLE1_NAMES.values())
    assert "| l2 regularization weight | 3.0e-4 | searched |" in text
    assert "| learning rate | 7.6e-5 | searched |" in text
    assert "| beta1 | 0.9 | start value (not searched) |" in text


@pytest.mark.parametrize("trials", [[], [TRIALS[3]], [{**TRIALS[0], "state": TrialState.RUNNING, "value": None, "steps": {3: 0.2}}]])
def test_no_complete_trial_is_one_clear_line(trials, tmp_path, capsys):
    journal = str(tmp_path / "study.journal")
    make_study(journal, tmp_path / "studies", trials, search_space=SPACE)
    out = tmp_path / "best.yaml"
    assert export("--study", "tiny", "--storage", journal, "-o", str(out)) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "no COMPLETE trial" in error and "'tiny'" in error
    assert not out.exists()


def test_an_unknown_study_or_storage_is_one_clear_line(journal_study, tmp_path, capsys):
    journal = journal_study[0]
    assert export("--study", "paper", "--storage", journal) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "no study named 'paper'" in error and "'tiny'" in error
    missing = tmp_path / "elsewhere.journal"
    assert export("--study", "tiny", "--storage", str(missing)) == 2
    assert "no study storage" in capsys.readouterr().err
    assert not missing.exists()  # a reading command creates no journal file


def test_export_round_trips_through_hpsearch_train(journal_study, synth_dataset, tmp_path, capsys):
    """export -o best.yaml, then `hpsearch train --params best.yaml` trains with exactly those values."""
    journal = journal_study[0]
    best = tmp_path / "best.yaml"
    assert export("--study", "tiny", "--storage", journal, "-o", str(best)) == 0
    out = tmp_path / "model"
    assert main(["train", "--data", str(synth_dataset), "--params", str(best), "--out", str(out), *TINY_TRAIN]) == 0
    trained = load_params(out / "params.yaml")
    assert trained == load_params(best)
    # The run's own file writes the hyperparameters exactly as the export did.
    block = lambda text: text[text.index("hyperparameters:"):]  # noqa: E731
    assert block((out / "params.yaml").read_text()) == block(best.read_text())
