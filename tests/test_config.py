"""Tests for hpsearch.config: study files, their checks, and the Optuna objects they build."""

from __future__ import annotations

import importlib.util
import inspect
import json
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import optuna
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from optuna.distributions import FloatDistribution, IntDistribution

from hpsearch import config as config_module
from hpsearch._sampler import NeighborhoodSampler
from hpsearch.config import StudyConfig, load_study
from hpsearch.errors import UsageError
from hpsearch.templates import template_path
from model.config import TrainConfig
from model.params import Hyperparameters

optuna.logging.set_verbosity(optuna.logging.WARNING)

ROOT = Path(__file__).resolve().parent.parent
STUDIES = ROOT / "studies"  # where a checkout uses the packaged templates from
LR = "learning rate"
CHANNELS = "channels in first conv layer"
KEEP = "dropout keep probability"
DELETE = object()


def base_doc() -> dict:
    """A small valid study (synthetic data, so no dataset folder needs to exist)."""
    return {
        "study": "t",
        "data": {"path": "data", "synth": {"cases": 4, "shape": "32x32x16"}},
        "training": {"steps": 10, "eval_every": 5, "patch": "16x16x8"},
        "trials": 3,
        "seed": 7,
        "search_space": {
            LR: {"low": 1.0e-6, "high": 1.0e-2},
            CHANNELS: {"low": 4, "high": 64},
        },
    }


def edited(changes: dict) -> dict:
    """base_doc() with 'a.b.c' -> value changes (DELETE removes the key)."""
    doc = base_doc()
    for dotted, value in changes.items():
        *parents, last = dotted.split(".")
        node = doc
        for key in parents:
            node = node.setdefault(key, {})
        if value is DELETE:
            del node[last]
        else:
            node[last] = value
    return doc


def write(tmp_path: Path, doc: dict, name: str = "study.yaml") -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path


def load(tmp_path: Path, **changes) -> StudyConfig:
    return load_study(write(tmp_path, edited(changes)))


def load_shipped(name: str):
    """A packaged study template, used from the checkout's studies/ folder."""
    return load_study(template_path(name), home=STUDIES)


# ---------------------------------------------------------------- the shipped studies


def test_paper_study_is_table1_and_the_papers_training():
    config = load_shipped("paper")
    assert config.name == "paper"
    assert config.start == Hyperparameters().as_table1()
    assert set(config.search_space) == set(Hyperparameters().as_table1())
    assert config.training["steps"] == 5000
    assert config.training["eval_every"] == 500
    assert config.training["patch_shape"] == (64, 64, 16)
    assert config.training["loss"] == "joint"
    assert config.training["block"] == "factorized"
    assert config.training["clip"] == "global"
    assert config.trials == 50
    assert config.sampler == {"name": "neighborhood", "factor": 10.0, "scale": "log"}
    assert config.pruner is None
    assert config.data_path == ROOT / "data" / "paper"
    assert config.synth == {"cases": 40, "shape": (192, 192, 12), "seed": 0, "myocardium": False, "rv": False, "channels": 1}
    assert config.search_space[CHANNELS] == {"low": 4, "high": 64, "log": True, "step": None}
    assert isinstance(config.make_pruner(), optuna.pruners.NopPruner)


def test_quickstart_study_is_small():
    config = load_shipped("quickstart")
    assert config.name == "quickstart"
    assert config.trials == 6
    assert config.seed == 0
    assert config.training["steps"] == 200
    assert config.training["patch_shape"] == (32, 32, 16)
    assert config.training["loss"] == "joint"
    assert config.start == {**Hyperparameters().as_table1(), LR: 1.0e-3, CHANNELS: 8}
    assert config.search_space[CHANNELS] == {"low": 4, "high": 16, "log": True, "step": None}
    paper = load_shipped("paper")
    others = {name: space for name, space in config.search_space.items() if name != CHANNELS}
    assert others == {name: space for name, space in paper.search_space.items() if name != CHANNELS}
    assert config.data_path == ROOT / "data" / "quickstart"
    assert config.synth["cases"] == 24 and config.synth["shape"] == (64, 64, 16)
    assert isinstance(config.make_sampler(), NeighborhoodSampler)
    # the recommended default of benchmarks/search_quality.py ("factor3+median@50"): the paper's
    # scheme in [best / 3, best * 3], with a median pruner from the first evaluation
    assert config.sampler == {"name": "neighborhood", "factor": 3.0}
    assert config.pruner == {"name": "median", "n_startup_trials": 4, "n_warmup_steps": 50}
    assert config.trial_seeds == "per_trial"
    assert isinstance(config.make_pruner(), optuna.pruners.MedianPruner)


# ---------------------------------------------------------------- what a valid file gives


