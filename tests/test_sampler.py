"""Tests for NeighborhoodSampler (the paper's search scheme as an Optuna sampler)."""

from __future__ import annotations

import math
import pickle

import numpy as np
import optuna
from optuna.distributions import CategoricalDistribution
from optuna.distributions import FloatDistribution
from optuna.distributions import IntDistribution
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState
import pytest

from hpsearch._sampler import _neighbor_value
from hpsearch._sampler import NeighborhoodSampler


optuna.logging.set_verbosity(optuna.logging.WARNING)

# A search space shaped like the paper's Table 1, with every distribution kind.
SPACE = {
    "lr": FloatDistribution(1e-7, 1e-1, log=True),
    "keep": FloatDistribution(0.5, 1.0, step=0.05),
    "l2": FloatDistribution(1e-6, 1e-1),
    "channels": IntDistribution(4, 256),
    "blocks": IntDistribution(1, 64, log=True),
    "batch": IntDistribution(2, 98, step=4),
    "opt": CategoricalDistribution(["adam", "sgd", "rmsprop"]),
}
BEST = {
    "lr": 7.6e-5,
    "keep": 0.85,
    "l2": 3.0e-4,
    "channels": 30,
    "blocks": 8,
    "batch": 30,
    "opt": "adam",
}
START = {"lr": 7.6e-5, "keep": 0.85, "l2": 3.0e-4, "channels": 30, "opt": "adam"}


def _suggest_all(trial: optuna.Trial, space: dict = SPACE) -> dict:
    return {name: trial._suggest(name, dist) for name, dist in space.items()}


def _study_with_best(sampler, params=BEST, space=SPACE, value=1.0, direction="minimize"):
    study = optuna.create_study(sampler=sampler, direction=direction)
    study.add_trial(
        optuna.trial.create_trial(
            params=params, distributions={n: space[n] for n in params}, value=value
        )
    )
    return study


def _ask_many(study, n, space=SPACE):
    """Draw n trials around the current best; FAIL them so the best never moves."""
    drawn = []
    for _ in range(n):
        trial = study.ask()
        drawn.append(_suggest_all(trial, space))
        study.tell(trial, state=TrialState.FAIL)
    return drawn


def _in_distribution(dist, value) -> bool:
    return dist._contains(dist.to_internal_repr(value))


# ---------------------------------------------------------------- constructor


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"factor": 1.0}, "factor must be .* greater than 1, got 1.0"),
        ({"factor": 0.5}, "got 0.5"),
        ({"factor": float("nan")}, "got nan"),
        ({"factor": float("inf")}, "got inf"),
        ({"factor": True}, "got True"),
        ({"factor": "10"}, "got '10'"),
        ({"scale": "linear"}, "scale must be 'log' or 'uniform', got 'linear'"),
        ({"start": [("lr", 1.0)]}, "start must be a dict"),
        ({"start": {1: 2.0}}, "start keys must be parameter names"),
        ({"start": {"lr": float("nan")}}, r"start\['lr'\] must be a finite number"),
        ({"start": {"lr": [1.0]}}, r"start\['lr'\]"),
        ({"seed": -1}, "seed must be a non-negative integer or None, got -1"),
        ({"seed": 1.5}, "got 1.5"),
        ({"seed": True}, "got True"),
    ],
)
def test_constructor_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        NeighborhoodSampler(**kwargs)


def test_constructor_is_keyword_only_and_accepts_good_arguments():
    with pytest.raises(TypeError):
        NeighborhoodSampler(START)  # type: ignore[misc]
    NeighborhoodSampler(start={"a": 1, "b": 2.5, "c": "x", "d": True, "e": None, "f": np.int64(3)})
    NeighborhoodSampler(factor=np.float64(3.0), scale="uniform", seed=np.int64(5))


# ---------------------------------------------------------------- start point


def test_first_trial_evaluates_start_exactly_and_later_ones_perturb_it():
    study = optuna.create_study(sampler=NeighborhoodSampler(start=START, seed=0))
    first = study.ask()
    params = _suggest_all(first)
    for name in START:
        assert params[name] == START[name]
        assert type(params[name]) is type(START[name])
    assert first.params["channels"] == 30 and type(first.params["channels"]) is int
    # Not in start: drawn at random, still valid.
    assert _in_distribution(SPACE["blocks"], params["blocks"])
    assert study.trials[0].user_attrs["parent_trial"] == "start"

    # Trial 0 is still running, so trial 1 perturbs around start instead of repeating it.
    second = study.ask()
    params2 = _suggest_all(second)
    assert params2["lr"] != START["lr"]
    assert START["lr"] / 10 <= params2["lr"] <= START["lr"] * 10
    assert 3 <= params2["channels"] <= 256
    assert study.trials[1].user_attrs["parent_trial"] == "start"


