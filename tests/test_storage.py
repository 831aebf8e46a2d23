"""hpsearch.storage: journal files and PostgreSQL, heartbeats, failing trials, clear errors."""

from __future__ import annotations

import time
import traceback

import optuna
import pytest
import sqlalchemy.exc
from optuna.storages import JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileOpenLock
from optuna.trial import TrialState

from hpsearch.errors import UsageError
from hpsearch.storage import (
    DEFAULT_ENV,
    HEARTBEAT_GRACE_ENV,
    HEARTBEAT_INTERVAL_ENV,
    heartbeat_settings,
    _connection_error,
    describe,
    fail_stale_trials,
    mark_running_trials_failed,
    mask_password,
    open_storage,
    resolve_storage_url,
    retry_trial,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)


class _WorkerDied(BaseException):
    """Not an Exception, so study.optimize leaves the trial RUNNING, as when a worker dies."""


def _objective(trial: optuna.Trial) -> float:
    return trial.suggest_float("x", 0.0, 1.0) + trial.suggest_int("depth", 2, 5)


@pytest.fixture(params=["journal", pytest.param("postgres", marks=pytest.mark.postgres)])
def storage_url(request, tmp_path) -> str:
    """A fresh storage of each kind."""
    if request.param == "journal":
        return str(tmp_path / "studies" / "hpsearch.journal")
    return request.getfixturevalue("postgres_url")


def _dies(trial: optuna.Trial) -> float:
    _objective(trial)
    raise _WorkerDied  # its heartbeat thread stops with it; nobody tells the trial


def _error(url: str, **kwargs) -> UsageError:
    with pytest.raises(UsageError) as info:
        open_storage(url, **kwargs)
    return info.value


def _rendered(exc: BaseException) -> str:
    """Everything a traceback of `exc` would print, chained exceptions included."""
    return "".join(traceback.format_exception(exc))


# --- choosing and opening ------------------------------------------------------------------


def test_resolve_storage_url_prefers_cli_then_env_then_default(monkeypatch, tmp_path):
    default = tmp_path / "studies" / "hpsearch.journal"
    monkeypatch.delenv(DEFAULT_ENV, raising=False)
    assert resolve_storage_url(None, default_journal=default) == str(default)
    monkeypatch.setenv(DEFAULT_ENV, " postgresql://db/hp\n")
    assert resolve_storage_url(None, default_journal=default) == "postgresql://db/hp"
    assert resolve_storage_url("", default_journal=default) == "postgresql://db/hp"
    assert resolve_storage_url("other.journal", default_journal=default) == "other.journal"


def test_round_trip_through_two_opens(storage_url):
    first = open_storage(storage_url)
    study = optuna.create_study(study_name="s", storage=first)
    study.optimize(_objective, n_trials=1)

    again = optuna.load_study(study_name="s", storage=open_storage(storage_url))
    [trial] = again.trials
    assert trial.state == TrialState.COMPLETE
    assert trial.params == study.trials[0].params
    assert trial.value == pytest.approx(study.trials[0].value)


def test_journal_file_uses_the_open_lock_and_creates_its_folder(tmp_path):
    path = tmp_path / "a" / "b" / "s.journal"
    storage = open_storage(f"file:{path}")
    assert isinstance(storage, JournalStorage)
    assert isinstance(storage._backend._lock, JournalFileOpenLock)
    assert path.is_file()


@pytest.mark.postgres
def test_postgres_storage_pings_pooled_connections_and_beats(postgres_url):
    storage = open_storage(postgres_url, heartbeat_interval=7, grace_period=30, retries=2)
    assert isinstance(storage, RDBStorage)
    assert storage.engine.pool._pre_ping is True
    assert storage.engine_kwargs["connect_args"] == {"connect_timeout": 10}
    assert storage.get_heartbeat_interval() == 7
    assert storage.grace_period == 30
    assert storage.get_heartbeat_stale_trial_callback()._max_retry == 2


def _open_at(url: str, start: float) -> str:
    """Wait until `start` (time.time()), open the storage, and say what happened."""
    time.sleep(max(0.0, start - time.time()))
    try:
        open_storage(url, heartbeat_interval=None)
    except Exception as exc:  # the test reports each process's failure by name
        return f"{type(exc).__name__}: {exc}"
    return "opened"


@pytest.mark.postgres
def test_processes_opening_a_fresh_database_at_once_all_succeed(postgres_url):
    # Optuna creates its tables check-then-create; the losers of that race must retry, not fail.
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    with context.Pool(6) as pool:
        start = time.time() + 3.0  # every process has imported hpsearch by then
        outcomes = pool.starmap(_open_at, [(postgres_url, start)] * 6)
    assert outcomes == ["opened"] * 6


