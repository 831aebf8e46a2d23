"""Checks that need this machine, run before the first trial: memory of one training step, one case of the dataset.

Kept free of Keras and TensorFlow: the memory of a training step is an estimate from the network's
shapes, and the dataset is read through the model's face (numpy and nibabel only).
"""

from __future__ import annotations

import os
from pathlib import Path

from hpsearch.errors import UsageError

MEMORY_ENV = "HPSEARCH_MEMORY_LIMIT"
GIB = 2**30

# What one process holds before its first step: the Python and TensorFlow runtime with a built and
# compiled network (about 0.55 GB measured on a CPU with tensorflow-cpu; the full build, which
# also loads its CUDA libraries, about 0.15 GB more), plus the first step's trace (about 0.1 GB).
RUNTIME_BYTES = int(0.9 * GIB)
# Float32 tensors of a convolution's output size kept for the backward pass: its ReLU output, the
# dropout mask and the dropped output (the same for the factorized and the full block).
KEPT_PER_CONV = 3
# Copies of every weight during training: the weights, their gradients, Adam's two moments, and the
# best weights kept since the last evaluation.
WEIGHT_COPIES = 5
_SIZE_UNITS = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}


def unet_parameters(*, channels: int, depth: int, block: str, in_channels: int = 1, num_classes: int = 2) -> int:
    """Trainable parameters of model.unet.build_unet with these arguments (exact)."""
    taps = 9 if block == "factorized" else 27  # a 3×3 plane or a 3×3×3 kernel

    def conv_block(c_in: int, c_out: int) -> int:
        return (taps * c_in + 1) * c_out + 3 * (taps * c_out + 1) * c_out

    total, c_in = 0, in_channels
    for level in range(depth + 1):  # the encoder blocks, then the bottom block
        total += conv_block(c_in, channels * 2**level)
        c_in = channels * 2**level
    for level in reversed(range(depth)):
        filters = channels * 2**level
        total += (c_in + 1) * filters  # the 1×1×1 transposed convolution
        total += conv_block(2 * filters, filters)  # after concatenating the skip
        c_in = filters
    return total + (c_in + 1) * num_classes


def training_step_bytes(*, channels: int, depth: int, patch: tuple[int, int, int], batch: int, block: str,
                        in_channels: int = 1, num_classes: int = 2) -> int:
    """Estimated peak memory in bytes of a process training the U-Net, at its first training step.

    RUNTIME_BYTES + 4 bytes x (activations + WEIGHT_COPIES x parameters), where a block at level l
    (voxels V / 8**l, filters F = channels * 2**l) keeps KEPT_PER_CONV tensors of V_l * F for each of
    its 4 convolutions, and a decoder level adds its upsampled (F) and concatenated (2F) tensors.
    An upper bound within about 25% of the peak RSS measured on a CPU (tests/test_preflight.py).
    """
    voxels = patch[0] * patch[1] * patch[2]
    elements = voxels * (in_channels + 2 * num_classes)  # the image, the one-hot labels, the softmax
    for level in range(depth + 1):
        level_voxels, filters = voxels // 8**level, channels * 2**level
        elements += 4 * KEPT_PER_CONV * level_voxels * filters
        if level < depth:  # the decoder block of this level
            elements += (4 * KEPT_PER_CONV + 3) * level_voxels * filters
    weights = unet_parameters(channels=channels, depth=depth, block=block, in_channels=in_channels,
                              num_classes=num_classes)
    return RUNTIME_BYTES + 4 * (batch * elements + WEIGHT_COPIES * weights)


def memory_limit() -> tuple[int | None, str]:
    """(bytes a training process may use, where that figure comes from): $HPSEARCH_MEMORY_LIMIT, else the
    machine's total RAM (/proc/meminfo); (None, ...) where neither is known."""
    text = os.environ.get(MEMORY_ENV, "").strip()
    if text:
        return parse_size(text, f"${MEMORY_ENV}"), f"${MEMORY_ENV}={text}"
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024, "this machine's total RAM"
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "this machine's total RAM"
    except (OSError, ValueError, AttributeError):
        return None, "unknown"


def parse_size(text: str, where: str) -> int:
    """'24G', '512MiB', '1.5 GB' or a number of bytes -> bytes (units are powers of 1024)."""
    number = text.strip().lower().removesuffix("b").removesuffix("i")
    unit = number[-1:] if number[-1:] in _SIZE_UNITS else ""
    try:
        size = float(number[: len(number) - len(unit)].strip()) * _SIZE_UNITS[unit]
    except ValueError:
        size = 0.0
    if not 1 <= size < float("inf"):
        raise UsageError(f"{where} is {text!r}, not a memory size; write e.g. 24G, 512M or a number of bytes.")
    return int(size)


def format_bytes(size: float) -> str:
    return f"{size / GIB:.1f} GiB" if size >= GIB / 10 else f"{size / 2**20:.0f} MiB"


def check_dataset(config) -> None:
    """Open one training case (its image and label) of the study's dataset, as a worker will.

    Raises UsageError naming the file and the fix where the dataset description, the split or that
    case cannot be used; the dataset folder must exist (write synthetic data first).
    """
    from model import InputError, load_dataset, split_cases

    try:
        dataset = load_dataset(config.data_path)
        split = split_cases(dataset.case_names, **config.split)
    except InputError as error:
        raise UsageError(f"the study's dataset cannot be used: {_sentence(error)}") from None
    if not split.val:
        raise UsageError(
            f"data.split.val_fraction {config.split['val_fraction']} gives no validation case of the "
            f"{len(dataset.case_names)} in {config.data_path}, so no trial could be measured; raise it above 0."
        )
    name = split.train[0]
    files = next(case for case in dataset.cases if case.name == name)
    if files.label is None:
        raise UsageError(f"training case {name!r} of {config.data_path} has no label file; add it to labelsTr/.")
    try:
        dataset.load_cases([name])
    except InputError as error:
        raise UsageError(f"the study's dataset cannot be used: {_sentence(error)}") from None
    except OSError as error:  # a file that vanished or cannot be read between listing and opening
        where = Path(error.filename) if error.filename else config.data_path
        raise UsageError(f"{where} cannot be read ({error.strerror}); check the dataset's files.") from None


def _sentence(error: Exception) -> str:
    return str(error).rstrip(".") + "."
