"""Service performance of a launch on the quick-start study: three goals of the performance issue.

1. Launch to first training step: from the launch starting (the moment this script starts the
   launching process) to the end of the first training step of the first trial, split into parts.
   Warm: the dataset is written before the launches (its write time is printed separately; a
   cold launch adds it) and TensorFlow is imported once beforehand so its files are in the page
   cache.
2. Service overhead: the share of each worker's wall time (process start to exit) spent outside
   training steps and whole-volume validation, with TensorFlow's one-time import shown apart.
   "Inside" is the training steps (patch sampling and the compiled step; of the first step, one
   typical step, its tracing apart) and validation; everything else (imports, model build,
   tracing, storage calls, the sampler, saving the model artifact, waiting) is overhead, broken
   down by part.
3. 2 workers vs 1: COMPLETE trials per hour of 2 workers ÷ 1 worker, each over the same number of
   trials; trials per hour = trials ÷ the launch's wall time.

Each launch is a process of this script (`service.py launch`) that does what `hpsearch launch`
does before it supervises: it creates the study in a fresh journal file, then starts one worker
process per GPU or CPU share with the launcher's thread cap. Each worker (`service.py worker`) runs
hpsearch's own worker loop (`hpsearch.worker.run_worker`) with training callbacks that note the
wall-clock time of every step and evaluation, and writes those times, with its start-up phases,
to a JSON file. The figures come from those times and the trials' datetime_start and
datetime_complete. The study file is a copy of the packaged quick-start study with only its data
path changed (to a dataset in the temporary folder).

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
from hpsearch.worker import ensure_dataset  # noqa: E402

QUICKSTART = ROOT / "hpsearch" / "studies" / "quickstart.yaml"
LAUNCH_GOAL_SECONDS = 15.0
OVERHEAD_GOAL = 0.02
SPEEDUP_GOAL = 1.0
TF_IMPORT = "TensorFlow import (one-time)"
BUSY_SAMPLE_SECONDS = 2.0
BUSY_LIMIT = 0.15  # above this share of the cores busy before the launches, the figures are marked unreliable


@dataclasses.dataclass
class Launch:
    """One launch and what it left behind."""

    workers: int
    folder: Path
    started: float  # wall clock (s since the epoch) just before the launching process started
    ended: float
    trials: list  # optuna FrozenTrial
    runs: dict[int, dict]  # worker pid -> its record (see worker_main)

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
    """One launch (`service.py launch`) of `workers` workers on a fresh journal in `folder`; its trials and worker records."""
    import optuna

    from hpsearch.storage import open_storage

    study_file = write_study_file(template, folder, data_path, pruner=pruner)
    journal = folder / "study.journal"
    command = [
        sys.executable, str(Path(__file__).resolve()), "launch", "--workers", str(workers),
        "--study", str(study_file), "--storage", str(journal), "--trials", str(trials), "--folder", str(folder),
    ]
    with open(folder / "launch.log", "w", encoding="utf-8") as log:
        started = time.time()
        code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=_environment(), cwd=ROOT).returncode
        ended = time.time()
    if code != 0:
        tail = (folder / "launch.log").read_text(encoding="utf-8", errors="replace")[-3000:]
        raise SystemExit(f"the launch of {workers} worker(s) exited with code {code} (logs in {folder}):\n{tail}")
    name = load_study(study_file).name
    study = optuna.load_study(study_name=name, storage=open_storage(str(journal)))
    return Launch(workers, folder, started, ended, study.get_trials(deepcopy=False), read_worker_records(folder / "workers"))


def launch_main(argv: list[str]) -> int:
    """`service.py launch`: create the study, start the workers as `hpsearch launch` would, wait for them."""
    from hpsearch.devices import choose_gpus, cpu_threads
    from hpsearch.launcher import prepare_study
    from hpsearch.storage import open_storage

    parser = argparse.ArgumentParser(prog="service.py launch")
    parser.add_argument("--study", type=Path, required=True)
    parser.add_argument("--storage", required=True, help="journal file")
    parser.add_argument("--workers", type=int, required=True)
    parser.add_argument("--trials", type=int, required=True)
    parser.add_argument("--folder", type=Path, required=True, help="where logs, records and trial models go")
    args = parser.parse_args(argv)
    prepare_study(load_study(args.study), open_storage(args.storage), target=args.trials)
    gpus = choose_gpus(None, args.workers)
    threads = None if any(g is not None for g in gpus) else cpu_threads(args.workers)
    for sub in ("logs", "workers", "artifacts"):
        (args.folder / sub).mkdir(parents=True, exist_ok=True)
    processes = []
    try:
        for index, gpu in enumerate(gpus):
            command = [
                sys.executable, str(Path(__file__).resolve()), "worker", "--study", str(args.study),
                "--storage", args.storage, "--index", str(index), "--trials", str(args.trials),
                "--artifacts", str(args.folder / "artifacts"), "--record", str(args.folder / "workers" / f"w{index}.json"),
            ] + (["--threads", str(threads)] if threads else [])
            env = {**_environment(), "CUDA_VISIBLE_DEVICES": gpu if gpu is not None else ""}
            with open(args.folder / "logs" / f"w{index}.log", "w", encoding="utf-8") as log:
                processes.append(subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT))
        codes = [process.wait() for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.terminate()
                process.wait()
    failed = [(index, code) for index, code in enumerate(codes) if code != 0]
    for index, code in failed:
        print(f"worker w{index} exited with code {code}; see {args.folder / 'logs' / f'w{index}.log'}", file=sys.stderr)
    return 1 if failed else 0


def process_started_at() -> float | None:
    """When this process started, in seconds since the epoch (10 ms resolution); None where /proc is missing."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        since_boot = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22, starttime, counted from boot
        return time.time() - (time.clock_gettime(time.CLOCK_BOOTTIME) - since_boot)
    except (OSError, ValueError, IndexError, AttributeError):
        return None


