"""Study definitions: read a study YAML file, check every value, and build its Optuna objects.

Kept free of Keras and TensorFlow (model.config and model.params are too), so the launcher can
read and check a study without loading TensorFlow.

A study file names the Optuna study, the dataset, how each trial trains, how many trials to run,
the sampler and pruner, the start point (Table 1) and the search space, under the paper's names.
Every mistake is one UsageError sentence that names the file, the key or value, and the fix.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
import inspect
import math
import os
import re
import warnings
from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from model import (
    BLOCKS,
    FIELDS_BY_NAME,
    LOSSES,
    TABLE1_NAMES,
    Hyperparameters,
    InputError,
    TrainConfig,
    refused_yaml_tag,
    write_dataset,
)
from hpsearch._sampler import NeighborhoodSampler
from hpsearch.errors import UsageError
from hpsearch.preflight import format_bytes, memory_limit, training_step_bytes

CHANNELS = TABLE1_NAMES["channels"]

# Sampler / pruner names -> optuna class names ("neighborhood" is ours).
SAMPLERS = {
    "neighborhood": "NeighborhoodSampler",
    "random": "RandomSampler",
    "tpe": "TPESampler",
    "cmaes": "CmaEsSampler",
    "qmc": "QMCSampler",
    "gp": "GPSampler",
    "nsgaii": "NSGAIISampler",
}
# Optuna imports these lazily at the first trial; check at load so a worker does not fail later.
_SAMPLER_NEEDS = {"cmaes": ("cmaes",), "qmc": ("scipy",), "gp": ("torch", "scipy")}
PRUNERS = {
    "none": "NopPruner",
    "median": "MedianPruner",
    "percentile": "PercentilePruner",
    "hyperband": "HyperbandPruner",
    "successive_halving": "SuccessiveHalvingPruner",
    "threshold": "ThresholdPruner",
}

# A study name is also the folder of its worker logs (studies/logs/<name>): no separators, no "..".
STUDY_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}")
STUDY_NAME_RULE = "1-64 letters, digits, '-', '_' or '.', not starting with '.'"
SEED_MAX = 2**32 - 1  # numpy's largest seed (np.random.seed, hence keras.utils.set_random_seed)
_TOP_KEYS = ("study", "data", "training", "trials", "seed", "trial_seeds", "deterministic", "sampler", "pruner", "start", "search_space", "slurm",
             "stall_timeout")
# How trials draw their training seeds: "per_trial" trains trial n with seed + n; "shared" trains
# every trial with the study seed itself (the same initial weights where the channels match, the
# same blocks and dropout masks), so two trials differ by their hyperparameters, not their luck.
TRIAL_SEEDS = ("per_trial", "shared")
_DATA_KEYS = ("path", "synth", "split")
# data.synth's defaults are write_dataset's own (as `hpsearch data synth` uses them): one place for each.
_SYNTH_DEFAULTS = {
    name: parameter.default for name, parameter in inspect.signature(write_dataset).parameters.items()
    if name in ("cases", "shape", "seed", "myocardium", "rv", "channels")
}
_SYNTH_SIZE = (8, 1024)  # the sizes model.synth.write_dataset accepts
_SPLIT_DEFAULTS = {"seed": 0, "val_fraction": 0.2, "test_fraction": 0.2}  # model.data.split_cases's
# YAML key -> TrainConfig field; seed and deterministic come per trial from the study.
_TRAINING_FIELDS = {
    "steps": "steps",
    "eval_every": "eval_every",
    "patch": "patch_shape",
    "batch": "batch_size",
    "depth": "depth",
    "block": "block",
    "loss": "loss",
    "clip": "clip",
    "foreground_share": "foreground_share",
    "augment": "augment",
    "checkpoint_every": "checkpoint_every",
}
_TRAINING_DEFAULTS = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
_SPACE_KEYS = ("low", "high", "log", "step")
# Training settings a study may search as categorical dimensions (`loss: {choices: [joint, per_class]}`):
# search_space key (also the training: key and the trial's parameter name) -> the values allowed.
TRAINING_CHOICES: dict[str, tuple] = {"loss": LOSSES, "block": BLOCKS, "augment": (False, True)}
# Probabilities and betas live in [0, 1]: searched linearly unless the file says otherwise; the
# rest span orders of magnitude, so log scale by default.
_LINEAR_BY_DEFAULT = (TABLE1_NAMES["keep_prob"], TABLE1_NAMES["beta1"], TABLE1_NAMES["beta2"])


@dataclasses.dataclass(frozen=True)
class StudyConfig:
    """A checked study definition. Build it with `load_study` or `StudyConfig.from_dict`.

    `training` holds TrainConfig keyword arguments (all but seed and deterministic); `synth`
    holds model.synth.write_dataset keyword arguments or None; `start` holds all seven Table 1
    values; `search_space` holds only the searched ones (the rest stay at their start value):
    Table 1 names -> {low, high, log, step}, then TRAINING_CHOICES keys -> {choices}, whose start
    value is the `training` one.
    """

    name: str
    source: Path | None
    data_path: Path
    synth: dict | None
    split: dict
    training: dict
    trials: int
    seed: int | None
    trial_seeds: str
    deterministic: bool
    sampler: dict
    pruner: dict | None
    start: dict
    search_space: dict
    slurm: dict | None = None  # sbatch settings of `launch --executor slurm` (hpsearch.slurm.SlurmSettings)
    stall_timeout: float | None = None  # seconds a launched worker may report nothing (None: the launcher's default)

    def distributions(self) -> dict[str, BaseDistribution]:
        """The Optuna distributions of the searched hyperparameters, under the paper's names."""
        result: dict[str, BaseDistribution] = {}
        for name, space in self.search_space.items():
            if name in TRAINING_CHOICES:
                result[name] = CategoricalDistribution(space["choices"])
            elif name == CHANNELS:
                step = 1 if space["step"] is None else space["step"]
                result[name] = IntDistribution(space["low"], space["high"], log=space["log"], step=step)
            else:
                result[name] = FloatDistribution(space["low"], space["high"], log=space["log"], step=space["step"])
        return result

    def make_sampler(self) -> optuna.samplers.BaseSampler:
        """The study's sampler, seeded with the study seed (NeighborhoodSampler starts at `start`)."""
        return _build_sampler(self.sampler, self.seed, self._searched_start(), "the study")

    def make_pruner(self) -> optuna.pruners.BasePruner:
        """The study's pruner; NopPruner when there is none."""
        return _build_pruner(self.pruner or {"name": "none"}, "the study")

    def train_config(self, trial_number: int, params: Mapping[str, Any] | None = None) -> TrainConfig:
        """How trial `trial_number` trains: its seed is the study seed plus the trial number (past
        SEED_MAX, counted again from 0), or the study seed itself when trial_seeds is "shared".

        `params` (e.g. trial.params): the trial's training choices (TRAINING_CHOICES keys: loss,
        block, augment) replace the study's `training` values; Table 1 names in it are ignored.
        """
        if self.seed is None or self.trial_seeds == "shared":
            seed = self.seed
        else:
            seed = (self.seed + trial_number) % (SEED_MAX + 1)
        return TrainConfig(**self._training_with(params), seed=seed, deterministic=self.deterministic)

    def training_choices(self, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """{loss, block, augment} as a trial with `params` trains: its choices over the study's training values."""
        training = self._training_with(params)
        return {key: training[_TRAINING_FIELDS[key]] for key in TRAINING_CHOICES}

    def hyperparameters(self, params: Mapping[str, Any]) -> Hyperparameters:
        """A trial's hyperparameters: `params` (Table 1 names, e.g. trial.params; its training
        choices are ignored here, see train_config) over the start values."""
        table1 = {name: value for name, value in params.items() if name not in TRAINING_CHOICES}
        return Hyperparameters.from_table1({**self.start, **table1}, source=f"study {self.name!r}")

    def _training_with(self, params: Mapping[str, Any] | None) -> dict:
        chosen = {_TRAINING_FIELDS[key]: value for key, value in (params or {}).items() if key in TRAINING_CHOICES}
        return {**self.training, **chosen}

    def to_dict(self) -> dict:
        """The JSON-safe study-file form with every default filled in (paths absolute)."""
        synth = None
        if self.synth is not None:
            synth = {**self.synth, "shape": _format_shape(self.synth["shape"])}
        training = {key: self.training[field] for key, field in _TRAINING_FIELDS.items()}
        training["patch"] = _format_shape(training["patch"])
        return copy.deepcopy({
            "study": self.name,
            "source": None if self.source is None else str(self.source),
            "data": {"path": str(self.data_path), "synth": synth, "split": self.split},
            "training": training,
            "trials": self.trials,
            "seed": self.seed,
            "trial_seeds": self.trial_seeds,
            "deterministic": self.deterministic,
            "sampler": self.sampler,
            "pruner": self.pruner,
            "start": self.start,
            "search_space": self.search_space,
            "slurm": self.slurm,
            "stall_timeout": self.stall_timeout,
        })

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, check_data: bool = True) -> StudyConfig:
        """Check and rebuild a study from `to_dict`'s form (or a parsed study file).

        `check_data=False` skips the checks about this machine (the dataset folder, the memory a
        training step needs), for machines that only read the study.
        """
        if not isinstance(d, Mapping):
            raise UsageError(f"a study definition must be a mapping, got {type(d).__name__}.")
        document = dict(d)
        source = document.pop("source", None)
        if source is not None and not isinstance(source, str):
            raise UsageError(f"the study definition's 'source' must be a path string, got {source!r}.")
        where = "the stored study definition" + (f" (from {source!r})" if source else "")
        source_path = None if source is None else Path(source)
        base = source_path.parent if source_path is not None else Path.cwd()
        return _parse(copy.deepcopy(document), _Checker(where), source_path, base, check_data)

    def _searched_start(self) -> dict[str, Any]:
        return _start_point(self.start, self.training, self.search_space)


