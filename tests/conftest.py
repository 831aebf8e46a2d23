"""Shared fixtures: tiny NIfTI datasets written with nibabel, and the CLI run in-process."""

from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

pytest_plugins = ["pg"]


def pytest_report_header(config) -> str:
    """The Keras backend the suite runs on: TensorFlow, or JAX where KERAS_BACKEND=jax (.ci/run's second pass).

    Subprocesses the tests start inherit KERAS_BACKEND from os.environ, so workers run on the same one.
    """
    from model.tensorflow_import import import_tensorflow

    import_tensorflow()  # before Keras, which imports TensorFlow unfiltered (its start-up notices)
    import keras

    asked = os.environ.get("KERAS_BACKEND", "tensorflow")
    if keras.backend.backend() != asked:  # without KERAS_BACKEND, ~/.keras/keras.json may name another
        raise pytest.UsageError(f"KERAS_BACKEND={asked} but Keras runs on {keras.backend.backend()}.")
    return f"keras backend: {keras.backend.backend()}"


def write_nifti(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    """Save `data` as NIfTI (the affine defaults to 1.5 × 1.5 × 8 mm voxels)."""
    affine = np.diag([1.5, 1.5, 8.0, 1.0]) if affine is None else affine
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), path)
    return path


def blob_case(rng: np.random.Generator, shape=(20, 18, 10), classes: int = 2):
    """An image with bright cubes where the label is foreground (classes 1..classes-1)."""
    label = np.zeros(shape, np.uint8)
    for value in range(1, classes):
        corner = rng.integers(0, [s - 6 for s in shape])
        label[tuple(slice(c, c + 5) for c in corner)] = value
    image = rng.normal(100.0, 10.0, shape).astype(np.float32) + 50.0 * label
    return image, label


@pytest.fixture
def msd_v1(tmp_path: Path) -> Path:
    """An MSD v1 dataset of 5 cases with two classes."""
    rng = np.random.default_rng(1)
    root = tmp_path / "msd"
    training = []
    for i in range(5):
        image, label = blob_case(rng)
        write_nifti(root / "imagesTr" / f"case_{i}.nii.gz", image)
        write_nifti(root / "labelsTr" / f"case_{i}.nii.gz", label)
        training.append({"image": f"./imagesTr/case_{i}.nii.gz", "label": f"./labelsTr/case_{i}.nii.gz"})
    description = {
        "name": "Blobs",
        "modality": {"0": "MRI"},
        "labels": {"0": "background", "1": "blob"},
        "training": training,
        "test": [],
    }
    (root / "dataset.json").write_text(json.dumps(description))
    return root


@pytest.fixture(scope="session")
def synth_dataset(tmp_path_factory) -> Path:
    """A small synthetic cardiac dataset (8 cases of 32×32×10) shared by the slower tests."""
    from model.synth import write_dataset

    return write_dataset(tmp_path_factory.mktemp("synth") / "data", cases=8, shape=(32, 32, 10), seed=3)


@pytest.fixture(scope="session")
def postgres_stress_search(private_postgres, tmp_path_factory):
    """One stress search (searchutil.stress_search) on the password-checking server of pg.py.

    Shared by test_concurrency (counts) and test_security (the password appears nowhere).
    """
    from searchutil import stress_search

    url = private_postgres.create_database()
    return {**stress_search(tmp_path_factory.mktemp("stress") / "studies", url), "storage_url": url}
