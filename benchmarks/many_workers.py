"""Many workers on one PostgreSQL server: throughput, server connections, ask/tell latency and
trial bookkeeping for N simulated workers, under several connection-pool settings.

Each worker is a separate process (forked from a forkserver that has already imported Optuna,
SQLAlchemy and hpsearch, so 128 of them start in seconds). It opens the storage itself, loads
the study with the paper's NeighborhoodSampler (hpsearch/studies/paper.yaml), and then runs a
fixed number of trials (or until --duration runs out), each as `Study.optimize` runs one:
`optuna.storages.fail_stale_trials`, `study.ask` of the paper's seven hyperparameters, a
heartbeat thread while a trivial objective sleeps 0.2-1 s and returns a number, `study.tell`.
No TensorFlow: the storage is what is measured. Every run gets a fresh database, dropped after.

Settings (`--settings`):

  hpsearch   hpsearch.storage.open_storage(url) as it stands: SQLAlchemy's NullPool (a connection
             per transaction, closed after it), reconnecting calls that also wait out "too many
             clients" (SQLSTATE 53300).
  queuepool  optuna RDBStorage with the same engine options and the default QueuePool.
  single     ... with pool_size=1, max_overflow=0. RDBStorage cannot open with it: its schema
             check holds a session while it opens a second connection, which waits pool_timeout
             (30 s) for the first and fails (StorageInternalError from a QueuePool TimeoutError).
  pool1      ... with pool_size=1, max_overflow=1: one connection held per worker, a second
             one opened for the moments Optuna nests sessions, and closed after.
  nullpool   ... with poolclass=NullPool (a connection per transaction, closed after it).

Checks per run: every worker exits 0; no trial number is asked twice; every asked trial is told
once; the database holds exactly the asked trials, all COMPLETE (none RUNNING, WAITING or
FAIL); connection errors ("too many clients", refused or failed connects) in the workers'
errors and stderr are counted. Peak connections are polled from pg_stat_activity every 0.1 s:
those of the run's database, and all client backends of the server (other users count against
max_connections too).

Beyond one server's max_connections (about 100 minus superuser_reserved_connections, shared
with every other client of the server):

* With NullPool a worker holds a connection only during a transaction, so the peak is the
  number of workers inside a storage call at once, not the number of workers. Raise
  --workers until the peak nears max_connections on your server.
* PgBouncer in transaction mode (pool_mode = transaction, default_pool_size about 20-50) in
  front of PostgreSQL: point the workers' storage URL at PgBouncer's port (6432). Optuna's
  RDBStorage uses no session state (no prepared statements with psycopg2, no advisory locks,
  no LISTEN), so transaction pooling is safe, and thousands of client connections share a few
  server connections. Keep NullPool or pool_size=1 on the workers' side.
* Or raise max_connections in postgresql.conf (needs a restart; each connection costs a
  backend process and some work_mem, so a few hundred is the practical limit).

    python benchmarks/many_workers.py [--workers 8 32 128] [--settings hpsearch single nullpool]
        [--trials-per-worker 40] [--duration 90] [--heartbeat 1] [--grace 30] [--objective 0.2 1]
        [--stagger 0] [--postgres postgresql+psycopg2://postgres@127.0.0.1:5432/test]

The defaults are a stress test (1 s heartbeats, sub-second trials, all workers asking at once); a
search's own pace is `--heartbeat 60 --grace 180` (hpsearch's defaults), trials of minutes, and
workers that start over a minute or more.
"""

from __future__ import annotations

import argparse
import collections
import json
import multiprocessing
import os
import platform
import random
import re
import secrets
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

import optuna
import sqlalchemy
from optuna.exceptions import ExperimentalWarning
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState
from sqlalchemy.engine import make_url

from hpsearch.config import load_study
from hpsearch.storage import open_storage
from hpsearch.templates import template_path

