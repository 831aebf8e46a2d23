"""Where studies live: an Optuna RDB URL (PostgreSQL for several machines) or a journal file.

`--storage` (else `$HPSEARCH_STORAGE`, else the embedded journal file) names the storage;
`open_storage` turns it into an Optuna storage and every failure into one `UsageError`
sentence that names the storage with its password masked. Passwords never appear in output.

What Optuna 5 does about dead workers, which this module builds on:

* RDBStorage supports heartbeats. `Study.optimize` starts a thread that records a heartbeat
  every `heartbeat_interval` seconds while a trial runs, and at the start of every trial it
  calls `optuna.storages.fail_stale_trials`, which sets RUNNING trials whose last heartbeat is
  older than `grace_period` to FAIL and passes each one to `heartbeat_stale_trial_callback`
  (here `RetryStaleTrialCallback`, which enqueues a WAITING copy with the same params).
  `Study.ask`/`tell` neither record heartbeats nor fail stale trials, and a RUNNING trial that
  never recorded a heartbeat is never stale. Optuna records no reason; `ReconnectingStorage`
  writes one. The interval and grace period come from $HPSEARCH_HEARTBEAT_INTERVAL and
  $HPSEARCH_HEARTBEAT_GRACE (`heartbeat_settings`).
* JournalStorage has no heartbeats: a dead worker's trial stays RUNNING until someone
  calls `mark_running_trials_failed`.
* RDBStorage turns every database error, a dropped connection included, into
  `StorageInternalError` at once; its heartbeat thread dies on the first one. A database restart
  would fail the trials that happened to write at that moment. `ReconnectingStorage` repeats
  calls that failed for a transient reason (`transient_error`) until the database is back
  (up to `RECONNECT_SECONDS`).
"""

from __future__ import annotations

import functools
import os
import re
import sqlite3
import sys
import time
import warnings
from collections.abc import Callable, Container, Sequence
from pathlib import Path
from typing import Any, Literal

import optuna
import sqlalchemy.exc
import sqlalchemy.pool
from optuna.distributions import BaseDistribution
from optuna.exceptions import ExperimentalWarning, UpdateFinishedTrialError
from optuna.storages import BaseStorage, JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback

# Optuna's heartbeat machinery (Study.optimize's heartbeat thread, fail_stale_trials) serves only
# storages that are instances of this base, which Optuna exports from no public module.
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.storages.journal import JournalFileOpenLock
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.engine import URL, make_url
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_before_delay, wait_exponential

from hpsearch.errors import UsageError
from hpsearch.vocabulary import FAIL_REASON_ATTR, PARENT_ATTR, RETRY_OF_ATTR, WORKER_ATTR

DEFAULT_ENV = "HPSEARCH_STORAGE"
"""The environment variable that names the storage when `--storage` is absent."""

HEARTBEAT_INTERVAL_ENV = "HPSEARCH_HEARTBEAT_INTERVAL"
HEARTBEAT_GRACE_ENV = "HPSEARCH_HEARTBEAT_GRACE"
DEFAULT_HEARTBEAT_INTERVAL = 60
"""Seconds between a running trial's heartbeats; the grace period defaults to three intervals."""
FROM_ENVIRONMENT = "environment"
"""open_storage's default for the heartbeat settings: $HPSEARCH_HEARTBEAT_INTERVAL / _GRACE, else 60 s / 3 intervals."""

_FIX = f"fix --storage or ${DEFAULT_ENV}"
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")
# user:password@ in a URL that SQLAlchemy cannot parse (the password runs to the last @).
_USERINFO_PASSWORD = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*://[^:/@?#]*):[^/?#]*@")
# psycopg2 and friends also take the password as a query parameter.
_QUERY_PASSWORD = re.compile(r"([?&]password=)[^&#]*", re.IGNORECASE)
_NAMES = {"postgresql": "PostgreSQL", "mysql": "MySQL", "sqlite": "SQLite"}
_DEFAULT_PORTS = {"postgresql": 5432, "mysql": 3306}
# Drivers whose connect() takes connect_timeout (seconds): without it an unreachable host
# hangs for the OS TCP timeout (minutes) instead of failing.
_CONNECT_TIMEOUT_DRIVERS = {"psycopg2", "psycopg", "pymysql", "mysqldb"}


