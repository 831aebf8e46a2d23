"""hpsearch.storage: journal files and PostgreSQL, heartbeats, failing trials, clear errors."""

from __future__ import annotations

import socket
import sqlite3
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
    ReconnectingStorage,
    _connection_error,
    describe,
    fail_stale_trials,
    heartbeat_settings,
    mark_running_trials_failed,
    mask_password,
    open_storage,
    resolve_storage_url,
    retry_trial,
    sqlstate,
    transient_error,
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
    assert isinstance(storage, ReconnectingStorage) and isinstance(storage.rdb, RDBStorage)
    assert storage.rdb.engine.pool._pre_ping is True
    assert storage.rdb.engine_kwargs["connect_args"] == {"connect_timeout": 10}
    assert storage.get_heartbeat_interval() == 7
    assert storage.rdb.grace_period == 30
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
    assert isinstance(storage.rdb, RDBStorage)
    assert storage.rdb.engine.pool._pre_ping is True
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
    assert storage.get_heartbeat_interval() == 5 and storage.rdb.grace_period == 7
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


# --- lost connections ---------------------------------------------------------------------


def _caught(run) -> BaseException:
    try:
        run()
    except Exception as error:  # the test inspects whatever the database raised
        return error
    raise AssertionError("the database raised nothing")


def _execute(engine: sqlalchemy.Engine, sql: str) -> None:
    with engine.begin() as connection:
        connection.exec_driver_sql(sql)


# PL/pgSQL statements: the server ends its own session mid-statement (as an administrator's
# pg_terminate_backend would), or raises the error named `condition` (PostgreSQL appendix A).
_END_SESSION = "PERFORM pg_terminate_backend(pg_backend_pid()); PERFORM pg_sleep(5)"


def _raise(condition: str) -> str:
    return f"RAISE EXCEPTION 'raised by the test' USING ERRCODE = '{condition}'"


@pytest.mark.postgres
def test_transient_errors_are_told_apart_by_type_and_sqlstate(postgres_url, tmp_path):
    engine = sqlalchemy.create_engine(postgres_url, poolclass=sqlalchemy.NullPool)
    with socket.socket() as probe:  # a port nobody listens on once the probe is closed
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    refused = sqlalchemy.engine.make_url(postgres_url).set(port=closed_port)
    error = _caught(lambda: sqlalchemy.create_engine(refused).connect())
    assert isinstance(error, sqlalchemy.exc.OperationalError) and sqlstate(error) is None
    assert transient_error(error) == "connection"

    error = _caught(lambda: _execute(engine, f"DO $$ BEGIN {_END_SESSION}; END $$"))
    assert error.connection_invalidated and transient_error(error) == "connection"

    for condition, code, kind in [
        ("admin_shutdown", "57P01", "connection"),
        ("crash_shutdown", "57P02", "connection"),
        ("cannot_connect_now", "57P03", "connection"),
        ("connection_failure", "08006", "connection"),
        ("deadlock_detected", "40P01", "conflict"),
        ("check_violation", "23514", None),
    ]:
        error = _caught(lambda: _execute(engine, f"DO $$ BEGIN {_raise(condition)}; END $$"))
        assert (sqlstate(error), transient_error(error)) == (code, kind)

    # A real serialization failure: a REPEATABLE READ transaction updates a row changed since its snapshot.
    _execute(engine, "CREATE TABLE counter (n int); INSERT INTO counter VALUES (0)")
    with engine.connect() as first, engine.connect() as second:
        first.execution_options(isolation_level="REPEATABLE READ")
        first.exec_driver_sql("SELECT n FROM counter").all()
        second.exec_driver_sql("UPDATE counter SET n = 1")
        second.commit()
        error = _caught(lambda: first.exec_driver_sql("UPDATE counter SET n = 2"))
    assert (sqlstate(error), transient_error(error)) == ("40001", "conflict")
    assert transient_error(_caught(lambda: _execute(engine, "SELECT 1 / 0"))) is None  # 22012
    assert transient_error(optuna.exceptions.StorageInternalError("no database under it")) is None
    engine.dispose()

    # SQLite has no connection to lose: a locked database is worth waiting for, a missing table is not.
    path = tmp_path / "s.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("CREATE TABLE t (n int)")
    holder.execute("BEGIN IMMEDIATE")
    waiter = sqlalchemy.create_engine(f"sqlite:///{path}", connect_args={"timeout": 0})
    assert transient_error(_caught(lambda: _execute(waiter, "INSERT INTO t VALUES (1)"))) == "conflict"
    assert transient_error(_caught(lambda: _execute(waiter, "SELECT * FROM missing"))) is None
    holder.close()
    waiter.dispose()


