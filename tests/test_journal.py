"""The crash-safe journal (hpsearch/journal.py): torn tails set aside, failed appends undone.

A real study journal is cut at many byte offsets (every offset of its last two records, every
record boundary ±1, a seeded sample of the rest); after each cut it must open, keep what Optuna
could read of the cut file, serve `hpsearch status` and `hpsearch export`, and take a new trial
without gluing it onto a partial line. A 64 KiB tmpfs is filled during appends to check that a
full disk leaves the journal unchanged, and an RLIMIT_FSIZE child does the same without root.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock
from optuna.trial import TrialState, create_trial

from hpsearch.cli import main
from hpsearch.journal import JournalWriteError, torn_path
from hpsearch.storage import open_storage
from test_export import SPACE, TRIALS, make_study

NOTE = "ended in a half-written record"
LR = "learning rate"


def open_ours(journal: Path) -> JournalStorage:
    return open_storage(str(journal), heartbeat_interval=None)


def plain_trials(journal: Path) -> list[tuple]:
    """(number, state, params, values) of every trial, as plain Optuna reads the file (the oracle)."""
    storage = JournalStorage(JournalFileBackend(str(journal)))
    return [
        (t.number, t.state, t.params, t.values)
        for study in storage.get_all_studies()
        for t in storage.get_all_trials(study._study_id, deepcopy=False)
    ]


def trials_of(storage: JournalStorage) -> list[tuple]:
    return [
        (t.number, t.state, t.params, t.values)
        for study in storage.get_all_studies()
        for t in storage.get_all_trials(study._study_id, deepcopy=False)
    ]


def line_ends(data: bytes) -> list[int]:
    """The offsets just after each newline."""
    return [i + 1 for i, byte in enumerate(data) if byte == ord("\n")]


def readable_prefix(data: bytes, k: int) -> int:
    """Where the journal cut at k should be cut back to: just after its last newline."""
    return data.rfind(b"\n", 0, k) + 1


def add_trial(storage: JournalStorage, value: float) -> None:
    """One COMPLETE trial in study "tiny" (created if the journal has none): one journal record."""
    try:
        study = optuna.load_study(study_name="tiny", storage=storage)  # create_study would write a record
    except KeyError:
        study = optuna.create_study(study_name="tiny", storage=storage, direction="maximize")
    study.add_trial(create_trial(
        state=TrialState.COMPLETE, params={LR: 1.0e-3}, distributions={LR: FloatDistribution(1.0e-6, 1.0e-2, log=True)},
        value=value,
    ))


@pytest.fixture(scope="module")
def journal_bytes(tmp_path_factory) -> bytes:
    """A real study journal: the export tests' four trials, then two asked-and-told ones with steps."""
    folder = tmp_path_factory.mktemp("journal")
    journal = folder / "study.journal"
    _, _, study = make_study(str(journal), folder / "studies", TRIALS, search_space=SPACE)
    for value in (0.55, 0.66):
        trial = study.ask({LR: FloatDistribution(1.0e-6, 1.0e-2, log=True)})
        trial.report(value / 2, 3)
        trial.set_user_attr("per_class_iou", {"left ventricle": value})
        study.tell(trial, value)
    data = journal.read_bytes()
    assert data.endswith(b"\n") and data.count(b"\n") >= 10
    return data


def cut_offsets(data: bytes) -> list[int]:
    ends = line_ends(data)
    last_two = range(ends[-3], len(data) + 1)  # every offset of the last two records
    boundaries = {e + d for e in [0, *ends] for d in (-1, 0, 1) if 0 <= e + d <= len(data)}
    sample = random.Random(0).sample(range(len(data)), 60)
    return sorted({*last_two, *boundaries, *sample})