def resolve_storage_url(cli_value: str | None, *, default_journal: Path) -> str:
    """The `--storage` value, else `$HPSEARCH_STORAGE`, else the default journal file path."""
    if cli_value is not None and cli_value.strip():
        return cli_value.strip()
    env_value = os.environ.get(DEFAULT_ENV, "").strip()
    if env_value:
        return env_value
    return str(default_journal)


def is_rdb_url(url: str) -> bool:
    """Whether `url` names a database (`scheme://…`) rather than a journal file."""
    match = _SCHEME.match(url)
    return match is not None and match.group(1).lower() != "file"


def journal_path(url: str) -> Path:
    """The file a journal storage value names: a plain path, `file:path` or `file:///abs/path`."""
    if url.lower().startswith("file://"):
        url = url[len("file://") :]
    elif url.lower().startswith("file:"):
        url = url[len("file:") :]
    return Path(url).expanduser()


def mask_password(url: str) -> str:
    """`url` with its password replaced by `***`; non-URLs come back unchanged. Never raises."""
    try:
        parsed = make_url(url)
        # An unencoded @ in the password makes SQLAlchemy read its tail as part of the host.
        if "@" in (parsed.host or ""):
            raise ValueError("@ in host")
        masked = parsed.render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - masking must work on any input, even a malformed URL
        masked = _USERINFO_PASSWORD.sub(r"\1:***@", url)
    return _QUERY_PASSWORD.sub(r"\1***", masked)


def describe(url: str) -> str:
    """A short human description of the storage, e.g. for the first line of output."""
    if not is_rdb_url(url):
        return f"journal file {journal_path(url)}"
    try:
        parsed = make_url(url)
    except Exception:  # noqa: BLE001 - describing must not fail; open_storage reports the error
        return f"study storage {mask_password(url)}"
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        if parsed.database in (None, "", ":memory:"):
            return "in-memory SQLite study storage"
        return f"SQLite study storage at {parsed.database}"
    return f"{_NAMES.get(backend, backend)} study storage at {_host_port(parsed)}/{parsed.database or ''}"


def heartbeat_settings() -> tuple[int, int]:
    """(interval, grace period) in seconds from $HPSEARCH_HEARTBEAT_INTERVAL and $HPSEARCH_HEARTBEAT_GRACE.

    The interval defaults to 60 s and the grace period to three intervals. Raises UsageError for
    a value that is not a whole number of seconds >= 1, or a grace period shorter than the interval.
    """
    interval = _seconds_from_env(HEARTBEAT_INTERVAL_ENV, DEFAULT_HEARTBEAT_INTERVAL)
    grace = _seconds_from_env(HEARTBEAT_GRACE_ENV, 3 * interval)
    if grace < interval:
        raise UsageError(
            f"${HEARTBEAT_GRACE_ENV}={grace} is shorter than ${HEARTBEAT_INTERVAL_ENV}={interval}, so live trials "
            f"would be failed between two heartbeats; set the grace period to at least {interval} (e.g. {3 * interval})."
        )
    return interval, grace


def _seconds_from_env(name: str, default: int) -> int:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise UsageError(f"${name}={text!r} is not a whole number of seconds >= 1; set it to e.g. {default}, or unset it.")
    return value


