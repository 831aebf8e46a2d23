"""PostgreSQL for tests: a fresh throw-away database per test, and servers of the tests' own.

Register with `pytest_plugins = ["pg"]` in tests/conftest.py; mark tests `@pytest.mark.postgres`.
The database tests use the server named by $HPSEARCH_TEST_POSTGRES_URL (an admin URL: it must be
allowed to CREATE and DROP DATABASE), by default the local one on 127.0.0.1:5432. Where the default
server is not reachable they start a throwaway server for the session (initdb in a temporary
folder, a free port) from the installed binaries; where there are no binaries either they are
skipped with one summary line naming the fix, or fail under CI=true so a bare CI machine cannot
pass silently. An explicitly named server that is unreachable always fails.
`private_postgres` starts a second server (password authentication) for tests that restart it or
cut its connections, or need a password checked.
"""

from __future__ import annotations

import atexit
import glob
import os
import pwd
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import pytest
import sqlalchemy
from sqlalchemy.engine import make_url

POSTGRES_URL_ENV = "HPSEARCH_TEST_POSTGRES_URL"
POSTGRES_BIN_ENV = "HPSEARCH_TEST_POSTGRES_BIN"
DEFAULT_POSTGRES_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/test"
START_HINT = "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"
INSTALL_HINT = f"apt-get install postgresql or set ${POSTGRES_URL_ENV}"
SKIP_PREFIX = "PostgreSQL tests skipped:"
BINDIR_PLACES = f"${POSTGRES_BIN_ENV}, pg_config --bindir, /usr/lib/postgresql/*/bin"


def admin_url() -> str:
    """The URL of the server's admin database for tests."""
    return os.environ.get(POSTGRES_URL_ENV) or DEFAULT_POSTGRES_URL


def admin_engine(url: str | None = None) -> sqlalchemy.Engine:
    """An AUTOCOMMIT engine on the admin database: CREATE/DROP DATABASE refuse transactions."""
    return sqlalchemy.create_engine(
        url or admin_url(),
        isolation_level="AUTOCOMMIT",
        connect_args={"connect_timeout": 5},
        poolclass=sqlalchemy.NullPool,
    )


def masked(url: str) -> str:
    """`url` with its password shown as ***."""
    return make_url(url).render_as_string(hide_password=True)


# ---------------------------------------------------------------- which server the session uses


def running_under_ci(environ: Mapping[str, str] = os.environ) -> bool:
    """True where $CI says so (GitHub, GitLab and most CI services set CI=true)."""
    return environ.get("CI", "").strip().lower() in {"1", "true", "yes", "on"}


def find_bindir(environ: Mapping[str, str] = os.environ) -> str | None:
    """The folder holding initdb and pg_ctl, or None: $HPSEARCH_TEST_POSTGRES_BIN alone where set
    (an empty folder hides the binaries), else `pg_config --bindir`, else the newest
    /usr/lib/postgresql/<version>/bin (Debian keeps them off PATH)."""

    def usable(folder: str) -> bool:
        return all(os.access(os.path.join(folder, program), os.X_OK) for program in ("initdb", "pg_ctl"))

    if POSTGRES_BIN_ENV in environ:
        folder = environ[POSTGRES_BIN_ENV]
        return folder if usable(folder) else None
    pg_config = shutil.which("pg_config")
    if pg_config:
        folder = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True).stdout.strip()
        if folder and usable(folder):
            return folder
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda f: [int(n) for n in re.findall(r"\d+", f)])
    return next((folder for folder in reversed(versions) if usable(folder)), None)


def probe(url: str) -> str | None:
    """None where `url` accepts a connection, else the driver's first line saying why not."""
    engine = admin_engine(url)
    try:
        with engine.connect():
            return None
    except sqlalchemy.exc.OperationalError as exc:
        return str(exc.orig).strip().splitlines()[0]
    finally:
        engine.dispose()


@dataclass(frozen=True)
class Plan:
    """What the session does for its database tests: `use` the named server, start a `throwaway`
    one, `skip` them, or `fail` them; `reason` is the one sentence shown for skip and fail."""

    action: str
    reason: str = ""


def plan_server(url: str, explicit: bool, problem: str | None, bindir: str | None, ci: bool) -> Plan:
    """Decide from the probe of `url` (`problem` None: reachable), whether the user named `url`
    ($HPSEARCH_TEST_POSTGRES_URL set), the binaries folder found and whether this is CI."""
    if problem is None:
        return Plan("use")
    if explicit:  # a server the user named is never silently replaced by another
        return Plan(
            "fail",
            f"PostgreSQL for tests is unreachable at {masked(url)} ({problem}); "
            f"start it or point ${POSTGRES_URL_ENV} at a reachable server",
        )
    if bindir is not None:
        return Plan("throwaway")
    missing = f"no server at {masked(url)} ({problem}) and no initdb found ({BINDIR_PLACES})"
    if ci:
        return Plan("fail", f"PostgreSQL tests cannot run under CI=true: {missing}; {INSTALL_HINT}")
    return Plan("skip", f"{SKIP_PREFIX} {missing}; {INSTALL_HINT}")


