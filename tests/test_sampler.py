"""Tests for NeighborhoodSampler (the paper's search scheme as an Optuna sampler)."""

from __future__ import annotations

import math
import pickle

from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
import numpy as np
import optuna
from optuna.distributions import CategoricalDistribution
from optuna.distributions import check_distribution_compatibility
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
        ({"keep_categorical": -0.1}, "keep_categorical must be a probability between 0 and 1, got -0.1"),
        ({"keep_categorical": 1.5}, "keep_categorical .* got 1.5"),
        ({"keep_categorical": float("nan")}, "keep_categorical .* got nan"),
        ({"keep_categorical": True}, "keep_categorical .* got True"),
        ({"keep_categorical": "0.5"}, "keep_categorical .* got '0.5'"),
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
    NeighborhoodSampler(keep_categorical=0)
    NeighborhoodSampler(keep_categorical=np.float64(1.0))


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
    dist = IntDistribution(5, 1000, step=5)  # low > 0: the multiplicative neighbourhood
    values = {_neighbor_value(np.random.default_rng(i), dist, 35, 10.0, True) for i in range(500)}
    # [3.5, 350] on the grid 5, 10, 15, ...: 5 and 350 are the end points.
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
        # the best trial lacks the parameter
        ({"y": 1.0}, {"y": FloatDistribution(0.1, 10.0)}, FloatDistribution(2.0, 300.0),
         lambda xs: max(xs) > 100),
        # bounds moved away: [1e-4, 1e-2] misses [1, 5]
        ({"x": 1e-3}, {"x": FloatDistribution(1e-6, 1.0, log=True)},
         FloatDistribution(1.0, 5.0, log=True), lambda xs: min(xs) < 1.5 and max(xs) > 4),
        ({"x": 2}, {"x": IntDistribution(1, 10, step=1)}, IntDistribution(50, 100, step=5),
         lambda xs: min(xs) < 60 and max(xs) > 90),
        # additive neighbourhood [45, 55] misses the new bounds [-10, 10]
        ({"x": 50.0}, {"x": FloatDistribution(-100.0, 100.0)}, FloatDistribution(-10.0, 10.0),
         lambda xs: min(xs) < -5 and max(xs) > 5),
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


# ---------------------------------------------------------------- categorical, zero and negative ranges


def _both_paths(sampler, study, space):
    """One trial's values for ``space`` from sample_relative and from sample_independent."""
    trial = study.ask()
    frozen = study._storage.get_trial(trial._trial_id)
    relative = sampler.sample_relative(study, frozen, space)
    independent = {n: sampler.sample_independent(study, frozen, n, d) for n, d in space.items()}
    study.tell(trial, state=TrialState.FAIL)  # the best never moves
    return relative, independent


def _same(a, b) -> bool:
    both_nan = isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b)
    return type(a) is type(b) and (a == b or both_nan)


def test_sample_relative_gives_categorical_and_negative_range_parameters_a_value():
    # Reported: AttributeError on the categorical; no value at all for the [-10, 10] float.
    space = {
        "loss": CategoricalDistribution(["joint", "per_class", "dice_ce"]),
        "offset": FloatDistribution(-10.0, 10.0, step=0.5),
    }
    sampler = NeighborhoodSampler(seed=0)
    study = _study_with_best(sampler, {"loss": "per_class", "offset": -2.0}, space)
    relative, independent = _both_paths(sampler, study, space)
    assert relative.keys() == space.keys()
    assert all(_same(relative[n], independent[n]) for n in space)
    assert all(_in_distribution(space[n], relative[n]) for n in space)


