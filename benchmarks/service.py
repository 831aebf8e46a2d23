"""Service performance of `hpsearch launch` on the quick-start study: three goals of the performance issue.

1. Launch to first training step: from `hpsearch launch` starting (the moment this script starts
   the process) to the end of the first training step of the first trial, split into parts.
   Warm: the dataset is written before the launches (its write time is printed separately; a
   cold launch adds it) and TensorFlow is imported once beforehand so its files are in the page
   cache.
2. Service overhead: the share of each worker's wall time (process start to exit) spent outside
   training steps and whole-volume validation, with TensorFlow's one-time import shown apart.
   "Inside" is the compiled training-step calls with the patch sampling that feeds them, and
   validation; everything else (imports, model build, tracing, storage calls, the sampler,
   saving the model artifact, waiting) is overhead, broken down by part.
3. 2 workers vs 1: COMPLETE trials per hour of `launch --workers 2` ÷ `launch --workers 1`,
   each over the same number of trials; trials per hour = trials ÷ the launch's wall time.

Every launch gets a fresh journal file, log and model folder in a temporary folder; the study
file is a copy of studies/quickstart.yaml with only its data path changed (to a dataset in that
folder). The figures come from the timing attributes hpsearch's objective records on each trial
(ask_seconds, prepare_seconds, train_seconds, setup_seconds, first_step_seconds, step_seconds,
eval_seconds, save_seconds; see hpsearch/objective.py) and the `hpsearch worker timing:` lines
in the worker logs (start-up phases and exit, seconds since the epoch).

    python benchmarks/service.py                          # 6 trials; 1 worker, then 2; one launch each
    python benchmarks/service.py --trials 6 --repeats 2   # the recorded measurement
    python benchmarks/service.py --trials 2 --workers 1   # a quick check of the script
    python benchmarks/service.py --no-pruner              # every trial runs to the end: the same work per launch

Run it on idle cores: the 2-vs-1 ratio means nothing while other work shares the CPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hpsearch.config import load_study  # noqa: E402
from hpsearch.worker import TIMING_PREFIX, ensure_dataset  # noqa: E402

LAUNCH_GOAL_SECONDS = 15.0
OVERHEAD_GOAL = 0.02
SPEEDUP_GOAL = 1.0
TF_IMPORT = "TensorFlow import (one-time)"
BUSY_SAMPLE_SECONDS = 2.0
BUSY_LIMIT = 0.15  # above this share of the cores busy before the launches, the figures are marked unreliable


@dataclasses.dataclass
class Launch:
    """One `hpsearch launch` run and what it left behind."""

    workers: int
    folder: Path
    started: float  # wall clock (s since the epoch) just before the process started
    ended: float
    trials: list  # optuna FrozenTrial
    runs: dict[int, dict]  # worker pid -> its timing stamps (s since the epoch)

    @property
    def seconds(self) -> float:
        return self.ended - self.started

    def complete(self) -> list:
        from optuna.trial import TrialState

        return [t for t in self.trials if t.state == TrialState.COMPLETE]


def busy_share(seconds: float = BUSY_SAMPLE_SECONDS) -> float:
    """Share of all cores' time (0–1) spent outside idle over the next `seconds`, from /proc/stat.

    Unlike the load average, which decays over minutes, it tells whether other work is running now.
    Where /proc/stat is missing (not Linux), the 1-minute load average per core stands in.
    """

    def read() -> tuple[int, int]:
        fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        idle = fields[3] + fields[4]  # idle and iowait
        return sum(fields[:8]) - idle, sum(fields[:8])

    try:
        busy0, total0 = read()
    except OSError:
        return os.getloadavg()[0] / (os.cpu_count() or 1)
    time.sleep(seconds)
    busy1, total1 = read()
    return (busy1 - busy0) / max(total1 - total0, 1)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{cores} cores of {cpu}, Python {platform.python_version()}"


def write_study_file(source: Path, folder: Path, data_path: Path, *, pruner: bool = True) -> Path:
    """A copy of the study file `source` in `folder` whose dataset is `data_path`, without its pruner if not `pruner`."""
    document = yaml.safe_load(source.read_text(encoding="utf-8"))
    document["data"]["path"] = str(data_path)
    if not pruner:
        document.pop("pruner", None)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / source.name
    path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    return path


def write_dataset(study_file: Path) -> float:
    """Write the study's synthetic dataset (what a cold launch does first); seconds taken."""
    started = time.perf_counter()
    ensure_dataset(load_study(study_file))
    return time.perf_counter() - started


