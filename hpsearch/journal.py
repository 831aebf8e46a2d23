"""A journal file that survives crashes and full disks.

Optuna's journal is a file of JSON records, one a line. A crash or a full disk in the middle of
an append leaves a half-written last line; Optuna then ignores it when reading, but the next
append is glued onto it and from then on the file cannot be read at all. `SafeJournalFileBackend`
is Optuna's `JournalFileBackend` with two changes:

* On open, and before every append, under the journal's lock, a torn tail (bytes after the last
  newline, or a last line that is not a JSON object) is cut off and appended to `<journal>.torn`,
  so nothing is thrown away, and one line on stderr says so.
* An append that fails (ENOSPC, EIO, EFBIG, ...) truncates the file back to its size before the
  append, still under the lock, and raises `JournalWriteError`: one sentence naming the file and
  the fix.

A record counts as written once its newline is on disk: that is also what Optuna reads.
"""

from __future__ import annotations

import errno
import json
import os
import sys
from pathlib import Path
from typing import Any

from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock, JournalFileSymlinkLock

from hpsearch.errors import HpsearchError

TORN_SUFFIX = ".torn"
"""Where a journal's torn tails go: `<journal>.torn`, appended to, one fragment a line."""

_CHUNK = 8192  # bytes read at a time when scanning the file backwards for a newline
_RECORD_START = b'{"op_code":'
_FIRST_LINE_LIMIT = 1 << 20  # a journal's first record (the study's creation) is far shorter


class JournalWriteError(HpsearchError):
    """A journal append failed and was undone: the journal is as it was before (exit code 1)."""

    exit_code = 1


class SafeJournalFileBackend(JournalFileBackend):
    """Optuna's journal file backend that sets torn tails aside and undoes failed appends.

    `file_path`: the journal; `lock_obj`: the lock every writer of this file uses (default
    `JournalFileOpenLock`, an O_EXCL lock file). Opening a journal that needs no repair takes no
    lock, so a read-only journal can still be read.
    """

    def __init__(self, file_path: str, lock_obj: JournalFileOpenLock | JournalFileSymlinkLock | None = None) -> None:
        lock = lock_obj if lock_obj is not None else JournalFileOpenLock(file_path)
        super().__init__(file_path, lock_obj=lock)
        # Our own references: Optuna's are private attributes.
        self._path = Path(file_path)
        self._write_lock = lock
        self._repair_on_open()

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        data = ("\n".join(json.dumps(log, separators=(",", ":")) for log in logs) + "\n").encode("utf-8")
        try:
            self._write_lock.acquire()
        except OSError as exc:
            raise JournalWriteError(_failure(self._path, exc, journal=self._path, intact=True)) from exc
        try:
            try:
                # Another process may have crashed mid-append since we opened the journal.
                torn = _set_aside_torn_tail(self._path)
            except OSError as exc:
                raise JournalWriteError(_failure(self._path, exc, journal=self._path, intact=True)) from exc
            if torn:
                _note_set_aside(self._path, torn)
            _append_or_undo(self._path, data, journal=self._path)
        finally:
            self._write_lock.release()

    def _repair_on_open(self) -> None:
        try:
            if _readable_end(self._path) is None:
                return  # the common case: no lock taken
        except OSError:
            return  # unreadable: Optuna's own read reports it
        # The tail may be a live process's append in progress: look again under the lock.
        try:
            self._write_lock.acquire()
        except OSError as exc:
            _note_kept(self._path, exc.strerror or str(exc))
            return
        try:
            torn = _set_aside_torn_tail(self._path)
        except OSError as exc:
            _note_kept(self._path, exc.strerror or str(exc))
            return
        except JournalWriteError as exc:  # .torn could not be written (full disk): keep the tail
            cause = exc.__cause__
            _note_kept(self._path, getattr(cause, "strerror", None) or str(cause))
            return
        finally:
            self._write_lock.release()
        if torn:
            _note_set_aside(self._path, torn)


def torn_path(journal: Path) -> Path:
    """The file a journal's torn tails are set aside in."""
    return journal.with_name(journal.name + TORN_SUFFIX)


# --- internals ---------------------------------------------------------------------------