def test_start_value_outside_the_distribution_is_perturbed_not_copied():
    start = {"channels": 300, "keep": 0.87, "opt": "adagrad", "lr": -1.0}
    study = optuna.create_study(sampler=NeighborhoodSampler(start=start, seed=1))
    params = _suggest_all(study.ask())
    assert 30 <= params["channels"] <= 256  # around 300, clipped to high
    assert params["keep"] != 0.87 and _in_distribution(SPACE["keep"], params["keep"])
    assert params["opt"] in SPACE["opt"].choices
    assert _in_distribution(SPACE["lr"], params["lr"])  # centre <= 0: random


def test_failed_start_trial_is_not_repeated():
    def objective(trial):
        _suggest_all(trial)
        return float("nan") if trial.number == 0 else 1.0

    study = optuna.create_study(sampler=NeighborhoodSampler(start=START, seed=2))
    study.optimize(objective, n_trials=3)
    trials = study.trials
    assert trials[0].state == TrialState.FAIL
    assert all(trials[0].params[n] == START[n] for n in START)
    assert trials[1].params["lr"] != START["lr"]
    assert trials[1].user_attrs["parent_trial"] == "start"
    assert trials[2].user_attrs["parent_trial"] == 1


# ---------------------------------------------------------------- neighbourhood draws


def test_draws_stay_in_bounds_on_grid_and_in_the_neighbourhood():
    study = _study_with_best(NeighborhoodSampler(seed=3))
    drawn = _ask_many(study, 200)
    for params in drawn:
        for name in ("lr", "keep", "l2", "channels", "blocks", "batch"):
            value, dist, best = params[name], SPACE[name], BEST[name]
            assert _in_distribution(dist, value), (name, value)
            assert best / 10 * (1 - 1e-9) <= value <= best * 10 * (1 + 1e-9), (name, value)
        assert type(params["channels"]) is int and type(params["blocks"]) is int
        assert type(params["batch"]) is int and (params["batch"] - 2) % 4 == 0
        assert type(params["lr"]) is float and type(params["keep"]) is float
        keep_k = (params["keep"] - 0.5) / 0.05
        assert abs(keep_k - round(keep_k)) < 1e-8
        assert params["opt"] in SPACE["opt"].choices
    # The neighbourhood [0.085, 8.5] is clipped by keep's high of 1.0 and low of 0.5.
    keeps = {p["keep"] for p in drawn}
    assert min(keeps) == 0.5 and max(keeps) == 1.0
    assert all(study.trials[t].user_attrs["parent_trial"] == 0 for t in range(1, 201))


def test_log_draws_are_centred_on_the_best_in_log_space():
    dist = FloatDistribution(1e-9, 1e3, log=True)
    best = 1e-3
    values = np.array(
        [_neighbor_value(np.random.default_rng(i), dist, best, 10.0, True) for i in range(2000)]
    )
    ratios = np.log(values / best)
    assert np.all(values >= best / 10) and np.all(values <= best * 10)
    assert abs(np.median(ratios)) < 0.1
    # It really spreads over the whole decade on each side.
    assert ratios.min() < -2.0 and ratios.max() > 2.0


def test_int_draws_cover_the_grid_ends():
    dist = IntDistribution(0, 1000, step=5)
    values = {_neighbor_value(np.random.default_rng(i), dist, 35, 10.0, True) for i in range(500)}
    # [3.5, 350] on the grid 0, 5, 10, ...: 5 and 350 are the end points.
    assert min(values) == 5 and max(values) == 350
    assert all(v % 5 == 0 and type(v) is int for v in values)


def test_uniform_scale_draws_uniformly():
    space = {"x": FloatDistribution(1e-3, 1e3, log=True)}
    study = _study_with_best(NeighborhoodSampler(scale="uniform", seed=4), {"x": 1.0}, space)
    xs = np.array([p["x"] for p in _ask_many(study, 400, space)])
    assert np.all((xs >= 0.1) & (xs <= 10.0))
    # Uniform on [0.1, 10] has median ~5.05; log-uniform would have median ~1.
    assert 4.0 < np.median(xs) < 6.0


