"""`hpsearch launch --executor slurm`: submit a study's workers as a Slurm job array and watch it.

Each array task runs one `hpsearch worker --study NAME` (one GPU each, `--gres=gpu:1`, unless
the workers run on the CPU). The job is a generated sbatch script rather than a submitit job:
submitit pickles a Python callable into a shared folder and needs the same Python on every
node to unpickle it, where a plain script that runs the CLI needs no extra dependency, can be
read by the cluster's admins (it is kept beside the logs as slurm-job.sh) and re-submitted by
hand with `sbatch`. The storage URL reaches the tasks through the job's environment
($HPSEARCH_STORAGE, exported by sbatch from the launcher's), never through the script or a
command line, since it may hold a password.

The storage must be a database every node reaches (PostgreSQL, MySQL): a journal or SQLite
file is refused, because a task on another node would write a different file, and a journal's
dead-worker check only sees processes of its own host. Liveness on a database is by heartbeats;
a task stopped by `scancel` or preemption gets SIGTERM, and its worker marks its trial FAIL and
re-queues it with the same hyperparameters (hpsearch.worker); `--requeue` brings a preempted
task back to run further trials.

The launcher polls the study and `squeue` until the study holds its target; Ctrl-C (or SIGTERM)
cancels the array with `scancel`, its workers re-queue their trials, and the study resumes with
the same launch command. The job ids are kept in the study (user attribute `slurm_jobs`) so
that `hpsearch status` can show their tasks (a line each, or "slurm_jobs" in --format json|yaml).
The workers' --artifacts is the launch's: an s3://bucket/prefix store as it is, a folder as an
absolute path on the shared file system.
"""

from __future__ import annotations

import dataclasses
import datetime
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna

from hpsearch.artifacts import is_s3
from hpsearch.errors import HpsearchError, UsageError
from hpsearch.storage import DEFAULT_ENV, fail_stale_trials, is_rdb_url, mask_password
from hpsearch.vocabulary import SLURM_JOBS_ATTR, counts

POLL_SECONDS = 5.0
COMMAND_TIMEOUT = 60  # seconds for one sbatch, squeue or scancel call (a busy controller is slow, not dead)
FINISH_WAIT_SECONDS = 120.0  # after the target or a cancel: how long to wait for the tasks to end
# squeue states in which a task still runs or will run again.
ACTIVE_STATES = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD",
                 "RESIZING", "SUSPENDED", "STOPPED", "SIGNALING", "STAGE_OUT", "RESV_DEL_HOLD"}


@dataclasses.dataclass(frozen=True)
class SlurmSettings:
    """How the job array asks for resources: sbatch's --partition, --time, --account, extra options, one GPU a task."""

    partition: str | None = None
    time: str | None = None
    account: str | None = None
    options: tuple[str, ...] = ()
    gpu: bool = True

    @classmethod
    def merged(cls, study_key: dict | None, *, partition=None, time=None, account=None, options=(), cpu=False) -> SlurmSettings:
        """The study file's `slurm:` settings, each overridden by its flag where given; extra options add up."""
        base = dict(study_key or {})
        settings = cls(
            partition=partition or base.get("partition"),
            time=time or base.get("time"),
            account=account or base.get("account"),
            options=tuple(base.get("options") or ()) + tuple(options or ()),
            gpu=False if cpu else bool(base.get("gpu", True)),
        )
        for option in settings.options:
            if not option.startswith("-") or "\n" in option:
                raise UsageError(f"Slurm option {option!r} is not an sbatch option; write it as sbatch takes it, "
                                 "e.g. --slurm-option=--mem=16G.")
        return settings


@dataclasses.dataclass(frozen=True)
class TaskState:
    """One array task as squeue shows it: '12_0', 'RUNNING', '3:02' elapsed, node or pending reason."""

    task: str
    state: str
    elapsed: str
    where: str


def check_storage(url: str) -> None:
    """Refuse a storage the nodes of a cluster cannot share: a journal file or SQLite."""
    if not is_rdb_url(url) or url.lower().startswith("sqlite"):
        raise UsageError(
            f"--executor slurm needs a study storage every node reaches, not {mask_password(url)}; "
            "pass --storage postgresql+psycopg2://USER@HOST/DB (or set $HPSEARCH_STORAGE)."
        )


def check_installed() -> None:
    missing = [program for program in ("sbatch", "squeue", "scancel") if shutil.which(program) is None]
    if missing:
        raise UsageError(f"{missing[0]} is not on PATH here; run 'hpsearch launch --executor slurm' on a Slurm "
                         "login node, or use --executor local.")