def test_defaults_fill_the_rest(tmp_path):
    config = load(tmp_path)
    defaults = TrainConfig()
    assert config.training["batch_size"] == defaults.batch_size
    assert config.training["depth"] == defaults.depth
    assert config.training["foreground_share"] == defaults.foreground_share
    assert config.start == Hyperparameters().as_table1()
    assert config.split == {"seed": 0, "val_fraction": 0.2, "test_fraction": 0.2}
    assert config.synth == {"cases": 4, "shape": (32, 32, 16), "seed": 0, "myocardium": False, "rv": False, "channels": 1}
    assert config.sampler == {"name": "neighborhood"}
    assert config.pruner is None
    assert config.deterministic is False


def test_distributions_types_and_log_flags(tmp_path):
    config = load(
        tmp_path,
        **{
            f"search_space.{KEEP}": {"low": 0.5, "high": 1.0},  # linear by default
            "search_space.beta1": {"low": 0.8, "high": 0.95, "step": 0.05},
            "search_space.gradient clip": {"low": 1.0, "high": 1.0},  # equal bounds: fixed
        },
    )
    dists = config.distributions()
    assert list(dists) == [KEEP, LR, "beta1", "gradient clip", CHANNELS]  # the paper's order
    assert dists[CHANNELS] == IntDistribution(4, 64, log=True)
    assert dists[LR] == FloatDistribution(1e-6, 1e-2, log=True)
    assert dists[KEEP] == FloatDistribution(0.5, 1.0, log=False)
    assert dists["beta1"] == FloatDistribution(0.8, 0.95, step=0.05)
    assert dists["gradient clip"].single()


def test_unsearched_parameters_stay_at_their_start_value(tmp_path):
    config = load(tmp_path, **{"start.beta2": 0.99, f"start.{LR}": 1.0e-4})
    assert set(config.distributions()) == {LR, CHANNELS}
    params = config.hyperparameters({LR: 3.0e-3, CHANNELS: 16})
    assert params == Hyperparameters(learning_rate=3.0e-3, channels=16, beta2=0.99)


def test_numbers_written_without_a_dot_are_read_as_numbers(tmp_path):
    # YAML 1.1 reads 1e-6 (no dot) as a string.
    path = write(tmp_path, base_doc())
    path.write_text(path.read_text().replace("1.0e-06", "1e-6").replace("0.01", "1e-2") + "start: {learning rate: 2e-4}\n")
    config = load_study(path)
    assert config.search_space[LR]["low"] == 1e-6 and config.search_space[LR]["high"] == 1e-2
    assert config.start[LR] == 2e-4


def test_start_values_are_floats_except_channels(tmp_path):
    # An integer written for a float hyperparameter (gradient clip: 1) is stored as 1.0, and
    # 30.0 channels as 30, so exports and the sampler see one type per hyperparameter.
    config = load(tmp_path, **{"start.gradient clip": 1, f"start.{CHANNELS}": 30.0})
    assert type(config.start["gradient clip"]) is float
    assert type(config.start[CHANNELS]) is int
    assert all(type(v) is float for name, v in config.start.items() if name != CHANNELS)


def test_relative_data_path_resolves_against_the_study_folder(tmp_path, monkeypatch):
    path = write(tmp_path, base_doc(), name="sub/study.yaml")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert load_study(path).data_path == tmp_path / "sub" / "data"
    assert load_study(Path("..") / "sub" / "study.yaml").data_path == tmp_path / "sub" / "data"


def test_existing_dataset_needs_no_synth_section(tmp_path):
    (tmp_path / "data").mkdir()
    config = load(tmp_path, **{"data.synth": DELETE})
    assert config.synth is None
    assert config.data_path == tmp_path / "data"


def test_train_config_seeds_each_trial(tmp_path):
    config = load(tmp_path, deterministic=True)
    train = config.train_config(3)
    assert isinstance(train, TrainConfig)
    assert train.seed == 10  # 7 + 3
    assert train.deterministic is True
    assert train.patch_shape == (16, 16, 8) and train.steps == 10 and train.eval_every == 5
    assert config.train_config(0).seed == 7
    assert load(tmp_path, seed=None).train_config(3).seed is None
    assert config.trial_seeds == "per_trial"  # the default


def test_per_trial_seeds_stay_in_numpys_seed_range(tmp_path):
    config = load(tmp_path, seed=config_module.SEED_MAX)
    assert [config.train_config(n).seed for n in (0, 1, 2)] == [config_module.SEED_MAX, 0, 1]


def test_shared_trial_seeds_train_every_trial_with_the_study_seed(tmp_path):
    config = load(tmp_path, trial_seeds="shared")
    assert [config.train_config(n).seed for n in (0, 1, 5)] == [7, 7, 7]
    # kept through the form stored in the study
    assert StudyConfig.from_dict(config.to_dict()).train_config(4).seed == 7


# ---------------------------------------------------------------- samplers and pruners