def open_storage(
    url: str,
    *,
    heartbeat_interval: int | None | str = FROM_ENVIRONMENT,
    grace_period: int | None | str = FROM_ENVIRONMENT,
    retries: int = 3,
) -> BaseStorage:
    """Open (and, for a database, connect to) the storage `url` names.

    A `scheme://` URL opens an RDBStorage behind a `ReconnectingStorage`, with `pool_pre_ping`,
    heartbeats every `heartbeat_interval` s (None: off) so a dead worker's trial FAILs
    `grace_period` s after its last heartbeat, and up to `retries` re-runs of such a trial with
    the same params. Both
    default to `heartbeat_settings()` ($HPSEARCH_HEARTBEAT_INTERVAL, $HPSEARCH_HEARTBEAT_GRACE).
    SQLite (`sqlite:///path`) is for one process only: concurrent writers get "database is
    locked" errors, and on NFS its locking is unreliable; use the journal file or PostgreSQL.

    Anything else is a journal file path (its folder is created). Journal files are safe for
    several processes on one machine but have no heartbeats, so the heartbeat arguments are
    ignored there.

    Raises UsageError with one sentence naming the storage (password masked) and the fix.
    """
    if FROM_ENVIRONMENT in (heartbeat_interval, grace_period):
        interval_default, grace_default = heartbeat_settings()
        if heartbeat_interval == FROM_ENVIRONMENT:
            heartbeat_interval = interval_default
        if grace_period == FROM_ENVIRONMENT:
            grace_period = grace_default
    if heartbeat_interval is not None and heartbeat_interval < 1:
        raise UsageError(f"heartbeat interval must be at least 1 second, not {heartbeat_interval}")
    if grace_period is not None and grace_period < 1:
        raise UsageError(f"heartbeat grace period must be at least 1 second, not {grace_period}")
    if retries < 0:
        raise UsageError(f"retries must be 0 or more, not {retries}")
    if is_rdb_url(url):
        return _open_rdb(url, heartbeat_interval, grace_period, retries)
    return _open_journal(journal_path(url))


def fail_stale_trials(study: optuna.Study) -> list[int]:
    """Fail the study's trials whose heartbeat stopped; returns the numbers of those now FAIL.

    `Study.optimize` already does this before each trial; a worker also calls it while it waits.
    Each failed trial gets a `fail_reason` (written by `ReconnectingStorage`), and the storage's
    retry callback enqueues its re-run. A no-op on storages without heartbeats (journal files).
    """
    running = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    if not running:
        return []
    with warnings.catch_warnings():
        # fail_stale_trials is experimental: the warning would only clutter output.
        warnings.simplefilter("ignore", ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    failed = study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
    return sorted(t.number for t in failed if t.number in running)


def mark_running_trials_failed(
    storage: BaseStorage,
    study_name: str,
    *,
    reason: str,
    trial_numbers: list[int] | None = None,
) -> list[int]:
    """Set the study's RUNNING trials (all, or those in `trial_numbers`) to FAIL.

    Each gets the user attr `fail_reason` = `reason`. Returns the numbers this call failed:
    a trial that finished meanwhile keeps its own state. (The reason is written just before the
    state, because a finished trial takes no attrs; in that rare race the finished trial keeps
    the attr too.) Retrying is the caller's choice: see `retry_trial`.
    """
    try:
        study_id = storage.get_study_id_from_name(study_name)
    except KeyError:
        raise UsageError(f"no study named {study_name!r} in the storage: check the study name") from None
    wanted = None if trial_numbers is None else set(trial_numbers)
    failed = []
    for trial in storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)):
        if wanted is not None and trial.number not in wanted:
            continue
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
        try:
            storage.set_trial_user_attr(trial_id, FAIL_REASON_ATTR, reason)
            if storage.set_trial_state_values(trial_id, TrialState.FAIL):
                failed.append(trial.number)
        except UpdateFinishedTrialError:
            continue  # its worker finished it after we listed it: that state stands
    return sorted(failed)


def retry_trial(study: optuna.Study, trial: FrozenTrial) -> None:
    """Enqueue a re-run of `trial` with the same params and user attr `retry_of` = its number.

    Only the search's lineage (`parent_trial`) is carried over: what the failed run measured or
    which worker ran it belongs to that run alone.
    """
    study.enqueue_trial(trial.params, user_attrs=_retry_user_attrs(trial), skip_if_exists=False)