DEFAULT_POSTGRES = os.environ.get("HPSEARCH_TEST_POSTGRES_URL") or "postgresql+psycopg2://postgres@127.0.0.1:5432/test"
STUDY_NAME = "many-workers"
SETTINGS = ("hpsearch", "queuepool", "single", "pool1", "nullpool")
# hpsearch.storage's engine options for PostgreSQL, repeated for the settings built here.
HPSEARCH_ENGINE_KWARGS = {"pool_pre_ping": True, "connect_args": {"connect_timeout": 10}}
POOL_KWARGS = {
    "queuepool": {},
    "single": {"pool_size": 1, "max_overflow": 0},
    "pool1": {"pool_size": 1, "max_overflow": 1},
    "nullpool": {"poolclass": sqlalchemy.pool.NullPool},
}
CONNECTION_ERROR = re.compile(
    r"too many clients|remaining connection slots|could not connect|connection refused|"
    r"server closed the connection|lost the connection|QueuePool limit",
    re.IGNORECASE,
)
NO_RECORD = "no record"  # the error of a worker that wrote no JSON record
START_TIMEOUT = 600.0  # s for all workers to open the storage on a loaded machine


# ---------------------------------------------------------------- one worker (a child process)


def open_setting(url: str, setting: str, heartbeat_interval: int, grace_period: int) -> optuna.storages.BaseStorage:
    """The storage a worker of `setting` uses (see the module docstring)."""
    if setting == "hpsearch":
        return open_storage(url, heartbeat_interval=heartbeat_interval, grace_period=grace_period)
    if setting not in POOL_KWARGS:
        raise ValueError(f"unknown setting {setting!r}; choose one of {', '.join(SETTINGS)}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)  # heartbeats are experimental in Optuna 5
        return RDBStorage(
            url,
            engine_kwargs={**HPSEARCH_ENGINE_KWARGS, **POOL_KWARGS[setting]},
            heartbeat_interval=heartbeat_interval,
            grace_period=grace_period,
            heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=3),
        )


def describe_error(error: BaseException) -> str:
    """The error's first line, and its cause's (Optuna's StorageInternalError hides the database's message)."""
    text = f"{type(error).__name__}: {error}".strip().splitlines()[0]
    cause = error.__cause__
    return text if cause is None else f"{text} <- {describe_error(cause)}"


class Heartbeat:
    """Records a trial's heartbeat now and every `interval` s until the block ends (as Study.optimize's thread)."""

    def __init__(self, storage: RDBStorage, trial_id: int, interval: int) -> None:
        self._storage, self._trial_id, self._interval = storage, trial_id, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self) -> None:
        while True:
            self._storage.record_heartbeat(self._trial_id)
            if self._stop.wait(self._interval):
                return

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def worker(index: int, url: str, setting: str, trials: int, duration: float, sleep: tuple[float, float],
           heartbeat: tuple[int, int], barrier, folder: str, stagger: float = 0.0) -> None:
    """Run up to `trials` trials (stopping asking after `duration` s); write folder/worker-<index>.json.

    Exits 1 after the first error (written to the JSON file), 0 otherwise.
    """
    stderr = open(os.path.join(folder, f"worker-{index}.stderr"), "w")
    os.dup2(stderr.fileno(), 2)
    sys.stderr = stderr
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.simplefilter("ignore", ExperimentalWarning)  # heartbeats, fail_stale_trials: experimental in Optuna 5
    # Optuna warns that heartbeats belong to Study.optimize; this loop does what optimize does.
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
    record = {"index": index, "asked": [], "told": [], "ask_s": [], "tell_s": [], "error": None, "end": None}
    rng = random.Random(index)
    study = storage = None
    try:
        config = load_study(template_path("paper"))
        distributions = config.distributions()
        storage = open_setting(url, setting, *heartbeat)
        study = optuna.load_study(study_name=STUDY_NAME, storage=storage, sampler=config.make_sampler())
    except Exception as error:  # noqa: BLE001 - recorded and counted by the parent
        record["error"] = describe_error(error)
    barrier.wait(timeout=START_TIMEOUT)  # a failed worker waits too, or the others would hang
    # Cluster workers start over seconds to minutes (queueing, image pulls, imports), not at one instant.
    time.sleep(rng.uniform(0.0, stagger))
    try:
        deadline = time.monotonic() + duration
        while study is not None and len(record["asked"]) < trials and time.monotonic() < deadline:
            optuna.storages.fail_stale_trials(study)
            start = time.perf_counter()
            trial = study.ask(distributions)
            record["ask_s"].append(time.perf_counter() - start)
            record["asked"].append(trial.number)
            with Heartbeat(storage, trial._trial_id, heartbeat[0]):
                time.sleep(rng.uniform(*sleep))
                value = rng.random()
            start = time.perf_counter()
            study.tell(trial, value)
            record["tell_s"].append(time.perf_counter() - start)
            record["told"].append(trial.number)
        record["end"] = time.time()
        if storage is not None:  # hpsearch's storage wraps an RDBStorage as .rdb
            getattr(storage, "rdb", storage).engine.dispose()
    except Exception as error:  # noqa: BLE001
        record["error"] = record["error"] or describe_error(error)
    Path(folder, f"worker-{index}.json").write_text(json.dumps(record))
    stderr.flush()
    sys.exit(1 if record["error"] else 0)