def _start_point(start: dict, training: dict, search_space: dict) -> dict[str, Any]:
    """The searched dimensions' start values: Table 1 ones from `start`, training choices from `training`."""
    return {name: training[_TRAINING_FIELDS[name]] if name in TRAINING_CHOICES else start[name] for name in search_space}


def load_study(path: str | os.PathLike, *, home: str | os.PathLike | None = None) -> StudyConfig:
    """Read and check a study YAML file.

    Relative data paths resolve against `home`, the file's own folder by default (a packaged
    template is read from the package but used from the current folder's studies/).
    """
    source = Path(os.path.abspath(os.path.expanduser(os.fspath(path))))
    base = source.parent if home is None else Path(os.path.abspath(os.fspath(home)))
    where = f"study file {os.fspath(path)!r}"
    try:
        with open(source, encoding="utf-8") as file:
            document = yaml.load(file, Loader=_UniqueKeyLoader)  # a SafeLoader
    except FileNotFoundError:
        raise UsageError(
            f"{where} does not exist; give the path of a study YAML file such as studies/quickstart.yaml."
        ) from None
    except IsADirectoryError:
        raise UsageError(f"{where} is a folder; give the path of a study YAML file inside it.") from None
    except (OSError, UnicodeDecodeError) as error:
        raise UsageError(f"{where} cannot be read ({error}); check its permissions and encoding.") from None
    except yaml.YAMLError as error:
        refused = refused_yaml_tag(error)
        if refused:
            raise UsageError(f"{where} {refused}.") from None
        detail = " ".join(str(error).split())
        raise UsageError(f"{where} is not valid YAML ({detail}); fix the syntax at that line.") from None
    except ValueError as error:  # a tagged or over-long scalar (!!int x, !!timestamp 2001-13-45, 5000 digits)
        detail = " ".join(str(error).split()).rstrip(".")
        raise UsageError(f"{where} holds a value YAML cannot read ({detail}); fix it.") from None
    if not isinstance(document, dict):
        raise UsageError(
            f"{where} must hold a mapping of study keys ({', '.join(_TOP_KEYS)}), got {type(document).__name__}."
        )
    return _parse(document, _Checker(where), source, base, check_data=True)


