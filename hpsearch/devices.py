"""Which GPUs a launcher hands to its workers, and how a worker checks and configures its share.

The launcher finds GPUs without importing TensorFlow (`nvidia-smi -L`, else the driver's /proc
entries) and spreads its workers over them round-robin, so several workers may share one GPU.
Each worker sees its GPU through CUDA_VISIBLE_DEVICES, set before TensorFlow loads; a GPU is
named as CUDA_VISIBLE_DEVICES names it: an index ('0'), a UUID ('GPU-3a1b...') or a MIG
instance ('MIG-c6d4...'). A CUDA_VISIBLE_DEVICES the launcher inherits (Slurm, Kubernetes)
limits the GPUs it uses, and its entries are what the workers get.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Mapping

from hpsearch.errors import UsageError

NVIDIA_SMI_QUERY = ["nvidia-smi", "-L"]  # one line per GPU, and one indented line per MIG instance
_GPU_LINE = re.compile(r"^GPU (\d+):.*\(UUID: (GPU-[^)\s]+)\)")
_MIG_LINE = re.compile(r"^\s+MIG .*\(UUID: (MIG-[^)\s]+)\)")
GPU_INSTALL = "pip install 'hpsearch[gpu]'"
ON_PURPOSE = "or pass --cpu to train on the CPU on purpose"
JAX_PREALLOCATE = "XLA_PYTHON_CLIENT_PREALLOCATE"  # set to 'false' for workers that share a GPU


@dataclasses.dataclass(frozen=True)
class Gpu:
    """One NVIDIA GPU: its index ('0'), its UUID ('GPU-...', None where unknown) and its MIG instances' UUIDs."""

    index: str
    uuid: str | None = None
    mig: tuple[str, ...] = ()

    def units(self) -> list[str]:
        """What a worker can be given on it: each MIG instance where it is split, else the whole GPU."""
        return list(self.mig) or [self.index]


def parse_nvidia_smi(listing: str) -> list[Gpu]:
    """The GPUs in `nvidia-smi -L`'s output."""
    gpus: list[Gpu] = []
    for line in listing.splitlines():
        if match := _GPU_LINE.match(line):
            gpus.append(Gpu(match.group(1), match.group(2)))
        elif (match := _MIG_LINE.match(line)) and gpus:
            gpus[-1] = dataclasses.replace(gpus[-1], mig=gpus[-1].mig + (match.group(1),))
    return gpus


def detect_gpus() -> list[Gpu]:
    """The NVIDIA GPUs on this machine, in nvidia-smi's order; [] without any."""
    if shutil.which("nvidia-smi"):
        try:
            listing = subprocess.run(NVIDIA_SMI_QUERY, capture_output=True, text=True, timeout=20, check=True).stdout
            return parse_nvidia_smi(listing)
        except (OSError, subprocess.SubprocessError):
            pass
    proc = Path("/proc/driver/nvidia/gpus")
    if not proc.is_dir():
        return []
    # One folder per GPU, named by its PCI bus id: nvidia-smi's default order.
    gpus = []
    for i, folder in enumerate(sorted(proc.iterdir())):
        try:
            info = (folder / "information").read_text(errors="replace")
        except OSError:
            info = ""
        uuid = re.search(r"GPU UUID:\s*(GPU-\S+)", info)
        gpus.append(Gpu(str(i), uuid.group(1) if uuid else None))
    return gpus


def _key(name: str, gpus: list[Gpu]) -> str | None:
    """What `name` (an index, a UUID or MIG UUID, or a unique prefix of one) denotes among `gpus`; None if nothing."""
    lowered = name.lower()
    for gpu in gpus:
        if name == gpu.index or (gpu.uuid and lowered.startswith("gpu-") and gpu.uuid.lower().startswith(lowered)):
            return gpu.uuid or gpu.index
        for mig in gpu.mig:
            if lowered.startswith("mig-") and mig.lower().startswith(lowered):
                return mig
    return None


def _expand(name: str, gpus: list[Gpu]) -> list[str]:
    """The units `name` gives workers: a GPU split into MIG instances means its instances."""
    key = _key(name, gpus)
    for gpu in gpus:
        if key in (gpu.uuid, gpu.index) and gpu.mig:
            return list(gpu.mig)
    return [name]