# ---------------------------------------------------------------- the run (the parent)


class ConnectionPoller:
    """Polls pg_stat_activity every `period` s: peak connections of `database`, and of all client backends."""

    def __init__(self, admin_url: str, database: str, period: float = 0.1) -> None:
        self._engine = _admin_engine(admin_url, pooled=True)
        self._database, self._period = database, period
        self.peak_database = self.peak_server = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        with self._engine.connect() as connection:
            while not self._stop.is_set():
                database, server = connection.exec_driver_sql(
                    "SELECT count(*) FILTER (WHERE datname = %(name)s),"
                    " count(*) FILTER (WHERE backend_type = 'client backend') FROM pg_stat_activity",
                    {"name": self._database},
                ).one()
                self.peak_database = max(self.peak_database, database)
                self.peak_server = max(self.peak_server, server - 1)  # not this poller's own connection
                self._stop.wait(self._period)

    def __enter__(self) -> ConnectionPoller:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._engine.dispose()


def _admin_engine(admin_url: str, pooled: bool = False) -> sqlalchemy.Engine:
    kwargs = {} if pooled else {"poolclass": sqlalchemy.pool.NullPool}
    return sqlalchemy.create_engine(admin_url, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 10}, **kwargs)


def fresh_database(admin_url: str) -> tuple[str, str]:
    """(name, URL) of a new empty database on the admin URL's server."""
    name = f"hpsearch_bench_{secrets.token_hex(6)}"
    engine = _admin_engine(admin_url)
    with engine.connect() as connection:
        connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    return name, make_url(admin_url).set(database=name).render_as_string(hide_password=False)


def drop_database(admin_url: str, name: str) -> None:
    with _admin_engine(admin_url).connect() as connection:
        connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def run(url: str, *, workers: int, setting: str, trials: int = 40, duration: float = 90.0,
        sleep: tuple[float, float] = (0.2, 1.0), heartbeat: tuple[int, int] = (1, 30), stagger: float = 0.0,
        admin_url: str | None = None, database: str | None = None) -> dict:
    """One run of `workers` workers on the empty database `url`; returns figures and checks.

    `admin_url` and `database` (the database's name) turn on the connection poller.
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        creator = RDBStorage(url, engine_kwargs={"poolclass": sqlalchemy.pool.NullPool})
        optuna.create_study(study_name=STUDY_NAME, storage=creator, direction="maximize")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["optuna", "sqlalchemy", "psycopg2", "hpsearch.storage", "hpsearch.config", "hpsearch._sampler"])
    barrier = context.Barrier(workers + 1)
    with tempfile.TemporaryDirectory(prefix="many-workers-") as folder:
        processes = [
            context.Process(target=worker, args=(i, url, setting, trials, duration, sleep, heartbeat, barrier, folder, stagger))
            for i in range(workers)
        ]
        poller = ConnectionPoller(admin_url, database) if admin_url and database else None
        if poller:
            poller.__enter__()
        try:
            started = time.monotonic()
            for process in processes:
                process.start()
            barrier.wait(timeout=START_TIMEOUT)
            go, startup = time.time(), time.monotonic() - started
            for process in processes:
                process.join(timeout=max(1.0, duration + 300 - (time.time() - go)))
                if process.exitcode is None:
                    process.kill()
                    process.join()
        finally:
            if poller:
                poller.__exit__()
        records = []
        for i, process in enumerate(processes):
            path = Path(folder, f"worker-{i}.json")
            record = json.loads(path.read_text()) if path.exists() else {"index": i, "asked": [], "told": [], "ask_s": [], "tell_s": [], "error": NO_RECORD, "end": None}
            record["exitcode"] = process.exitcode
            record["stderr"] = Path(folder, f"worker-{i}.stderr").read_text(errors="replace") if Path(folder, f"worker-{i}.stderr").exists() else ""
            records.append(record)
    return summarize(url, records, go, startup, setting=setting, workers=workers,
                     peaks=(poller.peak_database, poller.peak_server) if poller else (None, None))


def summarize(url: str, records: list[dict], go: float, startup: float, *, setting: str, workers: int,
              peaks: tuple[int | None, int | None]) -> dict:
    """Figures and bookkeeping checks of one run, from the workers' records and the database.
