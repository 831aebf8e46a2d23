"""Outputs never overwrite inputs: `export -o`, `report -o` and `segment OUT` refuse a study storage, a study
file, a dataset, a model folder, and (without --force) any other existing file; nothing is touched when refused."""

from __future__ import annotations

import json

import optuna
import pytest

from hpsearch.cli import main
from test_export import SPACE, TRIALS, make_study


@pytest.fixture
def world(tmp_path, synth_dataset):
    """A finished journal study, its study file, a dataset and a model folder, side by side."""
    journal = tmp_path / "studies" / "hpsearch.journal"
    study_file, _, _ = make_study(str(journal), tmp_path / "studies", TRIALS, search_space=SPACE)
    model = tmp_path / "model"
    model.mkdir()
    (model / "run.json").write_text(json.dumps({"class_names": ["background", "left ventricle"]}))
    (model / "model.keras").write_bytes(b"weights")
    return {"journal": journal, "study": study_file, "dataset": synth_dataset / "dataset.json",
            "image": synth_dataset / "imagesTr" / "case_000.nii.gz", "model": model / "run.json"}


def snapshot(paths):
    return {path: path.read_bytes() for path in paths}


@pytest.mark.parametrize("command", ["export", "report"])
@pytest.mark.parametrize("target,kind", [
    ("journal", "a study storage"), ("study", "a study file"), ("dataset", "a file of the dataset"),
    ("image", "a file of the dataset"), ("model", "a file of the model folder"),
])
def test_an_output_never_replaces_an_input_even_with_force(world, command, target, kind, capsys):
    before = snapshot(world.values())
    for force in ([], ["--force"]):
        code = main([command, "--study", "tiny", "--storage", str(world["journal"]), "-o", str(world[target]), *force])
        assert code == 2
        [line] = capsys.readouterr().err.strip().splitlines()
        assert line.startswith("hpsearch: error: ") and str(world[target]) in line and kind in line, line
        assert "never writes over" in line
    assert snapshot(world.values()) == before
    # The study is intact and readable.
    study = optuna.load_study(study_name="tiny", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(world["journal"]))))
    assert len(study.trials) == len(TRIALS)


def test_a_report_replaces_an_earlier_report_but_not_another_file(world, tmp_path, capsys):
    args = ["report", "--study", "tiny", "--storage", str(world["journal"]), "-o"]
    report = tmp_path / "report.html"
    assert main([*args, str(report)]) == 0
    first = report.read_text()
    assert main([*args, str(report)]) == 0  # its own earlier output: replaced without --force
    assert report.read_text().startswith(first[:200])
    notes = tmp_path / "notes.html"
    notes.write_text("<html>my notes</html>")
    assert main([*args, str(notes)]) == 2
    assert "--force" in capsys.readouterr().err and notes.read_text() == "<html>my notes</html>"
    assert main([*args, str(notes), "--force"]) == 0
    assert "hpsearch report:" in notes.read_text()


def test_segment_never_writes_into_a_dataset_or_over_a_model(world, capsys):
    model = world["model"].parent
    before = snapshot(world.values())
    for out in (world["image"], world["image"].parent / "mask.nii.gz", model / "mask.nii.gz"):
        assert main(["segment", "--model", str(model), str(world["image"]), str(out)]) == 2
        [line] = capsys.readouterr().err.strip().splitlines()
        assert "never writes over or into" in line and str(out) in line, line
    assert snapshot(world.values()) == before
    assert not (model / "mask.nii.gz").exists()