# ---------------------------------------------------------------- checking


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice (plain PyYAML silently keeps the last one)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, Hashable):
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"the key {key!r} appears twice; keep one", key_node.start_mark
                    )
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


class _Checker:
    """Type checks that raise UsageError sentences prefixed with where the study came from."""

    def __init__(self, where: str) -> None:
        self.where = where

    def fail(self, message: str) -> UsageError:
        return UsageError(f"{self.where}: {message}")

    def mapping(self, value: Any, place: str, allowed: tuple[str, ...], required: tuple[str, ...] = ()) -> dict:
        if not isinstance(value, dict):
            raise self.fail(f"{place} must be a mapping with keys {', '.join(allowed)}, got {value!r}.")
        for key in value:
            if key not in allowed:
                raise self.fail(f"unknown key {key!r} in {place}; allowed keys: {', '.join(allowed)}.")
        for key in required:
            if key not in value:
                raise self.fail(f"{place} lacks the required key {key!r}; add it.")
        return value

    def integer(self, value: Any, place: str, minimum: int | None = None, maximum: int | None = None) -> int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        allowed = _range_text(minimum, maximum)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(f"{place} must be a whole number{allowed}, got {value!r}.")
        if maximum is not None and minimum is not None and not minimum <= value <= maximum:
            raise self.fail(f"{place} must be in [{minimum}, {maximum}], got {value}.")
        if minimum is not None and value < minimum:
            raise self.fail(f"{place} must be at least {minimum}, got {value}.")
        return value

    def seed(self, value: Any, place: str) -> int:
        return self.integer(value, place, minimum=0, maximum=SEED_MAX)

    def number(self, value: Any, place: str) -> float:
        # YAML 1.1 reads "1e-6" (no dot) as a string; accept it like model.params does.
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise self.fail(f"{place} must be a finite number, got {value!r}.")
        return float(value)

    def boolean(self, value: Any, place: str) -> bool:
        if not isinstance(value, bool):
            raise self.fail(f"{place} must be true or false, got {value!r}.")
        return value

    def string(self, value: Any, place: str) -> str:
        if not isinstance(value, str) or not value.strip():
            raise self.fail(f"{place} must be a non-empty string, got {value!r}.")
        return value

    def shape(self, value: Any, place: str) -> tuple[int, int, int]:
        """A shape written "64x64x16" (or a list of three whole numbers) as a tuple."""
        shape: tuple[int, ...] = ()
        if isinstance(value, str) and all(p.strip().isdigit() for p in value.lower().split("x")):
            shape = tuple(int(p) for p in value.lower().split("x"))
        elif isinstance(value, list) and all(type(p) is int for p in value):
            shape = tuple(value)
        if len(shape) != 3 or min(shape) < 1:
            raise self.fail(f"{place} {value!r} is not a shape; write three sizes like 64x64x16.")
        return shape  # type: ignore[return-value]