"""
    asked = [n for r in records for n in r["asked"]]
    told = [n for r in records for n in r["told"]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        reader = RDBStorage(url, engine_kwargs={"poolclass": sqlalchemy.pool.NullPool})
        stored = optuna.load_study(study_name=STUDY_NAME, storage=reader).get_trials(deepcopy=False)
    states = collections.Counter(t.state.name for t in stored)
    stored_numbers = {t.number for t in stored}
    ends = [r["end"] for r in records if r["end"] and r["told"]]
    elapsed = (max(ends) - go) if ends else float("nan")
    ask = [s * 1000 for r in records for s in r["ask_s"]]
    tell = [s * 1000 for r in records for s in r["tell_s"]]
    errors = [r["error"] for r in records if r["error"]]
    # A worker that died without a record says why on stderr (its last line).
    errors += [([line for line in r["stderr"].splitlines() if line.strip()] or ["no stderr"])[-1]
               for r in records if r["error"] == NO_RECORD]
    connection_errors = sum(bool(CONNECTION_ERROR.search(e)) for e in errors) + sum(
        len(CONNECTION_ERROR.findall(r["stderr"])) for r in records
    )
    checks = {
        "workers_exit_0": sum(r["exitcode"] == 0 for r in records) == len(records),
        "no_duplicate_asks": len(asked) == len(set(asked)),
        "every_ask_told_once": all(r["asked"] == r["told"] for r in records) and len(told) == len(set(told)),
        "database_holds_exactly_the_asked": stored_numbers == set(asked) and len(stored) == len(asked),
        "all_complete": states.get(TrialState.COMPLETE.name, 0) == len(stored) == len(told),
        "no_connection_errors": connection_errors == 0,
    }
    return {
        "setting": setting,
        "workers": workers,
        "trials": len(told),
        "seconds": elapsed,
        "trials_per_s": len(told) / elapsed if ends else 0.0,
        "startup_s": startup,
        "peak_connections_database": peaks[0],
        "peak_connections_server": peaks[1],
        "ask_ms": _quantiles(ask),
        "tell_ms": _quantiles(tell),
        "states": dict(states),
        "exit_codes": dict(collections.Counter(r["exitcode"] for r in records)),
        "connection_errors": connection_errors,
        "first_error": errors[0] if errors else None,
        "checks": checks,
        "ok": all(checks.values()),
    }


def _quantiles(values: list[float]) -> tuple[float, float]:
    """(median, 95th percentile), NaN for no values."""
    if len(values) < 2:
        return (values[0], values[0]) if values else (float("nan"), float("nan"))
    return statistics.median(values), statistics.quantiles(values, n=20)[18]


def benchmark(admin_url: str, *, workers: int, setting: str, through: str | None = None, **kwargs) -> dict:
    """`run` on a fresh database of the admin URL's server, dropped afterwards; `through` (HOST:PORT,
    e.g. PgBouncer's) is where the workers connect instead of the server."""
    name, url = fresh_database(admin_url)
    if through:
        host, port = through.rsplit(":", 1)
        url = make_url(url).set(host=host, port=int(port)).render_as_string(hide_password=False)
    try:
        return run(url, workers=workers, setting=setting, admin_url=admin_url, database=name, **kwargs)
    finally:
        drop_database(admin_url, name)