def _sabotage_user_attrs(url: str, action: str, times: int) -> sqlalchemy.Engine:
    """Make the server run `action` in the first `times` writes of a trial user attr; returns an engine to count them.

    The count is a sequence, which a rolled-back or ended transaction does not undo.
    """
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.NullPool)
    with engine.begin() as connection:
        connection.exec_driver_sql("CREATE SEQUENCE writes")
        connection.exec_driver_sql(
            "CREATE FUNCTION sabotage() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            f"IF nextval('writes') <= {times} THEN {action}; END IF; RETURN NEW; END $$"
        )
        connection.exec_driver_sql(
            "CREATE TRIGGER sabotage BEFORE INSERT OR UPDATE ON trial_user_attributes "
            "FOR EACH ROW EXECUTE FUNCTION sabotage()"
        )
    return engine


def _stop_sabotage(counter: sqlalchemy.Engine) -> None:
    with counter.begin() as connection:
        connection.exec_driver_sql("DROP TRIGGER sabotage ON trial_user_attributes")
        connection.exec_driver_sql("DROP FUNCTION sabotage()")
        connection.exec_driver_sql("DROP SEQUENCE writes")
    counter.dispose()


def _writes(engine: sqlalchemy.Engine) -> int:
    with engine.connect() as connection:
        return connection.exec_driver_sql("SELECT last_value FROM writes").scalar_one()


@pytest.mark.postgres
def test_a_lost_connection_is_retried_until_the_database_is_back(postgres_url, monkeypatch, capsys):
    from hpsearch import storage as storage_module

    # The test server trusts everyone, so the password is accepted and must never be shown.
    url = sqlalchemy.engine.make_url(postgres_url).set(password="s3cret").render_as_string(hide_password=False)
    storage = open_storage(url, heartbeat_interval=None)
    study = optuna.create_study(study_name="s", storage=storage)
    trial_id = study.ask()._trial_id

    counter = _sabotage_user_attrs(postgres_url, _END_SESSION, times=2)
    storage.set_trial_user_attr(trial_id, "note", "kept")  # the server ends the session twice, then lets it through
    assert _writes(counter) == 3
    assert study.trials[0].user_attrs == {"note": "kept"}
    said = capsys.readouterr().err
    assert said.count("lost the connection to postgresql+psycopg2://postgres:***@") == 1
    assert "server closed the connection unexpectedly" in said and "s3cret" not in said
    _stop_sabotage(counter)

    # Optuna ignores integrity errors of attribute writes, so the rejection is a data error (22001).
    counter = _sabotage_user_attrs(postgres_url, _raise("string_data_right_truncation"), times=1)
    with pytest.raises(optuna.exceptions.StorageInternalError):  # not a transient error: raised at once
        storage.set_trial_user_attr(trial_id, "note", "rejected")
    assert _writes(counter) == 1
    _stop_sabotage(counter)

    counter = _sabotage_user_attrs(postgres_url, _END_SESSION, times=1000)
    monkeypatch.setattr(storage_module, "RECONNECT_SECONDS", 0.0)  # the database stays away too long
    with pytest.raises(optuna.exceptions.StorageInternalError):
        storage.set_trial_user_attr(trial_id, "note", "lost")
    assert _writes(counter) == 1
    counter.dispose()


@pytest.mark.postgres
def test_a_conflicting_transaction_is_repeated(postgres_url, capsys):
    storage = open_storage(postgres_url, heartbeat_interval=None)
    study = optuna.create_study(study_name="s", storage=storage)
    trial_id = study.ask()._trial_id
    counter = _sabotage_user_attrs(postgres_url, _raise("serialization_failure"), times=1)
    storage.set_trial_user_attr(trial_id, "note", "kept")
    assert _writes(counter) == 2
    assert study.trials[0].user_attrs == {"note": "kept"}
    assert "a transaction conflicted on postgresql+psycopg2://" in capsys.readouterr().err
    counter.dispose()


@pytest.mark.postgres
def test_postgres_storage_is_a_heartbeat_storage_behind_optunas_public_interface(postgres_url):
    storage = open_storage(postgres_url, heartbeat_interval=9)
    assert isinstance(storage, ReconnectingStorage) and not isinstance(storage, RDBStorage)
    assert isinstance(storage, optuna.storages.BaseStorage) and storage.get_heartbeat_interval() == 9
    study = optuna.create_study(storage=storage)
    assert study._storage is storage  # Optuna uses it as it is
    study.optimize(_objective, n_trials=2)
    # Optuna's trial cache is in front: finished trials are read once, not on every call.
    first, again = (storage.get_all_trials(study._study_id, deepcopy=False) for _ in range(2))
    assert [t.state for t in first] == [TrialState.COMPLETE] * 2
    assert all(a is b for a, b in zip(first, again))
    assert storage.rdb.get_all_trials(study._study_id, deepcopy=False)[0] is not first[0]