def test_relative_and_independent_paths_draw_the_same_value():
    sampler = NeighborhoodSampler(seed=5)
    study = _study_with_best(sampler)
    trial = study.ask()
    value = trial.suggest_float("lr", 1e-7, 1e-1, log=True)  # relative: the best has "lr"
    assert "lr" in trial.relative_params
    frozen = study._storage.get_trial(trial._trial_id)
    assert sampler.sample_independent(study, frozen, "lr", SPACE["lr"]) == value


# ---------------------------------------------------------------- seeding


def _draws(sampler, n=5, reverse=False):
    study = _study_with_best(sampler)
    space = dict(reversed(SPACE.items())) if reverse else SPACE
    return [dict(sorted(p.items())) for p in _ask_many(study, n, space)]


def test_same_seed_same_best_same_trial_number_gives_same_values():
    a = _draws(NeighborhoodSampler(seed=11))
    # Another sampler object, another suggest order, a pickled copy: same values.
    assert _draws(NeighborhoodSampler(seed=11), reverse=True) == a
    assert _draws(pickle.loads(pickle.dumps(NeighborhoodSampler(seed=11)))) == a
    # Successive trials differ from each other.
    assert a[0]["lr"] != a[1]["lr"]


def test_different_seeds_and_reseeding_give_different_values():
    a = _draws(NeighborhoodSampler(seed=11))
    assert _draws(NeighborhoodSampler(seed=12)) != a
    assert _draws(NeighborhoodSampler()) != _draws(NeighborhoodSampler())
    reseeded = NeighborhoodSampler(seed=11)
    reseeded.reseed_rng()
    assert _draws(reseeded) != a


def test_same_seed_gives_the_same_study_on_journal_and_in_memory_storage(tmp_path):
    def objective(trial):
        p = _suggest_all(trial)
        return (math.log(p["lr"]) - math.log(1e-3)) ** 2 + (p["channels"] - 64) ** 2 / 100

    journal = JournalStorage(JournalFileBackend(str(tmp_path / "study.log")))
    on_disk = optuna.create_study(
        storage=journal, sampler=NeighborhoodSampler(start=START, seed=9)
    )
    on_disk.optimize(objective, n_trials=12)
    in_memory = optuna.create_study(sampler=NeighborhoodSampler(start=START, seed=9))
    in_memory.optimize(objective, n_trials=12)

    assert [t.params for t in on_disk.trials] == [t.params for t in in_memory.trials]
    parents = [t.user_attrs["parent_trial"] for t in on_disk.trials]
    assert parents[0] == "start"
    assert all(p == "start" or 0 <= p < i for i, p in enumerate(parents))
    # A second worker on the same journal continues from the best of the first.
    worker2 = optuna.load_study(
        study_name=on_disk.study_name, storage=journal, sampler=NeighborhoodSampler(seed=10)
    )
    best_before = worker2.best_trial.number
    worker2.optimize(objective, n_trials=1)
    assert worker2.trials[-1].user_attrs["parent_trial"] == best_before


def test_best_is_read_without_listing_trials(monkeypatch):
    study = _study_with_best(NeighborhoodSampler(seed=6))

    def forbidden(*args, **kwargs):
        raise AssertionError("the sampler listed all trials")

    list_trials = study._storage.get_all_trials

    def unfinished_only(study_id, deepcopy=True, states=None):
        # Listing the WAITING/RUNNING trials (a few, one per worker) is allowed; listing the complete ones is not.
        if states is None or TrialState.COMPLETE in states:
            forbidden()
        return list_trials(study_id, deepcopy=deepcopy, states=states)

    for _ in range(3):
        trial = study.ask()  # ask itself lists WAITING trials: not the sampler's doing
        with monkeypatch.context() as patch:
            patch.setattr(optuna.study.Study, "get_trials", forbidden)
            patch.setattr(optuna.study.Study, "_get_trials", forbidden)
            patch.setattr(study._storage, "get_all_trials", unfinished_only)
            params = _suggest_all(trial)
        assert params["lr"] != BEST["lr"]
        study.tell(trial, state=TrialState.FAIL)