def test_neighborhood_sampler_starts_at_the_searched_start_values(tmp_path):
    config = load(tmp_path, **{f"start.{LR}": 1.0e-4, f"start.{CHANNELS}": 16, "sampler": {"name": "neighborhood", "factor": 4.0}})
    sampler = config.make_sampler()
    assert isinstance(sampler, NeighborhoodSampler)
    assert sampler._seed == 7
    assert sampler._factor == 4.0
    study = optuna.create_study(direction="maximize", sampler=sampler)
    trial = study.ask(config.distributions())
    # The first trial evaluates the start point exactly, and only the searched parameters.
    assert trial.params == {LR: 1.0e-4, CHANNELS: 16}


@pytest.mark.parametrize(
    "section, cls",
    [
        ({"name": "random"}, optuna.samplers.RandomSampler),
        ({"name": "tpe", "n_startup_trials": 3}, optuna.samplers.TPESampler),
    ],
)
def test_optuna_samplers(tmp_path, section, cls):
    sampler = load(tmp_path, sampler=section).make_sampler()
    assert type(sampler) is cls
    if cls is optuna.samplers.TPESampler:
        assert sampler._n_startup_trials == 3


def test_seeded_samplers_repeat_their_draws(tmp_path):
    config = load(tmp_path, sampler={"name": "random"})

    def first_draw():
        study = optuna.create_study(sampler=config.make_sampler())
        return study.ask(config.distributions()).params

    assert first_draw() == first_draw()


@pytest.mark.parametrize(
    "section, cls",
    [
        (None, optuna.pruners.NopPruner),
        ({"name": "none"}, optuna.pruners.NopPruner),
        ({"name": "median", "n_startup_trials": 2, "n_warmup_steps": 5}, optuna.pruners.MedianPruner),
        ({"name": "percentile", "percentile": 25.0}, optuna.pruners.PercentilePruner),
        ({"name": "hyperband", "min_resource": 5, "reduction_factor": 3}, optuna.pruners.HyperbandPruner),
        ({"name": "successive_halving"}, optuna.pruners.SuccessiveHalvingPruner),
    ],
)
def test_pruners(tmp_path, section, cls):
    config = load(tmp_path, pruner=section)
    assert type(config.make_pruner()) is cls
    assert config.pruner is None if cls is optuna.pruners.NopPruner else config.pruner == section


def _run_trials(sampler, pruner, config: StudyConfig, trials: int = 12, steps: int = 4) -> optuna.Study:
    """A real in-memory study over the config's search space; each trial reports `steps` values."""
    study = optuna.create_study(direction="maximize", sampler=sampler, pruner=pruner)
    space = config.distributions()

    def objective(trial):
        params = {}
        for name, d in space.items():
            if isinstance(d, IntDistribution):
                params[name] = trial.suggest_int(name, d.low, d.high, log=d.log, step=d.step)
            else:
                params[name] = trial.suggest_float(name, d.low, d.high, log=d.log, step=d.step)
        value = params[LR] * 100
        for step in range(1, steps + 1):
            trial.report(value * step / steps, step)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return value

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ExperimentalWarning, FutureWarning of deprecated options
        study.optimize(objective, n_trials=trials, catch=())
    return study


# Options Optuna's constructors take, but which break every trial (or no check would catch).
ACCEPTED_BY_OPTUNA_FAILING_A_TRIAL = [
    ("pruner", {"name": "hyperband", "reduction_factor": 1}, r"pruner.reduction_factor: 1 must be a whole number ≥ 2"),
    ("pruner", {"name": "hyperband", "min_resource": 0}, r"pruner.min_resource: 0 must be a whole number ≥ 1"),
    ("pruner", {"name": "hyperband", "bootstrap_count": -1}, r"pruner.bootstrap_count: -1 must be a whole number ≥ 0"),
    ("pruner", {"name": "hyperband", "reduction_factor": "x"}, r"pruner.reduction_factor: 'x' must be a whole number ≥ 2"),
    ("sampler", {"name": "tpe", "n_startup_trials": "four"}, r"sampler.n_startup_trials: 'four' must be a whole number ≥ 0"),
    ("sampler", {"name": "tpe", "n_ei_candidates": 0}, r"sampler.n_ei_candidates: 0 must be a whole number ≥ 1"),
    ("sampler", {"name": "tpe", "prior_weight": -1.0}, r"sampler.prior_weight: -1.0 must be a number ≥ 0"),
    ("sampler", {"name": "tpe", "gamma": 3}, r"sampler.gamma takes a Python object"),
]


@pytest.mark.parametrize("kind, section, match", ACCEPTED_BY_OPTUNA_FAILING_A_TRIAL,
                         ids=[f"{s['name']}-{next(iter(set(s) - {'name'}))}" for _, s, _ in ACCEPTED_BY_OPTUNA_FAILING_A_TRIAL])
