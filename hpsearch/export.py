"""`hpsearch export`: a study's best COMPLETE trial as the paper's Table 1, in YAML or Markdown.

The YAML form is the `--params` input of `hpsearch train` (model.params.load_params reads it):
descriptive keys from model.params.METADATA_KEYS, then `training:` with the trial's training
choices (loss, block, augment: `hpsearch train` trains with them unless its flags say otherwise),
then `hyperparameters:` with the seven paper names in the paper's order. The searched values are
the trial's; the unsearched ones are the study's start point and training values (what the trial
trained with). Numbers are written by
model.params.format_number, so arithmetic noise disappears (3.0e-4, not 0.00030000000000000003)
while every value reads back to a relative 1e-12.

Also home of the small read-only helpers `export`, `report` and `dashboard` share: find the
study by name with a clear error, refuse a journal file that does not exist (instead of
creating an empty one), and write an output file atomically.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import tempfile
from pathlib import Path

import optuna
import yaml

from model import TABLE1_NAMES, Hyperparameters, format_number
from hpsearch.config import TRAINING_CHOICES, StudyConfig
from hpsearch.errors import UsageError
from hpsearch.storage import describe, is_rdb_url, journal_path
from hpsearch.vocabulary import CONFIG_ATTR, PER_CLASS_ATTR, study_best_trial
from hpsearch.worker import stored_config

IOU_DIGITS = 6  # validation IoU as `hpsearch train` records it in params.yaml


@dataclasses.dataclass(frozen=True)
class ExportedTrial:
    """The best trial of a study, ready to be written as Table 1.

    `searched` names the dimensions the study searched (Table 1 names, loss, block, augment); the
    others are its start values. `training` holds the loss, block and augment the trial trained
    with (only the searched ones for a study hpsearch did not create).
    """

    study: str
    trial: int
    iou: float
    per_class: dict[str, float]
    params: Hyperparameters
    searched: tuple[str, ...]
    source: str | None = None
    training: dict[str, object] = dataclasses.field(default_factory=dict)

    def header(self) -> dict[str, object]:
        """The descriptive keys (model.params.METADATA_KEYS names) in the order they are written."""
        header: dict[str, object] = {"study": self.study, "trial": self.trial, "validation IoU": round(self.iou, IOU_DIGITS)}
        if self.per_class:
            header["per-class validation IoU"] = {name: round(v, IOU_DIGITS) for name, v in self.per_class.items()}
        if self.source:
            header["source"] = self.source
        fixed = [name for name in TABLE1_NAMES.values() if name not in self.searched]
        if fixed:
            listed = fixed[0] if len(fixed) == 1 else f"{', '.join(fixed[:-1])} and {fixed[-1]}"
            header["note"] = f"{listed} {'was' if len(fixed) == 1 else 'were'} not searched (start values of the study)"
        return header


# ---------------------------------------------------------------- reading the study


def check_storage_exists(url: str) -> None:
    """Refuse a journal file that does not exist: reading commands must not create an empty one."""
    if is_rdb_url(url):
        return
    path = journal_path(url)
    if not path.is_file():
        raise UsageError(
            f"there is no study storage at {path}; start a search with 'hpsearch launch' first, "
            "or pass --storage (a journal file or postgresql+psycopg2://...)."
        )


def find_study(storage, name: str, url: str) -> optuna.Study:
    """The study `name` in `storage`, or a UsageError that lists the studies there."""
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        names = ", ".join(repr(s.study_name) for s in optuna.get_all_study_summaries(storage)) or "none"
        raise UsageError(
            f"there is no study named {name!r} in {describe(url)} (studies there: {names}); check --study and --storage."
        ) from None


def study_definition(study: optuna.Study, file_config: StudyConfig | None) -> StudyConfig | None:
    """The definition the trials ran with: the one stored in the study, else the study file's, else None."""
    if CONFIG_ATTR in study.user_attrs:
        return stored_config(study, check_data=False)
    return file_config