def test_a_journal_cut_anywhere_opens_with_what_was_readable_and_takes_new_trials(journal_bytes, tmp_path, capsys):
    data = journal_bytes
    ends = line_ends(data)
    offsets = cut_offsets(data)
    assert len(offsets) > len(data) - ends[-3]  # the whole of the last two records, and more
    # The CLI runs at each record boundary ±1 and every 17th offset; the storage checks run at all.
    cli_offsets = {k for k in offsets if k % 17 == 0 or min(abs(k - e) for e in [0, *ends]) <= 1}
    journal = tmp_path / "study.journal"
    complete_before = 0
    for k in offsets:
        journal.write_bytes(data[:k])
        torn_path(journal).unlink(missing_ok=True)
        expected = plain_trials(journal)  # what plain Optuna reads of the cut file
        prefix = readable_prefix(data, k)
        capsys.readouterr()

        storage = open_ours(journal)

        err = capsys.readouterr().err
        assert trials_of(storage) == expected, k
        assert journal.read_bytes() == data[:prefix], k
        if prefix < k:  # torn: the tail went to .torn, one line said so
            assert torn_path(journal).read_bytes() == data[prefix:k] + b"\n", k
            assert err.count("\n") == 1 and NOTE in err and str(torn_path(journal)) in err, (k, err)
        else:
            assert not torn_path(journal).exists() and err == "", (k, err)
        complete = sum(state == TrialState.COMPLETE for _, state, _, _ in expected)
        assert complete >= complete_before, k  # a longer prefix never has fewer COMPLETE trials
        complete_before = complete

        if k in cli_offsets:
            check_cli(journal, capsys, has_study=prefix >= ends[0], has_config=prefix >= ends[1], has_complete=complete > 0, at=k)

        add_trial(storage, 0.99)
        after = plain_trials(journal)
        assert after[: len(expected)] == expected, k
        assert after[-1][1:] == (TrialState.COMPLETE, {LR: 1.0e-3}, [0.99]), k
        assert all(json.loads(line) for line in journal.read_bytes().splitlines()), k
    assert complete_before == 5  # the uncut journal: five COMPLETE trials and one FAIL


def check_cli(journal: Path, capsys, *, has_study: bool, has_config: bool, has_complete: bool, at: int) -> None:
    """`hpsearch status` and `export` on the repaired journal: output, or one line saying what is missing."""
    for command, works in (("status", has_study), ("export", has_config and has_complete)):
        code = main([command, "--study", "tiny", "--storage", str(journal)])
        out, err = capsys.readouterr()
        if works:
            assert code == 0 and err == "" and out, (command, at, err)
        else:  # the study or its definition or a finished trial is not in the readable part (yet)
            assert code in (1, 2) and err.count("\n") == 1 and "Traceback" not in err, (command, at, err)


def test_cli_status_and_export_print_the_note_once_and_work(journal_bytes, tmp_path):
    journal = tmp_path / "study.journal"
    k = len(journal_bytes) - 37
    journal.write_bytes(journal_bytes[:k])
    run = [sys.executable, "-m", "hpsearch.cli"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    status = subprocess.run([*run, "status", "--study", "tiny", "--storage", str(journal)], capture_output=True, text=True, env=env, timeout=300)
    assert status.returncode == 0, status.stderr
    torn = len(journal_bytes) - 37 - readable_prefix(journal_bytes, k)
    assert status.stderr.splitlines() == [
        f"hpsearch: note: the journal {journal} ended in a half-written record ({torn} bytes, from a crash or a full disk); "
        f"it was set aside in {journal}.torn and the study is intact"
    ]
    assert "4 complete, 1 failed" in status.stdout  # the sixth trial's completion was the torn record
    export = subprocess.run([*run, "export", "--study", "tiny", "--storage", str(journal)], capture_output=True, text=True, env=env, timeout=300)
    assert export.returncode == 0 and export.stderr == "", export.stderr
    assert "validation IoU: 0.63" in export.stdout


def test_a_glued_last_line_from_an_old_append_is_set_aside(journal_bytes, tmp_path, capsys):
    """Plain Optuna appends onto a torn tail (the bug this module fixes); the glued line goes to .torn."""
    journal = tmp_path / "study.journal"
    k = len(journal_bytes) - 50
    journal.write_bytes(journal_bytes[:k])
    prefix = readable_prefix(journal_bytes, k)
    expected = plain_trials(journal)
    # Plain Optuna's next append is glued onto the torn record: a complete line that is not JSON.
    record = {"op_code": 2, "worker_id": "w", "study_id": 0, "user_attr": {"note": "after the crash"}}
    JournalFileBackend(str(journal)).append_logs([record])
    glued = journal.read_bytes()[prefix:]
    assert glued.endswith(json.dumps(record, separators=(",", ":")).encode() + b"\n")
    with pytest.raises(ValueError):
        json.loads(glued)

    storage = open_ours(journal)

    assert trials_of(storage) == expected
    assert journal.read_bytes() == journal_bytes[:prefix]
    assert torn_path(journal).read_bytes() == glued
    assert capsys.readouterr().err.count(NOTE) == 1


def test_a_file_that_is_no_journal_is_left_as_it_is(tmp_path, capsys):
    other = tmp_path / "notes.db"
    content = b"SQLite format 3\x00\x01\x02\nmore\n\x00\x00"
    other.write_bytes(content)
    with pytest.raises(Exception, match="not an Optuna journal file"):
        open_ours(other)
    assert other.read_bytes() == content and not torn_path(other).exists()
    assert capsys.readouterr().err == ""


def test_a_storage_opened_before_another_process_crashed_does_not_glue(journal_bytes, tmp_path, capsys):
    journal = tmp_path / "study.journal"
    journal.write_bytes(journal_bytes)
    storage = open_ours(journal)
    fragment = b'{"op_code":6,"worker_id":"crashed","trial_id":5,"state":1,"valu'
    with open(journal, "ab") as f:  # a worker died here, mid-append
        f.write(fragment)

    add_trial(storage, 0.7)

    assert torn_path(journal).read_bytes() == fragment + b"\n"
    after = plain_trials(journal)
    assert len(after) == 7 and after[-1][1] == TrialState.COMPLETE
    assert capsys.readouterr().err.count(NOTE) == 1


# --- full disks ---------------------------------------------------------------------------


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A 64 KiB tmpfs at tmp_path/disk (needs root and mount permission)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip()}); test_rlimit_fsize covers the failed append")
    yield disk
    subprocess.run(["umount", str(disk)], check=True)


