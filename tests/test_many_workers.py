"""benchmarks/many_workers.py at a tiny scale: real worker processes on a throw-away PostgreSQL database."""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path

import optuna
import pytest
import sqlalchemy
from optuna.exceptions import ExperimentalWarning
from pg import admin_url
from sqlalchemy.engine import make_url

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import many_workers  # noqa: E402

pytestmark = pytest.mark.postgres


@pytest.mark.slow
def test_four_workers_lose_and_duplicate_no_trial(postgres_url):
    result = many_workers.run(
        postgres_url, workers=4, setting="nullpool", trials=3, sleep=(0.05, 0.2), heartbeat=(1, 60),
        admin_url=admin_url(), database=make_url(postgres_url).database,
    )
    assert result["checks"] == {name: True for name in result["checks"]}, result
    assert result["exit_codes"] == {0: 4}
    assert result["trials"] == 12 and result["states"] == {"COMPLETE": 12}
    assert 1 <= result["peak_connections_database"] <= 4 * 2  # a worker's main and heartbeat threads at most
    assert result["ask_ms"][0] > 0 and result["tell_ms"][0] > 0


def test_bookkeeping_sees_an_untold_trial_and_a_duplicate(postgres_url):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        storage = optuna.storages.RDBStorage(postgres_url, engine_kwargs={"poolclass": sqlalchemy.pool.NullPool})
    study = optuna.create_study(study_name=many_workers.STUDY_NAME, storage=storage, direction="maximize")
    first, second = study.ask(), study.ask()
    study.tell(first, 1.0)
    now = time.time()
    record = {"ask_s": [0.01, 0.01], "tell_s": [0.01], "error": None, "end": now, "exitcode": 0, "stderr": ""}
    untold = dict(record, index=0, asked=[first.number, second.number], told=[first.number])
    result = many_workers.summarize(postgres_url, [untold], now - 1, 0.0, setting="nullpool", workers=1, peaks=(1, 1))
    assert not result["ok"]
    assert not result["checks"]["every_ask_told_once"] and not result["checks"]["all_complete"]
    assert result["states"] == {"COMPLETE": 1, "RUNNING": 1}

    twice = dict(record, index=1, asked=[first.number], told=[first.number])
    result = many_workers.summarize(postgres_url, [untold, twice], now - 1, 0.0, setting="nullpool", workers=2, peaks=(1, 1))
    assert not result["checks"]["no_duplicate_asks"]

    refused = dict(record, index=0, asked=[], told=[], exitcode=1, error="OperationalError: FATAL:  sorry, too many clients already")
    result = many_workers.summarize(postgres_url, [refused], now - 1, 0.0, setting="single", workers=1, peaks=(1, 1))
    assert result["connection_errors"] == 1 and not result["checks"]["workers_exit_0"]