def batch_script(
    *, study: str, workers: int, target: int, settings: SlurmSettings, log_dir: Path, artifacts: str | Path,
    workdir: Path, python: str = sys.executable,
) -> str:
    """The sbatch script of the job array: one `hpsearch worker` per task, logs to log_dir/slurm-%A_%a.log.

    `artifacts` is the trial model store: an s3://bucket/prefix URL, passed to the workers as it is,
    or a folder, passed as an absolute path.
    """
    directives = [
        f"--job-name=hpsearch-{study}",
        f"--array=0-{workers - 1}",
        "--ntasks=1",
        "--requeue",  # a preempted or failed-node task comes back
        f"--output={Path(log_dir).resolve()}/slurm-%A_%a.log",
        f"--chdir={Path(workdir).resolve()}",
    ]
    if settings.gpu:
        directives.append("--gres=gpu:1")
    for flag, value in (("partition", settings.partition), ("time", settings.time), ("account", settings.account)):
        if value:
            directives.append(f"--{flag}={value}")
    directives += list(settings.options)
    worker = [
        python, "-m", "hpsearch.cli", "worker", "--study", study, "--trials", str(target),
        "--artifacts", artifacts_argument(artifacts),
    ]
    lines = ["#!/bin/bash", *(f"#SBATCH {d}" for d in directives), ""]
    lines += [
        f"# hpsearch worker of study {study!r}, one per array task. The study storage URL comes in",
        f"# ${DEFAULT_ENV} from the submitting environment; it is not written here (it may hold a password).",
        "set -eu",
        f'if [ -z "${{{DEFAULT_ENV}:-}}" ]; then echo "hpsearch: error: ${DEFAULT_ENV} is not set in the job\'s environment; '
        'submit with sbatch --export=ALL." >&2; exit 2; fi',
        'export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"',
    ]
    if not settings.gpu:
        lines.append("export CUDA_VISIBLE_DEVICES=  # CPU workers: TensorFlow leaves the node's GPUs alone")
    lines += [
        "threads=()",
        'if [ -n "${SLURM_CPUS_PER_TASK:-}" ]; then threads=(--threads "$SLURM_CPUS_PER_TASK"); fi',
        'echo "==== $(date \'+%Y-%m-%d %H:%M:%S\') task ${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID} on $(hostname)'
        ' (restart ${SLURM_RESTART_COUNT:-0})"',
        # exec: the worker itself receives Slurm's SIGTERM on scancel or preemption.
        f'exec {shlex.join(worker)} --index "$SLURM_ARRAY_TASK_ID" "${{threads[@]}}"',
        "",
    ]
    return "\n".join(lines)


def artifacts_argument(artifacts: str | Path) -> str:
    """The workers' --artifacts: an S3 URL verbatim (every node reaches it by name; Path() would fold its
    '//'), a folder made absolute (the tasks start in --chdir, which need not be this folder)."""
    text = str(artifacts)
    return text if is_s3(text) else str(Path(text).resolve())


def _run(command: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=COMMAND_TIMEOUT)


def submit(script_path: Path, env: dict) -> str:
    """`sbatch` the script with `env` as its environment; the array's job id."""
    result = subprocess.run(["sbatch", "--parsable", "--export=ALL", str(script_path)], env=env,
                            capture_output=True, text=True, timeout=COMMAND_TIMEOUT)
    if result.returncode != 0:
        message = (result.stderr.strip() or result.stdout.strip()).splitlines()
        raise UsageError(f"sbatch refused the job array ({message[-1] if message else f'exit code {result.returncode}'}); "
                         f"check the Slurm settings (--slurm-* flags or the study's slurm: key) in {script_path}.")
    return result.stdout.strip().split(";")[0]  # "id" or "id;cluster"


def parse_squeue(text: str) -> list[TaskState]:
    """Tasks from `squeue --array -h -o '%i|%T|%M|%R'` output, in task order."""
    tasks = []
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 4:
            tasks.append(TaskState(*(p.strip() for p in parts)))
    return sorted(tasks, key=lambda t: _task_key(t.task))


def _task_key(task: str) -> tuple:
    job, _, index = task.partition("_")
    return (int(job) if job.isdigit() else 0, int(index) if index.isdigit() else -1, task)


def array_tasks(job_id: str) -> list[TaskState] | None:
    """The array's tasks that the controller still knows (running, pending, or recently ended); None if squeue failed."""
    try:
        result = _run(["squeue", "--array", "--states=all", "-h", "-j", str(job_id), "-o", "%i|%T|%M|%R"])
    except (OSError, subprocess.TimeoutExpired):
        return None
    if result.returncode != 0:
        # An id the controller has forgotten (ended longer ago than MinJobAge) is "Invalid job id".
        return [] if "Invalid job id" in result.stderr else None
    return parse_squeue(result.stdout)


def cancel(job_id: str, *, pending_only: bool = False) -> None:
    """scancel the array (its running tasks get SIGTERM), or only its tasks still waiting to start."""
    command = ["scancel", *(["--state=PENDING"] if pending_only else []), str(job_id)]
    try:
        _run(command)
    except (OSError, subprocess.TimeoutExpired):
        pass