def plan_private(shared: Plan, bindir: str | None, ci: bool) -> Plan:
    """Decide for the tests' own server, which needs the binaries whatever `shared` is; where the
    shared server is missing too, the shared reason is reused so pytest folds both into one line."""
    if bindir is not None:
        return Plan("throwaway")
    if shared.action in ("skip", "fail"):
        return shared
    missing = f"no initdb found ({BINDIR_PLACES}) for the tests that start a server of their own"
    hint = f"apt-get install postgresql or set ${POSTGRES_BIN_ENV} to the folder holding initdb and pg_ctl"
    if ci:
        return Plan("fail", f"PostgreSQL tests cannot run under CI=true: {missing}; {hint}")
    return Plan("skip", f"{SKIP_PREFIX} {missing}; {hint}")


def give_up(plan: Plan) -> None:
    """Skip or fail the current test with `plan.reason`."""
    if plan.action == "skip":
        pytest.skip(plan.reason)
    pytest.fail(plan.reason, pytrace=False)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[pytest.TestReport]:
    """Report the database skips at this file rather than at each test, so that the -ra summary
    folds them into one line: they share one cause and one fix."""
    report = yield
    if report.skipped and isinstance(report.longrepr, tuple) and SKIP_PREFIX in str(report.longrepr[2]):
        report.longrepr = (__file__, None, report.longrepr[2])
    return report


@pytest.fixture(scope="session")
def postgres_plan() -> Plan:
    """The session's decision for the shared server (probed once)."""
    url = admin_url()
    return plan_server(url, bool(os.environ.get(POSTGRES_URL_ENV)), probe(url), find_bindir(), running_under_ci())


@pytest.fixture(scope="session")
def postgres_server_url(postgres_plan: Plan) -> Iterator[str]:
    """The admin URL of the session's server, exported as $HPSEARCH_TEST_POSTGRES_URL so worker
    processes the tests start see the same server; a throwaway server is stopped at the end."""
    if postgres_plan.action in ("skip", "fail"):
        give_up(postgres_plan)
    server = LocalServer(find_bindir()) if postgres_plan.action == "throwaway" else None
    url = server.url() if server else admin_url()
    before = os.environ.get(POSTGRES_URL_ENV)
    os.environ[POSTGRES_URL_ENV] = url
    try:
        yield url
    finally:
        if before is None:
            os.environ.pop(POSTGRES_URL_ENV, None)
        else:
            os.environ[POSTGRES_URL_ENV] = before
        if server:
            server.close()


