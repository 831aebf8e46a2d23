"""PostgreSQL for tests: a fresh throw-away database per test, and a server of the tests' own.

Register with `pytest_plugins = ["pg"]` in tests/conftest.py; mark tests `@pytest.mark.postgres`.
`private_postgres` starts a second server (initdb in a temporary folder, a free port, password
authentication) for tests that restart it or cut its connections, or need a password checked.
The server is named by $HPSEARCH_TEST_POSTGRES_URL (an admin URL: it must be allowed to
CREATE and DROP DATABASE). An unreachable server fails the test instead of skipping it, so a
stopped server cannot pass CI silently.
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator

import pytest
import sqlalchemy
from sqlalchemy.engine import make_url

POSTGRES_URL_ENV = "HPSEARCH_TEST_POSTGRES_URL"
DEFAULT_POSTGRES_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/test"
START_HINT = "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"


def admin_url() -> str:
    """The URL of the server's admin database for tests."""
    return os.environ.get(POSTGRES_URL_ENV) or DEFAULT_POSTGRES_URL


def admin_engine() -> sqlalchemy.Engine:
    """An AUTOCOMMIT engine on the admin database: CREATE/DROP DATABASE refuse transactions."""
    return sqlalchemy.create_engine(
        admin_url(),
        isolation_level="AUTOCOMMIT",
        connect_args={"connect_timeout": 5},
        poolclass=sqlalchemy.NullPool,
    )


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """The URL of a new empty database `hpsearch_test_<hex>`, dropped after the test."""
    engine = admin_engine()
    name = f"hpsearch_test_{secrets.token_hex(6)}"
    problem = None
    try:
        with engine.connect() as connection:
            connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    except sqlalchemy.exc.OperationalError as exc:
        engine.dispose()
        problem = str(exc.orig).strip().splitlines()[0]
    if problem is not None:  # failed outside the except block: no chained driver traceback
        masked = make_url(admin_url()).render_as_string(hide_password=True)
        pytest.fail(
            f"PostgreSQL for tests is unreachable at {masked} ({problem}); "
            f"start it with `{START_HINT}` or point ${POSTGRES_URL_ENV} at a server",
            pytrace=False,
        )
    try:
        yield make_url(admin_url()).set(database=name).render_as_string(hide_password=False)
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


# ---------------------------------------------------------------- a server of the tests' own

PRIVATE_PASSWORD = "Pg-only-4-tests-7Qz"


class PrivateServer:
    """A PostgreSQL server the tests start themselves (initdb in a temporary folder, a free port,
    password authentication), so a test may restart it or cut its connections without
    disturbing the shared server. Binaries from `pg_config --bindir` or /usr/lib/postgresql/*/bin.
    """

    def __init__(self) -> None:
        found = shutil.which("pg_config")
        bindir = subprocess.run([found, "--bindir"], capture_output=True, text=True).stdout.strip() if found else ""
        if not os.path.isfile(os.path.join(bindir, "initdb")):
            bindir = (sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb")) or [""])[-1].rsplit("/", 1)[0]
        if not bindir:
            pytest.fail("PostgreSQL's initdb was not found (pg_config --bindir, /usr/lib/postgresql/*/bin)", pytrace=False)
        self.bindir = bindir
        self.folder = tempfile.mkdtemp(prefix="hpsearch-pg-")
        self.data = os.path.join(self.folder, "data")
        self.port = _free_port()
        self.password = PRIVATE_PASSWORD
        # PostgreSQL refuses to run as root: run it as the postgres user, in a folder it owns.
        self._as = []
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            os.chown(self.folder, user.pw_uid, user.pw_gid)
            self._as = ["runuser", "-u", "postgres", "--"]
        pwfile = os.path.join(self.folder, "password")
        with open(pwfile, "w") as file:
            file.write(self.password + "\n")
        if self._as:
            os.chown(pwfile, user.pw_uid, user.pw_gid)
        self._run("initdb", "-D", self.data, "-U", "postgres", "--auth=scram-sha-256", f"--pwfile={pwfile}", "--no-sync", "-E", "UTF8")
        self.start()

    def _run(self, program: str, *args: str) -> None:
        result = subprocess.run([*self._as, os.path.join(self.bindir, program), *args], capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            pytest.fail(f"{program} {' '.join(args)} failed: {result.stderr.strip() or result.stdout.strip()}", pytrace=False)

    def start(self) -> None:
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run("pg_ctl", "-D", self.data, "-o", options, "-l", os.path.join(self.folder, "log"), "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", self.data, "-m", mode, "-w", "stop")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg2://postgres:{self.password}@127.0.0.1:{self.port}/{database}"

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
        try:
            self.stop("immediate")
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="session")
def private_postgres() -> Iterator[PrivateServer]:
    """A PostgreSQL server of the tests' own with password authentication; stopped and deleted at the end."""
    server = PrivateServer()
    try:
        yield server
    finally:
        server.close()
