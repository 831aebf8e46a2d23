"""The search scheme of Avetisian's paper as an Optuna sampler."""

from __future__ import annotations

from collections.abc import Mapping
import math
import numbers
import threading
from typing import Any
from typing import NamedTuple
from typing import TYPE_CHECKING
import zlib

import numpy as np
from optuna.distributions import BaseDistribution
from optuna.distributions import CategoricalDistribution
from optuna.distributions import check_distribution_compatibility
from optuna.distributions import FloatDistribution
from optuna.distributions import IntDistribution
from optuna.samplers import BaseSampler
from optuna.samplers import RandomSampler
from optuna.study import StudyDirection
from optuna.trial import TrialState

from hpsearch.vocabulary import PARENT_ATTR, START_CLAIM_ATTR


if TYPE_CHECKING:
    from collections.abc import Sequence

    from optuna.storages import BaseStorage
    from optuna.study import Study
    from optuna.trial import FrozenTrial


# Contexts of trials that never reach after_trial (ask without tell) must not pile up.
_MAX_CACHED_CONTEXTS = 1024
# Studies whose best trial the sampler follows (one, unless a sampler serves several studies).
_MAX_FOLLOWED_STUDIES = 16
# What a draw that found no valid value returns: None is a valid categorical choice.
_NO_VALUE = object()


class _Context(NamedTuple):
    """What one trial draws around, looked up once per trial."""

    center: Mapping[str, Any]  # best params (or start); empty: no centre at all
    distributions: Mapping[str, BaseDistribution] | None  # of the best trial; None for start
    exact_start: bool  # this trial evaluates the start point as is


class _BestSoFar:
    """What the sampler has read of one study: its best trial, and trials that may change it."""

    def __init__(self, storage: BaseStorage) -> None:
        self.storage = storage  # held, so that its id is not reused by another storage
        self.best: FrozenTrial | None = None  # what Optuna last gave as the best trial
        self.next_number = 0  # every trial numbered below this has been read
        self.unfinished: set[int] = set()  # numbers read while WAITING or RUNNING


