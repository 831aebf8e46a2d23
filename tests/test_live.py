"""The launcher's live view where stderr is not a terminal (CI, a log file): plain lines, the user's text kept whole."""

from __future__ import annotations

from hpsearch.config import load_study
from hpsearch.launcher import Launcher, last_error, prepare_study
from hpsearch.live import LiveView
from hpsearch.storage import open_storage

from searchutil import write_tiny_study

# A worker's refusal as it writes it to its log: pip's extras syntax, then a rich style name in brackets.
REFUSAL = ("worker w0 was given GPU 0, but TensorFlow sees no GPU (tensorflow-cpu is installed): "
           "pip install 'hpsearch[gpu]', or pass --cpu to train on the CPU on purpose [bold]")


def test_square_brackets_in_events_and_states_are_printed_not_read_as_markup(tmp_path, capsys):
    config = load_study(write_tiny_study(tmp_path / "studies"))
    url = str(tmp_path / "study.journal")
    storage = open_storage(url, heartbeat_interval=None)
    prepare_study(config, storage, target=2)
    launcher = Launcher(config, url, storage, target=2, gpus=["0"], threads=None, artifacts=tmp_path / "artifacts",
                        log_dir=tmp_path / "logs", stall_seconds=60.0)
    try:
        launcher.slots[0].log_path.write_text(f"hpsearch: error: {REFUSAL}\n")
        launcher.slots[0].gave_up = last_error(launcher.slots[0].log_path)
        launcher.events.append(f"worker w0 stopped: {launcher.slots[0].gave_up}")
        with LiveView(study_name=config.name, storage=storage, storage_text=url,
                      dashboard_command="hpsearch dashboard", target=2) as view:
            view(launcher)
    finally:
        launcher.cleanup()
    lines = capsys.readouterr().err.splitlines()
    assert lines == [f"worker w0 stopped: {REFUSAL}", f"0/2 complete; no complete trial yet; w0: trial - {REFUSAL}, IoU -"]


def test_tables_print_names_as_written(capsys):
    from hpsearch.progress import print_table

    print_table("study [paper]", ["class [name]"], [["[rv]"], ["[bold]lv"]])
    out = capsys.readouterr().out
    assert "study [paper]" in out and "class [name]" in out and "[rv]" in out and "[bold]lv" in out
