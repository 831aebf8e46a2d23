"""Searches on one GPU: trials per hour with 1, 2, 4 and 8 workers, compile seconds, GPU memory per worker.

For each scale and worker count it runs `hpsearch launch --workers N --gpus G` as a user does, on a
fresh journal file in a temporary folder, and then reads the study. Every trial of a scale has the
same network (the channels are not searched and there is no pruner), so worker counts compare
packing, not the sampler's luck; the other six hyperparameters are searched as in the template.

  quickstart  hpsearch/studies/quickstart.yaml: 8 channels, 32×32×16 blocks, depth 3 (200 steps)
  paper       hpsearch/studies/paper.yaml: 30 channels, 64×64×16 blocks, depth 3, factorized
              (1000 steps here, not the paper's 5000; the issue's measurement used 1000)
  smoke       2 channels, 16×16×8 blocks, depth 1, 4 steps: checks this script on a CPU in a minute
              or two (its figures mean nothing)

Per run:

  trials/h      Σ over workers of 3600 ÷ the worker's mean trial seconds (Optuna's start to complete),
                which counts the compile of a worker's first trial and leaves out start-up and the tail
                where workers idle at the end; `× 1` divides by the one-worker figure.
  wall trials/h the run's complete trials ÷ (last complete − first start).
  compile s     XLA compile, tracing and lowering seconds per worker from JAX's log (JAX_LOG_COMPILES=1
                in the workers' logs), all shapes; a worker traces its training step once
                (model.NetworkCache) and reuses it for later trials. `share` divides their sum by the
                sum of the trials' seconds. TensorFlow logs no such lines: '-'.
  GPU MiB       the peak of each worker's memory in nvidia-smi's compute-apps list, median over the
                workers; where the list does not show the workers' pids (a container's pid
                namespace), the GPU's peak memory.used above its idle value ÷ workers ('≈').

XLA_PYTHON_CLIENT_PREALLOCATE=false for every run (unless set), so a lone worker's memory is what it
needs, not JAX's preallocated 75 %. A reused trial's first step against a steady step is
benchmarks/reuse.py's.

    KERAS_BACKEND=jax python benchmarks/gpu.py                        # both scales, 1 2 4 8 workers
    KERAS_BACKEND=jax python benchmarks/gpu.py --scales paper --workers 1 4 8 --steps 300 --trials-per-worker 2
    KERAS_BACKEND=jax python benchmarks/gpu.py --smoke                # on a CPU: 1 and 2 workers

It needs no install of hpsearch (the repository root goes on the workers' PYTHONPATH), but Keras, JAX
(or TensorFlow) and hpsearch's other dependencies. Goals (issue 20): the best packing ≥ 2.5× one
worker's trials per hour at paper scale; compile ≤ 5 % of a paper-scale trial.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CHANNELS = "channels in first conv layer"
SMOKE = {
    "data": {"synth": {"cases": 4, "shape": "32x32x8", "seed": 0}, "split": {"seed": 0, "val_fraction": 0.25, "test_fraction": 0.0}},
    "training": {"steps": 4, "eval_every": 4, "patch": "16x16x8", "batch": 2, "depth": 1},
    "seed": 0,
    "start": {CHANNELS: 2, "learning rate": 3.0e-3},
    "search_space": {"learning rate": {"low": 1.0e-4, "high": 1.0e-2, "log": True}},
}
DEFAULT_STEPS = {"quickstart": 200, "paper": 1000, "smoke": 4}
# JAX's log lines (jax_log_compiles) for the stages of a compile; the seconds are summed.
COMPILE_LINE = re.compile(r"Finished (?:tracing|jaxpr to MLIR|XLA compilation)\b.* in ([0-9.]+(?:e[-+]?[0-9]+)?) sec")


def study_document(scale: str, *, name: str, data_dir: Path, steps: int, trials: int) -> dict:
    """The benchmark's study: the template of `scale` with fixed channels, no pruner, `steps` and `trials`."""
    if scale == "smoke":
        document = json.loads(json.dumps(SMOKE))
    else:
        from hpsearch.templates import template_path

        document = yaml.safe_load(template_path(scale).read_text())
    document["study"] = name
    document["data"]["path"] = str(data_dir / scale)  # written on first use from `synth`, shared by the runs
    training = document["training"]
    training["steps"] = steps
    training["eval_every"] = min(training["eval_every"], steps)
    document["trials"] = trials
    document.pop("pruner", None)
    document["search_space"].pop(CHANNELS, None)  # one network shape: every trial costs the same
    return document


