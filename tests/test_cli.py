"""The commands of the training core, run as a user runs them: synth, train, segment, evaluate, and their errors."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from hpsearch.cli import main

TINY_TRAIN = ["--steps", "12", "--eval-every", "6", "--patch", "16x16x8", "--depth", "2", "--seed", "0"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, synth_dataset):
    """A model trained for a few steps through `hpsearch train` (channels 4 from a params file)."""
    folder = tmp_path_factory.mktemp("run")
    params = folder / "params.yaml"
    params.write_text("hyperparameters:\n  channels in first conv layer: 4\n  learning rate: 3.0e-3\n")
    out = folder / "model"
    assert main(["train", "--data", str(synth_dataset), "--params", str(params), "--out", str(out), *TINY_TRAIN]) == 0
    return out


@pytest.mark.backends
def test_train_writes_the_model_and_its_hyperparameters(tiny_run, capsys):
    assert sorted(p.name for p in tiny_run.iterdir()) == ["model.keras", "params.yaml", "run.json"]
    info = json.loads((tiny_run / "run.json").read_text())
    assert info["class_names"] == ["background", "left ventricle"]
    assert [h["step"] for h in info["history"]] == [6, 12]
    assert 0.0 <= info["validation_iou"] <= 1.0
    text = (tiny_run / "params.yaml").read_text()
    assert "channels in first conv layer: 4" in text and "learning rate: 0.003" in text
    assert "dropout keep probability: 0.85" in text  # Table 1 default kept


@pytest.mark.backends
def test_segment_keeps_the_affine_and_header_geometry(tiny_run, synth_dataset, tmp_path, capsys):
    source = synth_dataset / "imagesTr" / "case_000.nii.gz"
    target = tmp_path / "mask.nii.gz"
    assert main(["segment", "--model", str(tiny_run), str(source), str(target)]) == 0
    image, mask = nib.load(source), nib.load(target)
    np.testing.assert_array_equal(mask.affine, image.affine)
    assert mask.shape == image.shape and mask.header.get_zooms() == image.header.get_zooms()
    assert mask.get_data_dtype() == np.uint8
    assert set(np.unique(np.asanyarray(mask.dataobj))) <= {0, 1}
    # A folder of files, into a folder; an existing output is never overwritten.
    assert main(["segment", "--model", str(tiny_run), str(synth_dataset / "imagesTr"), str(tmp_path / "masks")]) == 0
    assert len(list((tmp_path / "masks").glob("*.nii.gz"))) == 8
    assert main(["segment", "--model", str(tiny_run), str(source), str(target)]) == 2
    assert "already exists" in capsys.readouterr().err


def test_segment_and_evaluate_in_bfloat16(tiny_run, synth_dataset, tmp_path, capsys, monkeypatch):
    source = synth_dataset / "imagesTr" / "case_000.nii.gz"
    masks = {}
    for precision in ("float32", "bfloat16"):
        target = tmp_path / f"{precision}.nii.gz"
        assert main(["segment", "--model", str(tiny_run), "--precision", precision, str(source), str(target)]) == 0
        masks[precision] = np.asanyarray(nib.load(target).dataobj)
    agreement = (masks["bfloat16"] == masks["float32"]).mean()
    assert agreement > 0.99, f"the bfloat16 mask agrees with float32's on {agreement:.4f} of the voxels"
    # A CPU without bfloat16 units gets a note that it will be slower there, and the run goes on.
    monkeypatch.setattr("model.inference.cpu_has_bfloat16_units", lambda: False)
    assert main(["evaluate", "--model", str(tiny_run), "--data", str(synth_dataset), "--split", "all", "--precision", "bfloat16"]) == 0
    captured = capsys.readouterr()
    assert "mean foreground IoU" in captured.out
    assert "--precision bfloat16 will likely be slower than float32 here" in captured.err


@pytest.mark.backends
def test_evaluate_prints_iou_per_case_and_class(tiny_run, synth_dataset, capsys):
    assert main(["evaluate", "--model", str(tiny_run), "--data", str(synth_dataset), "--split", "all"]) == 0
    out = capsys.readouterr().out
    assert "case_007" in out and "left ventricle" in out and "mean foreground IoU" in out
    assert "IoU / Dice per case" in out and "IoU / Dice per class" in out
    # The pooled line: Dice follows from IoU class by class (one foreground class here).
    iou, dice = (float(x) for x in re.search(r"mean foreground IoU ([0-9.]+), Dice ([0-9.]+)", out).groups())
    assert abs(dice - 2 * iou / (1 + iou)) < 2e-4


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hpsearch.cli", *args], capture_output=True, text=True, timeout=120)


def test_bfloat16_on_a_cpu_without_its_units_says_so_once_in_our_words(tiny_run, synth_dataset, tmp_path):
    from model.inference import bfloat16_is_native

    source = synth_dataset / "imagesTr" / "case_000.nii.gz"
    result = run_cli("segment", "--model", str(tiny_run), "--precision", "bfloat16", str(source), str(tmp_path / "mask.nii.gz"))
    assert result.returncode == 0, result.stderr
    # TensorFlow's own error-level line about oneDNN and bfloat16 never reaches the user.
    assert "DT_BFLOAT16" not in result.stderr
    if bfloat16_is_native() is False:
        assert result.stderr.count("hpsearch: note:") == 1 and "lacks bfloat16 units" in result.stderr
    else:
        assert "hpsearch: note:" not in result.stderr


def test_segment_of_a_non_nifti_file_is_one_sentence_and_exit_2(tiny_run, tmp_path):
    bogus = tmp_path / "scan.nii.gz"
    bogus.write_text("this is not an image")
    result = run_cli("segment", "--model", str(tiny_run), str(bogus), str(tmp_path / "out.nii.gz"))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("hpsearch: error:")]
    assert len(errors) == 1 and "scan.nii.gz is not a readable NIfTI file" in errors[0]
    # Nothing else: TensorFlow loaded (to read the model) without its start-up notices.
    assert result.stderr.strip().splitlines() == errors
    assert not (tmp_path / "out.nii.gz").exists()


@pytest.mark.parametrize(
    "params_text, message",
    [
        ("learning rat: 1.0e-3\n", "unknown hyperparameter 'learning rat'"),
        ("beta1: 1.5\n", "'beta1' is out of range: 1.5"),
        ("channels in first conv layer: 2.5\n", "must be a whole number"),
        ("[unclosed\n", "is not valid YAML"),
    ],
)
def test_bad_params_file_is_refused_before_training(params_text, message, synth_dataset, tmp_path, capsys):
    params = tmp_path / "bad.yaml"
    params.write_text(params_text)
    code = main(["train", "--data", str(synth_dataset), "--params", str(params), "--out", str(tmp_path / "m"), *TINY_TRAIN])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_train_refuses_an_existing_output_and_a_missing_dataset(tiny_run, synth_dataset, tmp_path, capsys):
    assert main(["train", "--data", str(synth_dataset), "--out", str(tiny_run), *TINY_TRAIN]) == 2
    assert "already exists and is not empty" in capsys.readouterr().err
    assert main(["train", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "m"), *TINY_TRAIN]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_data_synth_writes_a_dataset_and_refuses_a_used_folder(tmp_path, capsys):
    out = tmp_path / "synth"
    assert main(["data", "synth", str(out), "--cases", "2", "--shape", "32x32x10", "--myocardium"]) == 0
    description = json.loads((out / "dataset.json").read_text())
    assert description["labels"] == {"0": "background", "1": "left ventricle", "2": "myocardium"}
    assert main(["data", "synth", str(out), "--cases", "2"]) == 2
    assert "already exists and is not empty" in capsys.readouterr().err


def test_the_closing_line_counts_pruned_trials(capsys):
    import optuna
    from optuna.trial import TrialState, create_trial

    from hpsearch.cli import print_best

    study = optuna.create_study(direction="maximize")
    study.add_trial(create_trial(value=0.5, params={"x": 1.0}, distributions={"x": optuna.distributions.FloatDistribution(0, 2)}))
    study.add_trial(create_trial(state=TrialState.PRUNED, intermediate_values={100: 0.1}))
    study.add_trial(create_trial(state=TrialState.FAIL))
    print_best(study)
    assert capsys.readouterr().out.startswith("1 complete, 1 pruned, 1 failed; best validation IoU 0.5000 in trial 0 (x 1)")