@pytest.mark.parametrize(
    "dist, best, factor, lo, hi",
    [
        # best ± (high - low) * log10(factor) / 4, clipped to [low, high], on the step grid
        (FloatDistribution(-10.0, 10.0, step=0.5), -2.0, 10.0, -7.0, 3.0),
        (FloatDistribution(-1.0, 1.0), 0.0, 10.0, -0.5, 0.5),
        (IntDistribution(-10, 10), -3, 10.0, -8, 2),
        (IntDistribution(-10, 10), -2, 100.0, -10, 8),  # ± 10: clipped at low
        (IntDistribution(-10, 10), -2, 2.0, -3, -1),  # ± 1.5
        (IntDistribution(-100, -10, step=5), -50, 10.0, -70, -30),  # ± 22.5
        (FloatDistribution(0.0, 0.5, step=0.1), 0.0, 10.0, 0.0, 0.1),  # ± 0.125
        (FloatDistribution(0.0, 0.5, step=0.1), 0.2, 10.0, 0.1, 0.3),
    ],
)
def test_ranges_with_zero_or_negative_values_draw_in_an_additive_neighbourhood(
    dist, best, factor, lo, hi
):
    sampler = NeighborhoodSampler(factor=factor, seed=12)
    study = _study_with_best(sampler, {"x": best}, {"x": dist})
    xs = []
    for _ in range(150):
        relative, independent = _both_paths(sampler, study, {"x": dist})
        assert _same(relative["x"], independent["x"])
        xs.append(relative["x"])
    expected = int if isinstance(dist, IntDistribution) else float
    assert all(_in_distribution(dist, x) and type(x) is expected for x in xs)
    if dist.step is None:
        assert all(lo <= x <= hi for x in xs)
        assert min(xs) < lo + 0.1 * (hi - lo) and max(xs) > hi - 0.1 * (hi - lo)
    else:  # every grid point of the neighbourhood is reached, the ends included
        assert min(xs) == pytest.approx(lo) and max(xs) == pytest.approx(hi)
    # The draws are relative ones in a study, not a fallback to independent sampling.
    trial = study.ask()
    trial._suggest("x", dist)
    assert "x" in trial.relative_params


@pytest.mark.parametrize("keep, kept_low, kept_high", [(None, 0.65, 0.85), (0.0, 0, 0), (1.0, 1, 1)])
def test_categorical_keeps_the_best_choice_with_the_stated_probability(keep, kept_low, kept_high):
    dist = CategoricalDistribution(["adam", "sgd", "rmsprop", None, 3])
    kwargs = {} if keep is None else {"keep_categorical": keep}  # None: the default, 0.75
    sampler = NeighborhoodSampler(seed=13, **kwargs)
    study = _study_with_best(sampler, {"opt": "sgd"}, {"opt": dist})
    drawn = []
    for _ in range(300):
        relative, independent = _both_paths(sampler, study, {"opt": dist})
        assert _same(relative["opt"], independent["opt"])
        drawn.append(relative["opt"])
    assert kept_low <= drawn.count("sgd") / len(drawn) <= kept_high
    others = [x for x in drawn if x != "sgd"]
    if others:  # the other choices share the rest evenly
        for choice in ("adam", "rmsprop", None, 3):
            assert 0.1 <= others.count(choice) / len(others) <= 0.4, choice


def test_categorical_choice_no_longer_offered_falls_back_to_random():
    sampler = NeighborhoodSampler(seed=14)
    study = _study_with_best(
        sampler, {"x": "d"}, {"x": CategoricalDistribution(["a", "b", "c", "d"])}
    )
    trial = study.ask()
    frozen = study._storage.get_trial(trial._trial_id)
    fewer = CategoricalDistribution(["a", "b", "c"])
    xs = [sampler.sample_independent(study, frozen, f"x{i}", fewer) for i in range(60)]
    assert set(xs) == {"a", "b", "c"}
    xs = [sampler.sample_relative(study, frozen, {"x": fewer})["x"] for _ in range(3)]
    assert xs[0] in {"a", "b", "c"} and len(set(xs)) == 1  # keyed on the trial: repeatable


def test_none_is_a_choice_like_any_other():
    dist = CategoricalDistribution([None, "a", "b"])
    sampler = NeighborhoodSampler(start={"x": None}, seed=17)
    study = optuna.create_study(sampler=sampler)
    relative, independent = _both_paths(sampler, study, {"x": dist})
    assert relative["x"] is None and independent["x"] is None  # the start, as is
    drawn = [_both_paths(sampler, study, {"x": dist})[0]["x"] for _ in range(200)]
    assert 0.65 <= drawn.count(None) / len(drawn) <= 0.85  # kept three times in four