def test_sqlite_storage_creates_its_folder(tmp_path):
    storage = open_storage(f"sqlite:///{tmp_path}/db/s.db")
    assert isinstance(storage, RDBStorage)
    assert storage.engine.pool._pre_ping is True
    assert (tmp_path / "db" / "s.db").is_file()


def test_heartbeats_off_means_no_callback(tmp_path):
    storage = open_storage(f"sqlite:///{tmp_path}/s.db", heartbeat_interval=None)
    assert storage.get_heartbeat_interval() is None
    assert storage.get_heartbeat_stale_trial_callback() is None


# --- dead workers --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_trial_of_a_dead_worker_fails_after_grace_and_is_retried(kind, request, tmp_path):
    url = request.getfixturevalue("postgres_url") if kind == "postgres" else f"sqlite:///{tmp_path}/s.db"
    study = optuna.create_study(study_name="s", storage=open_storage(url, heartbeat_interval=1, grace_period=1))

    with pytest.raises(_WorkerDied):
        study.optimize(_dies, n_trials=1)
    assert fail_stale_trials(study) == []  # still within the grace period
    assert study.trials[0].state == TrialState.RUNNING

    time.sleep(2.5)
    assert fail_stale_trials(study) == [0]
    dead, retry = study.trials
    assert dead.state == TrialState.FAIL
    assert retry.state == TrialState.WAITING
    assert retry.params == dead.params
    assert retry.system_attrs["failed_trial"] == 0
    assert dead.user_attrs["fail_reason"].startswith("no heartbeat from ")  # why, for `hpsearch status`
    assert retry.user_attrs == {"retry_of": 0}  # as the launcher's retries: the dead run's attrs stay with it

    # Another worker's optimize picks up the retry with the same params.
    other = optuna.load_study(study_name="s", storage=open_storage(url, heartbeat_interval=1, grace_period=1))
    other.optimize(_objective, n_trials=1)
    assert other.trials[1].state == TrialState.COMPLETE
    assert other.trials[1].params == dead.params


def test_journal_storage_has_no_heartbeats(tmp_path):
    study = optuna.create_study(storage=open_storage(str(tmp_path / "s.journal"), heartbeat_interval=1))
    with pytest.raises(_WorkerDied):
        study.optimize(_dies, n_trials=1)
    assert fail_stale_trials(study) == []
    assert study.trials[0].state == TrialState.RUNNING  # only mark_running_trials_failed ends it


def test_mark_running_trials_failed_fails_the_chosen_running_trials(storage_url):
    storage = open_storage(storage_url, heartbeat_interval=None)  # ask() warns on heartbeat storages
    study = optuna.create_study(study_name="s", storage=storage)
    first, second = study.ask(), study.ask()
    for trial in (first, second):
        _objective(trial)
    done = study.ask()
    study.tell(done, _objective(done))

    assert mark_running_trials_failed(storage, "s", reason="worker 3 died", trial_numbers=[0, 2]) == [0]
    states = {t.number: t.state for t in study.trials}
    assert states == {0: TrialState.FAIL, 1: TrialState.RUNNING, 2: TrialState.COMPLETE}
    assert study.trials[0].user_attrs["fail_reason"] == "worker 3 died"

    assert mark_running_trials_failed(storage, "s", reason="interrupted") == [1]
    assert study.trials[1].state == TrialState.FAIL
    assert study.trials[1].user_attrs["fail_reason"] == "interrupted"
    assert "fail_reason" not in study.trials[2].user_attrs

    retry_trial(study, study.trials[0])
    again = study.ask()
    _objective(again)  # an enqueued trial's params appear as the objective suggests them
    assert again.params == study.trials[0].params
    assert again.user_attrs == {"retry_of": 0}


def test_mark_running_trials_failed_leaves_a_trial_finished_meanwhile(storage_url, monkeypatch):
    storage = open_storage(storage_url, heartbeat_interval=None)
    study = optuna.create_study(study_name="s", storage=storage)
    trial = study.ask()
    listed = storage.get_all_trials(study._study_id, states=(TrialState.RUNNING,))
    study.tell(trial, 1.0)  # the worker finishes between the listing and the update
    monkeypatch.setattr(storage, "get_all_trials", lambda *args, **kwargs: listed)

    assert mark_running_trials_failed(storage, "s", reason="late") == []
    monkeypatch.undo()
    assert study.trials[0].state == TrialState.COMPLETE


