"""Which GPUs a launcher hands to its workers, and how a worker pins TensorFlow to its share.

The launcher finds GPUs without importing TensorFlow (nvidia-smi, else the driver's /proc
entries); each worker sees one GPU through CUDA_VISIBLE_DEVICES, set before TensorFlow loads.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from hpsearch.errors import UsageError


def detect_gpus() -> list[str]:
    """Indices of the NVIDIA GPUs on this machine, as strings ('0', '1', ...); [] without any."""
    if shutil.which("nvidia-smi"):
        try:
            listing = subprocess.run(
                ["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
                capture_output=True, text=True, timeout=20, check=True,
            ).stdout
            return [line.strip() for line in listing.splitlines() if line.strip()]
        except (OSError, subprocess.SubprocessError):
            pass
    proc = Path("/proc/driver/nvidia/gpus")
    return [str(i) for i in range(len(list(proc.iterdir())))] if proc.is_dir() else []


def choose_gpus(requested: str | None, workers: int) -> list[str | None]:
    """The GPU of each worker (None = CPU only): one GPU per worker.

    Args:
        requested: '--gpus' as given ('0,2'), or None to use the GPUs found.
        workers: number of worker processes.
    """
    found = detect_gpus()
    if requested is None:
        if not found:
            return [None] * workers
        chosen = found
    else:
        chosen = [part.strip() for part in requested.split(",") if part.strip()]
        missing = [gpu for gpu in chosen if gpu not in found]
        if missing:
            have = ", ".join(found) if found else "none"
            raise UsageError(f"--gpus names GPU {missing[0]}, which this machine does not have (GPUs: {have}); choose from those.")
    if workers > len(chosen):
        raise UsageError(
            f"--workers {workers} asks for more workers than the {len(chosen)} GPU(s) {','.join(chosen)}; "
            f"use --workers {len(chosen)} (one worker per GPU)."
        )
    return chosen[:workers]


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
        tf.config.experimental.set_memory_growth(gpu, True)