def _range_text(minimum: int | None, maximum: int | None) -> str:
    if minimum is not None and maximum is not None:
        return f" in [{minimum}, {maximum}]"
    return "" if minimum is None else f" ≥ {minimum}"


def _parse(document: dict, check: _Checker, source: Path | None, base: Path, check_data: bool) -> StudyConfig:
    """Check a parsed study document and build the StudyConfig."""
    check.mapping(document, "the top level", _TOP_KEYS, required=("study", "data", "training", "trials", "search_space"))
    name = _parse_name(check, document["study"])
    data = check.mapping(document["data"], "data", _DATA_KEYS, required=("path",))
    data_path = Path(os.path.normpath(base / Path(check.string(data["path"], "data.path")).expanduser()))
    synth = _parse_synth(check, data.get("synth"))
    split = _parse_split(check, data.get("split"))
    if check_data:
        _check_data_path(check, data_path, synth)
    training = _parse_training(check, document["training"])
    trials = check.integer(document["trials"], "trials", minimum=1)
    seed = document.get("seed")
    if seed is not None:
        seed = check.seed(seed, "seed")
    trial_seeds = document.get("trial_seeds", "per_trial")
    if trial_seeds not in TRIAL_SEEDS:
        raise check.fail(f"trial_seeds must be one of {', '.join(TRIAL_SEEDS)}, got {trial_seeds!r}.")
    if trial_seeds == "shared" and seed is None:
        raise check.fail("trial_seeds: shared needs a seed for every trial to share; add e.g. seed: 0.")
    deterministic = check.boolean(document.get("deterministic", False), "deterministic")
    start = _parse_start(check, document.get("start"))
    search_space = _parse_search_space(check, document["search_space"], start, training)
    if check_data:
        channels = search_space[CHANNELS]["high"] if CHANNELS in search_space else start[CHANNELS]
        for block in search_space.get("block", {}).get("choices", [training["block"]]):  # each block a trial may train
            _check_memory(check, {**training, "block": block}, channels)
    sampler = _parse_component(check, document.get("sampler"), "sampler", SAMPLERS)
    pruner = _parse_component(check, document.get("pruner"), "pruner", PRUNERS)
    if sampler is None:
        sampler = {"name": "neighborhood"}
    if pruner is not None and pruner["name"] == "none":
        pruner = None  # NopPruner takes no options, so _parse_component refused any
    # Build them once now, so bad option values fail at load rather than in a worker.
    _build_sampler(sampler, seed, _start_point(start, training, search_space), check.where)
    if pruner is not None:
        _build_pruner(pruner, check.where)
    return StudyConfig(
        name=name, source=source, data_path=data_path, synth=synth, split=split, training=training,
        trials=trials, seed=seed, trial_seeds=trial_seeds, deterministic=deterministic, sampler=sampler, pruner=pruner,
        start=start, search_space=search_space, slurm=_parse_slurm(check, document.get("slurm")),
        stall_timeout=_parse_stall_timeout(check, document.get("stall_timeout")),
    )


def _parse_stall_timeout(check: _Checker, value: Any) -> float | None:
    if value is None:
        return None
    seconds = check.number(value, "stall_timeout")
    if not seconds >= 10:
        raise check.fail(f"stall_timeout is {seconds} s; give at least 10 seconds (the default is 1800, for "
                         "paper-scale trials on a CPU).")
    return float(seconds)


_SLURM_KEYS = ("partition", "time", "account", "options", "gpu")  # the fields of hpsearch.slurm.SlurmSettings


def _parse_slurm(check: _Checker, value: Any) -> dict | None:
    """The study's `slurm:` key: partition, time, account (strings), options (sbatch options), gpu (bool)."""
    if value is None:
        return None
    slurm = check.mapping(value, "slurm", _SLURM_KEYS)
    result = {key: check.string(slurm[key], f"slurm.{key}") for key in ("partition", "time", "account") if slurm.get(key) is not None}
    options = slurm.get("options") or []
    if not isinstance(options, list) or not all(isinstance(o, str) and o.startswith("-") for o in options):
        raise check.fail(f"slurm.options must be a list of sbatch options like ['--mem=16G'], got {options!r}.")
    result["options"] = list(options)
    result["gpu"] = check.boolean(slurm.get("gpu", True), "slurm.gpu")
    return result


def _parse_name(check: _Checker, value: Any) -> str:
    name = check.string(value, "study")
    if not STUDY_NAME.fullmatch(name):
        raise check.fail(f"study name {name!r} is not allowed; use {STUDY_NAME_RULE} "
                         "(it names the folder of the study's worker logs).")
    return name


def _check_memory(check: _Checker, training: dict, channels: int) -> None:
    """Refuse training shapes whose step would not fit in memory (hpsearch.preflight's estimate)."""
    limit, source = memory_limit()
    if limit is None:
        return
    patch, batch = training["patch_shape"], training["batch_size"]
    needed = training_step_bytes(channels=channels, depth=training["depth"], patch=patch, batch=batch,
                                 block=training["block"])
    if needed > limit:
        raise check.fail(
            f"training with patch {_format_shape(patch)}, batch {batch}, up to {channels} channels, depth "
            f"{training['depth']} and the {training['block']} block needs about {format_bytes(needed)} per worker, "
            f"more than {format_bytes(limit)} ({source}); lower training.patch, training.batch or the channels' "
            "search_space high, or set $HPSEARCH_MEMORY_LIMIT to the memory of the workers' machine."
        )


