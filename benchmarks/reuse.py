"""A trial's first training step with a reused traced step (model.NetworkCache) against a fresh one.

Runs `--trials` short trainings in one process, as a worker does, each with other run-time
values (learning rate, betas, clip norm, L2 weight, dropout) and the same network shape: once
with a NetworkCache (the first trial traces, the others reuse) and once without (every trial
builds and traces its own step). Per trial it records the seconds from `train`'s call to the
end of step 1 (build, trace and the step itself) and the mean of the later steps.

    python benchmarks/reuse.py                                  # quick-start scale: 8 channels, 32x32x16
    python benchmarks/reuse.py --channels 30 --patch 64x64x16   # paper scale
    KERAS_BACKEND=jax python benchmarks/reuse.py                # JAX (XLA compiles the step)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def trial_params(channels: int, count: int):
    """`count` Table-1 settings of one network shape: the run-time values differ, channels do not."""
    import numpy as np

    from model.params import Hyperparameters

    rng = np.random.default_rng(0)
    return [
        dataclasses.replace(
            Hyperparameters(channels=channels),
            learning_rate=float(10 ** rng.uniform(-4, -2.5)), beta1=float(rng.uniform(0.8, 0.95)),
            beta2=float(rng.uniform(0.99, 0.9999)), clip_norm=float(10 ** rng.uniform(-1, 1)),
            l2=float(10 ** rng.uniform(-5, -3)), keep_prob=float(rng.uniform(0.7, 0.95)),
        )
        for _ in range(count)
    ]


def run_trials(data, params_list, config, reuse: bool) -> list[dict]:
    """Train each setting in turn; per trial, the first step's and the mean later step's seconds."""
    from model import NetworkCache, train

    networks = NetworkCache() if reuse else None
    records = []
    for params in params_list:
        marks: list[float] = []
        started = time.perf_counter()
        train(params, data, config, networks=networks, on_step=lambda step, loss: marks.append(time.perf_counter()))
        steps = [b - a for a, b in zip(marks, marks[1:])]
        records.append({"first_step_s": marks[0] - started, "step_s": statistics.median(steps)})
    return records


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--channels", type=int, default=8)
    parser.add_argument("--patch", default="32x32x16")
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--steps", type=int, default=12, help="steps per trial (one evaluation, at the end)")
    args = parser.parse_args()
    patch = tuple(int(v) for v in args.patch.split("x"))

    import keras

    from model import TrainConfig, load_dataset, load_train_data, split_cases, write_dataset

    with tempfile.TemporaryDirectory() as folder:
        root = write_dataset(Path(folder) / "data", cases=6, shape=(patch[0] * 2, patch[1] * 2, patch[2]), seed=0)
        dataset = load_dataset(root)
        data = load_train_data(dataset, split_cases(dataset.case_names, seed=0, val_fraction=0.2, test_fraction=0.0))
    config = TrainConfig(steps=args.steps, eval_every=args.steps, patch_shape=patch, seed=0)
    params_list = trial_params(args.channels, args.trials)
    print(f"# {' '.join(sys.argv)}\n# {platform.processor() or platform.machine()}, Keras {keras.__version__} on "
          f"{keras.backend.backend()}; {args.channels} channels, patch {args.patch}, {args.trials} trials", flush=True)
    results = {}
    for reuse in (False, True):
        records = run_trials(data, params_list, config, reuse)
        results["reused" if reuse else "fresh"] = records
        print(f"# {'with' if reuse else 'without'} a NetworkCache: {json.dumps(records)}", flush=True)
    fresh = [r["first_step_s"] for r in results["fresh"]]
    reused = [r["first_step_s"] for r in results["reused"][1:]]  # the cache's first trial traces
    steady = statistics.median(r["step_s"] for k in results for r in results[k])
    print("| first step of a trial | seconds (median) | ÷ a steady step |\n|---|---:|---:|")
    print(f"| fresh (build + trace) | {statistics.median(fresh):.2f} | {statistics.median(fresh) / steady:.1f}× |")
    print(f"| reused (NetworkCache) | {statistics.median(reused):.2f} | {statistics.median(reused) / steady:.1f}× |")
    print(f"| steady step | {steady:.3f} | 1.0× |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
