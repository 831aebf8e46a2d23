"""Class collapse is seen, not silent: a foreground class at validation IoU 0 after the first quarter of training
is named by `hpsearch train` in one warning line, recorded on a search trial, and shown by status and report."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import blob_case, write_nifti
from hpsearch.cli import main
from model.training import Evaluation, collapsed_classes
from test_export import SPACE, TRIALS, make_study

TRAIN = ["--steps", "24", "--eval-every", "12", "--patch", "16x16x8", "--depth", "2", "--seed", "0",
         "--val-fraction", "0.34", "--test-fraction", "0.0"]


def evaluation(step: int, per_class: list[float]) -> Evaluation:
    return Evaluation(step=step, loss=0.0, iou=float(np.mean(per_class[1:])), per_class=per_class, per_case={})


def test_a_class_at_iou_zero_counts_only_after_the_first_quarter():
    assert collapsed_classes(evaluation(25, [0.9, 0.0, 0.4, 0.0]), steps=100) == []  # warm-up
    assert collapsed_classes(evaluation(26, [0.9, 0.0, 0.4, 0.0]), steps=100) == [1, 3]
    assert collapsed_classes(evaluation(26, [0.0, 0.2, 0.4]), steps=100) == []  # the background is not a class to lose


@pytest.fixture
def three_classes(tmp_path):
    """6 cases of two foreground classes; the 'speck' class only in the cases the split sends to validation,
    so training never sees it and the network cannot predict it: a class that is certainly lost."""
    from model import split_cases

    names = [f"case_{i}" for i in range(6)]
    validation = set(split_cases(names, seed=0, val_fraction=0.34, test_fraction=0.0).val)
    rng = np.random.default_rng(0)
    root = tmp_path / "three"
    training = []
    for name in names:
        image, label = blob_case(rng, shape=(24, 24, 8), classes=3 if name in validation else 2)
        write_nifti(root / "imagesTr" / f"{name}.nii.gz", image)
        write_nifti(root / "labelsTr" / f"{name}.nii.gz", label)
        training.append({"image": f"./imagesTr/{name}.nii.gz", "label": f"./labelsTr/{name}.nii.gz"})
    (root / "dataset.json").write_text(json.dumps({
        "name": "Three", "modality": {"0": "MRI"}, "labels": {"0": "background", "1": "blob", "2": "speck"},
        "training": training,
    }))
    return root


def test_train_warns_once_in_one_line_when_a_class_is_lost(three_classes, tmp_path, capsys):
    assert main(["train", "--data", str(three_classes), "--out", str(tmp_path / "model"), "--loss", "joint", *TRAIN]) == 0
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if line.startswith("hpsearch: warning: class")]
    assert len(warnings) == 1, err  # at the first evaluation past the quarter, not again at the next
    assert "'speck' has validation IoU 0 at step 12 of 24" in warnings[0] and "--loss per_class_ce" in warnings[0]


def test_status_and_report_show_a_trials_collapsed_classes(tmp_path, capsys):
    journal = str(tmp_path / "study.journal")
    trials = [dict(TRIALS[0], attrs={**TRIALS[0]["attrs"], "collapsed_classes": ["left ventricle"]}), *TRIALS[1:]]
    make_study(journal, tmp_path / "studies", trials, search_space=SPACE)
    assert main(["status", "--study", "tiny", "--storage", journal, "--format", "json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["trials"][0]["note"] == "collapsed: left ventricle at IoU 0"
    assert main(["report", "--study", "tiny", "--storage", journal, "-o", str(tmp_path / "r.html")]) == 0
    page = (tmp_path / "r.html").read_text()
    assert "Class collapse: 1 trial(s)" in page and "trial 0 (left ventricle)" in page


@pytest.mark.slow
def test_a_search_trial_records_its_collapsed_classes(three_classes, tmp_path):
    import yaml

    from searchutil import finish, hpsearch, load, write_tiny_study

    study_file = write_tiny_study(tmp_path / "studies", trials=1, steps=24, eval_every=12)
    document = yaml.safe_load(study_file.read_text())
    document["data"] = {"path": str(three_classes), "split": {"seed": 0, "val_fraction": 0.34, "test_fraction": 0.0}}
    document["training"]["loss"] = "joint"  # at 24 steps the default loss has not learned the blob either
    study_file.write_text(yaml.safe_dump(document))
    journal = str(tmp_path / "study.journal")
    code, output = finish(hpsearch("launch", "--workers", "1", "--study", str(study_file), "--storage", journal))
    assert code == 0, output
    [trial] = load(journal).trials
    assert trial.user_attrs["collapsed_classes"] == ["speck"]
