"""Whole-volume inference of any size: pad to a multiple of 2**depth, predict with dropout off, crop back.

Inference runs in float32 unless asked for bfloat16 (`inference_model`), which is faster on
hardware with bfloat16 units (`bfloat16_is_native`), at the cost of bfloat16's rounding in the
probabilities.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from model.config import PRECISIONS
from model.data import Case
from model.errors import InputError
from model.metrics import iou_counts

# /proc/cpuinfo flags of the units that run bfloat16 products natively; without them oneDNN
# emulates bfloat16 and inference gets slower, not faster.
BFLOAT16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def pad_to_multiple(image: np.ndarray, multiple: int) -> tuple[np.ndarray, tuple[slice, ...]]:
    """Zero-pad the spatial axes of (X, Y, Z, C) to multiples of `multiple`; also return the crop back."""
    pads, crop = [], []
    for size in image.shape[:3]:
        extra = -size % multiple
        before = extra // 2
        pads.append((before, extra - before))
        crop.append(slice(before, before + size))
    return np.pad(image, pads + [(0, 0)]), tuple(crop)


def predict_probabilities(model, image: np.ndarray, *, depth: int) -> np.ndarray:
    """Softmax probabilities float32 (X, Y, Z, K) for a normalised image (X, Y, Z, C) of any size."""
    padded, crop = pad_to_multiple(image, 2**depth)
    # predict_on_batch runs with dropout off through Keras's compiled predict function (traced
    # once, shapes relaxed after a few sizes), which is faster than an eager call.
    output = model.predict_on_batch(padded[np.newaxis])
    return np.asarray(output)[0][crop]


def predict_labels(model, image: np.ndarray, *, depth: int) -> np.ndarray:
    """Hard segmentation uint8 (X, Y, Z): the argmax over classes."""
    return predict_probabilities(model, image, depth=depth).argmax(axis=-1).astype(np.uint8)


def evaluate_cases(model, cases: list[Case], *, depth: int, num_classes: int) -> dict[str, np.ndarray]:
    """Intersection/union counts (num_classes, 2) per case name, from whole-volume predictions."""
    return {
        case.name: iou_counts(case.label, predict_labels(model, case.image, depth=depth), num_classes)
        for case in cases
    }


def inference_model(model, precision: str = "float32"):
    """`model` itself for "float32"; for "bfloat16" a copy that computes in bfloat16.

    The copy holds the same float32 weights (Keras's mixed_bfloat16 policy: each layer casts its
    weights and inputs to bfloat16) and keeps the softmax in float32, so its probabilities
    (B, X, Y, Z, K) are float32 as the original's are. `model` is left as it was.
    """
    if precision == "float32":
        return model
    if precision != "bfloat16":
        raise InputError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}; choose one of those.")
    import keras

    def clone_layer(layer):
        config = layer.get_config()
        # The output softmax was built in float32 on purpose (model/unet.py); it stays so.
        if not isinstance(layer, keras.layers.Softmax):
            config["dtype"] = "mixed_bfloat16"
        return layer.__class__.from_config(config)

    copy = keras.models.clone_model(model, clone_function=clone_layer)
    copy.set_weights(model.get_weights())
    return copy


def bfloat16_is_native() -> bool | None:
    """Whether bfloat16 runs on its own units here (a GPU, or a CPU with them); None when unknown."""
    import keras

    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        if tf.config.list_physical_devices("GPU"):
            return True
    return cpu_has_bfloat16_units()


def cpu_has_bfloat16_units(cpuinfo: str | Path = "/proc/cpuinfo") -> bool | None:
    """Whether the CPU's flags in `cpuinfo` name a bfloat16 unit; None where there is no such file (not Linux)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return None
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return any(flag in flags for flag in BFLOAT16_CPU_FLAGS)
