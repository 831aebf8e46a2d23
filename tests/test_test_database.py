"""How the test session gets its PostgreSQL (tests/pg.py): the reachable server, a throwaway one,
a skip with one line naming the fix, or a failure under CI=true. No server is started here."""

from __future__ import annotations

import glob
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from pg import (
    DEFAULT_POSTGRES_URL,
    POSTGRES_BIN_ENV,
    POSTGRES_URL_ENV,
    Plan,
    _free_port,
    find_bindir,
    plan_private,
    plan_server,
    probe,
    running_under_ci,
)

REFUSED = 'connection to server at "127.0.0.1", port 5432 failed: Connection refused'
BINDIR = "/usr/lib/postgresql/15/bin"


def test_a_reachable_server_is_used_whatever_else_holds():
    for explicit in (False, True):
        for bindir in (None, BINDIR):
            for ci in (False, True):
                assert plan_server(DEFAULT_POSTGRES_URL, explicit, None, bindir, ci) == Plan("use")


def test_an_unreachable_default_server_with_binaries_gives_a_throwaway_server():
    assert plan_server(DEFAULT_POSTGRES_URL, False, REFUSED, BINDIR, ci=False) == Plan("throwaway")
    assert plan_server(DEFAULT_POSTGRES_URL, False, REFUSED, BINDIR, ci=True) == Plan("throwaway")


def test_no_server_and_no_binaries_skips_with_one_sentence_naming_the_fix():
    plan = plan_server(DEFAULT_POSTGRES_URL, False, REFUSED, None, ci=False)
    assert plan.action == "skip"
    assert plan.reason.startswith("PostgreSQL tests skipped: no server at postgresql+psycopg2://postgres@127.0.0.1:5432/test")
    for named in ("Connection refused", "no initdb found", "apt-get install postgresql", POSTGRES_URL_ENV, POSTGRES_BIN_ENV):
        assert named in plan.reason
    assert "\n" not in plan.reason


def test_under_ci_no_server_and_no_binaries_fails_instead_of_skipping():
    plan = plan_server(DEFAULT_POSTGRES_URL, False, REFUSED, None, ci=True)
    assert plan.action == "fail"
    assert plan.reason.startswith("PostgreSQL tests cannot run under CI=true: no server at")
    assert "apt-get install postgresql" in plan.reason


def test_a_named_server_that_is_unreachable_fails_and_is_never_replaced():
    url = "postgresql+psycopg2://admin:s3cret-Pw@db.example:6543/test"
    for bindir in (None, BINDIR):
        for ci in (False, True):
            plan = plan_server(url, True, "timeout expired", bindir, ci)
            assert plan.action == "fail"
            assert "db.example:6543" in plan.reason and "timeout expired" in plan.reason
            assert "s3cret-Pw" not in plan.reason


def test_the_tests_own_server_needs_the_binaries_and_shares_the_skip_line():
    assert plan_private(Plan("use"), BINDIR, ci=False) == Plan("throwaway")
    assert plan_private(Plan("use"), None, ci=False).action == "skip"
    assert plan_private(Plan("use"), None, ci=True).action == "fail"
    # No server and no binaries: the very same reason, so -ra folds both kinds of test into one line.
    shared = plan_server(DEFAULT_POSTGRES_URL, False, REFUSED, None, ci=False)
    assert plan_private(shared, None, ci=False) == shared


@pytest.mark.parametrize("value, expected", [("true", True), ("1", True), ("TRUE", True), ("", False), ("false", False), ("0", False)])
def test_ci_is_read_from_the_environment(value, expected):
    assert running_under_ci({"CI": value}) is expected
    assert running_under_ci({}) is False


def test_the_binaries_folder_from_the_environment_is_the_only_place_looked(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert find_bindir({POSTGRES_BIN_ENV: str(empty)}) is None
    full = tmp_path / "bin"
    full.mkdir()
    for program in ("initdb", "pg_ctl"):
        (full / program).write_text("#!/bin/sh\n")
        (full / program).chmod(stat.S_IRWXU)
    assert find_bindir({POSTGRES_BIN_ENV: str(full)}) == str(full)
    (full / "pg_ctl").unlink()
    assert find_bindir({POSTGRES_BIN_ENV: str(full)}) is None


def test_the_installed_binaries_are_found_where_debian_puts_them():
    installed = glob.glob("/usr/lib/postgresql/*/bin/initdb")
    if not installed:
        pytest.skip("no PostgreSQL binaries under /usr/lib/postgresql here")
    found = find_bindir({k: v for k, v in os.environ.items() if k != POSTGRES_BIN_ENV})
    assert found is not None and os.access(os.path.join(found, "initdb"), os.X_OK)


def test_probing_a_closed_port_says_why():
    problem = probe(f"postgresql+psycopg2://postgres@127.0.0.1:{_free_port()}/test")
    assert problem is not None and "refused" in problem.lower()


INNER_CONFTEST = '''
import pytest
from pg import plan_server, running_under_ci

pytest_plugins = ["pg"]


@pytest.fixture(scope="session")
def postgres_plan():
    """The decision as on a machine with no server on 127.0.0.1:5432."""
    return plan_server("postgresql+psycopg2://postgres@127.0.0.1:5432/test", False, "Connection refused", None, running_under_ci())
'''

INNER_TESTS = '''
def test_one(postgres_url):
    assert postgres_url.startswith("postgresql")


def test_two(postgres_url):
    assert postgres_url.startswith("postgresql")


def test_own_server(private_postgres):
    assert private_postgres
'''


def run_inner_session(tmp_path, ci: str) -> subprocess.CompletedProcess:
    """A real pytest session over three database tests in two files, with the binaries hidden."""
    (tmp_path / "conftest.py").write_text(INNER_CONFTEST)
    (tmp_path / "test_a.py").write_text(INNER_TESTS)
    (tmp_path / "test_b.py").write_text('def test_three(postgres_url):\n    assert postgres_url.startswith("postgresql")\n')
    empty = tmp_path / "no-binaries"
    empty.mkdir()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent), POSTGRES_BIN_ENV: str(empty), "CI": ci}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-ra", "-p", "no:cacheprovider", "-o", "addopts=", str(tmp_path)],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300,
    )


def test_skipped_database_tests_share_one_summary_line(tmp_path):
    result = run_inner_session(tmp_path, ci="")
    assert result.returncode == 0, result.stdout + result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("SKIPPED")]
    assert len(lines) == 1, result.stdout
    assert lines[0].startswith("SKIPPED [4] ") and "PostgreSQL tests skipped: no server at" in lines[0]
    assert "apt-get install postgresql" in lines[0]


def test_under_ci_the_database_tests_fail_rather_than_skip(tmp_path):
    result = run_inner_session(tmp_path, ci="true")
    assert result.returncode == 1, result.stdout + result.stderr
    summary = result.stdout.strip().splitlines()[-1]
    assert "4 errors" in summary and "skipped" not in summary
    assert "PostgreSQL tests cannot run under CI=true" in result.stdout
