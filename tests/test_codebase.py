"""The codebase's own rules, read from the source: the seam between search and model, one vocabulary,
no patched library classes, no imports from libraries' private modules."""

from __future__ import annotations

import ast
from pathlib import Path

import model

ROOT = Path(__file__).resolve().parent.parent
SEARCH_FILES = sorted((ROOT / "hpsearch").rglob("*.py"))
MODEL_FILES = sorted((ROOT / "model").rglob("*.py"))
NOT_LIBRARIES = {"hpsearch", "model", "__future__"}


def parsed(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def imports(tree: ast.Module) -> list[tuple[str, list[str], int]]:
    """(module, imported names, line) for every import statement, at any depth."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, [], node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.module, [alias.name for alias in node.names], node.lineno))
    return found


def where(path: Path, line: int) -> str:
    return f"{path.relative_to(ROOT)}:{line}"


def test_search_reaches_the_model_only_through_its_face():
    face = set(model.__all__)
    wrong = []
    for path in SEARCH_FILES:
        for module, names, line in imports(parsed(path)):
            if module.startswith("model."):
                wrong.append(f"{where(path, line)} imports {module}")
            elif module == "model" and not set(names) <= face:
                wrong.append(f"{where(path, line)} imports {sorted(set(names) - face)} from model, not in model.__all__")
    assert not wrong, "hpsearch/ must import the model only as `import model` or `from model import NAME`:\n" + "\n".join(wrong)


def test_the_model_never_imports_the_search():
    wrong = [
        f"{where(path, line)} imports {module}"
        for path in MODEL_FILES
        for module, _, line in imports(parsed(path))
        if module.split(".")[0] == "hpsearch"
    ]
    assert not wrong, "\n".join(wrong)


def test_every_face_name_exists():
    for name in model.__all__:
        assert getattr(model, name) is not None, name


def test_attribute_names_are_defined_once_in_the_vocabulary():
    defined = {}
    for path in SEARCH_FILES:
        for node in ast.walk(parsed(path)):
            if isinstance(node, ast.Assign):
                for target in node.targets:
                    if isinstance(target, ast.Name) and target.id.endswith("_ATTR"):
                        defined.setdefault(target.id, []).append(where(path, node.lineno))
    outside = {name: places for name, places in defined.items() if any("vocabulary.py" not in p for p in places)}
    assert not outside, f"attribute names defined outside hpsearch/vocabulary.py: {outside}"
    from hpsearch import vocabulary

    values = [getattr(vocabulary, name) for name in defined]
    assert len(values) == len(set(values)), "two constants spell the same attribute"


def test_user_attributes_are_named_by_the_vocabulary_not_by_literals():
    """set_user_attr("x", ...), user_attrs["x"] and user_attrs.get("x") with a literal name."""
    wrong = []
    for path in SEARCH_FILES:
        for node in ast.walk(parsed(path)):
            key = None
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                if node.func.attr == "set_user_attr" and node.args:
                    key = node.args[0]
                elif node.func.attr == "set_trial_user_attr" and len(node.args) > 1:
                    key = node.args[1]
                elif (node.func.attr == "get" and node.args and isinstance(node.func.value, ast.Attribute)
                      and node.func.value.attr == "user_attrs"):
                    key = node.args[0]
            elif isinstance(node, ast.Subscript) and isinstance(node.value, ast.Attribute) and node.value.attr == "user_attrs":
                key = node.slice
            if isinstance(key, ast.Constant) and isinstance(key.value, str):
                wrong.append(f"{where(path, node.lineno)}: {key.value!r}")
    assert not wrong, "use the names in hpsearch/vocabulary.py:\n" + "\n".join(wrong)


def test_no_library_class_is_patched_with_setattr():
    wrong = []
    for path in SEARCH_FILES + MODEL_FILES:
        tree = parsed(path)
        classes = {node.name for node in ast.walk(tree) if isinstance(node, ast.ClassDef)}
        imported = {alias.asname or alias.name.split(".")[0]
                    for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
                    for alias in node.names}
        for node in ast.walk(tree):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "setattr"
                    and node.args and isinstance(node.args[0], ast.Name) and node.args[0].id in classes | imported):
                wrong.append(f"{where(path, node.lineno)}: setattr({node.args[0].id}, ...)")
    assert not wrong, "\n".join(wrong)


# The one exception, and why: Optuna records heartbeats and fails stale trials only for storages
# that are instances of BaseHeartbeat, which it does not export (optuna 5.x); a storage wrapper with
# heartbeats must subclass it. Nothing else of Optuna's private modules is imported.
PRIVATE_IMPORTS_ALLOWED = {("hpsearch/storage.py", "optuna.storages._heartbeat")}


def test_no_import_from_a_librarys_private_modules():
    wrong = []
    for path in SEARCH_FILES + MODEL_FILES:
        for module, _, line in imports(parsed(path)):
            parts = module.split(".")
            allowed = (str(path.relative_to(ROOT)), module) in PRIVATE_IMPORTS_ALLOWED
            if parts[0] not in NOT_LIBRARIES and any(part.startswith("_") for part in parts) and not allowed:
                wrong.append(f"{where(path, line)} imports {module}")
    assert not wrong, "\n".join(wrong)