def _retry_user_attrs(trial: FrozenTrial) -> dict:
    user_attrs = {k: v for k, v in trial.user_attrs.items() if k == PARENT_ATTR}
    user_attrs[RETRY_OF_ATTR] = trial.number
    return user_attrs


class RetryStaleTrialCallback(RetryHeartbeatStaleTrialCallback):
    """Optuna's re-run of a heartbeat-stale trial (same params, at most `max_retry` times), with
    the user attrs of `retry_trial`: the failed run's worker, reason and measurements stay with it."""

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        trial.user_attrs = _retry_user_attrs(trial)  # a copy Optuna made for this call
        super().__call__(study, trial)


RECONNECT_SECONDS = 120.0
"""How long a call on a database storage is repeated while its database is away (a restart, a fail-over)."""

TransientKind = Literal["connection", "conflict"]

# SQLSTATE codes (PostgreSQL appendix A) worth repeating a transaction for. Class 08 is
# "connection exception"; 57P01-57P03 are admin shutdown, crash shutdown and cannot connect now.
# Admin or crash shutdown, cannot connect now, too many connections (53300: the server's
# max_connections is reached; a NullPool worker waits for a slot).
_SHUTDOWN_SQLSTATES = frozenset({"57P01", "57P02", "57P03", "53300"})
_CONFLICT_SQLSTATES = frozenset({"40001", "40P01"})  # serialization failure, deadlock detected
# Creating a table, index or type another process created first (check-then-create races).
_ALREADY_CREATED_SQLSTATES = frozenset({"23505", "42P07", "42710"})  # unique violation, duplicate table, object
_ALREADY_CREATED_MYSQL_ERRNOS = frozenset({1050, 1061, 1062})  # table exists, duplicate key name, duplicate entry


def database_error(error: BaseException) -> sqlalchemy.exc.DBAPIError | None:
    """The SQLAlchemy DBAPIError that `error` is or was raised from (Optuna wraps it in StorageInternalError)."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, sqlalchemy.exc.DBAPIError):
            return seen
        seen = seen.__cause__
    return None


def sqlstate(error: sqlalchemy.exc.DBAPIError) -> str | None:
    """The SQLSTATE code the server sent with `error` (psycopg2 `pgcode`, psycopg 3 `sqlstate`), if any."""
    return getattr(error.orig, "pgcode", None) or getattr(error.orig, "sqlstate", None)


def transient_error(error: BaseException) -> TransientKind | None:
    """Whether a call that raised `error` may succeed if repeated, and why.

    "connection": the connection was lost or refused, or the server is shutting down or starting
    (SQLSTATE class 08, 57P01-57P03, 53300; or a driver error with no SQLSTATE, which is how libpq
    reports a refused, reset or timed-out connection). "conflict": the database rolled the
    transaction back for a concurrent one (40001 serialization failure, 40P01 deadlock; SQLite
    busy or locked). None: anything else, e.g. bad data or a missing table.
    """
    cause = database_error(error)
    if cause is None:
        return None
    if cause.connection_invalidated:  # SQLAlchemy's dialect saw the connection die
        return "connection"
    code = sqlstate(cause)
    if code is not None:
        if code.startswith("08") or code in _SHUTDOWN_SQLSTATES:
            return "connection"
        return "conflict" if code in _CONFLICT_SQLSTATES else None
    if isinstance(cause.orig, sqlite3.Error):  # a file: no connection to lose, only a lock to wait for
        primary = getattr(cause.orig, "sqlite_errorcode", 0) & 0xFF
        return "conflict" if primary in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED) else None
    if isinstance(cause, (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError)):
        return "connection"
    return None


def _lost_schema_race(error: sqlalchemy.exc.DBAPIError) -> bool:
    """Whether creating Optuna's tables failed because another process created them first."""
    code = sqlstate(error)
    if code is not None:
        return code in _ALREADY_CREATED_SQLSTATES
    errno = error.orig.args[0] if getattr(error.orig, "args", None) else None
    return errno in _ALREADY_CREATED_MYSQL_ERRNOS