def worker_main(argv: list[str]) -> int:
    """`service.py worker`: hpsearch's worker loop with callbacks that note when each step and evaluation ended.

    Writes --record as JSON: the worker, its pid, its start-up times and exit (s since the epoch),
    and per trial number the end time of each step ("steps") and each evaluation ("evals": [step, time]).
    """
    import optuna.artifacts

    from hpsearch.devices import configure_tensorflow
    from hpsearch.storage import open_storage
    from hpsearch.worker import run_worker

    parser = argparse.ArgumentParser(prog="service.py worker")
    parser.add_argument("--study", type=Path, required=True)
    parser.add_argument("--storage", required=True)
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--trials", type=int, required=True)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--artifacts", type=Path, required=True)
    parser.add_argument("--record", type=Path, required=True)
    args = parser.parse_args(argv)
    config = load_study(args.study)
    storage = open_storage(args.storage)
    record: dict = {"pid": os.getpid(), "started": process_started_at(), "entered": time.time(), "steps": {}, "evals": {}}
    # What run_worker does first, timed here; its own calls then find everything loaded.
    configure_tensorflow(args.threads)
    record["tensorflow_imported"] = time.time()
    import model

    model.train
    record["keras_imported"] = time.time()

    def on_step(trial: int, step: int, loss: float) -> None:
        record["steps"].setdefault(trial, []).append(time.time())

    def on_eval(trial: int, step: int, iou: float) -> None:
        record["evals"].setdefault(trial, []).append([step, time.time()])

    code = run_worker(
        config, storage, index=args.index, target=args.trials, threads=args.threads,
        artifact_store=optuna.artifacts.FileSystemArtifactStore(str(args.artifacts.resolve())),
        on_step=on_step, on_eval=on_eval,
    )
    record["exited"] = time.time()
    record["code"] = code
    args.record.write_text(json.dumps(record), encoding="utf-8")
    return code


def read_worker_records(folder: Path) -> dict[int, dict]:
    """The records the workers of a launch wrote, by worker process id (trial numbers as ints)."""
    runs: dict[int, dict] = {}
    for path in sorted(folder.glob("w*.json")):
        run = json.loads(path.read_text(encoding="utf-8"))
        run["steps"] = {int(trial): times for trial, times in run["steps"].items()}
        run["evals"] = {int(trial): {step: t for step, t in evals} for trial, evals in run["evals"].items()}
        runs[run["pid"]] = run
    return runs


@dataclasses.dataclass
class TrialTime:
    """Where one trial's wall time (datetime_start to datetime_complete) went, in seconds."""

    start: float  # ask (sampler), suggest, build and compile the model, trace the first step
    steps: float  # training steps (patch sampling, the compiled step), the first one counted as a later one
    evals: float  # whole-volume validation
    reports: float  # after each evaluation: report, prune check
    end: float  # after training: best weights, attributes, save the model, tell


def trial_time(trial, steps: list[float], evals: dict[int, float]) -> TrialTime:
    """Split a trial's wall time by the end times of its steps (`steps`, step 1 first) and evaluations (step -> time).

    The interval between two step ends is that step's time; after an evaluation it also holds the
    trial's report and prune check, so one typical step (the mean of the others) is counted as the
    step and the rest as reports. The first step holds the tracing; one typical step of it is a step.
    """
    after_eval = [steps[i] - evals[i] for i in range(1, len(steps)) if i in evals]  # step i+1 after step i's evaluation
    plain = [steps[i] - steps[i - 1] for i in range(1, len(steps)) if i not in evals]
    typical = statistics.fmean(plain or after_eval) if plain or after_eval else 0.0
    last = max([steps[-1], *evals.values()])
    return TrialTime(
        start=steps[0] - trial.datetime_start.timestamp() - typical,
        steps=typical + sum(plain) + typical * len(after_eval),
        evals=sum(t - steps[step - 1] for step, t in evals.items()),
        reports=sum(after_eval) - typical * len(after_eval),
        end=trial.datetime_complete.timestamp() - last,
    )


