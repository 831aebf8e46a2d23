"""`hpsearch launch --executor slurm` against a real single-node Slurm cluster (tests/slurm/start.sh).

The cluster is Debian's slurm-wlm on localhost (2 CPUs, no GPUs: the tests pass --cpu so that
no --gres=gpu:1 is asked for). The script generation, the squeue parsing, the storage check and
`status --format json` on a machine without squeue run without a cluster.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from optuna.trial import TrialState
from searchutil import finish, hpsearch, load, wait_for, write_tiny_study

from hpsearch.cli import main
from hpsearch.config import load_study
from hpsearch.errors import UsageError
from hpsearch.launcher import prepare_study
from hpsearch.slurm import SlurmSettings, TaskState, batch_script, check_storage, parse_squeue, record_job, summary
from hpsearch.storage import open_storage
from model.synth import write_dataset
from hpsearch.vocabulary import FAIL_REASON_ATTR, RETRY_OF_ATTR, SLURM_JOBS_ATTR, WORKER_ATTR

START = Path(__file__).parent / "slurm" / "start.sh"


def _node_ready() -> bool:
    if shutil.which("sinfo") is None:
        return False
    result = subprocess.run(["sinfo", "-h", "-N", "-n", "localhost", "-o", "%T"], capture_output=True, text=True, timeout=30)
    return result.returncode == 0 and result.stdout.strip() in ("idle", "mixed", "allocated", "completing")


@pytest.fixture(scope="session")
def slurm_cluster() -> None:
    """The local test cluster, started with tests/slurm/start.sh unless it already runs."""
    if _node_ready():
        return
    if shutil.which("slurmctld") is None or shutil.which("munged") is None:
        pytest.skip("Slurm is not installed here (apt-get install -y slurm-wlm munge; .ci/run does)")
    if os.geteuid() != 0:
        pytest.skip("the test cluster's daemons run as root; run the Slurm tests as root (as .ci/run does)")
    result = subprocess.run([str(START)], capture_output=True, text=True, timeout=180)
    if result.returncode != 0:
        pytest.fail(f"the test Slurm cluster did not start: {result.stderr.strip() or result.stdout.strip()}", pytrace=False)


def _study_attrs(url: str) -> dict:
    return load(url).user_attrs


def _new_study(tmp_path: Path, url: str):
    """The tiny study as `launch` creates it in `url`, with no trial."""
    config = load_study(write_tiny_study(tmp_path / "studies"))
    return prepare_study(config, open_storage(url, heartbeat_interval=None), target=config.trials)


def _squeue(job: str) -> list[TaskState]:
    out = subprocess.run(["squeue", "--array", "--states=all", "-h", "-j", job, "-o", "%i|%T|%M|%R"],
                         capture_output=True, text=True, timeout=60).stdout
    return parse_squeue(out)


# ---------------------------------------------------------------- without a cluster


def test_batch_script_asks_for_one_gpu_per_task_and_keeps_the_url_out(tmp_path):
    settings = SlurmSettings.merged({"partition": "gpu", "options": ["--mem=16G"]}, time="1-00:00:00",
                                    options=["--qos=long"])
    script = batch_script(study="paper", workers=4, target=50, settings=settings, log_dir=tmp_path / "logs",
                          artifacts=tmp_path / "artifacts", workdir=tmp_path, python="/opt/venv/bin/python")
    directives = [line.split(" ", 1)[1] for line in script.splitlines() if line.startswith("#SBATCH ")]
    assert "--array=0-3" in directives and "--requeue" in directives and "--gres=gpu:1" in directives
    assert "--partition=gpu" in directives and "--time=1-00:00:00" in directives
    assert directives[-2:] == ["--mem=16G", "--qos=long"]  # the study key's options, then the flags'
    assert f"--output={tmp_path / 'logs'}/slurm-%A_%a.log" in directives
    assert not any(d.startswith("--account") for d in directives)
    assert "exec /opt/venv/bin/python -m hpsearch.cli worker --study paper --trials 50" in script
    assert "HPSEARCH_STORAGE" in script and "://" not in script

    cpu = SlurmSettings.merged({"partition": "gpu", "gpu": True}, partition="cpu", cpu=True)
    script = batch_script(study="s", workers=1, target=2, settings=cpu, log_dir=tmp_path, artifacts=tmp_path, workdir=tmp_path)
    assert "--gres" not in script and "--partition=cpu" in script and "export CUDA_VISIBLE_DEVICES=" in script
    # The script is valid bash.
    path = tmp_path / "job.sh"
    path.write_text(script)
    assert subprocess.run(["bash", "-n", str(path)], capture_output=True).returncode == 0


def test_the_sbatch_script_passes_an_s3_artifacts_url_verbatim_and_a_folder_as_an_absolute_path(tmp_path, monkeypatch):
    settings = SlurmSettings.merged(None, cpu=True)
    script = batch_script(study="paper", workers=2, target=5, settings=settings, log_dir=tmp_path, workdir=tmp_path,
                          artifacts="s3://models/hpsearch/paper", python="/opt/venv/bin/python")
    assert " --artifacts s3://models/hpsearch/paper --index " in script  # not folded to s3:/ nor made a path here
    monkeypatch.chdir(tmp_path)
    script = batch_script(study="paper", workers=2, target=5, settings=settings, log_dir=tmp_path, workdir=tmp_path,
                          artifacts="studies/artifacts", python="/opt/venv/bin/python")
    assert f" --artifacts {tmp_path.resolve() / 'studies' / 'artifacts'} --index " in script


def test_an_option_that_is_not_an_sbatch_option_is_refused():
    with pytest.raises(UsageError, match=r"'mem=16G' is not an sbatch option.*--slurm-option=--mem=16G"):
        SlurmSettings.merged(None, options=["mem=16G"])


def test_squeue_output_is_read_in_task_order():
    text = "12_10|PENDING|0:00|(Priority)\n12_2|RUNNING|1:02:03|node7\n\n12_0|CANCELLED|0:07|node1\n"
    tasks = parse_squeue(text)
    assert [t.task for t in tasks] == ["12_0", "12_2", "12_10"]
    assert tasks[1] == TaskState("12_2", "RUNNING", "1:02:03", "node7")
    assert summary(tasks) == "1 CANCELLED, 1 PENDING, 1 RUNNING"


@pytest.mark.parametrize("url", ["studies/hpsearch.journal", "file:/shared/h.journal", "sqlite:///study.db"])
def test_a_storage_the_nodes_cannot_share_is_refused(url):
    with pytest.raises(UsageError, match=r"needs a study storage every node reaches.*--storage postgresql"):
        check_storage(url)
    check_storage("postgresql+psycopg2://hp:secret@db.cluster/hpsearch")


def test_the_study_file_may_hold_slurm_settings(tmp_path):
    path = write_tiny_study(tmp_path, slurm={"partition": "gpu", "time": "12:00:00", "options": ["--mem=8G"]})
    config = load_study(path)
    assert config.slurm == {"partition": "gpu", "time": "12:00:00", "options": ["--mem=8G"], "gpu": True}
    assert type(config).from_dict(config.to_dict()).slurm == config.slurm
    document = yaml.safe_load(path.read_text())
    document["slurm"] = {"partition": "gpu", "nodes": 2}
    path.write_text(yaml.safe_dump(document))
    with pytest.raises(UsageError, match=r"unknown key 'nodes' in slurm"):
        load_study(path)


def test_status_json_lists_the_slurm_jobs_and_says_where_squeue_is_missing(tmp_path, monkeypatch, capsys):
    """A machine without Slurm (a laptop reading the study) shows the jobs, their states unknown, and exits 0."""
    journal = str(tmp_path / "study.journal")
    study = _new_study(tmp_path, journal)
    record_job(study, "12", 2)
    record_job(study, "15", 3)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path / "no-programs"))  # no squeue, sbatch or sacct here
    assert main(["status", "--study", "tiny", "--storage", journal, "--format", "json"]) == 0
    jobs = json.loads(capsys.readouterr().out)["slurm_jobs"]
    unknown = "squeue is not available on this machine"
    assert [(j["job"], j["tasks"], j["state"], j["array_tasks"]) for j in jobs] == [("12", 2, unknown, []), ("15", 3, unknown, [])]
    assert jobs[0]["submitted"] == study.user_attrs[SLURM_JOBS_ATTR][0]["submitted"]
    assert main(["status", "--study", "tiny", "--storage", journal, "--format", "yaml"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["slurm_jobs"] == jobs
    assert main(["status", "--study", "tiny", "--storage", journal]) == 0
    assert "Slurm job 15 (3 tasks, submitted " in capsys.readouterr().out


def test_status_json_of_a_study_without_slurm_jobs_has_an_empty_list(tmp_path, monkeypatch, capsys):
    journal = str(tmp_path / "study.journal")
    _new_study(tmp_path, journal)
    monkeypatch.chdir(tmp_path)
    assert main(["status", "--study", "tiny", "--storage", journal, "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["slurm_jobs"] == []


# ---------------------------------------------------------------- a real cluster


@pytest.mark.slow
@pytest.mark.postgres
def test_a_job_array_of_two_workers_completes_a_study(slurm_cluster, postgres_url, tmp_path):
    study_file = write_tiny_study(tmp_path / "studies", trials=3)
    launch = hpsearch("launch", "--executor", "slurm", "--study", str(study_file), "--workers", "2", "--cpu",
                      env={"HPSEARCH_STORAGE": postgres_url}, cwd=tmp_path)
    code, output = finish(launch, timeout=600)
    assert code == 0, output
    study = load(postgres_url)
    complete = [t for t in study.get_trials() if t.state == TrialState.COMPLETE]
    assert len(complete) >= 3, output
    (job,) = [entry["job"] for entry in study.user_attrs[SLURM_JOBS_ATTR]]
    logs = tmp_path / "studies" / "logs" / "tiny"
    assert {p.name for p in logs.glob("slurm-*.log")} == {f"slurm-{job}_0.log", f"slurm-{job}_1.log"}
    assert "://" not in (logs / "slurm-job.sh").read_text()  # the URL went through the environment
    assert [(t.task, t.state) for t in _squeue(job)] == [(f"{job}_0", "COMPLETED"), (f"{job}_1", "COMPLETED")]

    status = subprocess.run(["hpsearch", "status", "--study", "tiny"], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "HPSEARCH_STORAGE": postgres_url}, cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    assert f"Slurm job {job} (2 tasks" in status.stdout
    assert f"task {job}_0: COMPLETED" in status.stdout and f"task {job}_1: COMPLETED" in status.stdout


@pytest.mark.slow
@pytest.mark.postgres
def test_scancel_of_one_task_requeues_its_trial_and_the_study_reaches_its_target(slurm_cluster, postgres_url, tmp_path):
    # Trials long enough to be caught running: 2 complete trials, 60 steps each.
    study_file = write_tiny_study(tmp_path / "studies", trials=2, steps=60, eval_every=30)
    launch = hpsearch("launch", "--executor", "slurm", "--study", str(study_file), "--workers", "2", "--cpu",
                      env={"HPSEARCH_STORAGE": postgres_url}, cwd=tmp_path)
    try:
        def task_1_runs_a_trial():
            """a RUNNING trial of array task 1, its hyperparameters drawn"""
            try:
                study = load(postgres_url)
            except KeyError:  # the launcher has not created the study yet
                return None
            running = [t for t in study.get_trials(states=(TrialState.RUNNING,))
                       if str(t.user_attrs.get(WORKER_ATTR, "")).endswith("/w1") and t.params]
            return running and (study.user_attrs[SLURM_JOBS_ATTR][-1]["job"], running[0].number)

        job, number = wait_for(task_1_runs_a_trial, timeout=300, interval=0.5)
        subprocess.run(["scancel", f"{job}_1"], check=True, timeout=60)
        code, output = finish(launch, timeout=600)
    finally:
        if launch.poll() is None:
            launch.kill()
    assert code == 0, output
    trials = {t.number: t for t in load(postgres_url).get_trials()}
    cancelled = trials[number]
    assert cancelled.state == TrialState.FAIL and cancelled.user_attrs[FAIL_REASON_ATTR] == "interrupted", output
    (retry,) = [t for t in trials.values() if t.user_attrs.get(RETRY_OF_ATTR) == number]
    assert retry.state == TrialState.COMPLETE and retry.params == cancelled.params
    assert sum(t.state == TrialState.COMPLETE for t in trials.values()) >= 2
    states = {t.task: t.state for t in _squeue(job)}
    assert states == {f"{job}_0": "COMPLETED", f"{job}_1": "CANCELLED"}, states
    log = (tmp_path / "studies" / "logs" / "tiny" / f"slurm-{job}_1.log").read_text()
    assert f"trial {number} re-queued with the same hyperparameters" in log


@pytest.mark.postgres
def test_status_json_shows_the_tasks_of_a_real_job_array(slurm_cluster, postgres_url, tmp_path, monkeypatch, capsys):
    """A job array that ran on the cluster, and a job id the controller does not know (ended long ago)."""
    study = _new_study(tmp_path, postgres_url)
    submitted = subprocess.run(["sbatch", "--parsable", "--array=0-1", "--job-name=hpsearch-status-test",
                                f"--output={tmp_path}/job-%A_%a.log", f"--chdir={tmp_path}", "--wrap", "true"],
                               capture_output=True, text=True, timeout=60, check=True)
    job = submitted.stdout.strip().split(";")[0]

    def both_tasks_completed():
        """both tasks of the array COMPLETED in squeue"""
        return [t.state for t in _squeue(job)] == ["COMPLETED", "COMPLETED"]

    wait_for(both_tasks_completed, timeout=120, interval=0.5)
    record_job(study, job, 2)
    record_job(study, "67000000", 1)  # above any id this cluster has given
    monkeypatch.chdir(tmp_path)
    assert main(["status", "--study", "tiny", "--storage", postgres_url, "--format", "json"]) == 0
    real, forgotten = json.loads(capsys.readouterr().out)["slurm_jobs"]
    assert (real["job"], real["tasks"], real["state"]) == (job, 2, "2 COMPLETED")
    assert [(t["task"], t["state"], t["where"]) for t in real["array_tasks"]] == [
        (f"{job}_0", "COMPLETED", "localhost"), (f"{job}_1", "COMPLETED", "localhost")]
    assert (forgotten["job"], forgotten["state"], forgotten["array_tasks"]) == (
        "67000000", "ended (no longer known to the Slurm controller)", [])
    assert main(["status", "--study", "tiny", "--storage", postgres_url, "--format", "yaml"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["slurm_jobs"] == [real, forgotten]


@pytest.mark.postgres
def test_launch_refuses_a_bad_dataset_before_submitting_a_job(slurm_cluster, postgres_url, tmp_path):
    study_file = write_tiny_study(tmp_path / "studies", name="baddata")
    data = write_dataset(tmp_path / "studies" / "data", cases=4, shape=(32, 32, 8), seed=0)
    for label in (data / "labelsTr").iterdir():
        label.write_bytes(b"not a NIfTI file")

    def submitted_jobs() -> list[str]:
        return subprocess.run(["squeue", "--states=all", "-h", "--name=hpsearch-baddata", "-o", "%i"],
                              capture_output=True, text=True, timeout=60, check=True).stdout.split()

    before = submitted_jobs()
    launch = hpsearch("launch", "--executor", "slurm", "--study", str(study_file), "--workers", "1", "--cpu",
                      env={"HPSEARCH_STORAGE": postgres_url}, cwd=tmp_path)
    try:
        code, output = finish(launch, timeout=180)
    finally:
        if launch.poll() is None:
            launch.kill()
            subprocess.run(["scancel", "--name=hpsearch-baddata"], timeout=60)
    assert code == 2, output
    lines = output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hpsearch: error: the study's dataset cannot be used: "), output
    assert "labelsTr/case_00" in lines[0] and "is not a readable NIfTI file" in lines[0]
    assert submitted_jobs() == before
    assert not (tmp_path / "studies" / "logs" / "baddata" / "slurm-job.sh").exists()
    with pytest.raises(KeyError):  # no study, so no slurm_jobs attribute either
        load(postgres_url, "baddata")
