"""Bad input through the real command line: one sentence on stderr, exit code 2, nothing touched.

Every case runs `python -m hpsearch.cli ...` in a subprocess, as a user would, next to a study
journal with trials, a trained model folder and a dataset. Each must answer with exactly one
stderr line "hpsearch: error: ..." that names the bad value (TensorFlow's start-up lines are
allowed where the command loads TensorFlow), exit code 2, no traceback, never the password,
and leave every file that existed before byte-identical.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import optuna
import pytest
import yaml
from optuna.trial import TrialState, create_trial

from hpsearch.cli import main
from hpsearch.config import load_study
from hpsearch.storage import open_storage
from hpsearch.worker import ensure_dataset
from model.data import load_dataset, split_cases

from searchutil import tiny_study_with_two_trials, write_tiny_study

PASSWORD = "Pw-s3cret-XYZ"
TINY_TRAIN = ["--steps", "2", "--eval-every", "2", "--patch", "16x16x8", "--depth", "2"]
# TensorFlow writes these before its logging is set up; they are not ours to silence.
TF_NOISE = re.compile(r"^(WARNING: All log messages|I\d{4} )|oneDNN")


# ---------------------------------------------------------------- the world the cases run in


def _tiny_document(data: Path) -> dict:
    """The tiny study of searchutil, on an existing dataset folder."""
    return {
        "study": "tiny",
        "data": {"path": str(data), "split": {"seed": 0, "val_fraction": 0.25, "test_fraction": 0.0}},
        "training": {"steps": 6, "eval_every": 3, "patch": "16x16x8", "batch": 2, "depth": 2},
        "trials": 2,
        "seed": 0,
        "start": {"channels in first conv layer": 2, "learning rate": 3.0e-3},
        "search_space": {
            "learning rate": {"low": 1.0e-4, "high": 1.0e-2, "log": True},
            "channels in first conv layer": {"low": 2, "high": 3},
        },
    }


def _write_yaml(path: Path, document) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(document, sort_keys=False) if not isinstance(document, str) else document)
    return path


def _broken_copy(data: Path, target: Path, case: str, how: str) -> Path:
    """A copy of dataset `data` with one training case broken in one way."""
    shutil.copytree(data, target)
    image, label = target / "imagesTr" / f"{case}.nii.gz", target / "labelsTr" / f"{case}.nii.gz"
    if how == "corrupt":
        image.write_bytes(image.read_bytes()[:200])  # a cut-off download
    elif how == "shape":
        nifti = nib.load(label)
        nib.save(nib.Nifti1Image(np.asanyarray(nifti.dataobj)[:, :, :-2], nifti.affine), label)
    elif how == "labels":
        nifti = nib.load(label)
        values = np.asanyarray(nifti.dataobj).copy()
        values[0, 0, 0] = 7
        nib.save(nib.Nifti1Image(values, nifti.affine), label)
    elif how == "empty":
        description = json.loads((target / "dataset.json").read_text())
        description["training"] = []
        (target / "dataset.json").write_text(json.dumps(description))
    return target


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """A folder with a study journal holding trials, a trained model, a dataset and the bad inputs."""
    root = tmp_path_factory.mktemp("world")
    config = load_study(write_tiny_study(root / "studies", trials=2))
    ensure_dataset(config)
    data = config.data_path
    storage = open_storage(str(root / "studies" / "hpsearch.journal"), heartbeat_interval=None)
    tiny_study_with_two_trials(config, storage)
    empty = optuna.create_study(study_name="empty", storage=storage, direction="maximize")
    empty.add_trial(create_trial(state=TrialState.FAIL, user_attrs={"fail_reason": "interrupted"}))

    assert main(["train", "--data", str(data), "--out", str(root / "model"), *TINY_TRAIN]) == 0

    bad = root / "bad"
    good = _tiny_document(data)
    _write_yaml(bad / "invalid.yaml", "study: tiny\ndata: {path: [unclosed\n")
    _write_yaml(bad / "unknown_key.yaml", {**good, "trails": 3})
    _write_yaml(bad / "low_above_high.yaml", {**good, "search_space": {"learning rate": {"low": 1.0e-2, "high": 1.0e-4}}})
    _write_yaml(bad / "log_low_zero.yaml", {**good, "search_space": {"l2 regularization weight": {"low": 0.0, "high": 1.0e-3, "log": True}}})
    _write_yaml(bad / "start_outside.yaml", {**good, "start": {"learning rate": 5.0e-2}})
    _write_yaml(bad / "no_trials.yaml", {**good, "trials": 0})
    _write_yaml(bad / "no_data.yaml", {**good, "data": {"path": str(root / "no-such-dataset")}})
    _write_yaml(bad / "params_unknown.yaml", "hyperparameters:\n  learning rat: 1.0e-3\n")
    _write_yaml(bad / "params_range.yaml", "hyperparameters:\n  beta1: 1.5\n")
    (bad / "scan.nii.gz").write_text("this is not an image")

    dataset = load_dataset(data)
    split = split_cases(dataset.case_names, seed=0, val_fraction=0.2, test_fraction=0.2)  # hpsearch train's split
    case = split.train[0]
    for how in ("corrupt", "shape", "labels", "empty"):
        _broken_copy(data, bad / f"data_{how}", case, how)

    # A study folder whose trial model folder is a regular file.
    _write_yaml(root / "blocked" / "tiny.yaml", good)
    (root / "blocked" / "artifacts").write_text("not a folder")
    return root


def snapshot(root: Path) -> dict[str, str]:
    """sha256 of every file under `root`."""
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*")) if path.is_file()
    }


def run_cli(args: list[str], cwd: Path, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("HPSEARCH_")}
    environment.update({"TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})})
    return subprocess.run(
        [sys.executable, "-m", "hpsearch.cli", *args],
        cwd=cwd, env=environment, capture_output=True, text=True, timeout=timeout,
    )


def check_refused(result: subprocess.CompletedProcess, names: list[str], *, loads_tensorflow: bool = False) -> str:
    """The assertions every bad input shares; returns the error sentence."""
    shown = f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert result.returncode == 2, shown
    assert "Traceback" not in result.stdout + result.stderr, shown
    assert PASSWORD not in result.stdout + result.stderr, shown
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    if loads_tensorflow:
        lines = [line for line in lines if not TF_NOISE.search(line)]
    assert len(lines) == 1 and lines[0].startswith("hpsearch: error: "), shown
    for name in names:
        assert name in lines[0], shown
    return lines[0]


# ---------------------------------------------------------------- the table

J = "{root}/studies/hpsearch.journal"
STUDY = "{root}/studies/tiny.yaml"
BAD = "{root}/bad"
URL_PASSWORD = f"hp:{PASSWORD}@"

CASES = [
    # storage
    ("unreachable storage", ["status", "--study", "tiny", "--storage", f"postgresql+psycopg2://{URL_PASSWORD}127.0.0.1:1/test"], ["127.0.0.1:1", "start the server"]),
    ("malformed storage URL", ["export", "--study", "tiny", "--storage", f"postgresql://{URL_PASSWORD}db:notaport/hp"], ["db:notaport", "malformed"]),
    ("unknown database kind", ["launch", "--study", STUDY, "--storage", f"mongodb://{URL_PASSWORD}db/hp"], ["'mongodb'"]),
    ("storage file that does not exist", ["export", "--study", "tiny", "--storage", "{root}/nope.journal"], ["nope.journal"]),
    ("status of a storage file that does not exist", ["status", "--study", "tiny", "--storage", "{root}/nope.journal"], ["nope.journal"]),
    ("bad heartbeat setting", ["status", "--study", "tiny", "--storage", J], ["HPSEARCH_HEARTBEAT_INTERVAL='soon'"], {"HPSEARCH_HEARTBEAT_INTERVAL": "soon"}),
    # study files
    ("missing study file", ["launch", "--study", f"{BAD}/missing.yaml", "--storage", J], ["missing.yaml"]),
    ("invalid YAML", ["launch", "--study", f"{BAD}/invalid.yaml", "--storage", J], ["invalid.yaml", "not valid YAML"]),
    ("unknown key", ["launch", "--study", f"{BAD}/unknown_key.yaml", "--storage", J], ["'trails'"]),
    ("low above high", ["launch", "--study", f"{BAD}/low_above_high.yaml", "--storage", J], ["low 0.01 above high 0.0001"]),
    ("log scale with low 0", ["launch", "--study", f"{BAD}/log_low_zero.yaml", "--storage", J], ["log: true with low 0.0"]),
    ("start outside its bounds", ["launch", "--study", f"{BAD}/start_outside.yaml", "--storage", J], ["start value 0.05", "'learning rate'"]),
    ("trials 0", ["launch", "--study", f"{BAD}/no_trials.yaml", "--storage", J], ["trials must be at least 1, got 0"]),
    ("dataset folder missing", ["launch", "--study", f"{BAD}/no_data.yaml", "--storage", J], ["no-such-dataset"]),
    # launch, export, study names
    ("no workers", ["launch", "--workers", "0", "--study", STUDY, "--storage", J], ["--workers 0"]),
    ("more GPUs than exist", ["launch", "--gpus", "7", "--study", STUDY, "--storage", J], ["GPU 7"]),
    ("a study name to launch", ["launch", "--study", "tiny", "--storage", J], ["'tiny'", "hpsearch worker"]),
    ("trial model folder is a file", ["launch", "--study", "{root}/blocked/tiny.yaml", "--storage", J], ["blocked/artifacts is a file"]),
    ("export without a complete trial", ["export", "--study", "empty", "--storage", J], ["'empty'", "no COMPLETE trial"]),
    ("export of an unknown study", ["export", "--study", "nope", "--storage", J], ["'nope'"]),
    ("status of an unknown study", ["status", "--study", "nope", "--storage", J], ["'nope'"]),
    ("report of an unknown study", ["report", "--study", "nope", "--storage", J, "-o", "{root}/r.html"], ["'nope'"]),
    ("worker for an unknown study", ["worker", "--study", "nope", "--storage", J], ["'nope'"]),
    # data and params (hpsearch train checks them before TensorFlow starts)
    ("corrupted NIfTI", ["train", "--data", f"{BAD}/data_corrupt", "--out", "{root}/out", *TINY_TRAIN], ["data_corrupt/imagesTr/", "not a readable NIfTI"]),
    ("image and label differ in shape", ["train", "--data", f"{BAD}/data_shape", "--out", "{root}/out", *TINY_TRAIN], ["data_shape/labelsTr/", "(32, 32, 6)"]),
    ("label outside the classes", ["train", "--data", f"{BAD}/data_labels", "--out", "{root}/out", *TINY_TRAIN], ["data_labels/labelsTr/", "label value 7"]),
    ("empty dataset", ["train", "--data", f"{BAD}/data_empty", "--out", "{root}/out", *TINY_TRAIN], ["data_empty", "no cases"]),
    ("params: unknown name", ["train", "--data", "{root}/studies/data", "--params", f"{BAD}/params_unknown.yaml", "--out", "{root}/out"], ["'learning rat'"]),
    ("params: out of range", ["train", "--data", "{root}/studies/data", "--params", f"{BAD}/params_range.yaml", "--out", "{root}/out"], ["'beta1'", "1.5"]),
    ("train over an existing model", ["train", "--data", "{root}/studies/data", "--out", "{root}/model", *TINY_TRAIN], ["model already exists"]),
]
TENSORFLOW_CASES = [
    ("segment a file that is not NIfTI", ["segment", "--model", "{root}/model", f"{BAD}/scan.nii.gz", "{root}/mask.nii.gz"], ["scan.nii.gz", "not a readable NIfTI"]),
]


def _ids(cases):
    return [case[0] for case in cases]


def _run_case(world: Path, case: tuple, *, loads_tensorflow: bool = False) -> str:
    _, args, names, *env = case
    before = snapshot(world)
    result = run_cli([arg.format(root=world) for arg in args], cwd=world, env=env[0] if env else None)
    sentence = check_refused(result, [name.format(root=world) for name in names], loads_tensorflow=loads_tensorflow)
    assert snapshot(world) == before, f"{case[0]} changed files"
    return sentence


@pytest.mark.parametrize("case", CASES, ids=_ids(CASES))
def test_bad_input_is_one_sentence_exit_2_and_touches_nothing(world, case):
    _run_case(world, case)


@pytest.mark.parametrize("case", TENSORFLOW_CASES, ids=_ids(TENSORFLOW_CASES))
def test_bad_input_to_commands_that_load_tensorflow(world, case):
    _run_case(world, case, loads_tensorflow=True)


@pytest.mark.postgres
def test_a_wrong_password_is_named_without_the_password(world, private_postgres):
    """The test server of pg.py checks passwords (the shared one trusts everyone)."""
    database = private_postgres.create_database()
    url = database.replace(private_postgres.password, PASSWORD)
    before = snapshot(world)
    result = run_cli(["status", "--study", "tiny", "--storage", url], cwd=world)
    sentence = check_refused(result, [f"127.0.0.1:{private_postgres.port}", "refused user 'postgres'", "password"])
    assert "password authentication failed" in sentence
    assert snapshot(world) == before


@pytest.mark.slow
def test_a_worker_that_refuses_the_data_ends_the_launch_with_its_sentence(world, tmp_path):
    """The data is read by the workers; the launcher passes a worker's sentence on (exit 2), not "worker died"."""
    study = _write_yaml(tmp_path / "studies" / "tiny.yaml", _tiny_document(world / "bad" / "data_labels"))
    before = snapshot(world)
    result = run_cli(["launch", "--workers", "1", "--study", str(study), "--storage", str(tmp_path / "s.journal")], cwd=tmp_path)
    shown = f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert result.returncode == 2, shown
    assert "Traceback" not in result.stdout + result.stderr, shown
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("hpsearch: error: ")]
    # Above it, the launcher's progress lines; the sentence is the last word.
    assert errors == [lines[-1]], shown
    assert "worker w0" in errors[0] and "data_labels/labelsTr/case_001.nii.gz holds label value 7" in errors[0], shown
    assert snapshot(world) == before