class GpuMemory:
    """Polls nvidia-smi every second while a run goes on: per-pid peaks and the GPUs' total peak (MiB)."""

    def __init__(self) -> None:
        self.available = shutil.which("nvidia-smi") is not None
        self.idle = self._total() if self.available else 0.0
        self.per_pid: dict[int, float] = {}
        self.peak_total = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _query(self, *args: str) -> list[list[str]]:
        try:
            out = subprocess.run(["nvidia-smi", *args, "--format=csv,noheader,nounits"], capture_output=True,
                                 text=True, timeout=20).stdout
        except (OSError, subprocess.SubprocessError):
            return []
        return [[field.strip() for field in line.split(",")] for line in out.splitlines() if line.strip()]

    def _total(self) -> float:
        return sum(float(row[0]) for row in self._query("--query-gpu=memory.used") if row[0].replace(".", "").isdigit())

    def _poll(self) -> None:
        while not self._stop.wait(1.0):
            for row in self._query("--query-compute-apps=pid,used_memory"):
                if len(row) == 2 and row[0].isdigit() and row[1].replace(".", "").isdigit():
                    self.per_pid[int(row[0])] = max(self.per_pid.get(int(row[0]), 0.0), float(row[1]))
            self.peak_total = max(self.peak_total, self._total())

    def __enter__(self) -> GpuMemory:
        if self.available:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self.available:
            self._thread.join(timeout=30)

    def per_worker(self, pids: set[int], workers: int) -> str:
        """The median of the workers' peaks, or the GPUs' peak above idle ÷ workers ('≈'); '-' without nvidia-smi."""
        if not self.available:
            return "-"
        seen = [self.per_pid[pid] for pid in pids if pid in self.per_pid]
        if seen:
            return f"{statistics.median(seen):.0f}"
        return f"≈{(self.peak_total - self.idle) / workers:.0f}"


def run(scale: str, workers: int, args, folder: Path) -> dict:
    """One `hpsearch launch` of `workers` workers on the scale's study; what the study and logs show."""
    import optuna
    from optuna.trial import TrialState

    from hpsearch.storage import open_storage
    from hpsearch.vocabulary import WORKER_PID_ATTR

    run_dir = folder / f"{scale}-{workers}w"
    name = f"gpu-{scale}-{workers}w"
    steps = args.steps or DEFAULT_STEPS[scale]
    study_file = run_dir / f"{name}.yaml"
    run_dir.mkdir(parents=True)
    document = study_document(scale, name=name, data_dir=folder / "data", steps=steps, trials=workers * args.trials_per_worker)
    study_file.write_text(yaml.safe_dump(document, sort_keys=False))
    journal = run_dir / "study.journal"
    command = [sys.executable, "-m", "hpsearch.cli", "launch", "--workers", str(workers), "--study", str(study_file),
               "--storage", str(journal)]
    if args.gpu is not None:
        command += ["--gpus", args.gpu]
    env = {**os.environ, "JAX_LOG_COMPILES": "1", "TF_CPP_MIN_LOG_LEVEL": "2",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    started = time.monotonic()
    with GpuMemory() as memory:
        done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=run_dir, timeout=args.timeout)
    seconds = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} exited {done.returncode}:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    study = optuna.load_study(study_name=name, storage=open_storage(str(journal), heartbeat_interval=None))
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    durations: dict[int, list[float]] = {}
    for trial in complete:
        pid = trial.user_attrs[WORKER_PID_ATTR]
        durations.setdefault(pid, []).append((trial.datetime_complete - trial.datetime_start).total_seconds())
    wall = (max(t.datetime_complete for t in complete) - min(t.datetime_start for t in complete)).total_seconds()
    compile_seconds = []
    for log in sorted(run_dir.rglob("w*.log")):
        compile_seconds.append(sum(float(m.group(1)) for m in COMPILE_LINE.finditer(log.read_text(errors="replace"))))
    trial_seconds = [s for values in durations.values() for s in values]
    return {
        "scale": scale, "workers": workers, "steps": steps, "trials": len(complete), "launch_s": round(seconds, 1),
        "trials_per_hour": sum(3600 / statistics.mean(values) for values in durations.values()),
        "wall_trials_per_hour": len(complete) * 3600 / wall,
        "median_trial_s": statistics.median(trial_seconds),
        "compile_s_per_worker": statistics.mean(compile_seconds) if any(compile_seconds) else None,
        "compile_share": sum(compile_seconds) / sum(trial_seconds) if any(compile_seconds) else None,
        "gpu_mib_per_worker": memory.per_worker(set(durations), workers),
    }