@pytest.mark.parametrize(
    "dist, value",
    [
        (CategoricalDistribution(["only"]), "only"),
        (IntDistribution(3, 3), 3),
        (FloatDistribution(2.5, 2.5), 2.5),
        (FloatDistribution(-1.0, -1.0, step=0.5), -1.0),
        (IntDistribution(-4, -4, step=2), -4),
    ],
)
def test_single_value_distributions_get_their_value(dist, value):
    sampler = NeighborhoodSampler(seed=15)
    study = _study_with_best(sampler, {"x": value}, {"x": dist})
    relative, independent = _both_paths(sampler, study, {"x": dist})
    assert _same(relative["x"], value) and _same(independent["x"], value)


def test_study_with_categorical_and_negative_range_parameters():
    def objective(trial):
        loss = trial.suggest_categorical("loss", ["joint", "per_class", "dice_ce"])
        block = trial.suggest_categorical("block", ["plain", "residual"])
        augment = trial.suggest_categorical("augment", [True, False])
        offset = trial.suggest_float("offset", -10.0, 10.0, step=0.5)
        shift = trial.suggest_int("shift", -5, 5)
        lr = trial.suggest_float("lr", 1e-5, 1e-1, log=True)
        # A wrong choice costs 3, more than the numeric misses around a good trial.
        wrong_choices = (loss != "dice_ce") + (block != "residual") + (augment is not True)
        return (
            3 * wrong_choices
            + (offset + 3.5) ** 2 / 10 + abs(shift + 2) + math.log10(lr / 1e-3) ** 2
        )

    start = {"loss": "joint", "block": "plain", "augment": False, "offset": 4.0, "shift": 3,
             "lr": 1e-2}
    study = optuna.create_study(sampler=NeighborhoodSampler(start=start, seed=3))
    study.optimize(objective, n_trials=80)

    trials = study.trials
    assert all(t.state == TrialState.COMPLETE for t in trials)
    assert trials[0].params == start
    kept = 0
    for t in trials:
        for name, value in t.params.items():
            assert _in_distribution(t.distributions[name], value), (t.number, name, value)
    for t in trials[1:]:
        centre = trials[t.user_attrs["parent_trial"]].params
        # Additive neighbourhoods: ± 20 / 4 and ± 10 / 4 with the default factor 10.
        assert abs(t.params["offset"] - centre["offset"]) <= 5.0
        assert abs(t.params["shift"] - centre["shift"]) <= 2.5
        kept += sum(t.params[n] == centre[n] for n in ("loss", "block", "augment"))
    assert 0.6 <= kept / (3 * (len(trials) - 1)) <= 0.9
    # It walks from the start's choices and signs to the optimum's.
    best = study.best_params
    assert (best["loss"], best["block"], best["augment"]) == ("dice_ce", "residual", True)
    assert best["offset"] < 0 and best["shift"] < 0


# ---------------------------------------------------------------- every distribution

_STEPS = [0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0]
_CHOICES = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 3), st.floats(-2.0, 2.0), st.just(float("nan")),
    st.text(max_size=2),
)


@st.composite
def _distributions(draw):
    kind = draw(st.sampled_from(
        ["float", "float_log", "float_step", "int", "int_log", "int_step", "categorical"]
    ))
    if kind == "float":
        low = draw(st.floats(-1e6, 1e6))
        return FloatDistribution(low, low + draw(st.floats(0.0, 1e6)))
    if kind == "float_log":
        low = draw(st.floats(1e-8, 1e6))
        return FloatDistribution(low, low * draw(st.floats(1.0, 1e6)), log=True)
    if kind == "float_step":
        step = draw(st.sampled_from(_STEPS))
        low = draw(st.floats(-1e3, 1e3))
        return FloatDistribution(low, low + draw(st.integers(0, 400)) * step, step=step)
    if kind == "int":
        low = draw(st.integers(-10**6, 10**6))
        return IntDistribution(low, low + draw(st.integers(0, 10**6)))
    if kind == "int_log":
        low = draw(st.integers(1, 10**6))
        return IntDistribution(low, low + draw(st.integers(0, 10**6)), log=True)
    if kind == "int_step":
        step = draw(st.integers(1, 50))
        low = draw(st.integers(-1000, 1000))
        return IntDistribution(low, low + step * draw(st.integers(0, 200)), step=step)
    return CategoricalDistribution(draw(st.lists(_CHOICES, min_size=1, max_size=5)))


