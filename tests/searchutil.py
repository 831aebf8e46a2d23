"""Helpers for tests that run real searches: a tiny study file and the CLI in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import optuna
import yaml
from optuna.trial import TrialState

from hpsearch.launcher import STOP_GRACE_SECONDS
from hpsearch.storage import open_storage


def tiny_study_with_two_trials(config, storage) -> optuna.Study:
    """`config`'s study in `storage` with two COMPLETE trials (IoU 0.41 at lr 3e-3, 0.52 at lr 1e-3; 2 channels)."""
    from optuna.trial import create_trial

    from hpsearch.launcher import prepare_study

    study = prepare_study(config, storage, target=2)
    for value, rate in ((0.41, 3.0e-3), (0.52, 1.0e-3)):
        study.add_trial(create_trial(
            params={"learning rate": rate, "channels in first conv layer": 2},
            distributions=config.distributions(), value=value, user_attrs={"worker": "host/w0"},
        ))
    return study


def write_tiny_study(folder: Path, *, name: str = "tiny", trials: int = 4, steps: int = 6, eval_every: int = 3, seed: int = 0, depth: int = 2, **extra) -> Path:
    """A study small enough for tests: 4 synthetic cases of 32×32×8, 2-channel U-Net of depth 2 (or `depth`)."""
    folder.mkdir(parents=True, exist_ok=True)
    document = {
        "study": name,
        "data": {"path": "data", "synth": {"cases": 4, "shape": "32x32x8", "seed": 0}, "split": {"seed": 0, "val_fraction": 0.25, "test_fraction": 0.0}},
        "training": {"steps": steps, "eval_every": eval_every, "patch": "16x16x8", "batch": 2, "depth": depth},
        "trials": trials,
        "seed": seed,
        "start": {"channels in first conv layer": 2, "learning rate": 3.0e-3},
        "search_space": {
            "learning rate": {"low": 1.0e-4, "high": 1.0e-2, "log": True},
            "channels in first conv layer": {"low": 2, "high": 3},
        },
        **extra,
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def hpsearch(*args: str, env: dict | None = None, **kwargs) -> subprocess.Popen:
    """Start the real CLI in a subprocess (its own process group, so signals can be aimed at it)."""
    return subprocess.Popen(
        [sys.executable, "-m", "hpsearch.cli", *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})}, **kwargs,
    )


def finish(process: subprocess.Popen, timeout: float = 300) -> tuple[int, str]:
    output, _ = process.communicate(timeout=timeout)
    return process.returncode, output


def load(storage_url: str, name: str = "tiny") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=open_storage(storage_url, heartbeat_interval=None))


def wait_for(predicate, *, timeout: float = 120, interval: float = 0.3):
    """Poll until predicate() is truthy; return its value, or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {predicate.__doc__ or predicate}")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by its parent) counts as gone.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


STRESS_WORKERS = 8
STRESS_TRIALS = 12


def worker_command_lines() -> list[str]:
    """The command lines of the hpsearch worker processes running now (as `ps` shows them)."""
    lines = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            words = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        line = " ".join(w.decode(errors="replace") for w in words if w)
        if "hpsearch.cli worker" in line:
            lines.append(line)
    return lines


def stress_search(folder: Path, storage_url: str) -> dict:
    """8 workers, 16 one-step trials of the tiny study at depth 1; the storage URL only in the environment.

    Returns the study file, exit code, output, and the worker command lines seen while it ran.
    """
    study_file = write_tiny_study(folder, trials=STRESS_TRIALS, steps=1, eval_every=1, depth=1)
    started = time.monotonic()
    launch = hpsearch("launch", "--workers", str(STRESS_WORKERS), "--study", str(study_file), env={"HPSEARCH_STORAGE": storage_url})
    seen: list[str] = []

    def workers_running():
        """the worker processes started"""
        seen[:] = worker_command_lines()
        return len(seen) >= STRESS_WORKERS or launch.poll() is not None

    wait_for(workers_running, timeout=120)
    code, output = finish(launch, timeout=400)
    return {"study_file": study_file, "code": code, "output": output, "argv": seen, "seconds": time.monotonic() - started}


def trials_in(storage_url: str, *states) -> list:
    """The study's trials (in these states), or [] before the launcher has created the study."""
    try:
        study = load(storage_url)
    except KeyError:
        return []
    return study.get_trials(deepcopy=False, states=states or None)


# Trials that a test kills or interrupts: 300 steps, evaluated every 10, hit while at step 150 or
# before. A trial spends over half a second between its first report and step 150 even on a fast
# CPU, so a poll every 0.3 s finds one; and 150 steps remain for the signal to land before it ends.
# (At 40 steps, hit by step 16, a fast CPU ran through that window between two polls.)
INTERRUPTIBLE = {"steps": 300, "eval_every": 10}
EARLY_STEP = 150


def running_with_a_step(storage_url: str, *, by_step: int | None = None):
    """a RUNNING trial that has reported an intermediate IoU (with `by_step`: none after that step yet)

    Tests that kill or interrupt the trial they find pass `by_step`, well before the trial's last step,
    so that the trial cannot complete between being found and being hit.
    """
    running = [
        t for t in trials_in(storage_url, TrialState.RUNNING)
        if t.intermediate_values and "worker_pid" in t.user_attrs and (by_step is None or max(t.intermediate_values) <= by_step)
    ]
    return running[0] if running else None


def interrupt_and_resume(storage_url: str, study_file: Path, sig: int, *, trials: int, by_step: int = EARLY_STEP) -> None:
    """Send `sig` to a 2-worker launch mid-trial (a trial not yet past `by_step`): workers gone within 10 s,
    the trial FAIL "interrupted"; a second launch re-runs it with the same hyperparameters and reaches `trials` COMPLETE."""
    launch = hpsearch("launch", "--workers", "2", "--study", str(study_file), "--storage", storage_url)
    running = wait_for(lambda: running_with_a_step(storage_url, by_step=by_step), timeout=180)
    workers = {t.user_attrs["worker_pid"] for t in trials_in(storage_url) if "worker_pid" in t.user_attrs}
    started = time.monotonic()
    launch.send_signal(sig)
    code, output = finish(launch, timeout=120)
    # The promise is the launcher's deadline: SIGTERM to the workers, SIGKILL after STOP_GRACE_SECONDS,
    # then the bookkeeping. The margin is for a loaded 2-core machine, where Python's own start-up
    # and tear-down take seconds; a launcher that waited for the trials to finish would take minutes.
    assert time.monotonic() - started < STOP_GRACE_SECONDS + 30
    assert code == 130, output
    assert not any(pid_alive(pid) for pid in workers)
    study = load(storage_url)
    assert not study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    assert study.trials[running.number].state == TrialState.FAIL
    assert study.trials[running.number].user_attrs["fail_reason"] == "interrupted"

    code, output = finish(hpsearch("launch", "--workers", "2", "--study", str(study_file), "--storage", storage_url))
    assert code == 0, output
    study = load(storage_url)
    assert len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))) == trials
    assert not study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    # The interrupted trial was re-run once, with the same hyperparameters.
    retried = [t for t in study.trials if t.user_attrs.get("retry_of") == running.number]
    assert len(retried) == 1 and retried[0].params == running.params and retried[0].state == TrialState.COMPLETE