def first_step_parts(launch: Launch) -> dict[str, float]:
    """Seconds from the launch to the end of the first training step of the first trial, by part."""
    first = min(launch.trials, key=lambda t: t.datetime_start)
    run = launch.runs[first.user_attrs["worker_pid"]]
    steps = run["steps"].get(first.number)
    if not steps:
        raise SystemExit(f"the first trial ({first.number}, {first.state.name}) ran no training step; see {launch.folder}")
    worker_started = run["started"] if run.get("started") is not None else run["entered"]
    trial_started = first.datetime_start.timestamp()
    return {
        "launcher: Python, imports, study, start the worker": worker_started - launch.started,
        "worker: Python, imports, open the storage": run["entered"] - worker_started,
        TF_IMPORT: run["tensorflow_imported"] - run["entered"],
        "Keras and training-core import": run["keras_imported"] - run["tensorflow_imported"],
        "load the dataset, open the study": trial_started - run["keras_imported"],
        "ask (sampler), suggest, build and compile the model, first step": steps[0] - trial_started,
    }


OVERHEAD_PARTS = (
    "worker start: Python, imports, open the storage",
    TF_IMPORT,
    "Keras and training-core import",
    "load the dataset, open the study, checks before the first trial",
    "ask (sampler), suggest, build and compile, trace the first step",
    "report and prune check after each evaluation",
    "after training: best weights, attributes, save the model, tell",
    "trials that did not train: failed, surplus",
    "between trials: checks, gc, waiting; exit",
)


def worker_time(launch: Launch) -> tuple[float, float, dict[str, float]]:
    """(wall, inside, overhead by part) in seconds, summed over the launch's worker processes."""
    wall = inside = 0.0
    parts = dict.fromkeys(OVERHEAD_PARTS, 0.0)
    for pid, run in launch.runs.items():
        started = run["started"] if run.get("started") is not None else run["entered"]
        run_wall = run["exited"] - started
        parts["worker start: Python, imports, open the storage"] += run["entered"] - started
        parts[TF_IMPORT] += run["tensorflow_imported"] - run["entered"]
        parts["Keras and training-core import"] += run["keras_imported"] - run["tensorflow_imported"]
        accounted = run["keras_imported"] - started
        mine = [t for t in launch.trials if t.user_attrs.get("worker_pid") == pid and t.datetime_complete is not None]
        if mine:
            opened = min(t.datetime_start.timestamp() for t in mine) - run["keras_imported"]
            parts["load the dataset, open the study, checks before the first trial"] += opened
            accounted += opened
        for trial in mine:
            trial_wall = (trial.datetime_complete - trial.datetime_start).total_seconds()
            accounted += trial_wall
            steps = run["steps"].get(trial.number)
            if not steps:
                parts["trials that did not train: failed, surplus"] += trial_wall
                continue
            split = trial_time(trial, steps, run["evals"].get(trial.number, {}))
            inside += split.steps + split.evals
            parts["ask (sampler), suggest, build and compile, trace the first step"] += split.start
            parts["report and prune check after each evaluation"] += split.reports
            parts["after training: best weights, attributes, save the model, tell"] += split.end
        parts["between trials: checks, gc, waiting; exit"] += run_wall - accounted
        wall += run_wall
    return wall, inside, parts


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["launch"]:
        return launch_main(argv[1:])
    if argv[:1] == ["worker"]:
        return worker_main(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--study", type=Path, default=QUICKSTART, help="study file to copy")
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

    folder = Path(tempfile.mkdtemp(prefix="hpsearch-service-"))
    busy_before = busy_share()
    data_path = folder / "data"
    write_seconds = write_dataset(write_study_file(args.study, folder / "data-study", data_path))
    warm_page_cache()
    launches: dict[int, list[Launch]] = {n: [] for n in counts}
    for repeat in range(args.repeats):
        for n in counts:
            print(f"launch: {n} worker(s), {args.trials} trials (repeat {repeat + 1} of {args.repeats}) ...", file=sys.stderr, flush=True)
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
    print("\n## 1. Launch to the first training step (warm; seconds, mean over launches)\n")
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
            w, i, o = worker_time(launch)
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
