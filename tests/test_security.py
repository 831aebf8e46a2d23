"""What hpsearch reads can run no code, and a storage password goes nowhere it could leak.

YAML is read with the safe loader (study files, params files), saved models load in Keras's safe
mode, the dashboard binds to 127.0.0.1 unless told otherwise, and a password in the storage URL
never reaches worker command lines, logs, trial or study attributes, models, exports, reports
or `status`.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hpsearch.cli import build_parser, main
from hpsearch.config import load_study
from hpsearch.errors import UsageError
from model.errors import InputError

from searchutil import load

ROOT = Path(__file__).resolve().parent.parent
UNSAFE_YAML_CALLS = {"unsafe_load", "unsafe_load_all", "full_load", "full_load_all"}


# ---------------------------------------------------------------- YAML


def _yaml_calls(module_name: str, tree: ast.AST):
    """(call text, loader class or None) of every yaml.load*/unsafe*/full* call in a module."""
    module = importlib.import_module(module_name)
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        if not (isinstance(node.func.value, ast.Name) and node.func.value.id == "yaml"):
            continue
        name = node.func.attr
        if name in UNSAFE_YAML_CALLS:
            yield ast.unparse(node), None
        elif name in ("load", "load_all"):
            loader = next((k.value for k in node.keywords if k.arg == "Loader"), node.args[1] if len(node.args) > 1 else None)
            text = ast.unparse(loader) if loader is not None else ""
            value = eval(text, vars(module)) if text else None  # noqa: S307 - a name or yaml.X in our own source
            yield ast.unparse(node), value


def test_every_yaml_read_in_the_code_uses_the_safe_loader():
    calls = []
    for package in ("hpsearch", "model"):
        for path in sorted((ROOT / package).glob("*.py")):
            module_name = f"{package}.{path.stem}"
            for text, loader in _yaml_calls(module_name, ast.parse(path.read_text())):
                calls.append(text)
                assert isinstance(loader, type) and issubclass(loader, yaml.SafeLoader), f"{path.name}: {text}"
    assert calls  # the scan found the study-file reader


def _evil_yaml(tmp_path: Path, marker: Path) -> Path:
    path = tmp_path / "evil.yaml"
    path.write_text(f'study: !!python/object/apply:os.system ["touch {marker}"]\nhyperparameters: {{}}\n')
    return path


def test_a_study_file_with_a_python_tag_is_refused_through_the_cli(tmp_path):
    marker = tmp_path / "ran"
    evil = _evil_yaml(tmp_path, marker)
    result = subprocess.run(
        [sys.executable, "-m", "hpsearch.cli", "launch", "--study", str(evil), "--storage", str(tmp_path / "s.journal")],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("hpsearch: error: ") and len(result.stderr.splitlines()) == 1
    assert "!!python/object/apply:os.system" in result.stderr and "safe loader" in result.stderr
    assert "Traceback" not in result.stderr
    assert not marker.exists()
    assert not (tmp_path / "s.journal").exists()


def test_a_params_file_with_a_python_tag_is_refused(tmp_path, capsys):
    marker = tmp_path / "ran"
    evil = _evil_yaml(tmp_path, marker)
    with pytest.raises(UsageError, match="uses the tag !!python/object/apply:os.system on line 1"):
        load_study(evil)
    assert main(["train", "--data", str(tmp_path), "--params", str(evil), "--out", str(tmp_path / "m")]) == 2
    assert "!!python/object/apply:os.system" in capsys.readouterr().err
    assert not marker.exists()


# ---------------------------------------------------------------- models


def test_a_model_with_a_lambda_layer_is_refused_and_its_code_never_runs(tmp_path):
    import keras

    from model.config import TrainConfig
    from model.params import Hyperparameters, dump_params
    from model.run import INFO_FILE, MODEL_FILE, PARAMS_FILE, load_run

    marker = tmp_path / "ran"
    inputs = keras.Input((8, 8, 8, 1))
    # Whoever loads this model runs the function: here it leaves a mark.
    outputs = keras.layers.Lambda(lambda x, path: (open(path, "w").close(), x)[1], arguments={"path": str(marker)})(inputs)
    folder = tmp_path / "model"
    folder.mkdir()
    keras.Model(inputs, outputs).save(folder / MODEL_FILE)
    marker.unlink()  # building the model above ran it once
    dump_params(Hyperparameters(), folder / PARAMS_FILE)
    info = {"class_names": ["background", "x"], "channel_names": ["image"], "config": dataclasses.asdict(TrainConfig())}
    (folder / INFO_FILE).write_text(json.dumps(info))

    with pytest.raises(InputError) as refused:
        load_run(folder)
    message = str(refused.value)
    assert "Lambda layer" in message and "safe mode" in message and str(folder / MODEL_FILE) in message
    assert "\n" not in message
    assert not marker.exists()


# ---------------------------------------------------------------- the dashboard


def test_the_dashboard_listens_on_this_machine_only_by_default():
    # test_dashboard.py checks the real server's listening address; this pins the default itself.
    assert build_parser().parse_args(["dashboard"]).host == "127.0.0.1"


# ---------------------------------------------------------------- the storage password


def _no_password(text: str, password: str, where: str) -> None:
    assert password not in text, f"the password appears in {where}"


@pytest.mark.slow
@pytest.mark.postgres
def test_the_storage_password_reaches_no_output_attribute_or_file(postgres_stress_search, tmp_path):
    """An 8-worker search with the password in $HPSEARCH_STORAGE on a server that checks it (shared with test_concurrency)."""
    run = postgres_stress_search
    url, study_file = run["storage_url"], run["study_file"]
    from sqlalchemy.engine import make_url

    password = make_url(url).password
    assert password and run["code"] == 0, run["output"]

    _no_password(run["output"], password, "the launcher's output")
    assert run["argv"], "no worker process was seen"
    for line in run["argv"]:
        _no_password(line, password, f"a worker's command line ({line})")
    logs = sorted((study_file.parent / "logs" / "tiny").glob("w*.log"))
    assert logs
    for log in logs:
        _no_password(log.read_text(), password, log.name)
    artifacts = sorted((study_file.parent / "artifacts").iterdir())
    assert artifacts
    for artifact in artifacts:
        assert password.encode() not in artifact.read_bytes(), f"the password appears in the model {artifact.name}"

    study = load(url)
    stored = json.dumps([study.user_attrs, study._storage.get_study_system_attrs(study._study_id)], default=str)
    _no_password(stored, password, "the study's attributes")
    assert "postgresql" not in stored  # the stored study definition holds no storage URL at all
    for trial in study.trials:
        _no_password(json.dumps([trial.user_attrs, trial.system_attrs], default=str), password, f"trial {trial.number}'s attributes")

    env = {**os.environ, "HPSEARCH_STORAGE": url}
    commands = {
        "export": ["export", "--study", "tiny"],
        "export --format markdown": ["export", "--study", "tiny", "--format", "markdown"],
        "report": ["report", "--study", "tiny", "-o", str(tmp_path / "report.html")],
        "status": ["status", "--study", "tiny", "--storage", url],  # the URL on the command line, too
    }
    for name, args in commands.items():
        result = subprocess.run([sys.executable, "-m", "hpsearch.cli", *args], capture_output=True, text=True, env=env, timeout=120)
        assert result.returncode == 0, result.stderr
        _no_password(result.stdout + result.stderr, password, f"'hpsearch {name}' output")
    report = (tmp_path / "report.html").read_text()
    assert "Optimisation history" in report
    _no_password(report, password, "the HTML report")