def test_a_torn_journal_on_a_read_only_disk_is_still_read(journal_bytes, tiny_tmpfs, capsys):
    journal = tiny_tmpfs / "study.journal"
    journal.write_bytes(journal_bytes[:-20])
    subprocess.run(["mount", "-o", "remount,ro", str(tiny_tmpfs)], check=True)

    storage = open_ours(journal)

    assert [state for _, state, _, _ in trials_of(storage)][-1] == TrialState.RUNNING  # its completion was torn
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "could not be set aside (Read-only file system)" in err
    with pytest.raises(JournalWriteError, match="writable") as failure:
        add_trial(storage, 0.1)
    assert "\n" not in str(failure.value) and "unchanged" in str(failure.value)
    assert journal.read_bytes() == journal_bytes[:-20]


def fill(disk: Path, leave: int) -> Path:
    """Fill `disk` with a file until at most `leave` bytes are free; the filler's path."""
    filler = disk / "filler"
    with open(filler, "wb") as f:
        while shutil.disk_usage(disk).free > leave:
            f.write(b"x" * 512)
            f.flush()
            os.fsync(f.fileno())
    return filler


def test_a_full_disk_during_appends_leaves_the_journal_unchanged_and_the_study_resumes(journal_bytes, tiny_tmpfs, tmp_path, capsys):
    journal = tiny_tmpfs / "study.journal"
    journal.write_bytes(journal_bytes)
    filler = fill(tiny_tmpfs, leave=8192)
    storage = open_ours(journal)
    added = 0
    failure = None
    for _ in range(100):
        before = journal.read_bytes()
        try:
            add_trial(storage, 0.8)
        except JournalWriteError as error:
            failure = error
            break
        added += 1
    assert failure is not None and added >= 1  # some appends fitted, then the disk was full
    assert journal.read_bytes() == before
    message = str(failure)
    assert "\n" not in message and str(journal) in message and "free space" in message and "unchanged" in message
    assert failure.exit_code == 1

    # Reading commands still work on the full disk, and see every appended trial.
    assert len(plain_trials(journal)) == 6 + added
    capsys.readouterr()
    assert main(["status", "--study", "tiny", "--storage", str(journal)]) == 0
    assert main(["export", "--study", "tiny", "--storage", str(journal)]) == 0
    assert capsys.readouterr().err == ""

    # Plain Optuna's append on the full disk leaves a torn record: the crash this module repairs.
    with pytest.raises(OSError):
        JournalFileBackend(str(journal), lock_obj=JournalFileOpenLock(str(journal))).append_logs([{"op_code": 0, "worker_id": "w", "study_name": "x" * 9000, "directions": [1]}])
    assert len(journal.read_bytes()) > len(before)
    # While the disk is full the tail cannot be set aside: it is kept, reading ignores it, writes fail.
    reopened = open_ours(journal)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "could not be set aside" in err
    assert len(trials_of(reopened)) == 6 + added
    torn = journal.read_bytes()
    with pytest.raises(JournalWriteError, match="free space"):
        add_trial(reopened, 0.8)
    assert journal.read_bytes() == torn

    filler.unlink()
    resumed = open_ours(journal)
    assert NOTE in capsys.readouterr().err
    assert journal.read_bytes() == before
    add_trial(resumed, 0.9)
    after = plain_trials(journal)
    assert len(after) == 7 + added
    assert [state for _, state, _, _ in after[4:]] == [TrialState.COMPLETE] * (3 + added)
    assert main(["status", "--study", "tiny", "--storage", str(journal)]) == 0


