"""Ask+tell latency of NeighborhoodSampler against Optuna's RandomSampler (and TPESampler for context)
on a study that already holds many COMPLETE trials, in PostgreSQL and in a journal file.

The study has the paper's seven hyperparameters; each sampler gets its own copy of the study so
that no sampler sees another's trials. The copies are written in bulk (SQLAlchemy Core
executemany into Optuna's tables, then ANALYZE as autovacuum would; one batch of journal logs),
then read back through Optuna and checked. The samplers' ask+tell cycles are interleaved, one
cycle of each in turn, so that load from other processes hits them alike; latency is the median
over the timed cycles, after warm-up cycles that fill Optuna's caches (the first cycle, cold, is
shown too). TPE is slow at this size, so it gets fewer cycles (--tpe-cycles).

    python benchmarks/sampler_latency.py [--trials 10000] [--cycles 50] [--tpe-cycles 10] [--postgres postgresql+psycopg2://postgres@127.0.0.1:5432/test]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import optuna
import sqlalchemy
from optuna.distributions import FloatDistribution, IntDistribution, distribution_to_json
from optuna.storages import JournalStorage, RDBStorage
from optuna.storages._rdb import models
from optuna.storages.journal._storage import JournalOperation
from optuna.trial import TrialState

from hpsearch import NeighborhoodSampler
from hpsearch.storage import open_storage

DISTRIBUTIONS = {
    "dropout keep probability": FloatDistribution(0.3, 1.0),
    "l2 regularization weight": FloatDistribution(1e-7, 1e-1, log=True),
    "learning rate": FloatDistribution(1e-6, 1e-2, log=True),
    "beta1": FloatDistribution(0.5, 0.99),
    "beta2": FloatDistribution(0.9, 0.9999),
    "gradient clip": FloatDistribution(0.01, 100.0, log=True),
    "channels in first conv layer": IntDistribution(4, 64, log=True),
}
WARMUP_CYCLES = 2  # the first cycles of a study read all its trials into Optuna's caches


def random_trials(trials: int, seed: int) -> list[tuple[dict, float]]:
    """`trials` (params, value) pairs: random params, distinct values in [0, 1)."""
    rng = np.random.default_rng(seed)
    return [({k: draw(rng, d) for k, d in DISTRIBUTIONS.items()}, float(rng.random())) for _ in range(trials)]


def draw(rng: np.random.Generator, distribution) -> float | int:
    low, high = distribution.low, distribution.high
    value = float(np.exp(rng.uniform(np.log(low), np.log(high)))) if distribution.log else float(rng.uniform(low, high))
    return int(round(value)) if isinstance(distribution, IntDistribution) else value


def fill(storage, name: str, made: list[tuple[dict, float]]) -> None:
    """Create study `name` through Optuna, then write `made` as COMPLETE trials 0, 1, … in bulk."""
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
    rdb = getattr(storage, "rdb", storage)  # hpsearch's ReconnectingStorage keeps its RDBStorage as .rdb
    if isinstance(rdb, RDBStorage):
        fill_rdb(rdb, study._study_id, made)
    elif isinstance(storage, JournalStorage):
        fill_journal(storage, study._study_id, made)
    else:
        raise TypeError(f"no bulk fill for {type(storage).__name__}")


def fill_rdb(storage: RDBStorage, study_id: int, made: list[tuple[dict, float]]) -> None:
    """One transaction of executemany inserts into Optuna's trials, trial_params and trial_values, then ANALYZE."""
    trials = models.TrialModel.__table__
    now = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)  # Optuna stores naive UTC
    with storage.engine.begin() as connection:
        connection.execute(
            trials.insert(),
            [
                {"number": number, "study_id": study_id, "state": TrialState.COMPLETE, "datetime_start": now, "datetime_complete": now}
                for number in range(len(made))
            ],
        )
        query = sqlalchemy.select(trials.c.number, trials.c.trial_id).where(trials.c.study_id == study_id)
        trial_ids = dict(connection.execute(query).all())
        connection.execute(
            models.TrialParamModel.__table__.insert(),
            [
                {
                    "trial_id": trial_ids[number],
                    "param_name": name,
                    "param_value": DISTRIBUTIONS[name].to_internal_repr(value),
                    "distribution_json": distribution_to_json(DISTRIBUTIONS[name]),
                }
                for number, (params, _) in enumerate(made)
                for name, value in params.items()
            ],
        )
        connection.execute(
            models.TrialValueModel.__table__.insert(),
            [
                {"trial_id": trial_ids[number], "objective": 0, "value": value, "value_type": models.TrialValueModel.TrialValueType.FINITE}
                for number, (_, value) in enumerate(made)
            ],
        )
        # The planner's statistics, as autovacuum would refresh them after 10,000 new rows.
        connection.execute(sqlalchemy.text("ANALYZE trials, trial_params, trial_values"))