def _repeated(method):
    """`method` of ReconnectingStorage, repeated while it fails for a transient reason."""

    @functools.wraps(method)
    def call(self, *args, **kwargs):
        retrying = Retrying(
            retry=retry_if_exception(lambda error: transient_error(error) is not None),
            wait=wait_exponential(multiplier=0.5, max=5.0),  # 0.5, 1, 2, 4, 5, 5, ... s
            stop=stop_before_delay(RECONNECT_SECONDS),
            before_sleep=self._say_why,
            reraise=True,
        )
        return retrying(method, self, *args, **kwargs)

    return call


class ReconnectingStorage(BaseStorage, BaseHeartbeat):
    """A database study storage whose calls ride out a lost connection.

    Each call goes to the RDBStorage `rdb` behind Optuna's trial cache, as `optuna.create_study`
    would wrap it. A call that fails for a transient reason (`transient_error`: the server
    restarted, a fail-over, an administrator ended the session, a deadlock) is repeated, with
    pauses of 0.5 s growing to 5 s, for up to `RECONNECT_SECONDS`; `pool_pre_ping` then hands it a
    fresh connection. Meanwhile the worker waits instead of failing its trial, and the heartbeat
    thread keeps running. Other errors are raised at once. Each call is one transaction that can
    be repeated (attributes, values and heartbeats overwrite), except in one case: a connection
    lost after the database committed a new trial but before the answer arrived leaves that
    trial RUNNING with no worker.
    """

    def __init__(self, url: str, **rdb_kwargs: Any) -> None:
        self.rdb = RDBStorage(url, **rdb_kwargs)
        self.url = url
        # get_storage puts Optuna's trial cache in front of an RDBStorage: without it every
        # get_all_trials reads the whole study.
        self._cached = optuna.storages.get_storage(self.rdb)

    def _say_why(self, state: RetryCallState) -> None:
        if state.attempt_number != 1:  # once per outage and call: a worker's log says why it paused
            return
        error = state.outcome.exception()
        cause = database_error(error)
        detail = _detail(make_url(self.url), cause if cause is not None else error)
        what = "lost the connection to" if transient_error(error) == "connection" else "a transaction conflicted on"
        print(
            f"hpsearch: {what} {mask_password(self.url)} ({detail}); retrying for up to {RECONNECT_SECONDS:.0f} s",
            file=sys.stderr, flush=True,
        )

    # --- studies ---

    @_repeated
    def create_new_study(self, directions: Sequence[StudyDirection], study_name: str | None = None) -> int:
        return self._cached.create_new_study(directions, study_name)

    @_repeated
    def delete_study(self, study_id: int) -> None:
        self._cached.delete_study(study_id)

    @_repeated
    def set_study_user_attr(self, study_id: int, key: str, value: Any) -> None:
        self._cached.set_study_user_attr(study_id, key, value)

    @_repeated
    def set_study_system_attr(self, study_id: int, key: str, value: Any) -> None:
        self._cached.set_study_system_attr(study_id, key, value)

    @_repeated
    def get_study_id_from_name(self, study_name: str) -> int:
        return self._cached.get_study_id_from_name(study_name)

    @_repeated
    def get_study_name_from_id(self, study_id: int) -> str:
        return self._cached.get_study_name_from_id(study_id)

    @_repeated
    def get_study_directions(self, study_id: int) -> list[StudyDirection]:
        return self._cached.get_study_directions(study_id)

    @_repeated
    def get_study_user_attrs(self, study_id: int) -> dict[str, Any]:
        return self._cached.get_study_user_attrs(study_id)

    @_repeated
    def get_study_system_attrs(self, study_id: int) -> dict[str, Any]:
        return self._cached.get_study_system_attrs(study_id)

    @_repeated
    def get_all_studies(self) -> list[optuna.study.FrozenStudy]:
        return self._cached.get_all_studies()

    # --- trials ---

    @_repeated
    def create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> int:
        return self._cached.create_new_trial(study_id, template_trial)

    @_repeated
    def set_trial_param(
        self, trial_id: int, param_name: str, param_value_internal: float, distribution: BaseDistribution
    ) -> None:
        self._cached.set_trial_param(trial_id, param_name, param_value_internal, distribution)

    @_repeated
    def get_trial_id_from_study_id_trial_number(self, study_id: int, trial_number: int) -> int:
        return self._cached.get_trial_id_from_study_id_trial_number(study_id, trial_number)

    @_repeated
    def get_trial_number_from_id(self, trial_id: int) -> int:
        return self._cached.get_trial_number_from_id(trial_id)

    @_repeated
    def get_trial_param(self, trial_id: int, param_name: str) -> float:
        return self._cached.get_trial_param(trial_id, param_name)

    @_repeated
    def set_trial_state_values(self, trial_id: int, state: TrialState, values: Sequence[float] | None = None) -> bool:
        return self._cached.set_trial_state_values(trial_id, state, values)

    @_repeated
    def set_trial_intermediate_value(self, trial_id: int, step: int, intermediate_value: float) -> None:
        self._cached.set_trial_intermediate_value(trial_id, step, intermediate_value)

    @_repeated
    def set_trial_user_attr(self, trial_id: int, key: str, value: Any) -> None:
        self._cached.set_trial_user_attr(trial_id, key, value)

    @_repeated
    def set_trial_system_attr(self, trial_id: int, key: str, value: Any) -> None:
        self._cached.set_trial_system_attr(trial_id, key, value)

    @_repeated
    def get_trial(self, trial_id: int) -> FrozenTrial:
        return self._cached.get_trial(trial_id)

    @_repeated
    def get_all_trials(
        self, study_id: int, deepcopy: bool = True, states: Container[TrialState] | None = None
    ) -> list[FrozenTrial]:
        return self._cached.get_all_trials(study_id, deepcopy=deepcopy, states=states)

    @_repeated
    def get_n_trials(self, study_id: int, state: tuple[TrialState, ...] | TrialState | None = None) -> int:
        return self._cached.get_n_trials(study_id, state)

    @_repeated
    def get_best_trial(self, study_id: int) -> FrozenTrial:
        return self._cached.get_best_trial(study_id)

    @_repeated
    def get_trial_params(self, trial_id: int) -> dict[str, Any]:
        return self._cached.get_trial_params(trial_id)

    @_repeated
    def get_trial_user_attrs(self, trial_id: int) -> dict[str, Any]:
        return self._cached.get_trial_user_attrs(trial_id)

    @_repeated
    def get_trial_system_attrs(self, trial_id: int) -> dict[str, Any]:
        return self._cached.get_trial_system_attrs(trial_id)

    def remove_session(self) -> None:
        self.rdb.remove_session()

    # --- heartbeats ---

    @_repeated
    def record_heartbeat(self, trial_id: int) -> None:
        self._cached.record_heartbeat(trial_id)

    @_repeated
    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        """The study's RUNNING trials whose heartbeat stopped, each given a `fail_reason` first.

        BaseHeartbeat's one private method, through which Optuna's fail_stale_trials (its only
        caller) learns which trials to FAIL; a finished trial takes no attrs, so the reason is
        written here, just before.
        """
        stale = self._cached._get_stale_trial_ids(study_id)
        for trial_id in stale:
            worker = self.get_trial(trial_id).user_attrs.get(WORKER_ATTR, "its worker")
            try:
                self.set_trial_user_attr(
                    trial_id, FAIL_REASON_ATTR, f"no heartbeat from {worker}: the worker died or lost the study storage"
                )
            except UpdateFinishedTrialError:
                pass  # its worker or another process finished it meanwhile
        return stale

    def get_heartbeat_interval(self) -> int | None:
        return self.rdb.get_heartbeat_interval()

    def get_heartbeat_stale_trial_callback(self) -> Callable[[optuna.Study, FrozenTrial], None] | None:
        return self.rdb.get_heartbeat_stale_trial_callback()