def _parse_synth(check: _Checker, value: Any) -> dict | None:
    if value is None:
        return None
    check.mapping(value, "data.synth", tuple(_SYNTH_DEFAULTS))
    synth = {**_SYNTH_DEFAULTS, **value}
    synth["cases"] = check.integer(synth["cases"], "data.synth.cases", minimum=1)
    synth["shape"] = check.shape(synth["shape"], "data.synth.shape")
    low, high = _SYNTH_SIZE
    if not all(low <= s <= high for s in synth["shape"]):
        raise check.fail(f"data.synth.shape {_format_shape(synth['shape'])} needs every size in [{low}, {high}].")
    synth["seed"] = check.seed(synth["seed"], "data.synth.seed")
    synth["myocardium"] = check.boolean(synth["myocardium"], "data.synth.myocardium")
    synth["rv"] = check.boolean(synth["rv"], "data.synth.rv")
    if synth["channels"] not in (1, 2) or isinstance(synth["channels"], bool):
        raise check.fail(f"data.synth.channels must be 1 or 2 (a second MR contrast), got {synth['channels']!r}.")
    return synth


def _parse_split(check: _Checker, value: Any) -> dict:
    split = {**_SPLIT_DEFAULTS, **check.mapping({} if value is None else value, "data.split", tuple(_SPLIT_DEFAULTS))}
    split["seed"] = check.seed(split["seed"], "data.split.seed")
    for key in ("val_fraction", "test_fraction"):
        split[key] = check.number(split[key], f"data.split.{key}")
        if not 0.0 <= split[key] < 1.0:
            raise check.fail(f"data.split.{key} must be in [0, 1), got {split[key]}.")
    if split["val_fraction"] + split["test_fraction"] >= 1.0:
        raise check.fail(
            f"data.split.val_fraction + test_fraction is {split['val_fraction'] + split['test_fraction']}, "
            "which leaves no training cases; make the sum below 1."
        )
    return split


def _check_data_path(check: _Checker, data_path: Path, synth: dict | None) -> None:
    if data_path.exists() and not data_path.is_dir():
        raise check.fail(f"data.path {str(data_path)!r} is a file, not a dataset folder; point it at a folder.")
    if synth is None and not data_path.exists():
        raise check.fail(
            f"dataset folder {str(data_path)!r} does not exist; create it with "
            f"'hpsearch data synth {data_path}' or add a data.synth section."
        )


def _parse_training(check: _Checker, value: Any) -> dict:
    check.mapping(value, "training", tuple(_TRAINING_FIELDS), required=("steps",))
    training = {field: _TRAINING_DEFAULTS[field] for field in _TRAINING_FIELDS.values()}
    for key, raw in value.items():
        place = f"training.{key}"
        if key == "patch":
            converted: Any = check.shape(raw, place)
        elif key == "foreground_share":
            converted = check.number(raw, place)
            if not 0.0 <= converted <= 1.0:
                raise check.fail(f"{place} is a share of training blocks, so it must be in [0, 1]; got {converted}.")
        elif key in ("block", "loss", "clip"):
            converted = check.string(raw, place)
        elif key == "augment":
            converted = check.boolean(raw, place)
        else:
            converted = check.integer(raw, place)
        training[_TRAINING_FIELDS[key]] = converted
    try:
        TrainConfig(**training)  # its own checks: counts >= 1, patch multiple of 2**depth, choices
    except InputError as error:
        raise check.fail(f"training: {error}") from None
    return training


def _parse_start(check: _Checker, value: Any) -> dict[str, float | int]:
    values = check.mapping({} if value is None else value, "start", tuple(FIELDS_BY_NAME))
    try:
        params = Hyperparameters.from_table1(values, source="start")
    except InputError as error:
        raise check.fail(f"{str(error).rstrip('.')}; fix that start value, or drop it to start at Table 1's.") from None
    return _normalise(params.as_table1())


def _normalise(values: Mapping[str, Any]) -> dict[str, float | int]:
    # Plain floats everywhere but channels, so to_dict/from_dict give back equal values.
    return {name: int(v) if name == CHANNELS else float(v) for name, v in values.items()}


def _parse_search_space(check: _Checker, value: Any, start: dict[str, float | int], training: dict) -> dict[str, dict]:
    check.mapping(value, "search_space", (*FIELDS_BY_NAME, *TRAINING_CHOICES))
    if not value:
        raise check.fail("search_space is empty; give bounds for at least one Table 1 hyperparameter, "
                         "e.g. 'learning rate: {low: 1.0e-6, high: 1.0e-2}', or choices such as "
                         "'loss: {choices: [joint, per_class]}'.")
    space = {}
    for name in FIELDS_BY_NAME:  # the paper's order
        if name in value:
            space[name] = _parse_bounds(check, name, value[name], start[name])
    for key, allowed in TRAINING_CHOICES.items():  # then the training choices
        if key in value:
            space[key] = _parse_choices(check, key, value[key], allowed, training[_TRAINING_FIELDS[key]])
    return space