def test_mark_running_trials_failed_names_a_missing_study(tmp_path):
    with pytest.raises(UsageError, match="no study named 'nope'"):
        mark_running_trials_failed(open_storage(str(tmp_path / "s.journal")), "nope", reason="x")


# --- passwords and descriptions ------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("postgresql+psycopg2://user:s3cret@host/db", "postgresql+psycopg2://user:***@host/db"),
        ("postgresql://user:s3cret@host:5433/db", "postgresql://user:***@host:5433/db"),
        ("postgresql://user@host/db", "postgresql://user@host/db"),
        ("mysql+pymysql://u:s3cr%40t@h/db", "mysql+pymysql://u:***@h/db"),
        ("postgresql://u:s3c@ret@h/db", "postgresql://u:***@h/db"),  # an unencoded @ in the password
        ("postgresql://u:s3cret@h:notaport/db", "postgresql://u:***@h:notaport/db"),  # unparseable
        ("postgresql://h/db?sslmode=require&password=s3cret", "postgresql://h/db?password=***&sslmode=require"),
        ("sqlite:///studies/s.db", "sqlite:///studies/s.db"),
        ("studies/hpsearch.journal", "studies/hpsearch.journal"),
        ("", ""),
    ],
)
def test_mask_password(url, masked):
    assert mask_password(url) == masked


@pytest.mark.parametrize(
    ("url", "description"),
    [
        ("postgresql+psycopg2://u:s3cret@db.lab:5432/hp", "PostgreSQL study storage at db.lab:5432/hp"),
        ("postgresql://u@db.lab/hp", "PostgreSQL study storage at db.lab:5432/hp"),
        ("sqlite:///studies/s.db", "SQLite study storage at studies/s.db"),
        ("studies/hpsearch.journal", "journal file studies/hpsearch.journal"),
        ("file:studies/x.journal", "journal file studies/x.journal"),
        ("postgresql://u:s3cret@h:bad/db", "study storage postgresql://u:***@h:bad/db"),
    ],
)
def test_describe(url, description):
    assert describe(url) == description


# --- errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("postgresql://u:s3cret@h:notaport/db", "is malformed"),
        ("postgres://u:s3cret@h/db", "write postgresql://"),
        ("postgresql+nodriver://u:s3cret@h/db", "unknown database 'postgresql+nodriver'"),
        ("mysql+pymysql://u:s3cret@h/db", "driver for mysql+pymysql://u:***@h/db is not installed"),
        ("postgresql://u:s3c{ret@h/db", "percent-encode"),
        ("postgresql://u:s3c@ret@h/db", "percent-encode"),
    ],
)
def test_bad_urls_give_one_sentence_without_the_password(url, words):
    error = _error(url)
    assert words in str(error)
    assert "s3c" not in _rendered(error)


def test_unreachable_server_names_host_and_port_but_not_the_password():
    start = time.monotonic()
    error = _error("postgresql+psycopg2://postgres:s3cret@127.0.0.1:1/test")
    assert time.monotonic() - start < 5
    assert str(error).startswith("cannot reach PostgreSQL at 127.0.0.1:1 (Connection refused)")
    assert "postgres:***@127.0.0.1:1/test" in str(error)
    assert "s3cret" not in _rendered(error)


@pytest.mark.postgres
def test_missing_database_and_unknown_user_are_named(postgres_url):
    base = sqlalchemy.engine.make_url(postgres_url)
    error = _error(base.set(password="s3cret", database="no_such_db_xyz").render_as_string(hide_password=False))
    assert str(error).startswith("database 'no_such_db_xyz' does not exist on PostgreSQL at")
    assert "createdb" in str(error)
    assert "s3cret" not in _rendered(error)

    error = _error(base.set(username="no_such_user_xyz", password="s3cret").render_as_string(hide_password=False))
    assert "refused user 'no_such_user_xyz'" in str(error)
    assert "s3cret" not in _rendered(error)


def test_wrong_password_message_hides_the_password():
    # The test server trusts everyone, so the driver's message is made up here.
    url = sqlalchemy.engine.make_url("postgresql+psycopg2://bob:s3cret@db.lab/hp")
    driver = Exception(
        'connection to server at "db.lab", port 5432 failed: '
        'FATAL:  password authentication failed for user "bob" (s3cret)'
    )
    message = _connection_error(url, mask_password(str(url)), sqlalchemy.exc.OperationalError("connect", {}, driver))
    assert message.startswith("PostgreSQL at db.lab:5432 refused user 'bob' (password authentication failed")
    assert "fix the user name or password" in message
    assert "s3cret" not in message