# --- internals ---------------------------------------------------------------------------


def _open_journal(path: Path) -> JournalStorage:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # JournalFileOpenLock (O_EXCL lock file) instead of the default JournalFileSymlinkLock:
        # it also works where symlinks need privileges (Windows) and on NFSv3+. SafeJournalFileBackend
        # sets a torn last record aside on open and undoes a failed append (hpsearch/journal.py).
        from hpsearch.journal import SafeJournalFileBackend

        backend = SafeJournalFileBackend(str(path), lock_obj=JournalFileOpenLock(str(path)))
        return JournalStorage(backend)
    except OSError as exc:
        raise UsageError(
            f"cannot open journal file {path} ({exc.strerror or exc}): {_FIX} to name a writable file"
        ) from None
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        # Replaying the log failed: it is some other file (e.g. a SQLite database).
        raise UsageError(
            f"{path} is not an Optuna journal file: {_FIX} (for a SQLite database write sqlite:///{path})"
        ) from None


def _open_rdb(url: str, heartbeat_interval: int | None, grace_period: int | None, retries: int) -> ReconnectingStorage:
    masked = mask_password(url)
    try:
        parsed = make_url(url)
    except (sqlalchemy.exc.ArgumentError, ValueError):
        raise UsageError(
            f"storage URL {masked} is malformed: write dialect+driver://user:password@host:port/database, "
            "e.g. postgresql+psycopg2://user:password@db.example.org:5432/hpsearch"
        ) from None
    if parsed.drivername.split("+")[0] == "postgres":
        raise UsageError(f"storage URL {masked} uses the old scheme postgres://: write postgresql://")
    try:
        parsed.get_dialect()
    except (sqlalchemy.exc.NoSuchModuleError, ImportError):
        raise UsageError(
            f"storage URL {masked} names an unknown database {parsed.drivername!r}: use "
            "postgresql+psycopg2://…, mysql+pymysql://…, sqlite:///path or a journal file path"
        ) from None
    # RDBStorage runs str.format on the URL (to fill in {SCHEMA_VERSION}); an unencoded @ in the
    # password would make the driver look up part of the password as a host name.
    if "{" in url or "}" in url or "@" in (parsed.host or ""):
        raise UsageError(
            f"storage URL {masked} contains @, {{ or }} in its password or host: "
            "percent-encode them as %40, %7B and %7D"
        )

    backend = parsed.get_backend_name()
    engine_kwargs: dict = {"pool_pre_ping": True}  # a connection dropped while a trial trained is replaced
    if parsed.get_driver_name() in _CONNECT_TIMEOUT_DRIVERS:
        engine_kwargs["connect_args"] = {"connect_timeout": 10}
    if backend != "sqlite":
        # No pool: a worker holds a server connection only inside a call, so a hundred workers fit
        # PostgreSQL's default max_connections (benchmarks/many_workers.py); a refused connection
        # is waited out like a lost one. Beyond that, put PgBouncer (transaction mode) in front.
        engine_kwargs["poolclass"] = sqlalchemy.pool.NullPool
    if backend == "sqlite" and parsed.database not in (None, "", ":memory:"):
        folder = Path(parsed.database).expanduser().parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"cannot create folder {folder} for {masked} ({exc.strerror or exc}): {_FIX}") from None

    with warnings.catch_warnings():
        # Heartbeats and the retry callback are experimental in 5.0; we rely on them knowingly.
        warnings.simplefilter("ignore", ExperimentalWarning)
        callback = RetryStaleTrialCallback(max_retry=retries) if heartbeat_interval else None
        try:
            return _create_rdb_storage(
                url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=heartbeat_interval,
                grace_period=grace_period if heartbeat_interval else None,
                heartbeat_stale_trial_callback=callback,
            )
        except ImportError:
            raise UsageError(
                f"the database driver for {masked} is not installed: pip install it "
                "(psycopg2-binary for postgresql+psycopg2, pymysql for mysql+pymysql)"
            ) from None
        except sqlalchemy.exc.DBAPIError as exc:
            raise UsageError(_connection_error(parsed, masked, exc)) from None
        except sqlalchemy.exc.SQLAlchemyError as exc:
            raise UsageError(f"cannot open storage {masked} ({_detail(parsed, exc)}): {_FIX}") from None
        except RuntimeError as exc:  # optuna: the tables were written by another optuna version
            raise UsageError(f"cannot use storage {masked}: {_scrub(parsed, str(exc))}") from None