class NeighborhoodSampler(BaseSampler):
    """Draw each hyperparameter around the best trial so far, as in Avetisian's paper.

    The paper's scheme: take the best hyperparameters so far, draw each new value in
    ``[best / factor, best * factor]`` (``factor=10``), train, keep the better. Here "best" is
    the best COMPLETE trial of the study (``study.best_trial``; FAIL trials, such as those whose
    objective returned NaN, never count). Before any trial completes, "best" is ``start``.

    Rules:

    * Numeric parameters whose range is positive (``low > 0``; every ``log`` range) are drawn
      from ``[best / factor, best * factor]`` intersected with ``[low, high]``, log-uniformly
      (``scale="log"``) or uniformly, then put on the distribution's step grid.
    * Numeric parameters whose range holds zero or negative values (``low <= 0``), where a
      multiplicative neighbourhood cannot change sign or leave zero, are drawn uniformly from
      ``best ± (high - low) * log10(factor) / 4`` intersected with ``[low, high]``, on the step
      grid. With ``factor=10`` that is a quarter of the range either side: the share of a
      four-decade log range (the paper's learning rate) that ``[best / 10, best * 10]`` covers;
      a larger factor widens both kinds alike.
    * Categorical parameters keep the best trial's choice with probability ``keep_categorical``
      and otherwise take one of the other choices, uniformly.
    * A parameter with a single value gets that value. Parameters the best trial lacks, a best
      value that is not a valid centre (a positive range with a best ``<= 0``, a choice that is
      no longer offered) and an empty intersection fall back to plain random sampling, so every
      parameter gets a valid value, in ``sample_relative`` as in ``sample_independent``.
    * The first trial given ``start`` evaluates it exactly: while no trial is complete, the first
      trial to ask for a parameter claims the start point (recorded in a study system attribute)
      and gets every ``start`` value that is valid for its distribution as is; later trials
      perturb around ``start``. Two workers starting at the same moment may both claim it.
    * Each trial records what it was drawn around in the user attribute ``"parent_trial"``: the
      best trial's number, or ``"start"``. Trials drawn with no centre at all record nothing.
    * Draws are keyed on ``(seed, trial number, parameter name)``: the same seed, the same best
      and the same trial number give the same values in any process, and different trials (so
      different workers) get different streams.

    Example:

        .. testcode::

            import optuna
            from hpsearch import NeighborhoodSampler


            def objective(trial):
                lr = trial.suggest_float("learning_rate", 1e-6, 1e-2, log=True)
                channels = trial.suggest_int("channels", 8, 64)
                return (lr - 1e-4) ** 2 + (channels - 30) ** 2


            sampler = NeighborhoodSampler(
                start={"learning_rate": 7.6e-5, "channels": 30}, seed=0
            )
            study = optuna.create_study(sampler=sampler)
            study.optimize(objective, n_trials=10)

    Args:
        start:
            The start point (the paper's Table 1), ``{name: value}`` with numbers, strings,
            booleans or ``None``; it is the centre until a trial completes. ``None`` (default):
            random sampling until a trial completes.
        factor:
            Width of the neighbourhood, greater than 1: values are drawn in
            ``[best / factor, best * factor]`` (ranges with ``low <= 0``: see the rules). The
            paper uses 10.
        scale:
            ``"log"`` (default) draws log-uniformly in a multiplicative neighbourhood, so a value
            is as likely to shrink as to grow; ``"uniform"`` draws uniformly. Additive
            neighbourhoods (ranges with ``low <= 0``) are always drawn uniformly.
        keep_categorical:
            Probability in ``[0, 1]`` that a categorical parameter keeps the best trial's
            choice. The default 0.75 makes a yes/no choice follow the best three times in four
            (0.5 would make it a coin toss, i.e. random search on that dimension) while each
            other choice is still tried.
        seed:
            A non-negative integer for reproducible draws. ``None`` draws a fresh seed, so that
            workers differ. Optuna reseeds samplers when ``n_jobs > 1``, like its own samplers.
    """

    def __init__(
        self,
        *,
        start: Mapping[str, Any] | None = None,
        factor: float = 10.0,
        scale: str = "log",
        keep_categorical: float = 0.75,
        seed: int | None = None,
    ) -> None:
        self._start = _check_start(start)
        self._factor = _check_factor(factor)
        if scale not in ("log", "uniform"):
            raise ValueError(f"scale must be 'log' or 'uniform', got {scale!r}.")
        self._log_scale = scale == "log"
        self._keep_categorical = _check_keep_categorical(keep_categorical)
        self._seed = _fresh_seed() if seed is None else _check_seed(seed)
        # Per-trial look-ups, so a trial reads the best trial once. n_jobs > 1 runs trials in
        # threads that share this sampler, hence the lock.
        self._contexts: dict[tuple[int, int, int], _Context] = {}
        self._bests: dict[tuple[int, int], _BestSoFar] = {}
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        # Locks do not pickle; the cache is only valid in this process anyway.
        state = self.__dict__.copy()
        del state["_lock"]
        state["_contexts"] = {}
        state["_bests"] = {}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def reseed_rng(self) -> None:
        self._seed = _fresh_seed()

    def infer_relative_search_space(
        self, study: Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        context = self._context(study, trial)
        if context.distributions is None:
            return {}
        # Only numeric parameters that get a neighbourhood draw. Categorical ones go to
        # sample_independent: Optuna refuses a relative value whose choices differ from the
        # trial's own, and there the trial's own distribution is seen (bounds may have changed
        # since the best trial). Both paths draw the same value.
        return {
            name: dist
            for name, dist in context.distributions.items()
            if isinstance(dist, (FloatDistribution, IntDistribution))
            and not dist.single()
            and _valid_center(dist, context.center.get(name))
        }

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        if not search_space:
            return {}
        context = self._context(study, trial)
        return {
            name: self._sample(study, trial, context, name, dist)
            for name, dist in search_space.items()
        }

    def sample_independent(
        self,
        study: Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        context = self._context(study, trial)
        return self._sample(study, trial, context, param_name, param_distribution)

    def _sample(
        self, study: Study, trial: FrozenTrial, context: _Context, name: str, dist: BaseDistribution
    ) -> Any:
        """One parameter's value: the start as is, a neighbourhood draw, or a random one."""
        if context.exact_start and name in context.center:
            value = _exact_value(dist, context.center[name])
            if value is not _NO_VALUE:
                return value

        if dist.single():
            return _plain(dist, dist.to_external_repr(_single_internal(dist)))

        if name in context.center:
            center = context.center[name]
            if isinstance(dist, CategoricalDistribution):
                # Judged by the choice itself: the best's choices may differ from this trial's.
                choice = _categorical_value(
                    self._rng(trial, name), dist, center, self._keep_categorical
                )
                if choice is not _NO_VALUE:
                    return choice
            elif _valid_center(dist, center) and _compatible(context.distributions, name, dist):
                number = _neighbor_value(
                    self._rng(trial, name), dist, center, self._factor, self._log_scale
                )
                if number is not None:
                    return number

        # No centre, a centre that fits no neighbourhood, or a neighbourhood that misses [low, high].
        seed = int(self._rng(trial, name, fallback=True).integers(2**32))
        value = RandomSampler(seed=seed).sample_independent(study, trial, name, dist)
        return _plain(dist, value)

    def after_trial(
        self,
        study: Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        with self._lock:
            self._contexts.pop(_trial_key(study, trial), None)

    def _rng(self, trial: FrozenTrial, name: str, fallback: bool = False) -> np.random.Generator:
        # A fresh generator per (seed, trial number, name): the draw does not depend on which
        # process draws or on the order of suggest calls. crc32 is stable across processes,
        # unlike hash().
        entropy = [self._seed, trial.number, zlib.crc32(name.encode("utf-8")), int(fallback)]
        return np.random.default_rng(entropy)

    def _context(self, study: Study, trial: FrozenTrial) -> _Context:
        key = _trial_key(study, trial)
        with self._lock:
            context = self._contexts.get(key)
        if context is not None:
            return context

        if len(study.directions) > 1:
            raise ValueError(
                "NeighborhoodSampler needs a single-objective study: a multi-objective study has "
                "no single best trial; use optuna's NSGAIISampler (or TPESampler) for it, or "
                "optimise one objective."
            )

        best = self._best_so_far(study, trial)
        if best is not None:
            context = _Context(best.params, best.distributions, exact_start=False)
            parent: int | str | None = best.number
        elif self._start is not None:
            context = _Context(self._start, None, exact_start=self._claim_start(study, trial))
            parent = "start"
        else:
            context = _Context({}, None, exact_start=False)
            parent = None

        if parent is not None:
            study._storage.set_trial_user_attr(trial._trial_id, PARENT_ATTR, parent)
        with self._lock:
            while len(self._contexts) >= _MAX_CACHED_CONTEXTS:
                self._contexts.pop(next(iter(self._contexts)))
            self._contexts[key] = context
        return context

    def _best_so_far(self, study: Study, trial: FrozenTrial) -> FrozenTrial | None:
        """The study's best COMPLETE trial as Optuna gives it, asked only when it may have changed.

        Optuna's answer costs a pass over all trials (RDB: a sort in SQL; journal: a scan), so
        it is not asked for each trial. Only a trial that completes with a value at least as
        good as Optuna's last answer can change that answer (a worse one cannot, feasible or
        not). So each call reads, one by one, the trials numbered from the last call's trial up
        to this one, and those that were unfinished then, and asks Optuna only when one of them
        completed that well. The first call in a study asks Optuna and notes the unfinished trials.
        """
        storage = study._storage
        key = (id(storage), study._study_id)
        maximize = study.directions[0] == StudyDirection.MAXIMIZE
        with self._lock:  # n_jobs threads share the record; storage reads never call back here
            known = self._bests.get(key)
            if known is None or known.storage is not storage:
                while len(self._bests) >= _MAX_FOLLOWED_STUDIES:
                    self._bests.pop(next(iter(self._bests)))
                # First look: Optuna's answer, and one query for the trials that may still
                # change it, rather than a point read per trial (a resumed study may hold thousands).
                # The unfinished ones are listed before Optuna is asked: a trial finishing in
                # between is then either in Optuna's answer or re-read at the next look.
                known = self._bests[key] = _BestSoFar(storage)
                pending = storage.get_all_trials(
                    study._study_id, deepcopy=False, states=(TrialState.WAITING, TrialState.RUNNING)
                )
                known.unfinished = {t.number for t in pending if t.number < trial.number}
                known.next_number = trial.number
                known.best = _best_trial(study)
                return known.best
            to_read = sorted(known.unfinished) + list(range(known.next_number, trial.number))
            known.next_number = max(known.next_number, trial.number)
            known.unfinished = set()
            may_have_changed = False
            for number in to_read:
                read = storage.get_trial(
                    storage.get_trial_id_from_study_id_trial_number(study._study_id, number)
                )
                if not read.state.is_finished():
                    known.unfinished.add(number)
                elif read.state == TrialState.COMPLETE and _at_least_as_good(
                    read.value, known.best, maximize
                ):
                    may_have_changed = True
            if may_have_changed:
                known.best = _best_trial(study)
            return known.best

    def _claim_start(self, study: Study, trial: FrozenTrial) -> bool:
        # Only reached while no trial is complete, so this read is rare. Not atomic: two workers
        # may both claim, which only evaluates the start point twice.
        storage = study._storage
        if START_CLAIM_ATTR in storage.get_study_system_attrs(study._study_id):
            return False
        storage.set_study_system_attr(study._study_id, START_CLAIM_ATTR, trial.number)
        return True


def _trial_key(study: Study, trial: FrozenTrial) -> tuple[int, int, int]:
    # id(storage) keeps two in-memory studies with equal ids apart.
    return (id(study._storage), study._study_id, trial._trial_id)


def _best_trial(study: Study) -> FrozenTrial | None:
    """Optuna's best COMPLETE trial (feasible, where trials have constraints), or None.

    Study.best_trial asks the storage (in-memory: a cached id; RDB: one query that sorts the
    complete trials; journal: a scan over all trials) and deep-copies that one trial.
    """
    try:
        return study.best_trial
    except ValueError:  # no complete (or no feasible) trial yet
        return None
    except AttributeError:
        # HyperbandPruner hands samplers a bracket study that hides best_trial; the paper's
        # best is the best of the whole study anyway.
        try:
            return study._storage.get_best_trial(study._study_id)
        except ValueError:
            return None


def _at_least_as_good(value: float, best: FrozenTrial | None, maximize: bool) -> bool:
    """Whether a trial completed with `value` could be the best instead of `best` (ties count)."""
    if best is None:
        return True
    return value >= best.value if maximize else value <= best.value


def _neighbor_value(
    rng: np.random.Generator,
    dist: FloatDistribution | IntDistribution,
    center: float,
    factor: float,
    log_scale: bool,
) -> int | float | None:
    """Draw in the neighbourhood of ``center`` intersected with ``[low, high]``, on the step grid.

    Multiplicative, ``[center / factor, center * factor]``, when ``low > 0`` (then ``center``
    must be > 0); additive, ``center ± (high - low) * log10(factor) / 4`` drawn uniformly, when
    ``low <= 0``. Returns None when that set holds no valid value.
    """
    if dist.low > 0:
        return _grid_value(rng, dist, center / factor, center * factor, log_scale)
    half_width = (dist.high - dist.low) * math.log10(factor) / 4
    if not math.isfinite(half_width):  # a range too wide for floats: random sampling instead
        return None
    return _grid_value(rng, dist, center - half_width, center + half_width, False)


def _grid_value(
    rng: np.random.Generator,
    dist: FloatDistribution | IntDistribution,
    lo: float,
    hi: float,
    log_scale: bool,
) -> int | float | None:
    """Draw in ``[lo, hi] ∩ [low, high]`` on the step grid; None when that holds no valid value.

    ``log_scale`` needs ``lo > 0``.
    """
    lo = max(dist.low, lo)
    hi = min(dist.high, hi)
    step = dist.step  # None for a continuous float; 1 for a log int

    if step is None:
        if lo > hi:
            return None
        x = _draw(rng, lo, hi, log_scale)
        return float(min(max(x, lo), hi))

    # Grid points low + k * step inside [lo, hi]. Float grids get Optuna's 1e-8 tolerance.
    tol = 0.0 if isinstance(dist, IntDistribution) else 1e-8
    k_min = math.ceil((lo - dist.low) / step - tol)
    k_max = math.floor((hi - dist.low) / step + tol)
    if k_min > k_max:
        return None
    first = dist.low + k_min * step
    last = dist.low + k_max * step
    # Draw over half a step beyond the end points, so they get a full cell like the others
    # (Optuna's own convention); log needs a positive lower edge.
    edge_lo = first - step / 2
    if log_scale and edge_lo <= 0:
        edge_lo = first / 2
    x = _draw(rng, edge_lo, last + step / 2, log_scale)
    k = min(max(round((x - dist.low) / step), k_min), k_max)
    if isinstance(dist, IntDistribution):
        return int(dist.low + k * dist.step)
    return float(min(max(dist.low + k * step, dist.low), dist.high))


def _categorical_value(
    rng: np.random.Generator, dist: CategoricalDistribution, center: Any, keep: float
) -> Any:
    """``center`` with probability ``keep``, else another choice, uniformly; ``_NO_VALUE`` if
    ``center`` is not a choice of ``dist``."""
    try:
        index = int(dist.to_internal_repr(center))
    except ValueError:
        return _NO_VALUE
    if rng.random() < keep:
        return dist.choices[index]
    other = int(rng.integers(len(dist.choices) - 1))  # dist has two choices or more
    return dist.choices[other + (other >= index)]


def _draw(rng: np.random.Generator, lo: float, hi: float, log_scale: bool) -> float:
    if lo == hi:
        return lo
    if log_scale:
        return math.exp(rng.uniform(math.log(lo), math.log(hi)))
    return float(rng.uniform(lo, hi))


def _exact_value(dist: BaseDistribution, value: Any) -> Any:
    """``value`` as a valid value of ``dist``, or ``_NO_VALUE`` when it is not one."""
    if isinstance(dist, CategoricalDistribution):
        try:
            return dist.choices[int(dist.to_internal_repr(value))]
        except ValueError:
            return _NO_VALUE
    if not _is_number(value):
        return _NO_VALUE
    try:
        internal = dist.to_internal_repr(value)
    except ValueError:
        return _NO_VALUE
    if not dist._contains(internal):
        return _NO_VALUE
    return _plain(dist, value)


def _plain(dist: BaseDistribution, value: Any) -> Any:
    # Plain Python numbers: numpy scalars leak into user code and YAML export otherwise.
    if isinstance(dist, IntDistribution):
        return int(round(float(value)))
    if isinstance(dist, FloatDistribution):
        return float(value)
    return value


def _compatible(
    distributions: Mapping[str, BaseDistribution] | None, name: str, dist: BaseDistribution
) -> bool:
    if distributions is None:  # the centre is the start point: no distribution to compare
        return True
    if name not in distributions:
        return False
    try:
        check_distribution_compatibility(distributions[name], dist)
    except ValueError:
        return False
    return True


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _valid_center(dist: FloatDistribution | IntDistribution, value: Any) -> bool:
    """Whether ``value`` can centre a neighbourhood in ``dist``: a finite number, > 0 where the
    neighbourhood is multiplicative (``low > 0``)."""
    return _is_number(value) and math.isfinite(value) and (dist.low <= 0 or value > 0)


def _single_internal(dist: BaseDistribution) -> float:
    # The one value of a distribution with single() true, in internal form.
    if isinstance(dist, CategoricalDistribution):
        return 0
    return dist.low


def _check_keep_categorical(keep: Any) -> float:
    if not _is_number(keep) or not 0 <= keep <= 1:
        raise ValueError(
            f"keep_categorical must be a probability between 0 and 1, got {keep!r}; pass e.g. "
            "keep_categorical=0.75 (the best trial's choice is kept three times in four)."
        )
    return float(keep)


def _fresh_seed() -> int:
    # 128 bits of OS entropy: independent workers do not collide.
    return int(np.random.SeedSequence().entropy)


def _check_seed(seed: Any) -> int:
    if not isinstance(seed, numbers.Integral) or isinstance(seed, bool) or seed < 0:
        raise ValueError(
            f"seed must be a non-negative integer or None, got {seed!r}; pass e.g. seed=0, "
            "or None for a fresh seed."
        )
    return int(seed)


def _check_factor(factor: Any) -> float:
    if not _is_number(factor) or not math.isfinite(factor) or not factor > 1:
        raise ValueError(
            f"factor must be a finite number greater than 1, got {factor!r}; the neighbourhood "
            "is [best / factor, best * factor] (the paper uses factor=10.0)."
        )
    return float(factor)


def _check_start(start: Any) -> dict[str, Any] | None:
    if start is None:
        return None
    if not isinstance(start, Mapping):
        raise ValueError(
            f"start must be a dict of parameter name -> value or None, got "
            f"{type(start).__name__}: {start!r}."
        )
    checked: dict[str, Any] = {}
    for name, value in start.items():
        if not isinstance(name, str):
            raise ValueError(f"start keys must be parameter names (str), got {name!r}.")
        if value is None or isinstance(value, (str, bool)):
            checked[name] = value
        elif isinstance(value, numbers.Integral):
            checked[name] = int(value)
        elif isinstance(value, numbers.Real) and math.isfinite(value):
            checked[name] = float(value)
        else:
            raise ValueError(
                f"start[{name!r}] must be a finite number, a string, a bool or None, got "
                f"{value!r}; fix that entry of start."
            )
    return checked or None
