"""Argument types and the options several commands share: --study, --storage, and where a study lives."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from hpsearch.errors import UsageError
from hpsearch.templates import STUDIES_FOLDER, TEMPLATE_NAMES, template_path

DEFAULT_TEMPLATE = "quickstart"
STORAGE_HELP = (
    "Optuna storage URL (postgresql+psycopg2://user@host/db, sqlite:///file.db) or journal file; "
    "default: $HPSEARCH_STORAGE, else hpsearch.journal beside the study file"
)


# ---------------------------------------------------------------- argument types


def shape_argument(text: str) -> tuple[int, int, int]:
    """Parse '192x192x12' into (192, 192, 12)."""
    parts = text.lower().split("x")
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a shape; write three sizes like 192x192x12")
    return shape


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number ≥ 1")
    return value


def fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a fraction in [0, 1)")
    return value


# ---------------------------------------------------------------- --study and --storage


def add_study_options(parser: argparse.ArgumentParser, study_help: str, *, required: bool = False) -> None:
    """--study (with the command's own help) and --storage, with the help every command shares."""
    parser.add_argument("--study", required=required, help=study_help)
    parser.add_argument("--storage", help=STORAGE_HELP)


def study_argument(args: argparse.Namespace, *, default: bool = True, templates: bool = False) -> None:
    """Resolve --study into what the other helpers read.

    Sets args.study_file (the YAML file to read, or None for a study named in the storage),
    args.study_home (the folder of the embedded journal, trial models and logs), args.study_label
    (the --study value that names it again, None for the default) and args.study.

    A value ending in .yaml/.yml, or naming a file, is a study file. Without --study (when
    `default`) and, where `templates`, for a template name, the study is ./studies/NAME.yaml
    if it exists, else the packaged template used from ./studies/. Any other value is the name
    of a study in the storage.
    """
    value = args.study
    args.study_label = value
    if value is None:
        if not default:
            raise UsageError("no study given; pass --study FILE or --study NAME.")
        value = DEFAULT_TEMPLATE
        templates = True
    looks_like_file = value.endswith((".yaml", ".yml")) or Path(value).is_file()
    if looks_like_file:
        if not Path(value).is_file():
            raise UsageError(
                f"study file {value} does not exist; give the path of a study YAML file "
                f"('hpsearch init' writes {STUDIES_FOLDER}/quickstart.yaml and {STUDIES_FOLDER}/paper.yaml)."
            )
        args.study_file, args.study_home = Path(value), Path(value).parent
    elif templates and value in TEMPLATE_NAMES:
        local = STUDIES_FOLDER / f"{value}.yaml"
        args.study_file = local if local.is_file() else template_path(value)
        args.study_home = STUDIES_FOLDER
    else:
        args.study_file, args.study_home = None, STUDIES_FOLDER
    args.study = value


def study_paths(home: Path) -> dict[str, Path]:
    """Where the embedded journal, trial models and worker logs of a study kept in `home` live."""
    return {"journal": home / "hpsearch.journal", "artifacts": home / "artifacts", "logs": home / "logs"}


def load_study_file(args: argparse.Namespace):
    """The StudyConfig of args.study_file, its relative paths resolved against args.study_home."""
    from hpsearch.config import load_study

    return load_study(args.study_file, home=args.study_home)


def resolve_study(args: argparse.Namespace, storage, *, check_data: bool = False):
    """The study's definition from --study: a YAML file, or the name of a study in the storage."""
    import optuna

    from hpsearch.worker import stored_config

    if args.study_file is not None:
        return load_study_file(args)
    try:
        study = optuna.load_study(study_name=args.study, storage=storage)
    except KeyError:
        names = ", ".join(s.study_name for s in optuna.get_all_study_summaries(storage)) or "none"
        raise UsageError(
            f"there is no study named {args.study!r} in the storage (studies: {names}); check --study."
        ) from None
    return stored_config(study, check_data=check_data)


def storage_url(args: argparse.Namespace) -> str:
    """The storage URL from --storage, $HPSEARCH_STORAGE, or the study's embedded journal file."""
    from hpsearch.storage import resolve_storage_url

    return resolve_storage_url(args.storage, default_journal=study_paths(args.study_home)["journal"])


def open_study_storage(args: argparse.Namespace):
    """(url, storage) of the study named by args (after study_argument)."""
    from hpsearch.storage import open_storage

    url = storage_url(args)
    return url, open_storage(url)


def open_finished_study(args: argparse.Namespace):
    """(study, its definition, storage URL) for the read-only commands; never creates a storage or study."""
    from hpsearch.export import check_storage_exists, find_study, study_definition

    study_argument(args, templates=False)
    check_storage_exists(storage_url(args))
    url, storage = open_study_storage(args)
    file_config = resolve_study(args, storage) if args.study_file is not None else None
    study = find_study(storage, file_config.name if file_config else args.study, url)
    return study, study_definition(study, file_config), url


def writable_folder(folder: Path, what: str, fix: str) -> Path:
    """Create `folder` if needed and check that a file can be written in it; UsageError naming it otherwise."""
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"{folder} is a file, but hpsearch keeps {what} in a folder there; {fix}.")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise UsageError(f"cannot write {what} in {folder} ({error.strerror or error}); {fix}.") from None
    return folder