def _parse_choices(check: _Checker, key: str, value: Any, allowed: tuple, start_value: Any) -> dict:
    """A categorical dimension `{choices: [...]}`: a non-empty list of distinct values from `allowed`,
    holding the study's training value (the start point)."""
    place = f"search_space {key!r}"
    allowed_text = ", ".join(_choice_text(a) for a in allowed)
    check.mapping(value, place, ("choices",), required=("choices",))
    choices = value["choices"]
    if not isinstance(choices, list) or not choices:
        raise check.fail(f"{place} choices must be a non-empty list of values from {allowed_text}, got {choices!r}.")
    for index, choice in enumerate(choices):
        # By type too: YAML's 1 is not true, and "false" is not false.
        if not any(type(choice) is type(a) and choice == a for a in allowed):
            raise check.fail(f"{place} has the choice {choice!r}, which is not one of {allowed_text}; choose from those.")
        if choice in choices[:index]:
            raise check.fail(f"{place} lists the choice {_choice_text(choice)} twice; keep one.")
    if not any(type(c) is type(start_value) and c == start_value for c in choices):
        raise check.fail(
            f"the start value {_choice_text(start_value)} of {key!r} (training.{key}) is not among its choices "
            f"{', '.join(_choice_text(c) for c in choices)}; set training.{key} to one of them or add it to the choices."
        )
    return {"choices": list(choices)}


def _choice_text(value: Any) -> str:
    # As the study file writes it: true / false, and plain words.
    return str(value).lower() if isinstance(value, bool) else str(value)


def _parse_bounds(check: _Checker, name: str, value: Any, start_value: float | int) -> dict:
    place = f"search_space {name!r}"
    check.mapping(value, place, _SPACE_KEYS, required=("low", "high"))
    integer = name == CHANNELS
    bounds = {}
    for key in ("low", "high"):
        number = check.number(value[key], f"{place} {key}")
        if integer:
            number = check.integer(number, f"{place} {key}")
        try:  # the valid range of the hyperparameter, from model.params
            Hyperparameters(**{FIELDS_BY_NAME[name]: number})
        except InputError as error:
            raise check.fail(
                f"{place} has {key} {number!r} outside the valid values ({str(error).rstrip('.')}); move the bound."
            ) from None
        bounds[key] = number
    low, high = bounds["low"], bounds["high"]
    if low > high:
        raise check.fail(f"{place} has low {low!r} above high {high!r}; swap them (equal bounds fix the value).")
    log = check.boolean(value.get("log", name not in _LINEAR_BY_DEFAULT), f"{place} log")
    if log and low <= 0:
        raise check.fail(f"{place} has log: true with low {low!r}; a log scale needs low > 0, so raise low or set log: false.")
    step = value.get("step")
    if step is not None:
        step = check.integer(step, f"{place} step", minimum=1) if integer else check.number(step, f"{place} step")
        if log:
            raise check.fail(f"{place} has both step {step!r} and log: true, which Optuna does not allow; "
                             "drop step or set log: false.")
        if step <= 0:
            raise check.fail(f"{place} step must be above 0, got {step!r}.")
        if not _on_grid(high, low, step):
            raise check.fail(f"{place}: high - low ({high} - {low}) must be a multiple of step {step!r}; change high or step.")
    if not low <= start_value <= high:
        raise check.fail(
            f"the start value {start_value!r} of {name!r} is outside its search space [{low!r}, {high!r}]; "
            "move the start value or widen the bounds."
        )
    if step is not None and not _on_grid(start_value, low, step):
        raise check.fail(f"the start value {start_value!r} of {name!r} is not on the grid low + k * step "
                         f"(low {low!r}, step {step!r}); move the start value onto it.")
    return {"low": low, "high": high, "log": log, "step": step}


def _on_grid(value: float, low: float, step: float) -> bool:
    k = (value - low) / step
    return abs(k - round(k)) <= 1e-8  # Optuna's own tolerance for float grids


