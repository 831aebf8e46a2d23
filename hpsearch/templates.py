"""The study templates shipped inside the package: studies/quickstart.yaml and studies/paper.yaml.

A template's relative paths (its dataset) resolve against the folder it is used from, `studies/`
of the current folder by default, exactly as if it had been copied there.
"""

from __future__ import annotations

import importlib.resources
import os
from pathlib import Path

from hpsearch.errors import UsageError

TEMPLATE_NAMES = ("quickstart", "paper")
STUDIES_FOLDER = Path("studies")  # where embedded storage, trial models and worker logs live by default


def template_path(name: str) -> Path:
    """The packaged file of template `name` (one of TEMPLATE_NAMES)."""
    if name not in TEMPLATE_NAMES:
        raise UsageError(f"there is no study template named {name!r}; choose one of {', '.join(TEMPLATE_NAMES)}.")
    return Path(str(importlib.resources.files("hpsearch") / "studies" / f"{name}.yaml"))


def write_templates(folder: str | os.PathLike, *, force: bool = False) -> list[Path]:
    """Copy every template into `folder`/studies/ and return the files written.

    Refuses, before writing anything, when one of them exists, unless `force`.
    """
    studies = Path(folder) / STUDIES_FOLDER
    targets = {name: studies / f"{name}.yaml" for name in TEMPLATE_NAMES}
    existing = [str(path) for path in targets.values() if path.exists()]
    if existing and not force:
        raise UsageError(f"{', '.join(existing)} already exist(s); edit them, or pass --force to overwrite them.")
    try:
        studies.mkdir(parents=True, exist_ok=True)
        for name, target in targets.items():
            temporary = target.with_name(f".{target.name}.tmp")
            temporary.write_bytes(template_path(name).read_bytes())
            os.replace(temporary, target)  # atomic: a file is either the old one or the whole template
    except OSError as error:
        raise UsageError(f"cannot write the study templates in {studies} ({error.strerror or error}); "
                         "choose a writable folder.") from None
    return list(targets.values())