def test_a_better_trial_finished_by_another_worker_becomes_the_centre():
    # Two workers (two samplers) on one storage; the sampler only re-reads trials that may have
    # changed the best since its last look, so it must see the other worker's new best, and a
    # trial that was still running at its last look and finished better later.
    storage = optuna.storages.InMemoryStorage()
    mine = optuna.create_study(storage=storage, sampler=NeighborhoodSampler(seed=1), study_name="s")
    theirs = optuna.load_study(storage=storage, sampler=optuna.samplers.RandomSampler(seed=2), study_name="s")
    lr = FloatDistribution(1e-7, 1e-1, log=True)
    mine.add_trial(optuna.trial.create_trial(params={"lr": 1e-4}, distributions={"lr": lr}, value=1.0))

    def parent_of_my_next_trial() -> int:
        trial = mine.ask()
        trial.suggest_float("lr", 1e-7, 1e-1, log=True)
        mine.tell(trial, 5.0)  # worse than all: never the best
        return mine.trials[trial.number].user_attrs["parent_trial"]

    assert parent_of_my_next_trial() == 0
    running = theirs.ask({"lr": lr})  # still running at my next look
    finished = theirs.ask({"lr": lr})
    theirs.tell(finished, 0.5)
    assert parent_of_my_next_trial() == finished.number
    theirs.tell(running, 0.1)
    assert parent_of_my_next_trial() == running.number


# ---------------------------------------------------------------- fallbacks


@pytest.mark.parametrize(
    "best_params, best_space, dist, check_spread",
    [
        # best <= 0: no multiplicative neighbourhood
        ({"x": 0.0}, {"x": FloatDistribution(-1.0, 1.0)}, FloatDistribution(-1.0, 1.0),
         lambda xs: min(xs) < 0 < max(xs)),
        ({"x": -3}, {"x": IntDistribution(-10, 10)}, IntDistribution(-10, 10),
         lambda xs: min(xs) < -5 and max(xs) > 5),
        # categorical
        ({"x": "a"}, {"x": CategoricalDistribution(["a", "b", "c"])},
         CategoricalDistribution(["a", "b", "c"]), lambda xs: set(xs) == {"a", "b", "c"}),
        # the best trial lacks the parameter
        ({"y": 1.0}, {"y": FloatDistribution(0.1, 10.0)}, FloatDistribution(2.0, 300.0),
         lambda xs: max(xs) > 100),
        # bounds moved away: [1e-4, 1e-2] misses [1, 5]
        ({"x": 1e-3}, {"x": FloatDistribution(1e-6, 1.0, log=True)},
         FloatDistribution(1.0, 5.0, log=True), lambda xs: min(xs) < 1.5 and max(xs) > 4),
        ({"x": 2}, {"x": IntDistribution(1, 10, step=1)}, IntDistribution(50, 100, step=5),
         lambda xs: min(xs) < 60 and max(xs) > 90),
    ],
)
def test_fallbacks_draw_valid_random_values(best_params, best_space, dist, check_spread):
    study = _study_with_best(NeighborhoodSampler(seed=7), best_params, best_space)
    xs = [p["x"] for p in _ask_many(study, 60, {"x": dist})]
    assert all(_in_distribution(dist, x) for x in xs)
    if not isinstance(dist, CategoricalDistribution):
        expected = int if isinstance(dist, IntDistribution) else float
        assert all(type(x) is expected for x in xs)
    assert check_spread(xs)


def test_narrowed_bounds_keep_draws_in_the_new_bounds_and_the_neighbourhood():
    study = _study_with_best(
        NeighborhoodSampler(seed=8), {"x": 0.5}, {"x": FloatDistribution(0.01, 1.0)}
    )
    xs = [p["x"] for p in _ask_many(study, 100, {"x": FloatDistribution(0.01, 0.1)})]
    assert all(0.05 <= x <= 0.1 for x in xs)
    assert max(xs) - min(xs) > 0.03


# ---------------------------------------------------------------- whole studies


