"""`hpsearch launch`: create or resume a study, start one worker process per GPU (or CPU share), supervise them.

The launcher never imports TensorFlow. It restarts a worker that dies (bounded), marks the
dead worker's running trial FAIL with the reason and enqueues a retry with the same
hyperparameters. On Ctrl-C or SIGTERM it stops the workers within seconds and marks their
running trials FAIL ("interrupted"), re-queued for the next `launch`. No trial is left RUNNING
by a launcher that has exited. A worker that refuses its input (exit code 2: the dataset, the
trial model folder ...) is not restarted; its own error sentence becomes the launcher's.

It also watches: a worker that reports nothing for the stall timeout ($HPSEARCH_STALL_TIMEOUT)
is killed and handled as one that died; trials whose worker is gone (an earlier launch killed
with its workers) are failed and re-queued (hpsearch.liveness); once the study holds its target,
workers still running are stopped.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
from optuna.trial import TrialState

from hpsearch.config import StudyConfig
from hpsearch.devices import JAX_PREALLOCATE, sharing
from hpsearch.errors import HpsearchError, UsageError
from hpsearch.liveness import fail_orphaned_trials, requeue_interrupted
from hpsearch.storage import DEFAULT_ENV, mark_running_trials_failed, retry_trial
from hpsearch.vocabulary import CONFIG_ATTR, TARGET_ATTR, WORKER_PID_ATTR, counts

MAX_RESTARTS = 3  # per worker slot
STOP_GRACE_SECONDS = 8.0  # SIGTERM, then SIGKILL after this long
POLL_SECONDS = 0.5
CHECK_SECONDS = 5.0  # how often the launcher looks for stalled workers and orphaned trials
TARGET_GRACE_SECONDS = 60.0  # after the target is reached, how long workers have to notice and exit
STALL_ENV = "HPSEARCH_STALL_TIMEOUT"
DEFAULT_STALL_SECONDS = 1800.0
"""A worker that reports nothing for this long is killed and its trial re-queued: longer than
loading data, the first trace and one evaluation of a paper-scale trial on a CPU."""
# Parts of a definition that make trials comparable; a resumed study must keep them.
_FIXED_PARTS = ("data", "training", "start", "search_space")


def prepare_study(config: StudyConfig, storage, *, target: int) -> optuna.Study:
    """Create the study, or resume it if its stored definition agrees; store the definition and target in it."""
    study = optuna.create_study(study_name=config.name, storage=storage, direction="maximize", load_if_exists=True)
    definition = config.to_dict()
    stored = study.user_attrs.get(CONFIG_ATTR)
    if stored is not None:
        changed = [part for part in _FIXED_PARTS if _comparable(stored.get(part)) != _comparable(definition.get(part))]
        if changed:
            raise UsageError(
                f"study {config.name!r} already exists with a different {changed[0]!r} section, so its trials would not "
                "compare; rename 'study' in the study file to start a new search."
            )
    study.set_user_attr(CONFIG_ATTR, definition)
    study.set_user_attr(TARGET_ATTR, target)
    return study


def _comparable(value):
    # JSON turns tuples into lists; compare the JSON forms.
    return json.loads(json.dumps(value))


@dataclasses.dataclass
class WorkerSlot:
    """One worker position: its process, GPU, restarts and live status file."""

    index: int
    gpu: str | None
    status_path: Path
    log_path: Path
    process: subprocess.Popen | None = None
    restarts: int = 0
    finished: bool = False  # exited 0: the study reached its target
    gave_up: str | None = None  # why this slot is no longer restarted
    bad_input: bool = False  # it exited with code 2: gave_up is its error sentence
    started_at: float = 0.0  # when the current process started, seconds since the epoch

    def status(self) -> dict:
        try:
            return json.loads(self.status_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}

    def last_progress(self) -> float:
        """When the worker last reported (its status file written), else when it started; seconds since the epoch."""
        try:
            return max(self.status_path.stat().st_mtime, self.started_at)
        except OSError:
            return self.started_at


class Launcher:
    """Starts and supervises the workers of one study.

    Args:
        config: the study definition.
        storage_url: the study storage (passed to workers through the environment, never argv).
        storage: the opened storage.
        target: COMPLETE trials to reach.
        gpus: per worker, a GPU (as CUDA_VISIBLE_DEVICES names it) or None; a GPU may appear more than once.
        threads: CPU threads per worker (None: TensorFlow's default).
        artifacts: the trial model store, a folder or s3://bucket/prefix (hpsearch.artifacts).
        log_dir: where each worker's output goes.
        stall_seconds: a worker silent this long is killed (default: stall_timeout(config.stall_timeout)).
    """

    def __init__(self, config, storage_url, storage, *, target, gpus, threads, artifacts, log_dir,
                 stall_seconds: float | None = None) -> None:
        self.config = config
        self.stall_seconds = stall_timeout(config.stall_timeout) if stall_seconds is None else stall_seconds
        self._checked_at = 0.0
        self._target_reached_at: float | None = None  # when _watch first saw the study at its target
        self.storage_url = storage_url
        self.storage = storage
        self.target = target
        self.threads = threads
        self.artifacts = str(artifacts)
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._status_dir = Path(tempfile.mkdtemp(prefix="hpsearch-launch-"))
        self.slots = [
            WorkerSlot(i, gpu, self._status_dir / f"w{i}.json", self.log_dir / f"w{i}.log") for i, gpu in enumerate(gpus)
        ]
        self._per_gpu = sharing(gpus)  # workers per GPU
        self.events: list[str] = []
        self._stopping: str | None = None
        self._pids: set[int] = set()  # every worker process this launcher started

    # ---- processes

    def environment(self, slot: WorkerSlot) -> dict[str, str]:
        """The environment a slot's worker starts with: the launcher's, its storage URL, its GPU."""
        env = dict(os.environ)
        env[DEFAULT_ENV] = self.storage_url  # not in argv: `ps` shows argv, and the URL may hold a password
        env["CUDA_VISIBLE_DEVICES"] = slot.gpu if slot.gpu is not None else ""  # '' hides every GPU
        if self._per_gpu.get(slot.gpu, 0) > 1:
            # JAX takes 75 % of its GPU's memory at start-up, leaving too little for a second worker there;
            # a value the user set wins. TensorFlow's memory growth is set by the worker (configure_tensorflow).
            env.setdefault(JAX_PREALLOCATE, "false")
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        return env

    def _start(self, slot: WorkerSlot) -> None:
        env = self.environment(slot)
        command = [
            sys.executable, "-m", "hpsearch.cli", "worker",
            "--study", self.config.name, "--index", str(slot.index), "--trials", str(self.target),
            "--artifacts", str(self.artifacts), "--status-file", str(slot.status_path),
        ]
        if self.threads:
            command += ["--threads", str(self.threads)]
        slot.status_path.unlink(missing_ok=True)
        with open(slot.log_path, "a", encoding="utf-8") as log:
            log.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} worker w{slot.index} starts\n")
            log.flush()
            # Its own session: a terminal's Ctrl-C reaches the launcher only, which stops workers in order.
            slot.process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        slot.started_at = time.time()
        self._pids.add(slot.process.pid)

    def _reap(self, slot: WorkerSlot) -> None:
        """Handle a worker that exited: done, bad input, or died (fail its trial, retry, restart)."""
        code = slot.process.returncode
        pid = slot.process.pid
        slot.process = None
        if code == 0:
            slot.finished = True
            return
        how = f"killed by signal {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
        failed = self._fail_trials_of(pid, f"worker w{slot.index} {how}")
        self.events.append(f"worker w{slot.index} (pid {pid}) {how}" + (f"; trial {failed} marked FAIL and re-queued" if failed else ""))
        if code == 2:
            slot.bad_input = True
            slot.gave_up = last_error(slot.log_path) or f"bad input (see {slot.log_path})"
        elif slot.restarts >= MAX_RESTARTS:
            slot.gave_up = f"died {slot.restarts + 1} times (see {slot.log_path})"
        elif self._stopping is None:
            slot.restarts += 1
            self._start(slot)

    def _fail_trials_of(self, pid: int, reason: str) -> list[int]:
        """FAIL the RUNNING trials run by process `pid` and enqueue their retries."""
        study = optuna.load_study(study_name=self.config.name, storage=self.storage)
        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        numbers = [t.number for t in running if t.user_attrs.get(WORKER_PID_ATTR) == pid]
        failed = mark_running_trials_failed(self.storage, self.config.name, reason=reason, trial_numbers=numbers)
        by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
        for number in failed:
            retry_trial(study, by_number[number])
        return failed

    def stop(self, reason: str) -> None:
        """Stop every worker: SIGTERM, then SIGKILL after a grace period; fail and re-queue their trials."""
        self._stopping = reason
        for pid in self._end_workers():
            # A worker killed mid-trial could not record its end; do it here.
            self._fail_trials_of(pid, reason)
        self._requeue_interrupted()

    def _end_workers(self) -> list[int]:
        """SIGTERM every running worker, SIGKILL those still there after the grace period; their pids."""
        alive = [slot for slot in self.slots if slot.process is not None]
        for slot in alive:
            _signal(slot.process, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        pids = []
        for slot in alive:
            try:
                slot.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal(slot.process, signal.SIGKILL)
                slot.process.wait()
            pids.append(slot.process.pid)
            slot.process = None
        return pids

    def _requeue_interrupted(self) -> None:
        """Trials our workers ended as interrupted are re-queued once, for the next launch (if the worker did not)."""
        requeue_interrupted(optuna.load_study(study_name=self.config.name, storage=self.storage), self._pids)

    def _watch(self) -> None:
        """Kill workers that made no progress for `stall_seconds`; stop them all once the target is reached."""
        now = time.time()
        if now - self._checked_at < CHECK_SECONDS:
            return
        self._checked_at = now
        study = optuna.load_study(study_name=self.config.name, storage=self.storage)
        fail_orphaned_trials(study)  # a dead worker of an earlier launch, or of a standalone `hpsearch worker`
        alive = [slot for slot in self.slots if slot.process is not None and slot.process.poll() is None]
        reached = counts(study)[0] >= self.target
        self._target_reached_at = (self._target_reached_at or now) if reached else None
        # Workers notice the target themselves within seconds; only those still there after a grace are stopped.
        if alive and reached and now - self._target_reached_at > TARGET_GRACE_SECONDS:
            pids = self._end_workers()
            reason = "the study reached its target while this worker was still running"
            for pid in pids:
                numbers = [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
                           if t.user_attrs.get(WORKER_PID_ATTR) == pid]
                mark_running_trials_failed(self.storage, self.config.name, reason=reason, trial_numbers=numbers)
            for slot in alive:
                slot.finished = True
            self.events.append(f"the study reached {self.target} complete trials; stopped {len(alive)} remaining worker(s)")
            return
        for slot in alive:
            quiet = now - slot.last_progress()
            if quiet > self.stall_seconds:
                self.events.append(f"worker w{slot.index} (pid {slot.process.pid}) made no progress for {quiet:.0f} s "
                                   f"(stall timeout {self.stall_seconds:.0f} s); killed")
                _signal(slot.process, signal.SIGKILL)  # SIGKILL also ends a stopped (SIGSTOP) or hung process

    # ---- the loop

    def run(self, display=None) -> int:
        """Start the workers and supervise them until the target is reached; returns an exit code."""
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

        def on_signal(signum, frame):
            raise KeyboardInterrupt

        signal.signal(signal.SIGTERM, on_signal)
        try:
            # Trials left RUNNING by a launch that was killed with its workers: failed and re-queued first.
            fail_orphaned_trials(optuna.load_study(study_name=self.config.name, storage=self.storage))
            for slot in self.slots:
                self._start(slot)
            while True:
                for slot in self.slots:
                    if slot.process is not None and slot.process.poll() is not None:
                        self._reap(slot)
                self._watch()
                if display is not None:
                    display(self)
                if all(slot.process is None for slot in self.slots):
                    break
                time.sleep(POLL_SECONDS)
        except KeyboardInterrupt:
            self.stop("interrupted")
            if display is not None:
                display(self)
            return 130
        except BaseException:
            # Anything else (the study storage gone for good, a bug): leave no worker behind.
            self._end_workers()
            raise
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        study = optuna.load_study(study_name=self.config.name, storage=self.storage)
        complete, _ = counts(study)
        if complete >= self.target:
            return 0
        refused = [s for s in self.slots if s.bad_input]
        if refused:  # the worker's own sentence names the value and the fix
            slot = refused[0]
            if slot.gave_up.startswith(f"worker w{slot.index} "):  # its GPU check's sentence names the worker itself
                raise UsageError(f"{slot.gave_up.rstrip('.')} (log: {slot.log_path}).")
            raise UsageError(f"worker w{slot.index} refused its input: {slot.gave_up} (log: {slot.log_path})")
        reasons = "; ".join(f"w{s.index}: {s.gave_up}" for s in self.slots if s.gave_up)
        raise HpsearchError(f"the workers stopped with {complete} of {self.target} complete trials ({reasons}).")

    def cleanup(self) -> None:
        for slot in self.slots:
            slot.status_path.unlink(missing_ok=True)
        try:
            self._status_dir.rmdir()
        except OSError:
            pass


def stall_timeout(study_value: float | None = None) -> float:
    """Seconds of silence after which a worker counts as hung: $HPSEARCH_STALL_TIMEOUT, else the study's
    `stall_timeout`, else 1800."""
    text = os.environ.get(STALL_ENV, "").strip()
    if not text:
        return DEFAULT_STALL_SECONDS if study_value is None else study_value
    try:
        seconds = float(text)
    except ValueError:
        seconds = 0.0
    if not seconds > 0:
        raise UsageError(f"${STALL_ENV}={text!r} is not a number of seconds > 0; set it to e.g. "
                         f"{DEFAULT_STALL_SECONDS:.0f}, or unset it.")
    return seconds


def last_error(log_path: Path) -> str | None:
    """The last 'hpsearch: error:' sentence a worker wrote to its log, without the prefix."""
    prefix = "hpsearch: error: "
    try:
        lines = log_path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return None
    errors = [line[len(prefix):].strip() for line in lines if line.startswith(prefix)]
    return errors[-1] if errors else None


def _signal(process: subprocess.Popen, sig: int) -> None:
    try:
        process.send_signal(sig)
    except ProcessLookupError:
        pass