def inherited_gpus(environ: Mapping[str, str], found: list[Gpu]) -> list[str] | None:
    """The entries of an inherited CUDA_VISIBLE_DEVICES that name a GPU here; None where it is not set."""
    text = environ.get("CUDA_VISIBLE_DEVICES")
    if text is None:
        return None
    entries = []
    for part in text.split(","):
        part = part.strip()
        if not part or part.startswith("-"):
            break  # CUDA stops at the first entry that is not a device: "-1" hides them all
        entries.append(part)
    if not found:
        return entries  # nvidia-smi is absent here; the scheduler that set it knows its GPUs
    kept = [entry for entry in entries if _key(entry, found) is not None]
    if entries and not kept:
        have = ", ".join(unit for gpu in found for unit in gpu.units())
        raise UsageError(
            f"CUDA_VISIBLE_DEVICES={text} names no GPU this machine has (GPUs: {have}); "
            "unset it, or list GPUs from those."
        )
    return kept


def choose_gpus(requested: str | None, workers: int | None = None, *, per_gpu: int | None = None,
                cpu: bool = False, environ: Mapping[str, str] | None = None) -> list[str | None]:
    """The GPU of each worker (None = CPU only), workers spread over the GPUs round-robin.

    Args:
        requested: '--gpus' as given ('0,2', 'GPU-3a1b...,MIG-c6d4...'), or None to use the GPUs found.
        workers: number of worker processes (with `per_gpu` None).
        per_gpu: '--workers-per-gpu': this many workers on each GPU, instead of `workers`.
        cpu: '--cpu': every worker on the CPU, GPUs or not.
        environ: the launcher's environment (default os.environ); its CUDA_VISIBLE_DEVICES limits the GPUs.
    """
    environ = os.environ if environ is None else environ
    if cpu:
        if requested is not None or per_gpu is not None:
            flag = "--gpus" if requested is not None else "--workers-per-gpu"
            raise UsageError(f"{flag} asks for GPUs and --cpu for none; drop one of them.")
        return [None] * workers
    found = detect_gpus()
    inherited = inherited_gpus(environ, found)
    if inherited is None:
        available = [unit for gpu in found for unit in gpu.units()]
    else:
        available = inherited
    if requested is None:
        chosen = available
    else:
        chosen = []
        for name in (part.strip() for part in requested.split(",")):
            if not name:
                continue
            units = _pick(name, found, inherited, environ)
            chosen += [unit for unit in units if unit not in chosen]
    if not chosen:
        if per_gpu is not None:
            raise UsageError(f"--workers-per-gpu {per_gpu} needs GPUs, and nvidia-smi lists none here; "
                             f"use --workers N to run N workers on the CPU.")
        return [None] * workers
    count = per_gpu * len(chosen) if per_gpu is not None else workers
    return [chosen[i % len(chosen)] for i in range(count)]


def _pick(name: str, found: list[Gpu], inherited: list[str] | None, environ: Mapping[str, str]) -> list[str]:
    """The units '--gpus' entry `name` stands for; a UsageError where this machine (or CUDA_VISIBLE_DEVICES) lacks it."""
    if inherited is None:
        if _key(name, found) is not None:
            return _expand(name, found)
        have = ", ".join(unit for gpu in found for unit in gpu.units()) or "none"
        raise UsageError(f"--gpus names GPU {name}, which this machine does not have (GPUs: {have}); choose from those.")
    wanted = _key(name, found) if found else name
    for entry in inherited:
        if entry == name or (found and _key(entry, found) == wanted):
            return [entry]  # spelt as the scheduler spelt it
    allowed = ", ".join(inherited) or "none"
    raise UsageError(
        f"--gpus names GPU {name}, which CUDA_VISIBLE_DEVICES={environ.get('CUDA_VISIBLE_DEVICES')} leaves out "
        f"(allowed: {allowed}); choose from those."
    )


def sharing(gpus: list[str | None]) -> dict[str, int]:
    """How many workers each GPU gets."""
    counts: dict[str, int] = {}
    for gpu in gpus:
        if gpu is not None:
            counts[gpu] = counts.get(gpu, 0) + 1
    return counts


def describe_gpus(gpus: list[str | None]) -> str:
    """'GPU 0, GPU 1' or, where workers share, 'GPU 0 (2 workers), GPU 1 (2 workers)'."""
    return ", ".join(f"GPU {gpu}" + (f" ({n} workers)" if n > 1 else "") for gpu, n in sharing(gpus).items())