def test_conditional_and_dynamic_search_space_with_nan_runs():
    def objective(trial):
        arch = trial.suggest_categorical("arch", ["unet", "resnet"])
        lr = trial.suggest_float("lr", 1e-5, 1e-1, log=True)
        if arch == "unet":
            depth = trial.suggest_int("depth", 2, 5)
            trial.suggest_float("dropout", 0.0, 0.5, step=0.1)
        else:
            depth = trial.suggest_int("blocks", 1, 32, log=True)
        # Bounds that change between trials.
        width = trial.suggest_int("width", 8, 16 * (1 + trial.number % 3), step=8)
        if trial.number % 7 == 3:
            return float("nan")
        return math.log(lr) ** 2 + depth + width / 100

    sampler = NeighborhoodSampler(start={"lr": 1e-3, "depth": 3, "arch": "unet"}, seed=0)
    study = optuna.create_study(sampler=sampler)
    study.optimize(objective, n_trials=30)

    states = [t.state for t in study.trials]
    assert len(states) == 30
    assert states.count(TrialState.FAIL) == 4 and states.count(TrialState.COMPLETE) == 26
    for t in study.trials:
        for name, value in t.params.items():
            assert _in_distribution(t.distributions[name], value), (t.number, name, value)
    best_numbers = {t.number for t in study.trials if t.state == TrialState.COMPLETE}
    assert all(
        t.user_attrs["parent_trial"] in best_numbers for t in study.trials[1:]
    )


def test_maximize_perturbs_the_trial_with_the_largest_value():
    dist = {"x": FloatDistribution(1e-2, 1e4, log=True)}
    for direction, best_x, best_number in (("maximize", 100.0, 1), ("minimize", 1.0, 0)):
        study = optuna.create_study(sampler=NeighborhoodSampler(seed=0), direction=direction)
        for x, value in ((1.0, 1.0), (100.0, 5.0), (10.0, 3.0)):
            trial = optuna.trial.create_trial(params={"x": x}, distributions=dist, value=value)
            study.add_trial(trial)
        xs = [p["x"] for p in _ask_many(study, 50, dist)]
        assert all(best_x / 10 <= x <= best_x * 10 for x in xs), direction
        assert study.trials[-1].user_attrs["parent_trial"] == best_number


def test_parent_trial_follows_the_best_and_is_absent_without_a_centre():
    study = optuna.create_study(sampler=NeighborhoodSampler(seed=0))
    trial = study.ask()
    trial.suggest_float("x", 0.1, 10.0)
    study.tell(trial, 5.0)
    assert "parent_trial" not in study.trials[0].user_attrs  # no start, no best: random

    for value in (3.0, 4.0):
        trial = study.ask()
        trial.suggest_float("x", 0.1, 10.0)
        study.tell(trial, value)
    assert [t.user_attrs.get("parent_trial") for t in study.trials] == [None, 0, 1]


def test_multi_objective_study_is_refused_with_a_clear_error():
    study = optuna.create_study(
        sampler=NeighborhoodSampler(seed=0), directions=["minimize", "maximize"]
    )
    with pytest.raises(ValueError, match="needs a single-objective study.*NSGAIISampler"):
        study.optimize(lambda t: (t.suggest_float("x", 0, 1), 0.0), n_trials=1)
    assert study.trials[0].state == TrialState.FAIL


def test_n_jobs_threads_share_the_sampler():
    def objective(trial):
        return sum(math.log(v) for v in (
            trial.suggest_float("a", 1e-3, 1e3, log=True),
            trial.suggest_int("b", 1, 100),
        )) ** 2

    study = optuna.create_study(sampler=NeighborhoodSampler(start={"a": 1.0, "b": 10}))
    study.optimize(objective, n_trials=20, n_jobs=4)
    assert len([t for t in study.trials if t.state == TrialState.COMPLETE]) == 20


def test_hyperband_bracket_study_still_finds_the_best():
    # HyperbandPruner hands samplers a bracket study that has no best_trial attribute.
    def objective(trial):
        x = trial.suggest_float("x", 1e-3, 1e3, log=True)
        for step in range(3):
            trial.report(abs(math.log(x)) + 1 / (step + 1), step)
        return abs(math.log(x))

    study = optuna.create_study(
        sampler=NeighborhoodSampler(start={"x": 50.0}, seed=0),
        pruner=optuna.pruners.HyperbandPruner(min_resource=1, max_resource=3),
    )
    study.optimize(objective, n_trials=10)
    parents = [t.user_attrs["parent_trial"] for t in study.trials]
    assert parents[0] == "start" and all(isinstance(p, int) for p in parents[1:])