def warm_page_cache() -> None:
    """Import TensorFlow and Keras once in a throw-away process, so the launches find them in the page cache."""
    subprocess.run(
        [sys.executable, "-c", "import tensorflow, keras"], check=True, env=_environment(),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def _environment() -> dict:
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}


def run_launch(template: Path, data_path: Path, folder: Path, *, workers: int, trials: int, pruner: bool = True) -> Launch:
    """`hpsearch launch --workers N --trials T` on a fresh journal in `folder`; its trials and worker timings."""
    import optuna

    from hpsearch.storage import open_storage

    study_file = write_study_file(template, folder, data_path, pruner=pruner)
    journal = folder / "study.journal"
    command = [
        sys.executable, "-m", "hpsearch.cli", "launch", "--workers", str(workers),
        "--study", str(study_file), "--storage", str(journal), "--trials", str(trials),
    ]
    with open(folder / "launch.log", "w", encoding="utf-8") as log:
        started = time.time()
        code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=_environment(), cwd=ROOT).returncode
        ended = time.time()
    if code != 0:
        tail = (folder / "launch.log").read_text(encoding="utf-8", errors="replace")[-3000:]
        raise SystemExit(f"hpsearch launch --workers {workers} exited with code {code} (logs in {folder}):\n{tail}")
    name = load_study(study_file).name
    study = optuna.load_study(study_name=name, storage=open_storage(str(journal)))
    return Launch(workers, folder, started, ended, study.get_trials(deepcopy=False), read_worker_timings(folder / "logs" / name))


def read_worker_timings(log_dir: Path) -> dict[int, dict]:
    """The `hpsearch worker timing:` lines of every worker log, merged per worker process id."""
    runs: dict[int, dict] = {}
    for path in sorted(log_dir.glob("w*.log")):
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith(TIMING_PREFIX):
                stamps = json.loads(line[len(TIMING_PREFIX):])
                runs.setdefault(stamps["pid"], {}).update(stamps)
    return runs


def _has_timings(trial) -> bool:
    return "setup_seconds" in trial.user_attrs and trial.datetime_complete is not None


def first_step_parts(launch: Launch) -> dict[str, float]:
    """Seconds from the launch to the end of the first training step of the first trial, by part."""
    first = min(launch.trials, key=lambda t: t.datetime_start)
    if not _has_timings(first):
        raise SystemExit(f"the first trial ({first.number}, {first.state.name}) has no timing attributes; see {launch.folder}")
    run = launch.runs[first.user_attrs["worker_pid"]]
    seconds = first.user_attrs
    worker_started = run["started"] if run.get("started") is not None else run["entered"]
    trial_started = first.datetime_start.timestamp()
    return {
        "launcher: Python, imports, study, start the worker": worker_started - launch.started,
        "worker: Python, imports, open the storage": run["entered"] - worker_started,
        TF_IMPORT: run["tensorflow_imported"] - run["entered"],
        "Keras and training-core import": run["keras_imported"] - run["tensorflow_imported"],
        "load the dataset": run["data_loaded"] - run["keras_imported"],
        "open the study, ask (sampler), suggest": trial_started - run["data_loaded"] + seconds["ask_seconds"] + seconds["prepare_seconds"],
        "build and compile the model": seconds["setup_seconds"] - seconds["first_step_seconds"],
        "first training step (tracing + step)": seconds["first_step_seconds"],
    }


OVERHEAD_PARTS = (
    "worker start: Python, imports, open the storage",
    TF_IMPORT,
    "Keras and training-core import",
    "load the dataset",
    "ask: create the trial, sampler",
    "prepare: surplus check, suggest",
    "build and compile the model",
    "trace the training step",
    "callbacks in training: progress, report, prune, best weights",
    "save the model artifact",
    "record the timings, tell (storage)",
    "trials without timings: failed, surplus",
    "open the study, checks before the first trial",
    "between trials: checks, gc, waiting; exit",
)