@st.composite
def _value_in(draw, dist):
    if isinstance(dist, CategoricalDistribution):
        return draw(st.sampled_from(dist.choices))
    if isinstance(dist, IntDistribution):
        return dist.low + dist.step * draw(st.integers(0, (dist.high - dist.low) // dist.step))
    if dist.step is not None:
        k = draw(st.integers(0, round((dist.high - dist.low) / dist.step)))
        return min(dist.low + k * dist.step, dist.high)
    if dist.log:
        u = draw(st.floats(0.0, 1.0))
        value = math.exp(math.log(dist.low) + u * (math.log(dist.high) - math.log(dist.low)))
        return min(max(value, dist.low), dist.high)
    return min(dist.low + draw(st.floats(0.0, 1.0)) * (dist.high - dist.low), dist.high)


def _compatible(a, b) -> bool:
    try:
        check_distribution_compatibility(a, b)
    except ValueError:
        return False
    return True


@pytest.mark.filterwarnings("ignore:The distribution is specified by:UserWarning")  # float highs
@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(data=st.data())
def test_every_distribution_gets_a_valid_value_on_both_paths(data):
    # Parameters whose distribution may differ from the best trial's (bounds, kind, choices),
    # that the best may lack, around a best trial or a start point.
    space, best_space, best_params = {}, {}, {}
    for i in range(data.draw(st.integers(1, 4))):
        name = f"p{i}"
        best_dist = data.draw(_distributions())
        space[name] = best_dist if data.draw(st.booleans()) else data.draw(_distributions())
        if data.draw(st.integers(0, 4)):
            best_space[name] = best_dist
            best_params[name] = data.draw(_value_in(best_dist))
    factor = data.draw(st.sampled_from([1.5, 10.0, 1e4]))
    use_start = data.draw(st.booleans())
    if use_start:
        start = {
            n: v for n, v in best_params.items() if not (isinstance(v, float) and math.isnan(v))
        }
        sampler = NeighborhoodSampler(start=start or None, factor=factor, seed=16)
        study = optuna.create_study(sampler=sampler)
    else:
        sampler = NeighborhoodSampler(factor=factor, seed=16)
        study = _study_with_best(sampler, best_params, best_space)

    for _ in range(2):  # with a start: evaluated as is, then perturbed
        relative, independent = _both_paths(sampler, study, space)
        assert relative.keys() == space.keys()
        for name, dist in space.items():
            value = relative[name]
            assert _same(value, independent[name]), (name, dist, value, independent[name])
            assert _in_distribution(dist, value), (name, dist, value)
            if isinstance(dist, IntDistribution):
                assert type(value) is int
            elif isinstance(dist, FloatDistribution):
                assert type(value) is float
            centre = best_params.get(name)
            if use_start or best_space.get(name) != dist or isinstance(dist, CategoricalDistribution):
                continue
            # Around the best, in its own distribution: always inside the neighbourhood.
            if dist.low > 0:
                assert centre / factor * (1 - 1e-9) <= value <= centre * factor * (1 + 1e-9)
            else:
                half_width = (dist.high - dist.low) * math.log10(factor) / 4
                assert abs(value - centre) <= half_width * (1 + 1e-9) + 1e-9 * abs(centre)

    # Through Optuna's own suggest path, where the storage accepts the distributions.
    if all(_compatible(best_space[n], d) for n, d in space.items() if n in best_space):
        trial = study.ask()
        for name, dist in space.items():
            assert _in_distribution(dist, trial._suggest(name, dist))