def test_options_that_would_fail_the_first_trial_are_refused_at_load(tmp_path, kind, section, match):
    options = {key: value for key, value in section.items() if key != "name"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # FutureWarning of deprecated TPE options
        built = config_module._class(kind, section["name"])(**options)  # Optuna's constructor takes them ...
    good = load(tmp_path)
    with pytest.raises(Exception):  # ... and the trials fail
        _run_trials(built if kind == "sampler" else None, built if kind == "pruner" else None, good)
    with pytest.raises(UsageError, match=match) as caught:  # so the study file is refused when it is read
        load(tmp_path, **{kind: section})
    assert "\n" not in str(caught.value)


def test_median_pruner_gets_its_options(tmp_path):
    pruner = load(tmp_path, pruner={"name": "median", "n_startup_trials": 2}).make_pruner()
    assert pruner._n_startup_trials == 2


# ---------------------------------------------------------------- to_dict / from_dict


@pytest.mark.parametrize("study", ["paper", "quickstart", None])
def test_to_dict_round_trips_through_json(tmp_path, study):
    if study is None:
        config = load(
            tmp_path,
            seed=None,
            deterministic=True,
            pruner={"name": "hyperband", "min_resource": 5},
            sampler={"name": "tpe", "n_startup_trials": 4},
            **{"search_space.beta1": {"low": 0.8, "high": 0.95, "step": 0.05}, "data.split.val_fraction": 0.3},
        )
    else:
        config = load_shipped(study)
    stored = json.loads(json.dumps(config.to_dict()))  # what the Optuna user attribute keeps
    again = StudyConfig.from_dict(stored)
    assert again == config
    assert again.to_dict() == config.to_dict()


def test_to_dict_is_plain_and_detached(tmp_path):
    config = load(tmp_path)
    d = config.to_dict()
    assert d["data"]["path"] == str(tmp_path / "data")
    assert d["training"]["patch"] == "16x16x8"
    d["search_space"][LR]["low"] = 0.5
    assert config.search_space[LR]["low"] == 1.0e-6


def test_from_dict_checks_again(tmp_path):
    d = load(tmp_path).to_dict()
    d["trials"] = 0
    with pytest.raises(UsageError, match=r"stored study definition .*trials must be at least 1, got 0"):
        StudyConfig.from_dict(d)


def test_from_dict_can_skip_the_dataset_check(tmp_path):
    d = load(tmp_path).to_dict()
    d["data"]["synth"] = None
    with pytest.raises(UsageError, match="dataset folder .* does not exist"):
        StudyConfig.from_dict(d)
    assert StudyConfig.from_dict(d, check_data=False).synth is None


# ---------------------------------------------------------------- bad files


@pytest.mark.parametrize(
    "text, match",
    [
        ("study: [unclosed\n", r"is not valid YAML .*; fix the syntax"),
        ("- a\n- b\n", r"must hold a mapping of study keys .* got list"),
        ("", r"must hold a mapping of study keys .* got NoneType"),
        ("study: a\nstudy: b\n", r"the key 'study' appears twice"),
    ],
)
def test_unreadable_study_files(tmp_path, text, match):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(UsageError, match=match):
        load_study(path)


def test_missing_study_file(tmp_path):
    with pytest.raises(UsageError, match=r"study file '.*nope\.yaml' does not exist; give the path"):
        load_study(tmp_path / "nope.yaml")
    with pytest.raises(UsageError, match="is a folder"):
        load_study(tmp_path)


BAD = [
    # structure and unknown keys
    ({"stpes": 1}, r"unknown key 'stpes' in the top level; allowed keys: study, data, training"),
    ({"training.stpes": 5}, r"unknown key 'stpes' in training; allowed keys: steps, eval_every, patch"),
    ({"data.synth.size": 5}, r"unknown key 'size' in data.synth; allowed keys: cases, shape, seed, myocardium, rv, channels"),
    ({"data.split.train": 0.5}, r"unknown key 'train' in data.split"),
    ({"data.where": "x"}, r"unknown key 'where' in data; allowed keys: path, synth, split"),
    ({f"search_space.{LR}.lo": 1}, r"unknown key 'lo' in search_space 'learning rate'; allowed keys: low, high, log, step"),
    ({"search_space.momentum": {"low": 0.1, "high": 0.9}}, r"unknown key 'momentum' in search_space; allowed keys: dropout keep probability"),
    ({"start.lr": 0.1}, r"unknown key 'lr' in start; allowed keys: dropout keep probability"),
    ({"study": DELETE}, r"the top level lacks the required key 'study'"),
    ({"search_space": DELETE}, r"lacks the required key 'search_space'"),
    ({"search_space": {}}, r"search_space is empty"),
    ({"training": {"eval_every": 5}}, r"training lacks the required key 'steps'"),
    ({"data": "somewhere"}, r"data must be a mapping with keys path, synth, split, got 'somewhere'"),
    ({f"search_space.{LR}": 0.01}, r"search_space 'learning rate' must be a mapping"),
    # types and top-level values
    ({"study": ""}, r"study must be a non-empty string"),
    ({"trials": 0}, r"trials must be at least 1, got 0"),
    ({"trials": "many"}, r"trials must be a whole number ≥ 1, got 'many'"),
    ({"seed": -1}, r"seed must be in \[0, 4294967295\], got -1"),
    ({"deterministic": "yes"}, r"deterministic must be true or false, got 'yes'"),
    ({"trial_seeds": "same"}, r"trial_seeds must be one of per_trial, shared, got 'same'"),
    ({"trial_seeds": "shared", "seed": DELETE}, r"trial_seeds: shared needs a seed for every trial to share; add e.g. seed: 0"),
    # data
    ({"data.synth.shape": "4x4x4"}, r"data.synth.shape 4x4x4 needs every size in \[8, 1024\]"),
    ({"data.synth.shape": "big"}, r"data.synth.shape 'big' is not a shape; write three sizes like 64x64x16"),
    ({"data.synth.cases": 0}, r"data.synth.cases must be at least 1, got 0"),
    ({"data.synth.myocardium": 1}, r"data.synth.myocardium must be true or false, got 1"),
    ({"data.synth.rv": "yes"}, r"data.synth.rv must be true or false, got 'yes'"),
    ({"data.synth.channels": 3}, r"data.synth.channels must be 1 or 2 \(a second MR contrast\), got 3\."),
    ({"data.split.val_fraction": 1.0}, r"data.split.val_fraction must be in \[0, 1\), got 1.0"),
    ({"data.split.val_fraction": 0.6, "data.split.test_fraction": 0.5}, r"leaves no training cases"),
    ({"data.synth": DELETE}, r"dataset folder '.*data' does not exist; create it with 'hpsearch data synth .*data' or add a data.synth section"),
    # training (TrainConfig's own checks, named as the study file's)
    ({"training.steps": 0}, r"study file .*: training: steps \(0\)"),
    ({"training.steps": 2.5}, r"training.steps must be a whole number, got 2.5"),
    ({"training.patch": "30x32x16"}, r"training: patch shape \(30, 32, 16\) must be three sizes, each a multiple of 8"),
    ({"training.patch": "big"}, r"training.patch 'big' is not a shape"),
    ({"training.loss": "dice"}, r"training: loss must be one of joint, per_class, per_class_ce, got 'dice'"),
    ({"training.block": 3}, r"training.block must be a non-empty string, got 3"),
    ({"training.foreground_share": 2}, r"training.foreground_share .* must be in \[0, 1\]; got 2.0"),
    # search space
    ({f"search_space.{LR}": {"low": 1e-2, "high": 1e-6}}, r"'learning rate' has low 0.01 above high 1e-06; swap them"),
    ({"search_space.l2 regularization weight": {"low": 0, "high": 0.1}}, r"'l2 regularization weight' has log: true with low 0.0; a log scale needs low > 0"),
    ({f"search_space.{LR}.step": 1e-6}, r"'learning rate' has both step 1e-06 and log: true"),
    ({f"search_space.{CHANNELS}": {"low": 4, "high": 63, "step": 2, "log": False}}, r"high - low \(63 - 4\) must be a multiple of step 2"),
    ({f"search_space.{CHANNELS}": {"low": 4, "high": 64, "step": 0, "log": False}}, r"'channels in first conv layer' step must be at least 1, got 0"),
    ({f"search_space.{CHANNELS}.low": 2.5}, r"'channels in first conv layer' low must be a whole number, got 2.5"),
    ({f"search_space.{CHANNELS}.high": 4096}, r"'channels in first conv layer' has high 4096 outside the valid values \('channels in first conv layer' must be between 1 and 1024, got 4096\); move the bound"),
    ({f"search_space.{KEEP}": {"low": 0.5, "high": 1.5}}, r"'dropout keep probability' has high 1.5 outside the valid values"),
    ({"search_space.beta2": {"low": 0.9, "high": 1.0}}, r"'beta2' has high 1.0 outside the valid values"),
    ({f"search_space.{LR}.log": "yes"}, r"'learning rate' log must be true or false, got 'yes'"),
    ({f"search_space.{LR}.high": "lots"}, r"'learning rate' high must be a finite number, got 'lots'"),
    ({f"search_space.{LR}.high": float("inf")}, r"'learning rate' high must be a finite number, got inf"),
    # start
    ({f"start.{LR}": 0.5}, r"the start value 0.5 of 'learning rate' is outside its search space \[1e-06, 0.01\]"),
    ({"start.beta1": 1.0}, r"start: 'beta1' is out of range: 1.0; fix that start value"),
    ({f"start.{CHANNELS}": 3.5}, r"'channels in first conv layer' must be a whole number, got 3.5"),
    ({f"search_space.{CHANNELS}": {"low": 4, "high": 64, "step": 4, "log": False}}, r"the start value 30 of 'channels in first conv layer' is not on the grid"),
    # sampler
    ({"sampler": {"name": "bayes"}}, r"sampler name 'bayes' is unknown; choose one of neighborhood, random, tpe"),
    ({"sampler": {"factor": 5}}, r"sampler must be a mapping with a 'name'"),
    ({"sampler": {"name": "tpe", "n_start_trials": 3}}, r"unknown option 'n_start_trials' for sampler 'tpe'; its options are: .*n_startup_trials"),
    ({"sampler": {"name": "random", "x": 1}}, r"sampler 'random' takes no options; remove 'x'"),
    ({"sampler": {"name": "neighborhood", "factor": 0.5}}, r"sampler.factor: 0.5 must be a number > 1\."),
    ({"sampler": {"name": "neighborhood", "scale": "linear"}}, r"sampler.scale: 'linear' must be 'log' or 'uniform'\."),
    ({"sampler": {"name": "tpe", "seed": 3}}, r"sampler option 'seed' is set by the study's top-level 'seed' key"),
    ({"sampler": {"name": "neighborhood", "start": {}}}, r"sampler option 'start' is set by the study's top-level 'start' key"),
    # pruner
    ({"pruner": {"name": "early"}}, r"pruner name 'early' is unknown; choose one of none, median, percentile, hyperband, successive_halving"),
    ({"pruner": {"name": "none", "patience": 3}}, r"pruner 'none' takes no options; remove 'patience'"),
    ({"pruner": {"name": "percentile"}}, r"pruner 'percentile' needs the option 'percentile'"),
    ({"pruner": {"name": "median", "n_startup_trials": -1}}, r"pruner.n_startup_trials: -1 must be a whole number ≥ 0\."),
    # seeds: whole numbers in numpy's seed range
    ({"seed": 2**32}, r"seed must be in \[0, 4294967295\], got 4294967296\."),
    ({"seed": "lucky"}, r"seed must be a whole number in \[0, 4294967295\], got 'lucky'\."),
    ({"seed": True}, r"seed must be a whole number in \[0, 4294967295\], got True\."),
    ({"data.synth.seed": -3}, r"data.synth.seed must be in \[0, 4294967295\], got -3\."),
    ({"data.split.seed": 2**40}, r"data.split.seed must be in \[0, 4294967295\], got 1099511627776\."),
    # study names: they name a folder
    ({"study": "../escape"}, r"study name '../escape' is not allowed; use 1-64 letters, digits, '-', '_' or '.', not starting with '.'"),
    ({"study": "a/b"}, r"study name 'a/b' is not allowed; use 1-64 letters"),
    ({"study": ".hidden"}, r"study name '.hidden' is not allowed"),
    ({"study": ".."}, r"study name '..' is not allowed"),
    ({"study": "my study"}, r"study name 'my study' is not allowed"),
    ({"study": "x" * 65}, r"study name 'x{65}' is not allowed; use 1-64"),
    ({"study": "a\\b"}, r"study name 'a\\\\b' is not allowed"),
    ({"study": "héllo"}, r"study name 'héllo' is not allowed"),
    ({"study": 7}, r"study must be a non-empty string, got 7"),
    # sampler and pruner options: type and range, named as written, before any trial
    ({"pruner": {"name": "median", "n_startup_trials": "four"}}, r"pruner.n_startup_trials: 'four' must be a whole number ≥ 0\."),
    ({"pruner": {"name": "median", "n_warmup_steps": 1.5}}, r"pruner.n_warmup_steps: 1.5 must be a whole number ≥ 0\."),
    ({"pruner": {"name": "median", "interval_steps": 0}}, r"pruner.interval_steps: 0 must be a whole number ≥ 1\."),
    ({"pruner": {"name": "percentile", "percentile": 150}}, r"pruner.percentile: 150 must be a number in \[0, 100\]\."),
    ({"pruner": {"name": "percentile", "percentile": "half"}}, r"pruner.percentile: 'half' must be a number in \[0, 100\]\."),
    ({"pruner": {"name": "hyperband", "reduction_factor": 1}}, r"pruner.reduction_factor: 1 must be a whole number ≥ 2\."),
    ({"pruner": {"name": "hyperband", "reduction_factor": "x"}}, r"pruner.reduction_factor: 'x' must be a whole number ≥ 2\."),
    ({"pruner": {"name": "hyperband", "min_resource": 0}}, r"pruner.min_resource: 0 must be a whole number ≥ 1\."),
    ({"pruner": {"name": "hyperband", "max_resource": "all"}}, r"pruner.max_resource: 'all' must be 'auto' or a whole number ≥ 1\."),
    ({"pruner": {"name": "hyperband", "max_resource": 0}}, r"pruner.max_resource: 0 must be 'auto' or a whole number ≥ 1\."),
    ({"pruner": {"name": "hyperband", "min_resource": 10, "max_resource": 5}}, r"pruner.max_resource: 5 is below min_resource 10; raise it to at least 10, or write 'auto'\."),
    ({"pruner": {"name": "hyperband", "bootstrap_count": -1}}, r"pruner.bootstrap_count: -1 must be a whole number ≥ 0\."),
    ({"pruner": {"name": "successive_halving", "min_resource": "x"}}, r"pruner.min_resource: 'x' must be 'auto' or a whole number ≥ 1\."),
    ({"pruner": {"name": "threshold", "lower": "low"}}, r"pruner.lower: 'low' must be a number or null\."),
    ({"pruner": {"name": "threshold", "lower": 0.9, "upper": 0.1}}, r"pruner 'threshold' refused the options lower: 0.9, upper: 0.1 \(lower should be smaller than upper\); fix them"),
    ({"pruner": {"name": "threshold"}}, r"pruner 'threshold' refused its defaults \(Either lower or upper must be specified\)"),
    ({"sampler": {"name": "tpe", "n_startup_trials": -1}}, r"sampler.n_startup_trials: -1 must be a whole number ≥ 0\."),
    ({"sampler": {"name": "tpe", "n_startup_trials": "ten"}}, r"sampler.n_startup_trials: 'ten' must be a whole number ≥ 0\."),
    ({"sampler": {"name": "tpe", "n_ei_candidates": 0}}, r"sampler.n_ei_candidates: 0 must be a whole number ≥ 1\."),
    ({"sampler": {"name": "tpe", "prior_weight": -1.0}}, r"sampler.prior_weight: -1.0 must be a number ≥ 0 or null\."),
    ({"sampler": {"name": "tpe", "multivariate": "yes"}}, r"sampler.multivariate: 'yes' must be true, false or null\."),
    ({"sampler": {"name": "tpe", "constant_liar": None}}, r"sampler.constant_liar: None must be true or false\."),
    ({"sampler": {"name": "tpe", "gamma": 3}}, r"sampler.gamma takes a Python object \(Callable\[\[int\], int\] \| None\), which a study file cannot hold; remove it\."),
    ({"sampler": {"name": "nsgaii", "population_size": 1}}, r"sampler.population_size: 1 must be a whole number ≥ 2\."),
    ({"sampler": {"name": "nsgaii", "mutation_prob": 2}}, r"sampler.mutation_prob: 2 must be a number in \[0, 1\] or null\."),
    ({"sampler": {"name": "nsgaii", "crossover": "uniform"}}, r"sampler.crossover takes a Python object \(BaseCrossover \| None\)"),
    ({"sampler": {"name": "neighborhood", "keep_categorical": 1.5}}, r"sampler.keep_categorical: 1.5 must be a number in \[0, 1\]\."),
    ({"sampler": {"name": ["tpe"]}}, r"sampler name \['tpe'\] is unknown; choose one of"),
    ({"pruner": {"name": {"median": 1}}}, r"pruner name \{'median': 1\} is unknown; choose one of"),
]


@pytest.mark.parametrize("changes, match", BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_values_are_refused_by_name(tmp_path, changes, match):
    with pytest.raises(UsageError, match=match) as caught:
        load(tmp_path, **changes)
    assert str(caught.value).startswith("study file ")
    assert caught.value.exit_code == 2


def test_a_date_is_not_an_option_value(tmp_path):
    path = write(tmp_path, base_doc())
    path.write_text(path.read_text() + "pruner: {name: median, n_startup_trials: 2020-01-01}\n")
    with pytest.raises(UsageError, match=r"pruner option 'n_startup_trials' must be a number, string, boolean, list or mapping"):
        load_study(path)


def test_data_path_that_is_a_file(tmp_path):
    (tmp_path / "data").write_text("not a folder")
    with pytest.raises(UsageError, match=r"data.path '.*data' is a file, not a dataset folder"):
        load(tmp_path)


def test_sampler_with_a_missing_package(tmp_path, monkeypatch):
    monkeypatch.setitem(config_module._SAMPLER_NEEDS, "random", ("no_such_package_hpsearch",))
    with pytest.raises(UsageError, match=r"sampler 'random' needs the Python package\(s\) no_such_package_hpsearch; install them"):
        load(tmp_path, sampler={"name": "random"})


def test_base_doc_itself_is_valid(tmp_path):
    # The bad cases above differ from this document by the one change they name.
    assert load(tmp_path).name == "t"


# ---------------------------------------------------------------- no TensorFlow


def test_reading_a_study_does_not_import_keras_or_tensorflow():
    code = (
        "import sys, hpsearch.config as c; "
        f"c.load_study({str(template_path('paper'))!r}).make_sampler(); "
        "loaded = [m for m in ('keras', 'tensorflow') if m in sys.modules]; "
        "assert not loaded, loaded"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr


# ---------------------------------------------------------------- generated study files (hypothesis)

PROPERTY = settings(derandomize=True, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
# YAML-writable values of every kind: null, booleans, whole numbers far outside any range, floats with
# nan and inf, short text, and lists and mappings of these.
# Plausible values come first, so that many generated files get past the first check they meet.
PLAUSIBLE = (st.integers(-3, 70) | st.floats(-1.0, 2.0)
             | st.sampled_from(["16x16x8", "32x32x16", "8x8x8", "tpe", "median", "hyperband", "joint", "auto", "t-1"]))
ANY_VALUE = PLAUSIBLE | st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=5,
)
STUDY_KEYS = [
    "study", "trials", "seed", "trial_seeds", "deterministic", "data", "data.path", "data.synth", "data.synth.cases",
    "data.synth.shape", "data.synth.seed", "data.synth.myocardium", "data.synth.rv", "data.synth.channels", "data.split", "data.split.seed",
    "data.split.val_fraction", "data.split.test_fraction", "training", "training.steps", "training.eval_every",
    "training.patch", "training.batch", "training.depth", "training.block", "training.loss", "training.clip",
    "training.foreground_share", "training.augment", "start", f"start.{LR}", f"start.{CHANNELS}", f"start.{KEEP}",
    "search_space", f"search_space.{LR}", f"search_space.{LR}.low", f"search_space.{LR}.high",
    f"search_space.{LR}.log", f"search_space.{LR}.step", f"search_space.{CHANNELS}.low",
    f"search_space.{CHANNELS}.high", f"search_space.{CHANNELS}.step", "sampler", "sampler.name", "sampler.factor",
    "sampler.n_startup_trials", "pruner", "pruner.name", "pruner.n_startup_trials", "pruner.reduction_factor",
    "slurm", "slurm.options", "other",
]


def _read_or_refused(document) -> StudyConfig | None:
    """load_study on `document` written as YAML: the config, or None after checking its one-sentence refusal."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "study.yaml"
        path.write_text(yaml.safe_dump(document, sort_keys=False, allow_unicode=True), encoding="utf-8")
        try:
            return load_study(path)
        except UsageError as error:
            message = str(error)
            assert message.startswith(f"study file {str(path)!r}") and message.endswith(".") and "\n" not in message
            assert error.exit_code == 2
            return None


@settings(PROPERTY, max_examples=400)
@given(changes=st.dictionaries(st.sampled_from(STUDY_KEYS), ANY_VALUE, min_size=1, max_size=3))
def test_generated_study_files_are_read_or_refused_in_one_sentence(changes):
    """400 generated study files, each the valid base_doc() with one to three keys set to any YAML value
    (of any type, including nan, inf, huge integers, lists and mappings): load_study returns a config
    or raises UsageError with one sentence naming the file, never another exception."""
    document = base_doc()
    for dotted, value in changes.items():
        *parents, last = dotted.split(".")
        node = document
        for key in parents:
            if not isinstance(node.get(key), dict):
                node[key] = {}
            node = node[key]
        node[last] = value
    _read_or_refused(document)


OPTION_WORDS = st.sampled_from(["auto", "sobol", "halton", "log", "uniform", "ipop", "1e-3", "four"])
# By the kinds an option's annotation names: mostly a value of its type, near the edges of the ranges
# options have ([0, 1], [0, 100], >= 0, >= 1, >= 2, > 1) or far from them; else a value of any kind.
OPTION_VALUES = {"int": st.integers(-1, 3) | st.integers(-3, 300), "bool": st.booleans(), "None": st.none(),
                 "float": st.floats(-0.1, 1.1) | st.floats(0.9, 3.0) | st.floats(-2.0, 400.0),
                 "str": OPTION_WORDS, "mapping": st.just({})}
ANY_OPTION_VALUE = st.none() | st.booleans() | st.integers(-3, 300) | st.floats(-2.0, 400.0) | OPTION_WORDS


@st.composite
def components(draw, kind: str, known: dict) -> dict:
    """A sampler or pruner section: a name, and up to two of the options a YAML file can write."""
    installed = [n for n in sorted(known) if all(importlib.util.find_spec(m) for m in config_module._SAMPLER_NEEDS.get(n, ()))]
    name = draw(st.sampled_from(installed))
    parameters = inspect.signature(config_module._class(kind, name)).parameters
    kinds = {p: config_module._annotation_kinds(spec.annotation) or {"object"} for p, spec in parameters.items()
             if p not in ("seed", "start") and spec.kind in (spec.KEYWORD_ONLY, spec.POSITIONAL_OR_KEYWORD)}
    keys = sorted(p for p, k in kinds.items() if k - {"object", "None"})  # callables and samplers: refused, tested above
    options = {}
    for key in draw(st.lists(st.sampled_from(keys), max_size=2, unique=True)) if keys else []:
        typed = st.one_of([OPTION_VALUES[k] for k in sorted(kinds[key] - {"object"})])
        options[key] = draw(st.one_of(*[typed] * 7, ANY_OPTION_VALUE))
    return {"name": name, **options}


@settings(PROPERTY, max_examples=200)
@given(sampler=components("sampler", config_module.SAMPLERS), pruner=components("pruner", config_module.PRUNERS))
def test_accepted_sampler_and_pruner_options_run_real_trials(sampler, pruner):
    """200 generated sampler and pruner sections (any installed sampler and any pruner, up to two of their
    options each, set to numbers in and out of range, null, booleans or words): a study file that is read
    runs 12 real Optuna trials with that sampler and pruner (past TPE's 10 start-up trials), each
    reporting 4 intermediate values, without an error; one that is not is refused in one sentence."""
    config = _read_or_refused({**base_doc(), "sampler": sampler, "pruner": pruner})
    if config is not None:
        _run_trials(config.make_sampler(), config.make_pruner(), config, trials=12)
