"""Ask+tell latency of NeighborhoodSampler against Optuna's RandomSampler (and TPESampler for context)
on a study that already holds many COMPLETE trials, in PostgreSQL and in a journal file.

The study has the paper's seven hyperparameters; each sampler gets its own copy of the study so
that no sampler sees another's trials. Latency is the median over the timed ask+tell cycles.

    python benchmarks/sampler_latency.py [--trials 10000] [--cycles 30] [--postgres postgresql+psycopg2://postgres@127.0.0.1:5432/test]
"""

from __future__ import annotations

import argparse
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
from optuna.distributions import FloatDistribution, IntDistribution

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


def fill(storage, name: str, trials: int, seed: int) -> None:
    """A study of `trials` COMPLETE trials with random values, written in bulk."""
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
    rng = np.random.default_rng(seed)
    made = []
    for number in range(trials):
        params = {k: draw(rng, d) for k, d in DISTRIBUTIONS.items()}
        made.append(optuna.trial.create_trial(params=params, distributions=DISTRIBUTIONS, value=(number * 7919 % 1000) / 1000))
    study.add_trials(made)


def draw(rng: np.random.Generator, distribution) -> float | int:
    low, high = distribution.low, distribution.high
    value = float(np.exp(rng.uniform(np.log(low), np.log(high)))) if distribution.log else float(rng.uniform(low, high))
    return int(round(value)) if isinstance(distribution, IntDistribution) else value


def latency(storage, name: str, sampler, cycles: int) -> float:
    study = optuna.load_study(study_name=name, storage=storage, sampler=sampler)
    times = []
    for cycle in range(cycles + 2):
        started = time.perf_counter()
        trial = study.ask(DISTRIBUTIONS)
        study.tell(trial, 0.5)
        if cycle >= 2:  # the first cycles warm caches
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10_000)
    parser.add_argument("--cycles", type=int, default=30)
    parser.add_argument("--tpe-cycles", type=int, default=5)
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
        "RandomSampler": (lambda: optuna.samplers.RandomSampler(seed=0), args.cycles),
        "NeighborhoodSampler": (lambda: NeighborhoodSampler(seed=0), args.cycles),
        "TPESampler": (lambda: optuna.samplers.TPESampler(seed=0), args.tpe_cycles),
    }
    print(f"{args.trials} COMPLETE trials per study; median ask+tell over {args.cycles} cycles ({args.tpe_cycles} for TPE); "
          f"optuna {optuna.__version__}; {platform.machine()}, {os.cpu_count()} cores")
    print("| storage | sampler | ask+tell (ms) | ÷ RandomSampler |")
    print("| --- | --- | --- | --- |")
    try:
        for label, storage_url in (("PostgreSQL", url), ("journal file", str(Path(folder) / "bench.journal"))):
            storage = open_storage(storage_url, heartbeat_interval=None)
            results = {}
            for index, (name, (make, cycles)) in enumerate(samplers.items()):
                started = time.perf_counter()
                fill(storage, name, args.trials, seed=index)
                filled = time.perf_counter() - started
                results[name] = latency(storage, name, make(), cycles)
                ratio = results[name] / results["RandomSampler"]
                print(f"| {label} | {name} | {results[name] * 1e3:.1f} | {ratio:.2f} |  (filled in {filled:.0f} s)", flush=True)
            neighborhood = results["NeighborhoodSampler"] / results["RandomSampler"]
            print(f"| {label} | NeighborhoodSampler ÷ RandomSampler | | **{neighborhood:.2f}** |", flush=True)
            if hasattr(storage, "engine"):
                storage.engine.dispose()
    finally:
        with admin.connect() as connection:
            connection.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))


if __name__ == "__main__":
    main()
