"""Where an output may go: never over a study storage, a study file, a dataset or a model, and over
another existing file only when the user says --force."""

from __future__ import annotations

from pathlib import Path

from hpsearch.errors import UsageError

_SQLITE_HEADER = b"SQLite format 3\x00"
_YAML_SUFFIXES = (".yaml", ".yml")
_PEEK_BYTES = 4096


def protected_kind(path: Path) -> str | None:
    """What `path` is or lies in that no output may replace, in words; None for anything else."""
    if path.is_dir():
        if _is_model_folder(path):
            return "a model folder"
        if (path / "dataset.json").is_file():
            return "a dataset folder"
        return None
    for folder in list(path.parents)[:3]:  # the file itself in a model or dataset folder, or imagesTr/ of one
        if _is_model_folder(folder):
            return f"a file of the model folder {folder}"
        if (folder / "dataset.json").is_file():
            return f"a file of the dataset {folder}"
    if not path.is_file():
        return None
    head = _peek(path)
    if path.name.endswith((".journal", ".journal.lock")) or head.startswith(_SQLITE_HEADER) or b'"op_code"' in head:
        return "a study storage"
    if path.suffix in _YAML_SUFFIXES and b"search_space" in head and b"study" in head:
        return "a study file"
    return None


def check_not_protected(path: Path) -> None:
    """Refuse, with one sentence, an output path that is or lies in something hpsearch never writes over."""
    kind = protected_kind(path)
    if kind is not None:
        raise UsageError(f"{path} is {kind}, which hpsearch never writes over or into; choose another output path.")


def check_output_file(path: Path, *, force: bool, rewritable_marker: bytes | None = None) -> None:
    """Refuse `path` as an output file with one sentence when writing it would destroy something.

    Protected things (protected_kind) are refused even with `force`; any other existing file needs
    `force`, unless its first bytes hold `rewritable_marker` (a file this same command wrote).
    """
    check_not_protected(path)
    if path.is_file() and not force:
        if rewritable_marker is not None and rewritable_marker in _peek(path):
            return
        raise UsageError(f"{path} already exists; choose another output path, or pass --force to replace it.")


def _is_model_folder(folder: Path) -> bool:
    return (folder / "run.json").is_file() and (folder / "model.keras").exists()


def _peek(path: Path) -> bytes:
    try:
        with open(path, "rb") as file:
            return file.read(_PEEK_BYTES)
    except OSError:
        return b""

