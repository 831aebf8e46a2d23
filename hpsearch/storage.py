"""Where studies live: an Optuna RDB URL (PostgreSQL for several machines) or a journal file.

`--storage` (else `$HPSEARCH_STORAGE`, else the embedded journal file) names the storage;
`open_storage` turns it into an Optuna storage and every failure into one `UsageError`
sentence that names the storage with its password masked. Passwords never appear in output.

What Optuna 5.0 does about dead workers, which this module builds on:

* RDBStorage supports heartbeats. `Study.optimize` starts a thread that records a heartbeat
  every `heartbeat_interval` seconds while a trial runs, and at the start of every trial it
  calls `optuna.storages.fail_stale_trials`, which sets RUNNING trials whose last heartbeat is
  older than `grace_period` to FAIL and passes each one to `heartbeat_stale_trial_callback`
  (here `RetryHeartbeatStaleTrialCallback`, which enqueues a WAITING copy with the same params).
  `Study.ask`/`tell` neither record heartbeats nor fail stale trials, and a RUNNING trial that
  never recorded a heartbeat is never stale.
* JournalStorage (5.0) has no heartbeats: a dead worker's trial stays RUNNING until someone
  calls `mark_running_trials_failed`.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import optuna
import sqlalchemy.exc
from optuna.exceptions import ExperimentalWarning, UpdateFinishedTrialError
from optuna.storages import BaseStorage, JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.engine import URL, make_url

from hpsearch.errors import UsageError

DEFAULT_ENV = "HPSEARCH_STORAGE"
"""The environment variable that names the storage when `--storage` is absent."""

FAIL_REASON_ATTR = "fail_reason"
RETRY_OF_ATTR = "retry_of"

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


def open_storage(
    url: str,
    *,
    heartbeat_interval: int | None = 60,
    grace_period: int | None = 180,
    retries: int = 3,
) -> BaseStorage:
    """Open (and, for a database, connect to) the storage `url` names.

    A `scheme://` URL opens an RDBStorage with `pool_pre_ping`, heartbeats every
    `heartbeat_interval` s (None: off) so a dead worker's trial FAILs `grace_period` s after its
    last heartbeat, and up to `retries` re-runs of such a trial with the same params.
    SQLite (`sqlite:///path`) is for one process only: concurrent writers get "database is
    locked" errors, and on NFS its locking is unreliable; use the journal file or PostgreSQL.

    Anything else is a journal file path (its folder is created). Journal files are safe for
    several processes on one machine but have no heartbeats, so the heartbeat arguments are
    ignored there.

    Raises UsageError with one sentence naming the storage (password masked) and the fix.
    """
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
    """Fail the study's trials whose heartbeat stopped; returns their numbers.

    `Study.optimize` already does this before each trial; call it where no optimize loop runs
    (a launcher or a status command). The storage's retry callback enqueues their re-runs.
    A no-op on storages without heartbeats (journal files).
    """
    running = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    if not running:
        return []
    with warnings.catch_warnings():
        # fail_stale_trials is experimental in 5.0: the warning would only clutter output.
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
        try:
            storage.set_trial_user_attr(trial._trial_id, FAIL_REASON_ATTR, reason)
            if storage.set_trial_state_values(trial._trial_id, TrialState.FAIL):
                failed.append(trial.number)
        except UpdateFinishedTrialError:
            continue  # its worker finished it after we listed it: that state stands
    return sorted(failed)


def retry_trial(study: optuna.Study, trial: FrozenTrial) -> None:
    """Enqueue a re-run of `trial` with the same params and user attr `retry_of` = its number.

    Only the search's lineage (`parent_trial`) is carried over: what the failed run measured or
    which worker ran it belongs to that run alone.
    """
    user_attrs = {k: v for k, v in trial.user_attrs.items() if k == "parent_trial"}
    user_attrs[RETRY_OF_ATTR] = trial.number
    study.enqueue_trial(trial.params, user_attrs=user_attrs, skip_if_exists=False)


# --- internals ---------------------------------------------------------------------------


def _open_journal(path: Path) -> JournalStorage:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # JournalFileOpenLock (O_EXCL lock file) instead of the default JournalFileSymlinkLock:
        # it also works where symlinks need privileges (Windows) and on NFSv3+.
        backend = JournalFileBackend(str(path), lock_obj=JournalFileOpenLock(str(path)))
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


def _open_rdb(url: str, heartbeat_interval: int | None, grace_period: int | None, retries: int) -> RDBStorage:
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
    if backend == "sqlite" and parsed.database not in (None, "", ":memory:"):
        folder = Path(parsed.database).expanduser().parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"cannot create folder {folder} for {masked} ({exc.strerror or exc}): {_FIX}") from None

    with warnings.catch_warnings():
        # Heartbeats and the retry callback are experimental in 5.0; we rely on them knowingly.
        warnings.simplefilter("ignore", ExperimentalWarning)
        callback = RetryHeartbeatStaleTrialCallback(max_retry=retries) if heartbeat_interval else None
        try:
            return RDBStorage(
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


def _connection_error(parsed: URL, masked: str, exc: sqlalchemy.exc.DBAPIError) -> str:
    """One sentence for a failed connect: what went wrong, where, and the fix."""
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