def record_job(study: optuna.Study, job_id: str, workers: int) -> None:
    """Add the job to the study's `slurm_jobs` list (newest last), for `hpsearch status`."""
    jobs = list(study.user_attrs.get(SLURM_JOBS_ATTR) or [])
    jobs.append({"job": str(job_id), "tasks": workers,
                 "submitted": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")})
    study.set_user_attr(SLURM_JOBS_ATTR, jobs)


def job_states(study: optuna.Study, *, last: int | None = None) -> list[dict]:
    """The study's Slurm job arrays (its last `last`, else all; oldest first) with their tasks as squeue shows them.

    Each: {"job", "tasks" (count), "submitted" (ISO time), "state", "array_tasks": [{"task", "state",
    "elapsed", "where"}]}. "state" sums the tasks' states ("1 COMPLETED, 1 RUNNING"), or says why they are
    not known: squeue missing here, squeue not answering, or the job ended long enough ago that the
    controller forgot it (array_tasks is then empty).
    """
    jobs = list(study.user_attrs.get(SLURM_JOBS_ATTR) or [])
    if last is not None:
        jobs = jobs[-last:]
    have_squeue = shutil.which("squeue") is not None
    states = []
    for job in jobs:
        tasks = array_tasks(job["job"]) if have_squeue else None
        if not have_squeue:
            state = "squeue is not available on this machine"
        elif tasks is None:
            state = "squeue did not answer"
        elif not tasks:
            state = "ended (no longer known to the Slurm controller)"
        else:
            state = summary(tasks)
        states.append({
            "job": str(job["job"]), "tasks": job.get("tasks"), "submitted": job.get("submitted"), "state": state,
            "array_tasks": [dataclasses.asdict(task) for task in tasks or []],
        })
    return states


def job_lines(study: optuna.Study, *, last: int = 3) -> list[str]:
    """For `hpsearch status`: a line per array task of the study's last `last` Slurm jobs."""
    lines = []
    for job in job_states(study, last=last):
        head = f"Slurm job {job['job']} ({job['tasks']} tasks, submitted {job['submitted']})"
        if not job["array_tasks"]:
            lines.append(f"{head}: {job['state']}")
            continue
        lines.append(f"{head}:")
        lines += [f"  task {t['task']}: {t['state']}, {t['elapsed']}, {t['where']}" for t in job["array_tasks"]]
    return lines


def summary(tasks: list[TaskState]) -> str:
    """'2 RUNNING, 1 PENDING' from the tasks' states."""
    states: dict[str, int] = {}
    for task in tasks:
        states[task.state] = states.get(task.state, 0) + 1
    return ", ".join(f"{n} {state}" for state, n in sorted(states.items())) or "no tasks"


def watch(job_id: str, study: optuna.Study, *, target: int, log_dir: Path, out=sys.stderr) -> int:
    """Poll the study and the array until the target is reached (0), or the array ends short of it (raises).

    Ctrl-C or SIGTERM cancels the array, waits for its workers to re-queue their trials, and returns 130.
    """
    previous = signal.getsignal(signal.SIGTERM)

    def on_signal(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    last_line = ""
    try:
        while True:
            fail_stale_trials(study)  # a task killed outright (node lost): its trial is failed and re-queued
            complete, running = counts(study)
            tasks = array_tasks(job_id)
            line = f"{complete}/{target} complete, {running} running; job {job_id}: " + (
                "squeue did not answer" if tasks is None else summary(tasks))
            if line != last_line:
                print(line, file=out, flush=True)
                last_line = line
            if complete >= target:
                cancel(job_id, pending_only=True)  # tasks not started yet would only find the study done
                _wait_for_end(job_id)
                return 0
            if tasks is not None and not any(t.state in ACTIVE_STATES for t in tasks):
                complete, _ = counts(study)
                if complete >= target:
                    return 0
                states = summary(tasks)
                raise HpsearchError(f"Slurm job {job_id} ended ({states}) with {complete} of {target} complete "
                                    f"trials; see its logs in {log_dir}.")
            time.sleep(POLL_SECONDS)
    except KeyboardInterrupt:
        print(f"cancelling Slurm job {job_id}; its workers re-queue their trials", file=out, flush=True)
        cancel(job_id)
        _wait_for_end(job_id)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)


def _wait_for_end(job_id: str) -> None:
    """Wait (bounded) until no task of the array is active, so a cancelled worker has re-queued its trial."""
    deadline = time.monotonic() + FINISH_WAIT_SECONDS
    while time.monotonic() < deadline:
        tasks = array_tasks(job_id)
        if tasks is not None and not any(t.state in ACTIVE_STATES for t in tasks):
            return
        time.sleep(1.0)