def exported_trial(study: optuna.Study, config: StudyConfig | None, *, source: str | None = None) -> ExportedTrial:
    """The study's best COMPLETE trial as Table 1; UsageError when it has none."""
    best = study_best_trial(study)
    if best is None:
        states = {}
        for trial in study.get_trials(deepcopy=False):
            states[trial.state.name] = states.get(trial.state.name, 0) + 1
        held = ", ".join(f"{n} {s}" for s, n in sorted(states.items())) or "no trials"
        raise UsageError(
            f"study {study.study_name!r} has no COMPLETE trial yet ({held}); wait for one, "
            "or run 'hpsearch launch' to search."
        )
    if config is not None:
        params = config.hyperparameters(best.params)
        searched = tuple(config.search_space)
        training = config.training_choices(best.params)
    else:  # a study hpsearch did not create: Table 1 fills in what it did not search
        table1 = {name: value for name, value in best.params.items() if name not in TRAINING_CHOICES}
        params = Hyperparameters.from_table1(table1, source=f"trial {best.number} of study {study.study_name!r}")
        searched = tuple(best.params)
        training = {key: best.params[key] for key in TRAINING_CHOICES if key in best.params}
    per_class = best.user_attrs.get(PER_CLASS_ATTR) or {}
    if not isinstance(per_class, dict):
        per_class = {}
    per_class = {str(k): float(v) for k, v in per_class.items() if isinstance(v, (int, float)) and math.isfinite(v)}
    return ExportedTrial(
        study=study.study_name, trial=best.number, iou=float(best.value), per_class=per_class,
        params=params, searched=searched, source=source, training=training,
    )


# ---------------------------------------------------------------- writing


def to_yaml(exported: ExportedTrial) -> str:
    """The Table-1 YAML text (`hpsearch train --params` reads it)."""
    lines = []
    for key, value in exported.header().items():
        if isinstance(value, dict):
            lines.append(f"{key}:")
            lines.extend(f"  {_scalar(k)}: {_scalar(v)}" for k, v in value.items())
        else:
            lines.append(f"{key}: {_scalar(value)}")
    if exported.training:
        lines.append("training:")
        lines.extend(f"  {key}: {_scalar(value)}" for key, value in exported.training.items())
    lines.append("hyperparameters:")
    for name, value in exported.params.as_table1().items():
        lines.append(f"  {name}: {format_number(value)}")
    return "\n".join(lines) + "\n"


def to_markdown(exported: ExportedTrial) -> str:
    """The same content as a Markdown table."""
    per_class = ""
    if exported.per_class:
        per_class = " (" + ", ".join(f"{name} {format_number(round(v, IOU_DIGITS))}" for name, v in exported.per_class.items()) + ")"
    lines = [
        f"Best trial of study `{exported.study}`: trial {exported.trial}, "
        f"validation IoU {format_number(round(exported.iou, IOU_DIGITS))}{per_class}.",
        "",
        "| hyperparameter | value | |",
        "|---|---:|---|",
    ]
    for name, value in exported.params.as_table1().items():
        how = "searched" if name in exported.searched else "start value (not searched)"
        lines.append(f"| {name} | {format_number(value)} | {how} |")
    if exported.training:
        lines += ["", f"Trained with {training_text(exported)}."]
    if exported.source:
        lines += ["", f"Source: {exported.source}."]
    return "\n".join(lines) + "\n"


def training_text(exported: ExportedTrial) -> str:
    """The trial's training choices in words, e.g. "loss per_class (searched), block factorized, augment false"."""
    return ", ".join(f"{key} {_scalar(value)}{' (searched)' if key in exported.searched else ''}"
                     for key, value in exported.training.items())


def write_output(text: str, path: str | os.PathLike | None) -> None:
    """Print `text`, or write it to `path` atomically (a temporary file beside it, then a rename)."""
    if path is None or os.fspath(path) == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    write_atomically(Path(path), text)


def write_atomically(path: Path, text: str) -> None:
    """Write `text` to `path` so a reader sees the old file or the whole new one, never half."""
    if path.is_dir():
        raise UsageError(f"-o {path} is a folder; give a file name such as {path / 'best.yaml'}.")
    folder = path.parent
    if not folder.is_dir():
        raise UsageError(f"the folder {folder} of -o {path} does not exist; create it or choose another path.")
    try:
        descriptor, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    except OSError as error:
        raise UsageError(f"cannot write in {folder} ({error.strerror or error}); choose another -o path.") from None
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _scalar(value: object) -> str:
    """One YAML scalar: numbers as format_number writes them, strings quoted only where YAML needs it."""
    if isinstance(value, bool) or value is None:
        return yaml.safe_dump(value).removesuffix("...\n").strip()
    if isinstance(value, (int, float)):
        return format_number(value)
    text = yaml.safe_dump(str(value), default_flow_style=True, allow_unicode=True, width=1 << 20)
    return text.removesuffix("...\n").strip()