def fill_journal(storage: JournalStorage, study_id: int, made: list[tuple[dict, float]]) -> None:
    """One append_logs batch of CREATE_TRIAL logs, as JournalStorage.create_new_trial writes them."""
    worker_id = f"{uuid.uuid4()}-bulk-fill"
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="microseconds")
    distributions = {k: distribution_to_json(d) for k, d in DISTRIBUTIONS.items()}
    logs = [
        {
            "op_code": JournalOperation.CREATE_TRIAL,
            "worker_id": worker_id,
            "study_id": study_id,
            "datetime_start": now,
            "datetime_complete": now,
            "state": TrialState.COMPLETE,
            "value": value,
            "values": None,
            "distributions": distributions,
            "params": {k: DISTRIBUTIONS[k].to_internal_repr(v) for k, v in params.items()},
            "user_attrs": {},
            "system_attrs": {},
            "intermediate_values": {},
        }
        for params, value in made
    ]
    storage._backend.append_logs(logs)


def check(storage, name: str, made: list[tuple[dict, float]]) -> None:
    """Read the study back through Optuna: trial count, states, every trial's params and value, the best trial."""
    study = optuna.load_study(study_name=name, storage=storage)
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == len(made), f"{name}: {len(trials)} trials read back, {len(made)} written"
    for trial, (params, value) in zip(trials, made):
        assert trial.state == TrialState.COMPLETE and trial.value == value, f"{name}: trial {trial.number} differs"
        assert trial.params == params and trial.distributions == DISTRIBUTIONS, f"{name}: trial {trial.number} params differ"
    best = max(range(len(made)), key=lambda number: made[number][1])
    assert study.best_trial.number == best and study.best_trial.params == made[best][0], f"{name}: wrong best trial"


def latencies(studies: dict[str, optuna.Study], cycles: dict[str, int]) -> dict[str, tuple[float, float]]:
    """(first, median of the timed) ask+tell seconds per sampler, the samplers' cycles interleaved."""
    times: dict[str, list[float]] = {name: [] for name in studies}
    for cycle in range(WARMUP_CYCLES + max(cycles.values())):
        for name, study in studies.items():
            if cycle >= WARMUP_CYCLES + cycles[name]:
                continue
            started = time.perf_counter()
            trial = study.ask(DISTRIBUTIONS)
            study.tell(trial, 0.5)
            times[name].append(time.perf_counter() - started)
    return {name: (seconds[0], statistics.median(seconds[WARMUP_CYCLES:])) for name, seconds in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10_000)
    parser.add_argument("--cycles", type=int, default=50)
    parser.add_argument("--tpe-cycles", type=int, default=10)
    parser.add_argument("--postgres", default=os.environ.get("HPSEARCH_TEST_POSTGRES_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/test"))
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    admin = sqlalchemy.create_engine(args.postgres, isolation_level="AUTOCOMMIT")
    database = f"hpsearch_bench_{uuid.uuid4().hex[:8]}"
    with admin.connect() as connection:
        connection.execute(sqlalchemy.text(f'CREATE DATABASE "{database}"'))
    url = sqlalchemy.engine.make_url(args.postgres).set(database=database).render_as_string(hide_password=False)
    folder = tempfile.mkdtemp()
    samplers = {
        "RandomSampler": lambda: optuna.samplers.RandomSampler(seed=0),
        "NeighborhoodSampler": lambda: NeighborhoodSampler(seed=0),
        "TPESampler": lambda: optuna.samplers.TPESampler(seed=0),
    }
    cycles = {"RandomSampler": args.cycles, "NeighborhoodSampler": args.cycles, "TPESampler": args.tpe_cycles}
    print(f"{args.trials} COMPLETE trials per study; median ask+tell over {args.cycles} interleaved cycles "
          f"({args.tpe_cycles} for TPE, which is slow at this size) after {WARMUP_CYCLES} warm-up cycles; "
          f"optuna {optuna.__version__}; {platform.machine()}, {os.cpu_count()} cores")
    try:
        for label, storage_url in (("PostgreSQL", url), ("journal file", str(Path(folder) / "bench.journal"))):
            storage = open_storage(storage_url, heartbeat_interval=None)
            studies = {}
            for index, (name, make) in enumerate(samplers.items()):
                made = random_trials(args.trials, seed=index)
                started = time.perf_counter()
                fill(storage, name, made)
                filled = time.perf_counter() - started
                started = time.perf_counter()
                check(storage, name, made)
                checked = time.perf_counter() - started
                print(f"{label}: filled {name}'s study in {filled:.1f} s, read it back and checked it in {checked:.1f} s", flush=True)
                studies[name] = optuna.load_study(study_name=name, storage=storage, sampler=make())
            results = latencies(studies, cycles)
            random_median = results["RandomSampler"][1]
            print()
            print("| storage | sampler | ask+tell (ms) | ÷ RandomSampler | first ask+tell, cold (ms) |")
            print("| --- | --- | --- | --- | --- |")
            for name, (first, median) in results.items():
                print(f"| {label} | {name} | {median * 1e3:.1f} | {median / random_median:.2f} | {first * 1e3:.0f} |")
            print(flush=True)
            rdb = getattr(storage, "rdb", storage)
            if hasattr(rdb, "engine"):
                rdb.engine.dispose()
    finally:
        with admin.connect() as connection:
            connection.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
        admin.dispose()


if __name__ == "__main__":
    main()