def print_table(results: list[dict]) -> None:
    print("| scale | workers | trials | median trial s | trials/h | × 1 | wall trials/h | compile s per worker | share | GPU MiB per worker |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    one = {r["scale"]: r["trials_per_hour"] for r in results if r["workers"] == 1}
    for r in results:
        ratio = f"{r['trials_per_hour'] / one[r['scale']]:.2f}×" if r["scale"] in one else "-"
        compile_s = "-" if r["compile_s_per_worker"] is None else f"{r['compile_s_per_worker']:.1f}"
        share = "-" if r["compile_share"] is None else f"{100 * r['compile_share']:.1f} %"
        print(f"| {r['scale']} | {r['workers']} | {r['trials']} | {r['median_trial_s']:.1f} | {r['trials_per_hour']:.0f} | "
              f"{ratio} | {r['wall_trials_per_hour']:.0f} | {compile_s} | {share} | {r['gpu_mib_per_worker']} |", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scales", nargs="+", choices=("quickstart", "paper", "smoke"), default=["quickstart", "paper"])
    parser.add_argument("--workers", nargs="+", type=int, default=[1, 2, 4, 8], help="worker counts, all on one GPU")
    parser.add_argument("--steps", type=int, help="training steps per trial (default: quickstart 200, paper 1000)")
    parser.add_argument("--trials-per-worker", type=int, default=3, help="complete trials per worker (the first compiles)")
    parser.add_argument("--gpu", help="the GPU to share (index or UUID; default: 0 where nvidia-smi finds a GPU, else the CPU)")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per launch")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--smoke", action="store_true", help="--scales smoke --workers 1 2 --trials-per-worker 2")
    args = parser.parse_args()
    if args.smoke:
        args.scales, args.workers, args.trials_per_worker = ["smoke"], [1, 2], 2
    from hpsearch.devices import detect_gpus

    gpus = detect_gpus()
    if args.gpu is None and gpus:
        args.gpu = gpus[0].index
    import keras

    device = f"GPU {args.gpu}" if args.gpu is not None else f"CPU ({os.cpu_count()} cores)"
    print(f"# {' '.join(sys.argv)}\n# {platform.node()}: {device}; Keras {keras.__version__} on {keras.backend.backend()}; "
          f"{args.trials_per_worker} trials per worker", flush=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="hpsearch-gpu-") as folder:
        for scale in args.scales:
            for workers in args.workers:
                results.append(run(scale, workers, args, Path(folder)))
                print(f"# {json.dumps(results[-1])}", flush=True)
    print_table(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