# ---------------------------------------------------------------- report


def machine(admin_url: str) -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    nproc = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    with _admin_engine(admin_url).connect() as connection:
        version = connection.exec_driver_sql("SHOW server_version").scalar()
        limit = connection.exec_driver_sql("SHOW max_connections").scalar()
        reserved = connection.exec_driver_sql("SHOW superuser_reserved_connections").scalar()
    return (f"nproc {nproc}, {cpu}; PostgreSQL {version}, max_connections {limit} "
            f"(superuser_reserved_connections {reserved}); Optuna {optuna.__version__}, SQLAlchemy {sqlalchemy.__version__}")


def table(results: list[dict]) -> str:
    lines = [
        "| setting | workers | trials | trials/s | peak conns (db / server) | ask ms p50 / p95 | tell ms p50 / p95 | conn errors | exit 0 | bookkeeping | states |",
        "|---|---:|---:|---:|---|---|---|---:|---|---|---|",
    ]
    for r in results:
        c = r["checks"]
        bookkeeping = "ok" if all(c[k] for k in ("no_duplicate_asks", "every_ask_told_once", "database_holds_exactly_the_asked", "all_complete")) else \
            ", ".join(k for k, v in c.items() if not v and k not in ("workers_exit_0", "no_connection_errors"))
        exits = f"{r['exit_codes'].get(0, 0)}/{r['workers']}"
        states = " ".join(f"{k} {v}" for k, v in sorted(r["states"].items()))
        lines.append(
            f"| {r['setting']} | {r['workers']} | {r['trials']} | {r['trials_per_s']:.1f} | "
            f"{r['peak_connections_database']} / {r['peak_connections_server']} | "
            f"{r['ask_ms'][0]:.0f} / {r['ask_ms'][1]:.0f} | {r['tell_ms'][0]:.0f} / {r['tell_ms'][1]:.0f} | "
            f"{r['connection_errors']} | {exits} | {bookkeeping} | {states} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[8, 32, 128])
    parser.add_argument("--settings", nargs="+", choices=SETTINGS, default=["hpsearch", "pool1", "nullpool"])
    parser.add_argument("--trials-per-worker", type=int, default=40)
    parser.add_argument("--duration", type=float, default=90.0, help="s after which workers stop asking")
    parser.add_argument("--heartbeat", type=int, default=1, help="heartbeat interval, s")
    parser.add_argument("--grace", type=int, default=30, help="heartbeat grace period, s")
    parser.add_argument("--objective", type=float, nargs=2, default=(0.2, 1.0), metavar=("LOW", "HIGH"),
                        help="the trivial objective sleeps uniformly in [LOW, HIGH] s")
    parser.add_argument("--stagger", type=float, default=0.0,
                        help="each worker waits uniformly in [0, STAGGER] s before its first ask")
    parser.add_argument("--postgres", default=DEFAULT_POSTGRES, help="admin URL (may CREATE and DROP DATABASE)")
    parser.add_argument("--through", metavar="HOST:PORT",
                        help="the workers connect here (a PgBouncer in front of the --postgres server)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    print(f"# {' '.join(sys.argv)}\n# {machine(args.postgres)}", flush=True)
    results = []
    for workers in args.workers:
        for setting in args.settings:
            result = benchmark(args.postgres, workers=workers, setting=setting, trials=args.trials_per_worker,
                               duration=args.duration, heartbeat=(args.heartbeat, args.grace),
                               sleep=tuple(args.objective), stagger=args.stagger, through=args.through)
            print(f"# {setting} x{workers}: {json.dumps(result)}", flush=True)
            results.append(result)
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