def worker_time(launch: Launch, steps: int) -> tuple[float, float, dict[str, float]]:
    """(wall, inside, overhead by part) in seconds, summed over the launch's worker processes."""
    wall = inside = 0.0
    parts = dict.fromkeys(OVERHEAD_PARTS, 0.0)
    for pid, run in launch.runs.items():
        if "exited" not in run:
            raise SystemExit(f"worker {run['worker']} (pid {pid}) logged no exit; see {launch.folder / 'logs'}")
        started = run["started"] if run.get("started") is not None else run["entered"]
        run_wall = run["exited"] - started
        accounted = 0.0
        parts["worker start: Python, imports, open the storage"] += run["entered"] - started
        parts[TF_IMPORT] += run["tensorflow_imported"] - run["entered"]
        parts["Keras and training-core import"] += run["keras_imported"] - run["tensorflow_imported"]
        parts["load the dataset"] += run["data_loaded"] - run["keras_imported"]
        accounted += run["data_loaded"] - started
        mine = [t for t in launch.trials if t.user_attrs.get("worker_pid") == pid and t.datetime_complete is not None]
        if mine:
            opened = min(t.datetime_start.timestamp() for t in mine) - run["data_loaded"]
            parts["open the study, checks before the first trial"] += opened
            accounted += opened
        for trial in mine:
            trial_wall = (trial.datetime_complete - trial.datetime_start).total_seconds()
            accounted += trial_wall
            if not _has_timings(trial):
                parts["trials without timings: failed, surplus"] += trial_wall
                continue
            s = trial.user_attrs
            # A pruned trial stopped at its last report; a complete one ran all the steps.
            ran = steps if trial.state.name == "COMPLETE" else max(trial.intermediate_values, default=steps)
            # The first call is a step too: count one later step's time of it as inside, the rest as tracing.
            one_step = s["step_seconds"] / (ran - 1) if ran > 1 else 0.0
            inside += s["step_seconds"] + s["eval_seconds"] + one_step
            save = s.get("save_seconds", 0.0)
            parts["ask: create the trial, sampler"] += s["ask_seconds"]
            parts["prepare: surplus check, suggest"] += s["prepare_seconds"]
            parts["build and compile the model"] += s["setup_seconds"] - s["first_step_seconds"]
            parts["trace the training step"] += s["first_step_seconds"] - one_step
            parts["callbacks in training: progress, report, prune, best weights"] += (
                s["train_seconds"] - s["setup_seconds"] - s["step_seconds"] - s["eval_seconds"]
            )
            parts["save the model artifact"] += save
            parts["record the timings, tell (storage)"] += (
                trial_wall - s["ask_seconds"] - s["prepare_seconds"] - s["train_seconds"] - save
            )
        parts["between trials: checks, gc, waiting; exit"] += run_wall - accounted
        wall += run_wall
    return wall, inside, parts


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--study", type=Path, default=ROOT / "studies" / "quickstart.yaml", help="study file to copy")
    parser.add_argument("--trials", type=int, default=6, help="COMPLETE trials per launch (default 6)")
    parser.add_argument("--workers", default="1,2", help="worker counts to launch, comma-separated (default 1,2)")
    parser.add_argument("--repeats", type=int, default=1, help="launches per worker count (default 1)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (journals, logs, models)")
    # With a pruner, how many trials a launch runs to reach --trials COMPLETE ones depends on its
    # search's path, which differs between worker counts; without one, every launch runs the same work.
    parser.add_argument("--no-pruner", action="store_true", help="drop the study's pruner, so every trial runs to the end")
    args = parser.parse_args(argv)
    counts = [int(part) for part in args.workers.split(",")]
    args.study = args.study.resolve()
    steps = load_study(args.study).training["steps"]

    folder = Path(tempfile.mkdtemp(prefix="hpsearch-service-"))
    busy_before = busy_share()
    data_path = folder / "data"
    write_seconds = write_dataset(write_study_file(args.study, folder / "data-study", data_path))
    warm_page_cache()
    launches: dict[int, list[Launch]] = {n: [] for n in counts}
    for repeat in range(args.repeats):
        for n in counts:
            print(f"launch --workers {n} --trials {args.trials} (repeat {repeat + 1} of {args.repeats}) ...", file=sys.stderr, flush=True)
            launches[n].append(
                run_launch(args.study, data_path, folder / f"w{n}-r{repeat}", workers=n, trials=args.trials, pruner=not args.no_pruner)
            )
    busy_after = busy_share()

    print(f"# Service benchmark: {args.study.relative_to(ROOT) if args.study.is_relative_to(ROOT) else args.study}, "
          f"{args.trials} trials per launch, {args.repeats} launch(es) per worker count"
          + (", its pruner dropped" if args.no_pruner else ""))
    print(f"\nMachine: {machine()}; share of the cores busy over {BUSY_SAMPLE_SECONDS:.0f} s: "
          f"{busy_before:.0%} before, {busy_after:.0%} after.")
    if busy_before > BUSY_LIMIT:
        print("**The cores were busy: times are pessimistic and the 2-vs-1 ratio is not meaningful.**")

    columns = [f"workers={n}" for n in counts]
    print("\n## 1. `hpsearch launch` to the first training step (warm; seconds, mean over launches)\n")
    parts = {n: [first_step_parts(launch) for launch in launches[n]] for n in counts}
    names = list(parts[counts[0]][0])
    rows = [[name] + [f"{statistics.mean(p[name] for p in parts[n]):.2f}" for n in counts] for name in names]
    totals = {n: statistics.mean(sum(p.values()) for p in parts[n]) for n in counts}
    rows.append(["**total**"] + [f"**{totals[n]:.2f}**" for n in counts])
    print(table(["part"] + columns, rows))
    print(f"\nWriting the dataset is not included: a cold launch adds {write_seconds:.2f} s for it.")

    print("\n## 2. Service overhead: worker wall time outside training steps and validation\n")
    measured = {}
    for n in counts:
        wall = inside = 0.0
        overhead = dict.fromkeys(OVERHEAD_PARTS, 0.0)
        for launch in launches[n]:
            w, i, o = worker_time(launch, steps)
            wall, inside = wall + w, inside + i
            for name in o:
                overhead[name] += o[name]
        measured[n] = (wall, inside, overhead)
    rows = []
    for name in OVERHEAD_PARTS:
        rows.append([name] + [f"{measured[n][2][name]:.2f} ({measured[n][2][name] / measured[n][0]:.2%})" for n in counts])
    rows.append(["inside: training steps and validation"] + [f"{measured[n][1]:.2f} ({measured[n][1] / measured[n][0]:.2%})" for n in counts])
    rows.append(["worker wall time (all workers)"] + [f"{measured[n][0]:.2f}" for n in counts])
    shares = {}
    for n in counts:
        wall, inside, overhead = measured[n]
        tf = overhead[TF_IMPORT]
        shares[n] = ((wall - inside - tf) / (wall - tf), (wall - inside) / wall)
    rows.append(["**overhead without the TensorFlow import**"] + [f"**{shares[n][0]:.2%}**" for n in counts])
    rows.append(["overhead with it"] + [f"{shares[n][1]:.2%}" for n in counts])
    print(table(["part", *(f"{c}: s (share)" for c in columns)], rows))

    print("\n## 3. COMPLETE trials per hour\n")
    rates = {}
    rows = []
    for n in counts:
        complete = sum(len(launch.complete()) for launch in launches[n])
        pruned = sum(t.state.name == "PRUNED" for launch in launches[n] for t in launch.trials)
        seconds = sum(launch.seconds for launch in launches[n])
        rates[n] = 3600.0 * complete / seconds
        rows.append([str(n), str(complete), str(pruned), f"{seconds:.1f}", f"{rates[n]:.1f}"])
    print(table(["workers", "complete trials", "pruned trials", "launch wall time (s)", "trials per hour"], rows))
    speedup = rates[2] / rates[1] if 1 in rates and 2 in rates else None
    if speedup is not None:
        print(f"\n2 workers ÷ 1 worker: {speedup:.2f}")

    print("\n## Goals\n")
    rows = [
        ["launch to first training step (warm)", f"≤ {LAUNCH_GOAL_SECONDS:.0f} s",
         ", ".join(f"{totals[n]:.1f} s ({n} w)" for n in counts),
         _met(all(totals[n] <= LAUNCH_GOAL_SECONDS for n in counts))],
        ["service overhead, TensorFlow import apart", f"≤ {OVERHEAD_GOAL:.0%}",
         ", ".join(f"{shares[n][0]:.1%} ({n} w)" for n in counts),
         _met(all(shares[n][0] <= OVERHEAD_GOAL for n in counts))],
        ["2 workers vs 1, trials per hour", f"≥ {SPEEDUP_GOAL:.1f}",
         "not measured" if speedup is None else f"{speedup:.2f}",
         "—" if speedup is None else _met(speedup >= SPEEDUP_GOAL)],
    ]
    print(table(["goal", "target", "measured", "met"], rows))
    if args.keep:
        print(f"\nJournals, logs and models kept in {folder}")
    else:
        import shutil

        shutil.rmtree(folder, ignore_errors=True)
    return 0


def _met(ok: bool) -> str:
    return "yes" if ok else "no"


if __name__ == "__main__":
    sys.exit(main())