def test_launch_on_a_full_disk_fails_in_one_line(tiny_tmpfs, tmp_path):
    """The real CLI: `hpsearch launch` writes to the study first, so on a full disk it fails before any training."""
    journal = tiny_tmpfs / "study.journal"
    study_file, _, _ = make_study(str(journal), tmp_path / "studies", TRIALS, search_space=SPACE)
    # tmpfs allocates whole pages: pad the journal (a valid record) to a page boundary so no append fits.
    record = {"op_code": 2, "worker_id": "pad", "study_id": 0, "user_attr": {"pad": ""}}
    line = len(json.dumps(record, separators=(",", ":"))) + 1
    record["user_attr"]["pad"] = "x" * (-(journal.stat().st_size + line) % os.sysconf("SC_PAGE_SIZE"))
    with open(journal, "ab") as f:
        f.write(json.dumps(record, separators=(",", ":")).encode() + b"\n")
    assert journal.stat().st_size % os.sysconf("SC_PAGE_SIZE") == 0
    fill(tiny_tmpfs, leave=0)
    before = journal.read_bytes()
    launch = subprocess.run(
        [sys.executable, "-m", "hpsearch.cli", "launch", "--study", str(study_file), "--storage", str(journal), "--workers", "1"],
        capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}, timeout=300,
    )
    assert launch.returncode == 1, launch.stderr
    assert [line for line in launch.stderr.splitlines() if line.strip()] == [
        f"hpsearch: error: cannot write to {journal} (No space left on device): free space on its disk "
        "(or raise your quota), then run the command again; the journal is unchanged."
    ]
    assert journal.read_bytes() == before


def test_rlimit_fsize_failure_is_undone(journal_bytes, tmp_path):
    """Without root: a child whose file-size limit stops an append half-way (EFBIG)."""
    journal = tmp_path / "study.journal"
    journal.write_bytes(journal_bytes)
    child = textwrap.dedent(f"""
        import json, resource
        import optuna
        from optuna.distributions import FloatDistribution
        from optuna.trial import TrialState, create_trial
        from pathlib import Path
        from hpsearch.journal import JournalWriteError
        from hpsearch.storage import open_storage

        journal = Path({str(journal)!r})
        study = optuna.load_study(study_name="tiny", storage=open_storage(str(journal), heartbeat_interval=None))
        limit = journal.stat().st_size + 1500  # room for a trial or two and part of the next
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
        added = 0
        try:
            for _ in range(10):
                before = journal.read_bytes()
                study.add_trial(create_trial(state=TrialState.COMPLETE, params={{"x": 0.5}},
                                             distributions={{"x": FloatDistribution(0, 1)}}, value=0.8))
                added += 1
        except JournalWriteError as error:
            print(json.dumps({{"added": added, "message": str(error), "unchanged": journal.read_bytes() == before}}))
    """)
    result = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["added"] >= 1 and report["unchanged"]
    assert "\n" not in report["message"] and "ulimit -f" in report["message"] and "unchanged" in report["message"]
    assert len(plain_trials(journal)) == 6 + report["added"]
    assert not torn_path(journal).exists()