@pytest.fixture
def postgres_url(postgres_server_url: str) -> Iterator[str]:
    """The URL of a new empty database `hpsearch_test_<hex>`, dropped after the test."""
    engine = admin_engine(postgres_server_url)
    name = f"hpsearch_test_{secrets.token_hex(6)}"
    problem = None
    try:
        with engine.connect() as connection:
            connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    except sqlalchemy.exc.OperationalError as exc:
        engine.dispose()
        problem = str(exc.orig).strip().splitlines()[0]
    if problem is not None:  # failed outside the except block: no chained driver traceback
        pytest.fail(
            f"PostgreSQL for tests is unreachable at {masked(postgres_server_url)} ({problem}); "
            f"start it with `{START_HINT}` or point ${POSTGRES_URL_ENV} at a server",
            pytrace=False,
        )
    try:
        yield make_url(postgres_server_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with engine.connect() as connection:
            # Pools of the code under test may still hold connections; FORCE (PG13+) ends them.
            connection.exec_driver_sql(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = %(name)s AND pid <> pg_backend_pid()",
                {"name": name},
            )
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        engine.dispose()


# ---------------------------------------------------------------- servers of the tests' own

PRIVATE_PASSWORD = "Pg-only-4-tests-7Qz"


class LocalServer:
    """A PostgreSQL server the tests start themselves: initdb in a temporary folder, a free port on
    127.0.0.1, the socket in that folder; trust authentication, or scram-sha-256 with `password`.
    PostgreSQL refuses to run as root, so under root it runs as the `postgres` (else `nobody`) user.
    """

    def __init__(self, bindir: str, password: str | None = None) -> None:
        self.bindir = bindir
        self.password = password
        self.folder = tempfile.mkdtemp(prefix="hpsearch-pg-")
        self.data = os.path.join(self.folder, "data")
        self.port = _free_port()
        self._closed = False
        self._user = _unprivileged_user() if os.geteuid() == 0 else None
        if self._user:
            os.chown(self.folder, self._user.pw_uid, self._user.pw_gid)
        atexit.register(self.close)  # also stopped where pytest exits before the fixture's teardown
        self._watchdog: subprocess.Popen | None = None
        auth = ["--auth=trust"]
        if password is not None:
            pwfile = os.path.join(self.folder, "password")
            with open(pwfile, "w") as file:
                file.write(password + "\n")
            if self._user:
                os.chown(pwfile, self._user.pw_uid, self._user.pw_gid)
            auth = ["--auth=scram-sha-256", f"--pwfile={pwfile}"]
        try:
            self._run("initdb", "-D", self.data, "-U", "postgres", *auth, "--no-sync", "-E", "UTF8")
            self.start()
            self._watchdog = self._watch()
        except BaseException:
            self.close()
            raise

    def _switch(self) -> dict:
        return {"user": self._user.pw_uid, "group": self._user.pw_gid, "extra_groups": []} if self._user else {}

    def _watch(self) -> subprocess.Popen:
        """A shell that stops the server and deletes its folder once this process is gone, so a
        session killed by a timeout (no teardown, no atexit) leaves no server behind."""
        script = 'while kill -0 "$0" 2>/dev/null || [ -d "/proc/$0" ]; do sleep 2; done; "$1" -D "$2" -m immediate -w stop; rm -rf "$3"'
        pg_ctl = os.path.join(self.bindir, "pg_ctl")
        return subprocess.Popen(
            ["sh", "-c", script, str(os.getpid()), pg_ctl, self.data, self.folder],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            cwd=self.folder, start_new_session=True, **self._switch(),
        )

    def _run(self, program: str, *args: str) -> None:
        switch = self._switch()
        result = subprocess.run(
            [os.path.join(self.bindir, program), *args], capture_output=True, text=True, timeout=120, cwd=self.folder, **switch
        )
        if result.returncode != 0:
            log = os.path.join(self.folder, "log")
            tail = open(log).read().strip().splitlines()[-3:] if os.path.exists(log) else []
            detail = " | ".join([result.stderr.strip() or result.stdout.strip(), *tail])
            pytest.fail(f"{program} {' '.join(args)} failed: {detail}", pytrace=False)

    def start(self) -> None:
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run("pg_ctl", "-D", self.data, "-o", options, "-l", os.path.join(self.folder, "log"), "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", self.data, "-m", mode, "-w", "stop")

    def url(self, database: str = "postgres") -> str:
        secret = f":{self.password}" if self.password is not None else ""
        return f"postgresql+psycopg2://postgres{secret}@127.0.0.1:{self.port}/{database}"

    def engine(self) -> sqlalchemy.Engine:
        return sqlalchemy.create_engine(self.url(), isolation_level="AUTOCOMMIT", poolclass=sqlalchemy.NullPool)

    def create_database(self) -> str:
        """A new empty database; returns its URL (with the password)."""
        name = f"hpsearch_test_{secrets.token_hex(6)}"
        with self.engine().connect() as connection:
            connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def terminate_connections(self, database: str) -> int:
        """End every session on `database` (pg_terminate_backend); returns how many."""
        with self.engine().connect() as connection:
            ended = connection.exec_driver_sql(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %(name)s AND pid <> pg_backend_pid()",
                {"name": database},
            ).fetchall()
        return len(ended)

    def close(self) -> None:
        """Stop the server (immediate) and delete its folder; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        if self._watchdog is not None:
            self._watchdog.kill()
            self._watchdog.wait()
        try:
            if os.path.exists(os.path.join(self.data, "postmaster.pid")):
                self._run("pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)


def _unprivileged_user() -> pwd.struct_passwd:
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    pytest.fail("PostgreSQL refuses to run as root and neither a postgres nor a nobody user exists; "
                "run the tests as an unprivileged user or add one with `useradd postgres`", pytrace=False)


def _free_port() -> int:
    with socket.socket() as probe_socket:
        probe_socket.bind(("127.0.0.1", 0))
        return probe_socket.getsockname()[1]


@pytest.fixture(scope="session")
def private_postgres(postgres_plan: Plan) -> Iterator[LocalServer]:
    """A PostgreSQL server of the tests' own with password authentication; stopped and deleted at the end."""
    bindir = find_bindir()
    plan = plan_private(postgres_plan, bindir, running_under_ci())
    if plan.action != "throwaway":
        give_up(plan)
    server = LocalServer(bindir, password=PRIVATE_PASSWORD)
    try:
        yield server
    finally:
        server.close()