SCHEMA_RACE_ATTEMPTS = 5
"""How often opening a database storage is tried while other processes create its tables."""


def _create_rdb_storage(url: str, **kwargs) -> ReconnectingStorage:
    """ReconnectingStorage(url, **kwargs), retried while another process creates the same tables.

    RDBStorage creates Optuna's tables on first use with check-then-create, which is not atomic:
    two workers (or a worker and `hpsearch status`) opening a fresh PostgreSQL database at the
    same moment can both try to create a table, and the loser gets a duplicate-key or
    already-exists error. Once the winner's tables are there, a second try finds them and goes on.
    """
    for attempt in range(1, SCHEMA_RACE_ATTEMPTS + 1):
        try:
            return ReconnectingStorage(url, **kwargs)
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError) as exc:
            if not _lost_schema_race(exc) or attempt == SCHEMA_RACE_ATTEMPTS:
                raise
            time.sleep(0.2 * attempt)
    raise AssertionError("unreachable")


def _connection_error(parsed: URL, masked: str, exc: sqlalchemy.exc.DBAPIError) -> str:
    """One sentence for a failed connect: what went wrong, where, and the fix.

    libpq reports a failed connection attempt (refused, no such database, bad password) with no
    SQLSTATE, so the driver's message is all there is to tell them apart here.
    """
    detail = _detail(parsed, exc)
    text = detail.lower()
    backend = parsed.get_backend_name()
    name = _NAMES.get(backend, backend)
    where = f"{name} at {_host_port(parsed)}"
    if backend == "sqlite":
        return f"cannot open SQLite storage {masked} ({detail}): {_FIX} to name a writable file"
    if ("does not exist" in text and "database" in text) or "unknown database" in text:
        return (
            f"database {parsed.database!r} does not exist on {where} (storage {masked}): "
            f"create it (e.g. createdb -h {parsed.host or 'localhost'} -U {parsed.username or 'postgres'} "
            f"{parsed.database}) or {_FIX}"
        )
    if any(s in text for s in ("authentication failed", "access denied", "no password supplied", 'role "')):
        return (
            f"{where} refused user {parsed.username!r} ({detail}) for storage {masked}: "
            f"fix the user name or password in --storage or ${DEFAULT_ENV}"
        )
    unreachable = (
        "connection refused", "could not translate host name", "name or service not known",
        "timeout expired", "timed out", "no route to host", "network is unreachable",
        "can't connect", "could not connect", "temporary failure in name resolution",
    )
    if any(s in text for s in unreachable):
        return (
            f"cannot reach {where} ({detail}) for storage {masked}: start the server, "
            f"or {_FIX} to name the right host and port"
        )
    return f"cannot open storage {masked} ({detail}): {_FIX}"


def _detail(parsed: URL, exc: Exception) -> str:
    """The driver's first message line, without any copy of the password."""
    orig = getattr(exc, "orig", None) or exc
    lines = [line.strip() for line in str(orig).splitlines() if line.strip()]
    # psycopg2: 'connection to server at "h", port p failed: FATAL:  database "x" does not exist'
    text = lines[0] if lines else type(orig).__name__
    text = re.sub(r"^connection to server at .*? failed:\s*", "", text)
    text = re.sub(r"^FATAL:\s*", "", text)
    return _scrub(parsed, text.rstrip("."))


def _scrub(parsed: URL, text: str) -> str:
    if parsed.password:
        text = text.replace(str(parsed.password), "***")
    return text


def _host_port(parsed: URL) -> str:
    port = parsed.port or _DEFAULT_PORTS.get(parsed.get_backend_name())
    host = parsed.host or "localhost"
    return f"{host}:{port}" if port else host