def _parse_component(check: _Checker, value: Any, kind: str, known: dict[str, str]) -> dict | None:
    """A sampler or pruner section: {name, **options}; options are checked against the class."""
    if value is None:
        return None
    if not isinstance(value, dict) or "name" not in value:
        raise check.fail(f"{kind} must be a mapping with a 'name' ({', '.join(known)}), got {value!r}.")
    name = value["name"]
    if not isinstance(name, str) or name not in known:
        raise check.fail(f"{kind} name {name!r} is unknown; choose one of {', '.join(known)}.")
    options = {key: v for key, v in value.items() if key != "name"}
    parameters = inspect.signature(_class(kind, name)).parameters
    # The study's seed seeds the sampler, and `start` is the start section: not options.
    settable = [p for p, spec in parameters.items()
                if p not in ("seed", "start") and spec.kind not in (spec.VAR_POSITIONAL, spec.VAR_KEYWORD)]
    for key, option in options.items():
        if key in ("seed", "start") and key in parameters:
            raise check.fail(f"{kind} option {key!r} is set by the study's top-level {key!r} key; move it there.")
        if key not in settable:
            if not settable:
                raise check.fail(f"{kind} {name!r} takes no options; remove {key!r}.")
            raise check.fail(f"unknown option {key!r} for {kind} {name!r}; its options are: {', '.join(settable)}.")
        if not _json_safe(option):
            raise check.fail(f"{kind} option {key!r} must be a number, string, boolean, list or mapping, got {option!r}.")
        options[key] = _check_option(check, f"{kind}.{key}", option, parameters[key], _OPTION_RANGES.get(name, {}).get(key))
    for p in settable:
        if parameters[p].default is inspect.Parameter.empty and p not in options:
            raise check.fail(f"{kind} {name!r} needs the option {p!r}; add it to the {kind} section.")
    if name == "hyperband":
        low = options.get("min_resource", parameters["min_resource"].default)
        high = options.get("max_resource", parameters["max_resource"].default)
        if high != "auto" and high < low:
            raise check.fail(f"pruner.max_resource: {high!r} is below min_resource {low!r}; raise it to at least "
                             f"{low!r}, or write 'auto'.")
    return {"name": name, **options}