def _readable_end(path: Path) -> int | None:
    """The size of the journal's readable part, or None if the whole file is readable (or no journal).

    Readable: complete lines whose last one is a JSON object. Only the last line is checked;
    an unreadable line further up is left for Optuna to report, and so is a file that is not a
    journal at all (a SQLite database named by mistake must not lose its tail).
    """
    with open(path, "rb") as f:
        end = f.seek(0, os.SEEK_END)
        if end == 0 or not _starts_like_a_journal(f):
            return None
        last_newline = _last_newline(f, end)
        cut = last_newline + 1  # start of the bytes after the last newline (== end if none)
        if last_newline >= 0:
            start = _last_newline(f, last_newline) + 1
            f.seek(start)
            if not _is_record(f.read(last_newline + 1 - start)):
                cut = start
    return None if cut == end else cut


def _starts_like_a_journal(f) -> bool:
    """Whether the file's first line is a journal record (or, cut before its newline, starts like one)."""
    f.seek(0)
    first = f.readline(_FIRST_LINE_LIMIT)
    if first.endswith(b"\n"):
        try:
            record = json.loads(first)
        except ValueError:
            record = None
        if isinstance(record, dict) and "op_code" in record:
            return True
    # Optuna writes each record as compact JSON with op_code first: a torn first record, or a
    # first record with a later one glued on, still starts so (or is cut within those bytes).
    return first.startswith(_RECORD_START) or (not first.endswith(b"\n") and _RECORD_START.startswith(first))


def _last_newline(f, before: int) -> int:
    """The offset of the last b"\\n" in f[:before], or -1."""
    position = before
    while position > 0:
        start = max(0, position - _CHUNK)
        f.seek(start)
        found = f.read(position - start).rfind(b"\n")
        if found >= 0:
            return start + found
        position = start
    return -1


def _is_record(line: bytes) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError
        return False


def _set_aside_torn_tail(path: Path) -> int:
    """Move the journal's unreadable tail to `<journal>.torn`; its size in bytes (0: none). Caller holds the lock.

    The tail is copied (and synced) before the journal is cut, so a crash in between leaves it in both.
    """
    cut = _readable_end(path)
    if cut is None:
        return 0
    with open(path, "r+b") as f:
        f.seek(cut)
        torn = f.read()
        fragment = torn if torn.endswith(b"\n") else torn + b"\n"  # one fragment a line in .torn
        _append_or_undo(torn_path(path), fragment, journal=path)
        f.truncate(cut)
        f.flush()
        os.fsync(f.fileno())
    return len(torn)


def _append_or_undo(path: Path, data: bytes, *, journal: Path) -> None:
    """Append `data` to `path` and fsync; on failure cut `path` back to its old size and raise JournalWriteError.

    `journal`: the journal this write serves, whose state the error message tells.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    except OSError as exc:
        raise JournalWriteError(_failure(path, exc, journal=journal, intact=True)) from exc
    try:
        size = os.fstat(fd).st_size
        try:
            view = memoryview(data)
            while view:  # a short write (the disk just filled) is followed by one that raises
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        except OSError as exc:
            try:
                os.ftruncate(fd, size)
                os.fsync(fd)
                undone = True
            except OSError:
                undone = False
            raise JournalWriteError(_failure(path, exc, journal=journal, intact=undone or path != journal)) from exc
    finally:
        os.close(fd)


def _failure(path: Path, exc: OSError, *, journal: Path, intact: bool) -> str:
    """One sentence: what failed on which file, the fix, and whether `journal` is as it was."""
    reason = exc.strerror or str(exc)
    code = exc.errno
    if code in (errno.ENOSPC, errno.EDQUOT):
        fix = "free space on its disk (or raise your quota)"
    elif code == errno.EFBIG:
        fix = "raise the file-size limit (ulimit -f) or move the journal to a file system that allows larger files"
    elif code in (errno.EACCES, errno.EPERM, errno.EROFS):
        fix = "make it and its folder writable"
    else:
        fix = "check its disk (e.g. dmesg)"
    name = "the journal" if path == journal else f"the journal {journal}"
    if intact:
        state = f"{name} is unchanged"
    else:
        state = f"{name} could not be cut back either, so it may end in a half-written record, which the next hpsearch command sets aside"
    return f"cannot write to {path} ({reason}): {fix}, then run the command again; {state}."


def _note_set_aside(path: Path, size: int) -> None:
    print(
        f"hpsearch: note: the journal {path} ended in a half-written record ({size} bytes, from a crash or a full disk); "
        f"it was set aside in {torn_path(path)} and the study is intact",
        file=sys.stderr, flush=True,
    )


def _note_kept(path: Path, reason: str) -> None:
    print(
        f"hpsearch: note: the journal {path} ends in a half-written record (from a crash or a full disk) that could not be "
        f"set aside ({reason}); reading ignores it, and the next write sets it aside",
        file=sys.stderr, flush=True,
    )