def cpu_threads(workers: int) -> int:
    """Each CPU worker's thread cap: its share of the cores, at least one."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // workers)


def configure_tensorflow(threads: int | None) -> None:
    """Cap TensorFlow's CPU threads and let GPU memory grow; call before any TensorFlow op runs."""
    if threads:
        # OpenMP/oneDNN read these at load; TensorFlow's own pools are set below.
        os.environ["OMP_NUM_THREADS"] = str(threads)
    from model import import_tensorflow

    tf = import_tensorflow()  # None where Keras runs on another backend
    if tf is None:
        return

    if threads:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    for gpu in tf.config.list_physical_devices("GPU"):
        # Workers sharing a GPU each take what they use, not the whole GPU.
        tf.config.experimental.set_memory_growth(gpu, True)


def given_gpu(environ: Mapping[str, str] | None = None) -> str | None:
    """The GPU this process was given through CUDA_VISIBLE_DEVICES; None where it is unset, empty or '-1'."""
    text = (os.environ if environ is None else environ).get("CUDA_VISIBLE_DEVICES", "").strip()
    return None if not text or text.startswith("-") else text


def require_gpu(worker: str, gpu: str) -> None:
    """Refuse to train on the CPU in silence: a UsageError naming the cause and fix where the backend sees no GPU.

    Args:
        worker: the worker's short name ('w0').
        gpu: the CUDA_VISIBLE_DEVICES it was given.
    """
    backend = os.environ.get("KERAS_BACKEND", "tensorflow")
    if backend == "jax":
        seen, cause, fix = _jax_gpus()
        name = "JAX"
    elif backend == "tensorflow":
        seen, cause, fix = _tensorflow_gpus()
        name = "TensorFlow"
    else:
        return  # hpsearch runs on TensorFlow or JAX only; Keras itself refuses other backends' absence
    if not seen:
        raise UsageError(f"worker {worker} was given GPU {gpu}, but {name} sees no GPU ({cause}): {fix}, {ON_PURPOSE}.")


def _installed(name: str) -> bool:
    try:
        metadata.distribution(name)
    except metadata.PackageNotFoundError:
        return False
    return True


def _tensorflow_gpus() -> tuple[bool, str, str]:
    """Whether TensorFlow sees a GPU; else why not, and the fix."""
    from model import import_tensorflow

    tf = import_tensorflow()
    if tf.config.list_physical_devices("GPU"):
        return True, "", ""
    if sys.platform != "linux":
        return False, f"TensorFlow has no CUDA build for {sys.platform}", "use Linux (WSL2 on Windows)"
    if _installed("tensorflow-cpu"):
        # Both wheels install the same files under tensorflow/, so whichever pip wrote last runs.
        # Uninstalling it removes them from tensorflow too, hence both, then the CUDA build afresh.
        return False, "tensorflow-cpu is installed", f"pip uninstall -y tensorflow-cpu tensorflow && {GPU_INSTALL}"
    if not tf.test.is_built_with_cuda():
        return (False, f"this TensorFlow {tf.__version__} build has no CUDA",
                f"pip install --force-reinstall 'tensorflow[and-cuda]=={tf.__version__}'")
    if not (_installed("nvidia-cudnn-cu12") or _installed("nvidia-cudnn-cu13")):
        return False, "TensorFlow's CUDA libraries, the nvidia-*-cu12 wheels, are not installed", GPU_INSTALL
    return (False, "TensorFlow has CUDA and its libraries, so the NVIDIA driver or the GPU is the cause; "
            "TF_CPP_MIN_LOG_LEVEL=0 shows TensorFlow's reason", "run nvidia-smi to check the driver and the GPU")


def _jax_gpus() -> tuple[bool, str, str]:
    """Whether JAX sees a GPU; else why not, and the fix."""
    import jax

    if any(device.platform in ("gpu", "cuda", "rocm") for device in jax.devices()):
        return True, "", ""
    if not any(_installed(f"jax-cuda{major}-plugin") for major in (12, 13)):
        return False, "JAX's CUDA plugin is not installed", "pip install -U 'jax[cuda12]'"
    return (False, "JAX has its CUDA plugin, so the NVIDIA driver or the GPU is the cause; JAX's warning above "
            "gives its reason", "run nvidia-smi to check the driver and the GPU")
