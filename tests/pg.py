"""PostgreSQL for tests: a fresh throw-away database per test.

Register with `pytest_plugins = ["pg"]` in tests/conftest.py; mark tests `@pytest.mark.postgres`.
The server is named by $HPSEARCH_TEST_POSTGRES_URL (an admin URL: it must be allowed to
CREATE and DROP DATABASE). An unreachable server fails the test instead of skipping it, so a
stopped server cannot pass CI silently.
"""

from __future__ import annotations

import os
import secrets
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
