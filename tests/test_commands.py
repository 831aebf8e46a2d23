"""The command line's surface: help, --version, status formats, the packaged study templates, `init`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from hpsearch.cli import build_parser, main
from hpsearch.templates import TEMPLATE_NAMES, template_path
from test_export import SPACE, TRIALS, make_study

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hpsearch.cli", *args], capture_output=True, text=True,
                          timeout=300, cwd=cwd)


def test_bare_hpsearch_prints_help_and_version_names_the_package():
    bare = run_cli()
    assert bare.returncode == 0, bare.stderr
    assert "usage: hpsearch" in bare.stdout and "launch" in bare.stdout and "status" in bare.stdout
    assert bare.stderr == ""
    version = run_cli("--version")
    assert version.returncode == 0
    from importlib.metadata import version as installed

    assert version.stdout.strip() == f"hpsearch {installed('hpsearch')}"


def test_help_lists_the_environment_variables_the_code_reads():
    text = build_parser().format_help()
    for name in ("HPSEARCH_STORAGE", "HPSEARCH_DEBUG", "HPSEARCH_HEARTBEAT_INTERVAL", "HPSEARCH_HEARTBEAT_GRACE",
                 "KERAS_BACKEND"):
        assert name in text, name
    from hpsearch import launcher, storage

    # The names in the help are the ones the storage module and the launcher read.
    read = {storage.DEFAULT_ENV, storage.HEARTBEAT_INTERVAL_ENV, storage.HEARTBEAT_GRACE_ENV, launcher.STALL_ENV}
    assert read <= set(text.split())


def test_worker_help_shows_study_as_required_and_refuses_without_it(capsys):
    usage = build_parser()._subparsers._group_actions[0].choices["worker"].format_usage()
    assert "--study STUDY" in usage and "[--study" not in usage
    with pytest.raises(SystemExit) as stopped:
        main(["worker"])
    assert stopped.value.code == 2
    assert "--study" in capsys.readouterr().err


@pytest.fixture
def finished_study(tmp_path):
    journal = str(tmp_path / "study.journal")
    make_study(journal, tmp_path / "studies", TRIALS, search_space=SPACE)
    return journal


@pytest.mark.parametrize("form", ["json", "yaml"])
def test_status_prints_the_trials_as_data(finished_study, form, capsys):
    assert main(["status", "--study", "tiny", "--storage", finished_study, "--format", form]) == 0
    out = capsys.readouterr().out
    document = json.loads(out) if form == "json" else yaml.safe_load(out)
    assert document["study"] == "tiny" and document["direction"] == "MAXIMIZE"
    assert [t["number"] for t in document["trials"]] == [0, 1, 2, 3]
    assert [t["state"] for t in document["trials"]] == ["COMPLETE", "COMPLETE", "COMPLETE", "FAIL"]
    assert [t["value"] for t in document["trials"]] == [0.41, 0.63, 0.5, None]
    assert document["best"]["number"] == 1 and document["best"]["value"] == 0.63
    assert document["trials"][1]["params"]["learning rate"] == 7.6e-05
    assert document["trials"][1]["note"] == "from 0"
    assert document["trials"][0]["user_attrs"]["per_class_iou"] == {"left ventricle": 0.41}


def test_status_table_is_the_default(finished_study, capsys):
    assert main(["status", "--study", "tiny", "--storage", finished_study]) == 0
    out = capsys.readouterr().out
    assert "best validation IoU 0.6300 in trial 1" in out


def test_init_writes_the_templates_and_never_overwrites_without_force(tmp_path, capsys):
    assert main(["init", str(tmp_path)]) == 0
    for name in TEMPLATE_NAMES:
        written = tmp_path / "studies" / f"{name}.yaml"
        assert written.read_bytes() == template_path(name).read_bytes()
    edited = tmp_path / "studies" / "paper.yaml"
    edited.write_text("# my edits\n")
    assert main(["init", str(tmp_path)]) == 2
    assert "--force" in capsys.readouterr().err
    assert edited.read_text() == "# my edits\n"  # refused: nothing written
    assert main(["init", str(tmp_path), "--force"]) == 0
    assert edited.read_bytes() == template_path("paper").read_bytes()


def test_the_default_study_is_the_packaged_template_in_an_empty_folder(tmp_path):
    """Installed anywhere, hpsearch finds its quick-start study: commands resolve it from the package."""
    empty = tmp_path / "empty"
    empty.mkdir()
    status = run_cli("status", cwd=empty)
    assert status.returncode == 2
    # Not "studies/quickstart.yaml does not exist": the template resolves, and there is no study yet.
    assert "no study storage at studies/hpsearch.journal" in status.stderr, status.stderr
    assert "Traceback" not in status.stderr
    assert list(empty.iterdir()) == []  # a read-only command created nothing


def test_the_package_ships_the_templates_and_the_cli(tmp_path):
    """A built wheel (what `pip install` installs) holds the study templates and every CLI module."""
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        capture_output=True, text=True, timeout=600,
    )
    assert built.returncode == 0, built.stderr
    [wheel] = tmp_path.glob("hpsearch-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"hpsearch/studies/{name}.yaml" for name in TEMPLATE_NAMES} <= names
    cli_modules = {f"hpsearch/cli/{p.name}" for p in (ROOT / "hpsearch" / "cli").glob("*.py")}
    assert cli_modules <= names
    assert "model/__init__.py" in names


@pytest.mark.slow
def test_an_installed_hpsearch_runs_the_quick_start_from_an_empty_folder(tmp_path):
    """`hpsearch launch` with no study file anywhere near: the packaged quick-start template, one short trial."""
    folder = tmp_path / "anywhere"
    folder.mkdir()
    env = {**os.environ, "HPSEARCH_STORAGE": ""}
    launched = subprocess.run(
        [sys.executable, "-m", "hpsearch.cli", "launch", "--workers", "1", "--trials", "1"],
        capture_output=True, text=True, timeout=1200, cwd=folder, env=env,
    )
    assert launched.returncode == 0, launched.stdout + launched.stderr
    assert (folder / "data" / "quickstart" / "dataset.json").is_file()  # the template's ../data/quickstart
    assert (folder / "studies" / "hpsearch.journal").is_file()
    assert "1 complete" in launched.stdout
    status = run_cli("status", "--format", "json", cwd=folder)
    assert status.returncode == 0, status.stderr
    assert [t["state"] for t in json.loads(status.stdout)["trials"]].count("COMPLETE") == 1
