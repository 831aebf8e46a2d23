"""GPU choice for workers (round-robin, inherited CUDA_VISIBLE_DEVICES, UUIDs and MIG instances), read from a
fake `nvidia-smi` on PATH; the worker's refusal to fall back to the CPU in silence; the GPU install."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from hpsearch.devices import NVIDIA_SMI_QUERY, choose_gpus, describe_gpus, detect_gpus, given_gpu, parse_nvidia_smi
from hpsearch.errors import UsageError

ROOT = Path(__file__).resolve().parent.parent

UUIDS = [
    "GPU-5d5ba0d6-d33d-2b2c-524d-e6a8b1a0a0b1",
    "GPU-3a1b5c2e-8f7d-4b6a-9c0e-1d2f3a4b5c6d",
    "GPU-90f1c2d3-aaaa-bbbb-cccc-0123456789ab",
    "GPU-e1e2e3e4-1111-2222-3333-444455556666",
]
MIGS = ["MIG-c6d4f1ef-42e4-5de3-91c7-45d71c87eb3f", "MIG-cba663e8-9bed-5b25-b243-5985ef7c9beb"]


def listing(gpus: int, mig_on: int | None = None) -> str:
    """What `nvidia-smi -L` prints for `gpus` GPUs, GPU `mig_on` split into two MIG instances."""
    lines = []
    for i in range(gpus):
        lines.append(f"GPU {i}: NVIDIA H200 (UUID: {UUIDS[i]})")
        if i == mig_on:
            lines += [f"  MIG 3g.71gb     Device  {j}: (UUID: {mig})" for j, mig in enumerate(MIGS)]
    return "\n".join(lines) + "\n"


def fake_nvidia_smi(folder: Path, text: str) -> Path:
    """A folder holding an `nvidia-smi` that prints `text` for the query hpsearch.devices makes (and fails otherwise)."""
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "nvidia-smi"
    query = " ".join(NVIDIA_SMI_QUERY[1:])
    script.write_text(f'#!/bin/sh\n[ "$*" = "{query}" ] || exit 9\ncat <<\'EOF\'\n{text}EOF\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return folder


@pytest.fixture
def gpus_here(tmp_path, monkeypatch):
    """Install a fake nvidia-smi listing on PATH: gpus_here(listing(2))."""
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)

    def install(text: str) -> None:
        folder = fake_nvidia_smi(tmp_path / "bin", text)
        monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")

    return install


def test_nvidia_smi_listing_is_read_with_mig_instances():
    gpus = parse_nvidia_smi(listing(2, mig_on=1))
    assert [g.index for g in gpus] == ["0", "1"]
    assert [g.uuid for g in gpus] == UUIDS[:2]
    assert gpus[0].mig == () and gpus[1].mig == tuple(MIGS)
    assert gpus[0].units() == ["0"] and gpus[1].units() == MIGS


def test_the_fake_nvidia_smi_is_what_detect_reads(gpus_here):
    gpus_here(listing(3))
    assert [g.uuid for g in detect_gpus()] == UUIDS[:3]


def test_workers_are_spread_round_robin(gpus_here):
    gpus_here(listing(2))
    assert choose_gpus(None, 5) == ["0", "1", "0", "1", "0"]
    assert choose_gpus(None, 1) == ["0"]
    assert choose_gpus(None, None, per_gpu=3) == ["0", "1"] * 3
    assert choose_gpus("1", 3) == ["1", "1", "1"]
    assert choose_gpus("1,0,1", 3) == ["1", "0", "1"]  # a GPU named twice counts once
    assert describe_gpus(choose_gpus(None, 3)) == "GPU 0 (2 workers), GPU 1"


def test_gpus_are_named_by_uuid_and_mig_instance(gpus_here):
    gpus_here(listing(3, mig_on=2))
    # As CUDA_VISIBLE_DEVICES takes them: the whole UUID or a unique prefix, spelt as given.
    assert choose_gpus(f"{UUIDS[1]},{UUIDS[0][:12]}", 4) == [UUIDS[1], UUIDS[0][:12], UUIDS[1], UUIDS[0][:12]]
    assert choose_gpus(MIGS[1], 2) == [MIGS[1], MIGS[1]]
    # A GPU split into MIG instances gives its instances, named or found.
    assert choose_gpus("2", 2) == MIGS
    assert choose_gpus(None, None, per_gpu=1) == ["0", "1", *MIGS]
    with pytest.raises(UsageError, match=r"^--gpus names GPU GPU-ffff, which this machine does not have \(GPUs: 0, 1, MIG-"):
        choose_gpus("GPU-ffff", 1)
    with pytest.raises(UsageError, match=r"--gpus names GPU 3, which this machine does not have"):
        choose_gpus("0,3", 1)


def test_an_inherited_cuda_visible_devices_limits_the_gpus(gpus_here):
    gpus_here(listing(4, mig_on=3))
    # Slurm's indices, or Kubernetes' UUIDs: its entries are what the workers get, round-robin.
    assert choose_gpus(None, 3, environ={"CUDA_VISIBLE_DEVICES": "2,1"}) == ["2", "1", "2"]
    assert choose_gpus(None, None, per_gpu=2, environ={"CUDA_VISIBLE_DEVICES": UUIDS[2]}) == [UUIDS[2]] * 2
    assert choose_gpus(None, 2, environ={"CUDA_VISIBLE_DEVICES": MIGS[0]}) == [MIGS[0]] * 2
    # --gpus picks among them, by any name of the GPU, spelt as the scheduler spelt it.
    assert choose_gpus(UUIDS[1], 1, environ={"CUDA_VISIBLE_DEVICES": "2,1"}) == ["1"]
    with pytest.raises(UsageError, match=r"^--gpus names GPU 0, which CUDA_VISIBLE_DEVICES=2,1 leaves out \(allowed: 2, 1\)"):
        choose_gpus("0", 1, environ={"CUDA_VISIBLE_DEVICES": "2,1"})
    # Hidden GPUs: the CPU.
    assert choose_gpus(None, 2, environ={"CUDA_VISIBLE_DEVICES": ""}) == [None, None]
    assert choose_gpus(None, 2, environ={"CUDA_VISIBLE_DEVICES": "-1"}) == [None, None]
    with pytest.raises(UsageError, match=r"^CUDA_VISIBLE_DEVICES=7 names no GPU this machine has \(GPUs: 0, 1, 2, MIG-"):
        choose_gpus(None, 1, environ={"CUDA_VISIBLE_DEVICES": "7"})


def test_without_gpus_workers_share_the_cpu(gpus_here):
    if Path("/proc/driver/nvidia/gpus").is_dir():
        pytest.skip("this machine has NVIDIA driver entries in /proc, read where nvidia-smi lists nothing")
    gpus_here("No devices were found\n")
    assert detect_gpus() == []
    assert choose_gpus(None, 3) == [None, None, None]
    with pytest.raises(UsageError, match=r"^--workers-per-gpu 2 needs GPUs, and nvidia-smi lists none here"):
        choose_gpus(None, None, per_gpu=2)
    # A scheduler's CUDA_VISIBLE_DEVICES is trusted where nvidia-smi lists nothing.
    assert choose_gpus(None, 2, environ={"CUDA_VISIBLE_DEVICES": "3"}) == ["3", "3"]


def test_cpu_on_purpose(gpus_here):
    gpus_here(listing(2))
    assert choose_gpus(None, 2, cpu=True) == [None, None]
    with pytest.raises(UsageError, match=r"^--gpus asks for GPUs and --cpu for none; drop one of them\.$"):
        choose_gpus("0", 2, cpu=True)
    with pytest.raises(UsageError, match=r"^--workers-per-gpu asks for GPUs and --cpu for none"):
        choose_gpus(None, None, per_gpu=2, cpu=True)


def test_workers_sharing_a_gpu_do_not_preallocate_it(tmp_path, monkeypatch):
    from hpsearch.launcher import Launcher

    monkeypatch.delenv("XLA_PYTHON_CLIENT_PREALLOCATE", raising=False)
    launcher = Launcher(None, "study.journal", None, target=1, gpus=["0", "1", "0", None], threads=None,
                        artifacts=tmp_path / "artifacts", log_dir=tmp_path / "logs", stall_seconds=1800)
    try:
        envs = [launcher.environment(slot) for slot in launcher.slots]
    finally:
        launcher.cleanup()
    assert [env["CUDA_VISIBLE_DEVICES"] for env in envs] == ["0", "1", "0", ""]
    assert [env.get("XLA_PYTHON_CLIENT_PREALLOCATE") for env in envs] == ["false", None, "false", None]
    assert all(env["HPSEARCH_STORAGE"] == "study.journal" for env in envs)
    monkeypatch.setenv("XLA_PYTHON_CLIENT_PREALLOCATE", "true")  # the user's own choice wins
    assert launcher.environment(launcher.slots[0])["XLA_PYTHON_CLIENT_PREALLOCATE"] == "true"


def test_given_gpu():
    assert given_gpu({}) is None
    assert given_gpu({"CUDA_VISIBLE_DEVICES": ""}) is None
    assert given_gpu({"CUDA_VISIBLE_DEVICES": "-1"}) is None
    assert given_gpu({"CUDA_VISIBLE_DEVICES": " 1 "}) == "1"
    assert given_gpu({"CUDA_VISIBLE_DEVICES": MIGS[0]}) == MIGS[0]


@pytest.mark.parametrize("backend", ["tensorflow", pytest.param("jax", marks=pytest.mark.backends)])
def test_the_backend_is_asked_for_its_gpus(backend):
    """require_gpu asks the backend Keras runs on (TensorFlow, or JAX's jax.devices()); here, on the CPU, it refuses."""
    pytest.importorskip(backend)
    skip_where_a_gpu_is_real()
    code = "from hpsearch.devices import require_gpu; require_gpu('w3', 'GPU-5d5b')"
    env = {**os.environ, "KERAS_BACKEND": backend, "CUDA_VISIBLE_DEVICES": "0", "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 1 and "UsageError" in done.stderr, done.stderr
    name = {"tensorflow": "TensorFlow", "jax": "JAX"}[backend]
    assert f"worker w3 was given GPU GPU-5d5b, but {name} sees no GPU (" in done.stderr
    assert "or pass --cpu to train on the CPU on purpose." in done.stderr


def skip_where_a_gpu_is_real() -> None:
    """The refusal needs a backend that sees no GPU: this machine's, unless it has one."""
    if detect_gpus():
        pytest.skip("this machine has an NVIDIA GPU; the refusal is tested where none is")


def backend_name() -> str:
    return "JAX" if os.environ.get("KERAS_BACKEND") == "jax" else "TensorFlow"


@pytest.mark.slow
def test_a_worker_given_a_gpu_it_cannot_see_stops(tmp_path):
    """`hpsearch worker --gpu UUID` on this CPU-only machine: one sentence, exit code 2, no traceback."""
    from searchutil import write_tiny_study

    skip_where_a_gpu_is_real()
    study = write_tiny_study(tmp_path / "studies")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    done = subprocess.run(
        [sys.executable, "-m", "hpsearch.cli", "worker", "--study", str(study), "--storage", str(tmp_path / "s.journal"),
         "--gpu", UUIDS[0]],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("hpsearch: error:")]
    assert len(errors) == 1, done.stderr
    assert re.fullmatch(
        rf"hpsearch: error: worker w0 was given GPU {UUIDS[0]}, but {backend_name()} sees no GPU \([^)]+\): "
        r".+, or pass --cpu to train on the CPU on purpose\.", errors[0]), errors[0]
    if backend_name() == "TensorFlow":
        assert "pip install 'hpsearch[gpu]'" in errors[0]
    # --cpu: on purpose, no refusal; the worker runs (here until its one trial is done).
    done = subprocess.run(
        [sys.executable, "-m", "hpsearch.cli", "worker", "--study", str(study), "--storage", str(tmp_path / "s.journal"),
         "--cpu", "--trials", "1"],
        capture_output=True, text=True, env={**env, "CUDA_VISIBLE_DEVICES": "0"}, timeout=300,
    )
    assert done.returncode == 0, done.stderr


def test_the_gpu_extra_brings_the_cuda_build_of_tensorflow():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    default = [d for d in project["dependencies"] if re.match(r"tensorflow(-cpu)?\b", d)]
    gpu = project["optional-dependencies"]["gpu"]
    assert [d for d in gpu if d.startswith("tensorflow[and-cuda]")], gpu
    # The CUDA build beside tensorflow-cpu would share its files under tensorflow/ (whichever pip wrote last
    # runs), so on Linux the default is the `tensorflow` wheel that the extra completes with CUDA's libraries.
    assert not [d for d in default if d.startswith("tensorflow-cpu")], default
    bound = re.search(r">=\s*([\d.]+)", default[0]).group(1)
    assert all(re.search(rf">=\s*{re.escape(bound)}\b", d) for d in gpu if d.startswith("tensorflow")), (default, gpu)
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    assert re.search(r"""pip install ["']?\.\[gpu\]""", dockerfile)
    assert "pip uninstall" not in dockerfile and "tensorflow[and-cuda]==" not in dockerfile