@dataclasses.dataclass(frozen=True)
class _Range:
    """The values a sampler or pruner option may take beyond its type: [low, high] (low excluded where
    low_open), or for a string one of `words`."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    words: tuple[str, ...] = ()

    def holds(self, value: Any) -> bool:
        if isinstance(value, str):
            return not self.words or value in self.words
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return True
        above = self.low is None or (value > self.low if self.low_open else value >= self.low)
        return above and (self.high is None or value <= self.high)

    def text(self) -> str:
        if self.low is not None and self.high is not None:
            return f" in [{self.low:g}, {self.high:g}]"
        if self.low is not None:
            return f" {'>' if self.low_open else '≥'} {self.low:g}"
        return ""


_NONE = _Range()
_AT_LEAST_0, _AT_LEAST_1, _AT_LEAST_2, _PROBABILITY = _Range(0), _Range(1), _Range(2), _Range(0, 1)
_MEDIAN_RANGES = {"n_startup_trials": _AT_LEAST_0, "n_warmup_steps": _AT_LEAST_0, "interval_steps": _AT_LEAST_1,
                  "n_min_trials": _AT_LEAST_1}
# Ranges Optuna checks only at the first trial, or never (a ZeroDivisionError then); by sampler or pruner name.
_OPTION_RANGES: dict[str, dict[str, _Range]] = {
    "neighborhood": {"factor": _Range(1, low_open=True), "keep_categorical": _PROBABILITY,
                     "scale": _Range(words=("log", "uniform"))},
    "tpe": {"n_startup_trials": _AT_LEAST_0, "n_ei_candidates": _AT_LEAST_1, "prior_weight": _AT_LEAST_0},
    "cmaes": {"n_startup_trials": _AT_LEAST_0, "sigma0": _Range(0, low_open=True), "popsize": _AT_LEAST_1,
              "restart_strategy": _Range(words=("ipop", "bipop"))},
    "qmc": {"qmc_type": _Range(words=("sobol", "halton"))},
    "gp": {"n_startup_trials": _AT_LEAST_0},
    "nsgaii": {"population_size": _AT_LEAST_2, "mutation_prob": _PROBABILITY, "crossover_prob": _PROBABILITY,
               "swapping_prob": _PROBABILITY},
    "median": _MEDIAN_RANGES,
    "percentile": {"percentile": _Range(0, 100), **_MEDIAN_RANGES},
    "hyperband": {"min_resource": _AT_LEAST_1, "max_resource": _Range(1, words=("auto",)),
                  "reduction_factor": _AT_LEAST_2, "bootstrap_count": _AT_LEAST_0},
    "successive_halving": {"min_resource": _Range(1, words=("auto",)), "reduction_factor": _AT_LEAST_2,
                           "min_early_stopping_rate": _AT_LEAST_0, "bootstrap_count": _AT_LEAST_0},
    "threshold": {"n_warmup_steps": _AT_LEAST_0, "interval_steps": _AT_LEAST_1},
}
_NO_VALUE = object()  # an option value not (yet) accepted
_KIND_WORDS = {"int": "a whole number", "float": "a number", "bool": "true or false", "str": "a string",
               "mapping": "a mapping", "None": "null"}


def _check_option(check: _Checker, place: str, value: Any, parameter: inspect.Parameter, limits: _Range | None) -> Any:
    """One sampler or pruner option against the type its class annotates and its _OPTION_RANGES entry.

    Returns the value, a whole float as an int where an int is wanted ("1e-3" as a float where only
    a number is). Options typed as Python objects (callables, samplers) cannot be written in YAML.
    """
    kinds = _annotation_kinds(parameter.annotation)
    if kinds is None:  # not annotated: the constructor checks it
        return value
    limits = limits or _NONE
    if value is None and ("None" in kinds or parameter.default is None):
        return None
    simple = kinds - {"object"}
    if not simple - {"None"}:
        raise check.fail(f"{place} takes a Python object ({parameter.annotation}), which a study file cannot hold; remove it.")
    accepted: Any = _NO_VALUE
    if isinstance(value, bool):
        accepted = value if "bool" in kinds else _NO_VALUE
    elif isinstance(value, int):
        if "int" in kinds:
            accepted = value
        elif "float" in kinds and _finite(value):
            accepted = value
    elif isinstance(value, float) and math.isfinite(value):
        if "int" in kinds and value.is_integer():
            accepted = int(value)
        elif "float" in kinds:
            accepted = value
    elif isinstance(value, str):
        if "str" in kinds and (not limits.words or value in limits.words):
            accepted = value
        elif "str" not in kinds and "float" in kinds:
            try:  # YAML 1.1 reads "1e-3" (no dot) as a string, as number() does
                accepted = float(value) if math.isfinite(float(value)) else _NO_VALUE
            except ValueError:
                pass
    elif isinstance(value, dict) and "mapping" in kinds:
        accepted = value
    if accepted is _NO_VALUE or not limits.holds(accepted):
        raise check.fail(f"{place}: {value!r} must be {_describe(simple, limits)}.")
    return accepted


def _finite(number: int) -> bool:
    try:
        return math.isfinite(float(number))
    except OverflowError:
        return False


def _annotation_kinds(annotation: Any) -> set[str] | None:
    """An annotation such as 'int | None' or float as kinds: int, float, bool, str, mapping, None, object."""
    if annotation is inspect.Parameter.empty:
        return None
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    parts, depth, current = [], 0, ""
    for char in text:  # split at the top-level "|" only: Callable[[...], X | None] is one part
        depth += char == "["
        depth -= char == "]"
        if char == "|" and depth == 0:
            parts.append(current.strip())
            current = ""
        else:
            current += char
    parts.append(current.strip())
    kinds = set()
    for part in parts:
        if part in ("int", "float", "bool", "str", "None"):
            kinds.add(part)
        elif part.startswith(("dict[str", "Mapping[str")):
            kinds.add("mapping")
        else:
            kinds.add("object")
    return kinds


def _describe(kinds: set[str], limits: _Range) -> str:
    """What an option may be, e.g. "'auto' or a whole number ≥ 1", "a number in [0, 1] or null"."""
    parts = [repr(word) for word in limits.words]
    for kind in ("int", "float", "bool", "str", "mapping", "None"):
        if kind in kinds and not (kind == "float" and "int" in kinds) and not (kind == "str" and limits.words):
            parts += _KIND_WORDS[kind].split(" or ") if kind == "bool" else [_KIND_WORDS[kind]]
            parts[-1] += limits.text() if kind in ("int", "float") else ""
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " or " + parts[-1]


def _json_safe(value: Any) -> bool:
    if value is None or isinstance(value, (bool, int, str)):
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, list):
        return all(_json_safe(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _json_safe(v) for k, v in value.items())
    return False


def _class(kind: str, name: str) -> type:
    if kind == "sampler":
        return NeighborhoodSampler if name == "neighborhood" else getattr(optuna.samplers, SAMPLERS[name])
    return getattr(optuna.pruners, PRUNERS[name])


def _build_sampler(spec: dict, seed: int | None, start: dict, where: str) -> optuna.samplers.BaseSampler:
    name = spec["name"]
    missing = [m for m in _SAMPLER_NEEDS.get(name, ()) if importlib.util.find_spec(m) is None]
    if missing:
        raise UsageError(f"{where}: sampler {name!r} needs the Python package(s) {', '.join(missing)}; "
                         f"install them (pip install {' '.join(missing)}) or choose another sampler.")
    cls = _class("sampler", name)
    options = {key: copy.deepcopy(v) for key, v in spec.items() if key != "name"}
    if name == "neighborhood":
        options["start"] = start
    if "seed" in inspect.signature(cls).parameters:
        options["seed"] = seed
    return _construct(cls, options, f"{where}: sampler {name!r}")


def _build_pruner(spec: dict, where: str) -> optuna.pruners.BasePruner:
    options = {key: copy.deepcopy(v) for key, v in spec.items() if key != "name"}
    return _construct(_class("pruner", spec["name"]), options, f"{where}: pruner {spec['name']!r}")


def _construct(cls: type, options: dict, what: str) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ExperimentalWarning of GPSampler, QMCSampler ...
        try:
            return cls(**options)
        except (TypeError, ValueError) as error:
            given = ", ".join(f"{key}: {value!r}" for key, value in options.items() if key not in ("seed", "start"))
            raise UsageError(f"{what} refused {'the options ' + given if given else 'its defaults'} "
                             f"({str(error).rstrip('.')}); fix them in the study file.") from None


def _format_shape(shape: tuple[int, ...] | list[int]) -> str:
    return "x".join(str(s) for s in shape)