def test_journal_errors_name_the_file(tmp_path):
    assert "Is a directory" in str(_error(str(tmp_path)))
    other = tmp_path / "notes.journal"
    other.write_bytes(b"SQLite format 3\x00\x01\x02\nmore\n")
    assert str(_error(str(other))).startswith(f"{other} is not an Optuna journal file")


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [({"heartbeat_interval": 0}, "heartbeat interval"), ({"grace_period": 0}, "grace period"), ({"retries": -1}, "retries")],
)
def test_bad_heartbeat_settings(tmp_path, kwargs, words):
    assert words in str(_error(str(tmp_path / "s.journal"), **kwargs))


def test_heartbeat_settings_come_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv(HEARTBEAT_INTERVAL_ENV, raising=False)
    monkeypatch.delenv(HEARTBEAT_GRACE_ENV, raising=False)
    assert heartbeat_settings() == (60, 180)
    monkeypatch.setenv(HEARTBEAT_INTERVAL_ENV, "5")
    assert heartbeat_settings() == (5, 15)  # the grace period follows: three intervals
    monkeypatch.setenv(HEARTBEAT_GRACE_ENV, " 7 ")
    assert heartbeat_settings() == (5, 7)
    storage = open_storage(f"sqlite:///{tmp_path}/s.db")
    assert storage.get_heartbeat_interval() == 5 and storage.grace_period == 7
    assert open_storage(f"sqlite:///{tmp_path}/s.db", heartbeat_interval=None).get_heartbeat_interval() is None


@pytest.mark.parametrize(
    ("interval", "grace", "words"),
    [
        ("soon", None, "$HPSEARCH_HEARTBEAT_INTERVAL='soon' is not a whole number of seconds"),
        ("0", None, "$HPSEARCH_HEARTBEAT_INTERVAL='0' is not a whole number of seconds"),
        ("1.5", None, "$HPSEARCH_HEARTBEAT_INTERVAL='1.5'"),
        (None, "-3", "$HPSEARCH_HEARTBEAT_GRACE='-3'"),
        ("10", "5", "$HPSEARCH_HEARTBEAT_GRACE=5 is shorter than $HPSEARCH_HEARTBEAT_INTERVAL=10"),
    ],
)
def test_bad_heartbeat_environment_is_one_sentence(monkeypatch, tmp_path, interval, grace, words):
    for name, value in ((HEARTBEAT_INTERVAL_ENV, interval), (HEARTBEAT_GRACE_ENV, grace)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    assert words in str(_error(str(tmp_path / "s.journal")))


# --- lost connections ----------------------------------------------------------------------


def _raise_lost(driver_message: str, error_type=sqlalchemy.exc.OperationalError):
    try:
        raise error_type("SELECT 1", {}, Exception(driver_message))
    except sqlalchemy.exc.DBAPIError as cause:
        raise optuna.exceptions.StorageInternalError("An exception is raised during the commit.") from cause


def test_a_lost_connection_is_retried_until_the_database_is_back(monkeypatch, capsys):
    from types import SimpleNamespace

    from hpsearch import storage as storage_module

    calls = []

    def flaky(self, value):
        calls.append(value)
        if len(calls) < 3:
            _raise_lost("server closed the connection unexpectedly")
        return value * 2

    monkeypatch.setattr(storage_module.time, "sleep", lambda seconds: None)
    database = SimpleNamespace(url="postgresql+psycopg2://u:s3cret@db.lab/hp")
    assert storage_module._reconnecting(flaky)(database, 21) == 42
    assert calls == [21, 21, 21]
    said = capsys.readouterr().err
    assert said.count("lost the connection to postgresql+psycopg2://u:***@db.lab/hp") == 1
    assert "server closed the connection unexpectedly" in said and "s3cret" not in said

    calls.clear()
    def bad_data(self):
        calls.append(1)
        _raise_lost("value too long for type character varying(512)", sqlalchemy.exc.DataError)

    with pytest.raises(optuna.exceptions.StorageInternalError):  # not a connection problem: raised at once
        storage_module._reconnecting(bad_data)(database)
    assert calls == [1]

    calls.clear()
    monkeypatch.setattr(storage_module, "RECONNECT_SECONDS", 0.0)  # the database stays away too long
    with pytest.raises(optuna.exceptions.StorageInternalError):
        storage_module._reconnecting(flaky)(database, 1)
    assert calls == [1]


@pytest.mark.postgres
def test_postgres_storage_reconnects(postgres_url):
    from hpsearch.storage import ReconnectingRDBStorage

    assert isinstance(open_storage(postgres_url), ReconnectingRDBStorage)
