"""The paper's hyperparameters (Table 1): names, defaults, ranges, and the YAML file that holds them.

The file format is the one `hpsearch export` writes and `hpsearch train --params` reads: the
hyperparameters under the paper's own names, in the paper's order, optionally nested under a
`hyperparameters:` key beside descriptive fields (study, trial, validation IoU ...) and a
`training:` mapping of the training choices the hyperparameters were found with (loss, block,
augment), which `hpsearch train` takes as its defaults.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from typing import Any

import yaml

from model.config import BLOCKS, LOSSES
from model.errors import InputError

# (field, Table 1 name, lowest, highest, integer?) in the paper's order.
_TABLE1 = (
    ("keep_prob", "dropout keep probability", 0.0, 1.0, False),
    ("l2", "l2 regularization weight", 0.0, math.inf, False),
    ("learning_rate", "learning rate", 0.0, math.inf, False),
    ("beta1", "beta1", 0.0, 1.0, False),
    ("beta2", "beta2", 0.0, 1.0, False),
    ("clip_norm", "gradient clip", 0.0, math.inf, False),
    ("channels", "channels in first conv layer", 1, 1024, True),
)

TABLE1_NAMES: dict[str, str] = {field: name for field, name, *_ in _TABLE1}
"""Field name -> the paper's name, in the paper's order."""

FIELDS_BY_NAME: dict[str, str] = {name: field for field, name, *_ in _TABLE1}

# The `training:` keys of a params file and their allowed values (model.config's TrainConfig fields).
TRAINING_KEYS: dict[str, tuple] = {"loss": LOSSES, "block": BLOCKS, "augment": (False, True)}

# Descriptive keys an exported file carries beside the hyperparameters; read and ignored.
METADATA_KEYS = frozenset(
    {"study", "trial", "validation IoU", "per-class validation IoU", "source", "note"}
)


@dataclasses.dataclass(frozen=True)
class Hyperparameters:
    """The seven hyperparameters of Table 1; the defaults are the paper's values.

    keep_prob is the dropout *keep* probability (dropout rate = 1 - keep_prob); l2 multiplies
    the sum of squared convolution kernel weights; clip_norm bounds the gradient norm.
    """

    keep_prob: float = 0.85
    l2: float = 3.0e-4
    learning_rate: float = 7.6e-5
    beta1: float = 0.9
    beta2: float = 0.999
    clip_norm: float = 1.0
    channels: int = 30

    def __post_init__(self) -> None:
        for field, name, low, high, integer in _TABLE1:
            value = getattr(self, field)
            check_value(name, value, low, high, integer)

    def as_table1(self) -> dict[str, float | int]:
        """The values under the paper's names, in the paper's order."""
        return {name: getattr(self, field) for field, name in TABLE1_NAMES.items()}

    @classmethod
    def from_table1(cls, values: dict[str, Any], *, source: str = "the parameters") -> Hyperparameters:
        """Table 1 defaults overridden by `values` (keys are the paper's names)."""
        unknown = [key for key in values if key not in FIELDS_BY_NAME]
        if unknown:
            raise InputError(
                f"{source}: unknown hyperparameter {unknown[0]!r}; "
                f"use the paper's names: {', '.join(repr(n) for n in FIELDS_BY_NAME)}."
            )
        fields = {FIELDS_BY_NAME[key]: _number(source, key, value) for key, value in values.items()}
        try:
            return cls(**fields)
        except InputError as error:
            raise InputError(f"{source}: {error}") from None


def check_value(name: str, value: Any, low: float, high: float, integer: bool) -> None:
    """Raise InputError unless `value` is a finite number in its range (exclusive of 0 where 0 is useless)."""
    if integer:
        if isinstance(value, bool) or not isinstance(value, int):
            raise InputError(f"{name!r} must be a whole number, got {_short(value)}.")
        if not low <= value <= high:
            raise InputError(f"{name!r} must be between {low} and {high}, got {_short(value)}.")
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not _finite(value):
        raise InputError(f"{name!r} must be a finite number, got {_short(value)}.")
    if name == "dropout keep probability":
        ok = low < value <= high  # keep probability 0 would drop everything
    elif high == 1.0:
        ok = low <= value < high  # Adam's betas must stay below 1
    else:
        ok = low < value  # learning rate, clip norm: 0 means no training
        if name == "l2 regularization weight":
            ok = value >= 0.0
    if not ok:
        raise InputError(f"{name!r} is out of range: {_short(value)}.")


def _finite(value: int | float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an int beyond float's range
        return False


def _short(value: Any) -> str:
    """repr(value), cut to 60 characters: a sentence names the value, it need not print a megabyte of it."""
    try:
        text = repr(value)
    except ValueError:  # an int of more digits than Python prints
        return "a number too long to print"
    return text if len(text) <= 60 else f"{text[:57]}..."


def _number(source: str, key: str, value: Any) -> float | int:
    # YAML 1.1 reads "3.0e-4" as a float but "3e-4" as a string; accept both.
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise InputError(f"{source}: {key!r} must be a number, got {_short(value)}.") from None
    if key == "channels in first conv layer" and isinstance(value, float) and value.is_integer():
        value = int(value)
    return value


def load_params(path: str | os.PathLike) -> Hyperparameters:
    """Read a Table-1 YAML file (as `hpsearch export` writes it); missing names keep Table 1's values."""
    return load_params_file(path)[0]


def load_params_file(path: str | os.PathLike) -> tuple[Hyperparameters, dict[str, Any]]:
    """Read a Table-1 YAML file: its hyperparameters (missing names keep Table 1's values) and its
    `training:` choices ({} when it has none; only the keys of TRAINING_KEYS it names)."""
    try:
        with open(path, encoding="utf-8") as file:
            document = yaml.safe_load(file)
    except FileNotFoundError:
        raise InputError(f"params file {os.fspath(path)!r} does not exist; give the path of a YAML file.") from None
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"params file {os.fspath(path)!r} cannot be read: {error}.") from None
    except yaml.YAMLError as error:
        refused = refused_yaml_tag(error)
        if refused:
            raise InputError(f"params file {os.fspath(path)!r} {refused}.") from None
        detail = " ".join(str(error).split()).rstrip(".")  # PyYAML's message spans lines: one sentence
        raise InputError(f"params file {os.fspath(path)!r} is not valid YAML ({detail}); fix the syntax at that line.") from None
    except ValueError as error:  # a tagged or over-long scalar (!!int x, !!timestamp 2001-13-45, 5000 digits)
        detail = " ".join(str(error).split()).rstrip(".")
        raise InputError(f"params file {os.fspath(path)!r} holds a value YAML cannot read ({detail}); fix it.") from None
    if document is None:
        document = {}
    if not isinstance(document, dict):
        raise InputError(f"params file {os.fspath(path)!r} must hold a mapping of Table 1 names to values.")
    values = dict(document)
    training = _training_choices(path, values.pop("training", None))
    if "hyperparameters" in values:
        nested = values.pop("hyperparameters")
        unknown = [key for key in values if key not in METADATA_KEYS]
        if unknown:
            raise InputError(f"params file {os.fspath(path)!r}: unknown key {unknown[0]!r}.")
        if not isinstance(nested, dict):
            raise InputError(f"params file {os.fspath(path)!r}: 'hyperparameters' must be a mapping.")
        values = nested
    else:
        values = {key: value for key, value in values.items() if key not in METADATA_KEYS}
    return Hyperparameters.from_table1(values, source=f"params file {os.fspath(path)!r}"), training


def _training_choices(path: str | os.PathLike, value: Any) -> dict[str, Any]:
    """A params file's `training:` mapping, checked: loss and block among model.config's, augment true or false."""
    if value is None:
        return {}
    where = f"params file {os.fspath(path)!r}"
    if not isinstance(value, dict):
        raise InputError(f"{where}: 'training' must be a mapping of {', '.join(TRAINING_KEYS)}, got {value!r}.")
    for key, choice in value.items():
        if key not in TRAINING_KEYS:
            raise InputError(f"{where}: unknown key {key!r} in 'training'; allowed keys: {', '.join(TRAINING_KEYS)}.")
        allowed = TRAINING_KEYS[key]
        if not any(type(choice) is type(a) and choice == a for a in allowed):  # by type: 1 is not true
            words = ", ".join(str(a).lower() if isinstance(a, bool) else a for a in allowed)
            raise InputError(f"{where}: training {key} must be one of {words}, got {choice!r}.")
    return dict(value)


def refused_yaml_tag(error: yaml.YAMLError) -> str | None:
    """The end of a sentence for a tag the safe loader refused (e.g. !!python/object), or None for other errors.

    YAML files are read with yaml.safe_load (or a SafeLoader subclass), which builds plain data
    only: a `!!python/...` tag, which the full loader would turn into an object or a call, is an
    error. Saying so is clearer than "invalid syntax".
    """
    problem = getattr(error, "problem", None) or ""
    match = re.search(r"constructor for the tag '([^']*)'", problem)
    if not isinstance(error, yaml.constructor.ConstructorError) or match is None:
        return None
    tag = match.group(1).replace("tag:yaml.org,2002:", "!!")
    line = f" on line {error.problem_mark.line + 1}" if error.problem_mark is not None else ""
    return (
        f"uses the tag {tag}{line}, which hpsearch does not load (YAML is read with the safe loader, so a file "
        "cannot create Python objects or run code); remove the tag"
    )


def format_number(value: float | int) -> str:
    """A number as a person would write it: 3.0e-4, 7.6e-5, 0.85, 30.

    Floats get the fewest significant digits that give back the value to a relative 1e-12, so
    arithmetic noise disappears (3.0e-4, not 0.00030000000000000003) while the value reads back
    as the same hyperparameter.
    """
    if isinstance(value, int):
        return str(value)
    value = float(value)
    scientific = value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5)
    for digits in range(1, 18):
        text = f"{value:.{digits}e}" if scientific else f"{value:.{digits}g}"
        if math.isclose(float(text), value, rel_tol=1e-12, abs_tol=0.0):
            break
    if scientific:
        mantissa, exponent = text.split("e")
        # YAML 1.1 reads an exponent as a float only with a sign and a dot: 1.5e+5, 3.0e-4.
        exponent = int(exponent)
        return f"{mantissa}e{exponent:+d}" if exponent > 0 else f"{mantissa}e{exponent}"
    return text if ("." in text or "e" in text) else f"{text}.0"


def dump_params(params: Hyperparameters, path: str | os.PathLike, *, header: dict[str, Any] | None = None) -> None:
    """Write `params` (plus optional descriptive fields) as a Table-1 YAML file."""
    lines = []
    for key, value in (header or {}).items():
        lines.append(f"{key}: {_yaml_scalar(value)}")
    lines.append("hyperparameters:")
    for name, value in params.as_table1().items():
        lines.append(f"  {name}: {format_number(value)}")
    text = "\n".join(lines) + "\n"
    tmp = f"{os.fspath(path)}.tmp"
    with open(tmp, "w", encoding="utf-8") as file:
        file.write(text)
    os.replace(tmp, path)


def _yaml_scalar(value: Any) -> str:
    if isinstance(value, float):
        return format_number(value)
    if isinstance(value, dict):
        inner = ", ".join(f"{yaml.safe_dump(k).strip()}: {_yaml_scalar(v)}" for k, v in value.items())
        return "{" + inner + "}"
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("\n...").strip()
