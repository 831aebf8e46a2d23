"""Searching the loss, the block and augmentation as categorical dimensions of a study's search_space:
the study file's checks, the trials' choices, what each trial trains with, export, `train --params`,
status and report."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState

from hpsearch.cli import main
from hpsearch.config import StudyConfig, load_study
from hpsearch.errors import UsageError
from model.errors import InputError
from model.params import load_params, load_params_file
from searchutil import finish, hpsearch, load, write_tiny_study

LR = "learning rate"
CATEGORICAL_SPACE = {
    LR: {"low": 1.0e-4, "high": 1.0e-2, "log": True},
    "loss": {"choices": ["joint", "per_class", "per_class_ce"]},
    "augment": {"choices": [False, True]},
}
TINY_TRAIN = ["--steps", "2", "--eval-every", "2", "--patch", "16x16x8", "--depth", "2", "--seed", "0"]


def tiny(folder: Path, space: dict = CATEGORICAL_SPACE, **keys) -> StudyConfig:
    return load_study(write_tiny_study(folder, search_space=space, **keys))


# ---------------------------------------------------------------- the study file


def test_choices_become_categorical_distributions_after_table1(tmp_path):
    config = tiny(tmp_path, {**CATEGORICAL_SPACE, "block": {"choices": ["full", "factorized"]}})
    distributions = config.distributions()
    assert list(distributions) == [LR, "loss", "block", "augment"]  # Table 1 first, then the training choices
    assert isinstance(distributions[LR], FloatDistribution)
    assert distributions["loss"] == CategoricalDistribution(("joint", "per_class", "per_class_ce"))
    assert distributions["block"] == CategoricalDistribution(("full", "factorized"))  # the file's order
    assert distributions["augment"] == CategoricalDistribution((False, True))
    # The start point of a choice is the study's training value.
    assert config._searched_start() == {LR: 3.0e-3, "loss": "per_class_ce", "block": "factorized", "augment": False}


def test_a_study_with_choices_round_trips_through_json(tmp_path):
    config = tiny(tmp_path, {"loss": {"choices": ["per_class", "joint"]}, "augment": {"choices": [True, False]}},
                  training={"steps": 2, "patch": "16x16x8", "depth": 2, "loss": "per_class"})
    again = StudyConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config and again.to_dict() == config.to_dict()
    assert again.distributions()["augment"] == CategoricalDistribution((True, False))
    assert again._searched_start() == {"loss": "per_class", "augment": False}


def test_a_trials_choices_are_what_it_trains_with(tmp_path):
    config = tiny(tmp_path)
    chosen = config.train_config(5, {LR: 1.0e-3, "loss": "per_class_ce", "augment": True})
    assert (chosen.loss, chosen.augment, chosen.block) == ("per_class_ce", True, "factorized")
    assert chosen.seed == config.train_config(5).seed  # the choices change nothing else
    unchosen = config.train_config(5)
    assert (unchosen.loss, unchosen.augment) == ("per_class_ce", False)
    # The hyperparameters ignore the choices; the training choices ignore Table 1.
    assert config.hyperparameters({LR: 1.0e-3, "loss": "per_class"}).learning_rate == 1.0e-3
    assert config.training_choices({"loss": "per_class", LR: 1.0e-3}) == {"loss": "per_class", "block": "factorized", "augment": False}


@pytest.mark.parametrize("space, match", [
    ({"loss": {"choices": []}}, r"search_space 'loss' choices must be a non-empty list of values from joint, per_class, per_class_ce, got \[\]"),
    ({"loss": {"choices": "joint"}}, r"search_space 'loss' choices must be a non-empty list"),
    ({"loss": {"choices": ["joint", "dice"]}}, r"search_space 'loss' has the choice 'dice', which is not one of joint, per_class, per_class_ce"),
    ({"block": {"choices": ["factorized", "3x3x3"]}}, r"search_space 'block' has the choice '3x3x3', which is not one of factorized, full"),
    ({"augment": {"choices": [0, 1]}}, r"search_space 'augment' has the choice 0, which is not one of false, true"),
    ({"augment": {"choices": ["false", "true"]}}, r"search_space 'augment' has the choice 'false', which is not one of false, true"),
    ({"block": {"choices": ["full", "factorized", "full"]}}, r"lists the choice full twice; keep one"),
    ({"loss": {"choices": ["joint", "per_class"]}},
     r"the start value per_class_ce of 'loss' \(training.loss\) is not among its choices joint, per_class; set training.loss"),
    ({"loss": {"low": 0, "high": 1}}, r"unknown key 'low' in search_space 'loss'; allowed keys: choices"),
    ({"loss": {}}, r"search_space 'loss' lacks the required key 'choices'"),
    ({LR: {"choices": [1.0e-3]}}, r"unknown key 'choices' in search_space 'learning rate'"),
    ({"clip": {"choices": ["global"]}}, r"unknown key 'clip' in search_space; allowed keys: .*loss, block, augment"),
])
def test_bad_choices_are_one_sentence_naming_key_value_and_allowed(tmp_path, space, match):
    with pytest.raises(UsageError, match=match) as error:
        tiny(tmp_path, space)
    assert "\n" not in str(error.value)


def test_the_memory_check_covers_every_searched_block(tmp_path, monkeypatch):
    """A study that may train the full block is refused when the full block's step would not fit."""
    from hpsearch.preflight import training_step_bytes

    # the tiny study trains 2 channels (its start; channels are not searched here)
    step = {block: training_step_bytes(channels=2, depth=2, patch=(16, 16, 8), batch=2, block=block) for block in ("factorized", "full")}
    assert step["full"] > step["factorized"]
    monkeypatch.setenv("HPSEARCH_MEMORY_LIMIT", str((step["full"] + step["factorized"]) // 2))
    tiny(tmp_path / "a", {LR: CATEGORICAL_SPACE[LR]})  # factorized only: fits
    with pytest.raises(UsageError, match="the full block needs about"):
        tiny(tmp_path / "b", {LR: CATEGORICAL_SPACE[LR], "block": {"choices": ["factorized", "full"]}})


# ---------------------------------------------------------------- the params file's training: mapping


def test_a_params_file_carries_training_choices(tmp_path):
    path = tmp_path / "best.yaml"
    path.write_text("study: s\ntraining:\n  loss: per_class\n  augment: true\nhyperparameters:\n  learning rate: 1.0e-3\n")
    params, training = load_params_file(path)
    assert training == {"loss": "per_class", "augment": True}
    assert params.learning_rate == 1.0e-3 and load_params(path) == params
    path.write_text("learning rate: 1.0e-3\ntraining: {block: full}\n")  # the flat form too
    assert load_params_file(path)[1] == {"block": "full"}
    path.write_text("learning rate: 1.0e-3\n")
    assert load_params_file(path)[1] == {}


@pytest.mark.parametrize("training, match", [
    ("{loss: dice}", r"training loss must be one of joint, per_class, per_class_ce, got 'dice'"),
    ("{augment: 1}", r"training augment must be one of false, true, got 1"),
    ("{steps: 10}", r"unknown key 'steps' in 'training'; allowed keys: loss, block, augment"),
    ("[joint]", r"'training' must be a mapping of loss, block, augment, got \['joint'\]"),
])
def test_bad_training_choices_in_a_params_file(tmp_path, training, match):
    path = tmp_path / "best.yaml"
    path.write_text(f"training: {training}\nhyperparameters:\n  learning rate: 1.0e-3\n")
    with pytest.raises(InputError, match=match):
        load_params_file(path)


# ---------------------------------------------------------------- a real search


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    """`hpsearch launch` of a tiny study searching loss and augment; keep_categorical 0 makes every trial after
    the start point take another choice than the best's, so the trials train with different losses."""
    folder = tmp_path_factory.mktemp("categorical")
    study_file = write_tiny_study(folder / "studies", trials=3, steps=2, eval_every=2, search_space=CATEGORICAL_SPACE,
                                  sampler={"name": "neighborhood", "keep_categorical": 0.0})
    journal = str(folder / "study.journal")
    code, output = finish(hpsearch("launch", "--workers", "1", "--study", str(study_file), "--storage", journal))
    assert code == 0, output
    return folder, study_file, journal


def _run_json(store: optuna.artifacts.FileSystemArtifactStore, artifact_id: str, folder: Path) -> dict:
    archive = folder / f"{artifact_id}.zip"
    optuna.artifacts.download_artifact(artifact_store=store, file_path=str(archive), artifact_id=artifact_id)
    with zipfile.ZipFile(archive) as zipped:
        return json.loads(zipped.read("run.json"))


def test_each_trial_trains_with_its_chosen_loss_and_augmentation(searched, tmp_path):
    folder, _, journal = searched
    study = load(journal)
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    assert len(trials) == 3
    assert trials[0].params["loss"] == "per_class_ce" and trials[0].params["augment"] is False  # the start point
    for trial in trials:
        assert trial.params["loss"] in ("joint", "per_class", "per_class_ce")
        assert isinstance(trial.params["augment"], bool)
        assert trial.distributions["loss"] == CategoricalDistribution(("joint", "per_class", "per_class_ce"))
        # The stored model records the training it had: the trial's own choices.
        store = optuna.artifacts.FileSystemArtifactStore(str(folder / "studies" / "artifacts"))
        config = _run_json(store, trial.user_attrs["model_artifact"], tmp_path)["config"]
        assert (config["loss"], config["augment"]) == (trial.params["loss"], trial.params["augment"])
    # keep_categorical 0: trial 1 left the start's choices, so more than one loss was trained.
    assert trials[1].params["loss"] != "per_class_ce" and trials[1].params["augment"] is True
    assert len({t.params["loss"] for t in trials}) >= 2


def test_export_carries_the_winners_choices_into_hpsearch_train(searched, tmp_path, capsys):
    folder, _, journal = searched
    study = load(journal)
    best = study.best_trial
    exported = tmp_path / "best.yaml"
    assert main(["export", "--study", "tiny", "--storage", journal, "-o", str(exported)]) == 0
    text = exported.read_text()
    document = yaml.safe_load(text)
    assert list(document)[-2:] == ["training", "hyperparameters"]
    assert document["training"] == {"loss": best.params["loss"], "block": "factorized", "augment": best.params["augment"]}
    assert f"training:\n  loss: {best.params['loss']}\n  block: factorized\n  augment: {str(best.params['augment']).lower()}\nhyperparameters:\n" in text
    assert document["hyperparameters"][LR] == pytest.approx(best.params[LR], rel=1e-12)
    capsys.readouterr()
    assert main(["export", "--study", "tiny", "--storage", journal, "--format", "markdown"]) == 0
    assert f"Trained with loss {best.params['loss']} (searched), block factorized, augment" in capsys.readouterr().out

    # Train with a params file whose choices differ from train's defaults, then override them by flags.
    chosen = tmp_path / "chosen.yaml"
    chosen.write_text(text.replace(f"  loss: {best.params['loss']}\n", "  loss: per_class_ce\n")
                      .replace(f"  augment: {str(best.params['augment']).lower()}\n", "  augment: true\n"))
    data = folder / "studies" / "data"
    assert main(["train", "--data", str(data), "--params", str(chosen), "--out", str(tmp_path / "file"), *TINY_TRAIN]) == 0
    config = json.loads((tmp_path / "file" / "run.json").read_text())["config"]
    assert (config["loss"], config["augment"], config["block"]) == ("per_class_ce", True, "factorized")
    assert main(["train", "--data", str(data), "--params", str(chosen), "--out", str(tmp_path / "flags"),
                 "--loss", "joint", "--no-augment", *TINY_TRAIN]) == 0
    config = json.loads((tmp_path / "flags" / "run.json").read_text())["config"]
    assert (config["loss"], config["augment"]) == ("joint", False)


def test_status_and_report_show_choices(searched, tmp_path, capsys):
    folder, _, journal = searched
    capsys.readouterr()
    assert main(["status", "--study", "tiny", "--storage", journal]) == 0
    table = capsys.readouterr().out
    assert "loss=joint" in table and "augment=false" in table
    assert main(["status", "--study", "tiny", "--storage", journal, "--format", "json"]) == 0
    document = json.loads(capsys.readouterr().out)
    study = load(journal)
    assert [t["params"] for t in document["trials"]] == [t.params for t in study.trials]
    assert document["best"]["params"]["loss"] == study.best_trial.params["loss"]
    report = tmp_path / "report.html"
    assert main(["report", "--study", "tiny", "--storage", journal, "-o", str(report)]) == 0
    html = report.read_text()
    # Parallel coordinates draw the choices as labelled axes; the best table names the trial's training.
    assert 'id="figure-parallel"' in html and '"per_class' in html
    assert f"Trained with loss {study.best_trial.params['loss']} (searched)" in html


def test_the_dashboard_serves_the_choices(searched):
    """optuna-dashboard (behind `hpsearch dashboard`) gives each trial's loss and augment as their values."""
    from test_dashboard import Server, get

    folder, _, journal = searched
    study = load(journal)
    server = Server("--study", "tiny", "--storage", journal, "--artifacts", str(folder / "studies" / "artifacts"), "--port", "0")
    try:
        base = server.url().split("/dashboard")[0]
        study_id = json.loads(get(f"{base}/api/studies")[2])["study_summaries"][0]["study_id"]
        detail = json.loads(get(f"{base}/api/studies/{study_id}?after=0")[2])
        for shown in detail["trials"]:
            params = {p["name"]: p["param_external_value"] for p in shown["params"]}
            trial = study.trials[shown["number"]]
            assert params["loss"] == trial.params["loss"]
            assert params["augment"] == str(trial.params["augment"])
        loss_space = [s for s in detail["union_search_space"] if s["name"] == "loss"]
        assert loss_space and loss_space[0]["distribution"]["type"] == "CategoricalDistribution"
    finally:
        server.stop()
