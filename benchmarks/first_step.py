"""What a trial pays before its training steps: model build and the first (tracing) training step.

Builds and compiles the U-Net as model/training.py does, then times the first train_on_batch
(which traces the training function) and the mean of the next steps, with and without creating
Adam's slots before the first step (`model.optimizer.build`, which model/training.py now does:
without it Keras traces the training function a second time), and with Keras's Dropout in place
of hpsearch's BitsDropout (more operations to trace, fewer to run), and with Keras's Adam in place
of hpsearch's FusedAdam (a dozen operations per variable to trace, not one). Each variant runs in
a fresh process, since traced functions are cached per process.

    python benchmarks/first_step.py                       # quick-start scale: 8 channels, 32x32x16, 3 processes each
    python benchmarks/first_step.py --channels 30 --patch 64x64x16
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

ROOT = Path(__file__).resolve().parents[1]


def measure(channels: int, patch: tuple[int, int, int], build_optimizer: bool, keras_dropout: bool, keras_adam: bool, steps: int) -> str:
    """One variant, in this process: JSON of seconds for "build", "first step" and the mean later "step"."""
    sys.path.insert(0, str(ROOT))
    import model  # noqa: F401  (before Keras: it chooses TensorFlow's CPU allocator and oneDNN)
    import keras
    import numpy as np

    from model.losses import get_loss
    from model.params import Hyperparameters
    from model.training import make_optimizer
    from model.unet import build_unet

    params = Hyperparameters(channels=channels, learning_rate=1e-3)
    rng = np.random.default_rng(0)
    images = rng.normal(size=(2, *patch, 1)).astype("float32")
    labels = np.zeros((2, *patch, 2), "float32")
    labels[..., 0] = 1.0
    started = time.perf_counter()
    with mock.patch("model.unet.BitsDropout", keras.layers.Dropout) if keras_dropout else contextlib.nullcontext():
        model = build_unet(in_channels=1, num_classes=2, channels=channels, depth=3, keep_prob=0.85, l2=3e-4, block="factorized")
    with mock.patch("model.training.FusedAdam", keras.optimizers.Adam) if keras_adam else contextlib.nullcontext():
        optimizer = make_optimizer(params, "global")
    model.compile(optimizer=optimizer, loss=get_loss("joint"), jit_compile="auto")
    if build_optimizer:
        model.optimizer.build(model.trainable_variables)
    built = time.perf_counter()
    model.train_on_batch(images, labels)
    first = time.perf_counter()
    for _ in range(steps):
        model.train_on_batch(images, labels)
    done = time.perf_counter()
    return json.dumps({"build": built - started, "first step": first - built, "step": (done - first) / steps})


# name -> (label, build Adam's slots first?, Keras's Dropout instead of BitsDropout?, Keras's Adam instead of FusedAdam?)
VARIANTS = {
    "no-build": ("Adam's slots created by Keras (traces twice), Keras's Dropout", False, True, True),
    "build": ("optimizer.build first, Keras's Dropout", True, True, True),
    "bits": ("optimizer.build first, BitsDropout, Keras's Adam", True, False, True),
    "fused": ("optimizer.build first, BitsDropout, FusedAdam (now)", True, False, False),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--channels", type=int, default=8)
    parser.add_argument("--patch", default="32x32x16")
    parser.add_argument("--steps", type=int, default=20, help="steps timed after the first")
    parser.add_argument("--repeats", type=int, default=3, help="fresh processes per variant")
    parser.add_argument("--variant", choices=list(VARIANTS), help=argparse.SUPPRESS)  # one variant, in this process
    args = parser.parse_args()
    patch = tuple(int(v) for v in args.patch.split("x"))
    if args.variant:
        build_optimizer, keras_dropout, keras_adam = VARIANTS[args.variant][1:]
        print(measure(args.channels, patch, build_optimizer, keras_dropout, keras_adam, args.steps), flush=True)
        return 0
    print(f"{args.channels} channels, {args.patch} blocks, batch 2; each variant in {args.repeats} fresh processes, "
          "interleaved (a shared machine drifts); every run's figures in brackets, the median before them")
    runs: dict[str, list[dict[str, float]]] = {variant: [] for variant in VARIANTS}
    for _ in range(args.repeats):
        for variant in VARIANTS:
            result = subprocess.run(
                [sys.executable, __file__, "--variant", variant, "--channels", str(args.channels), "--patch", args.patch, "--steps", str(args.steps)],
                capture_output=True, text=True, check=True,
            )
            runs[variant].append(json.loads(result.stdout.strip().splitlines()[-1]))
    for variant, (label, *_) in VARIANTS.items():
        parts = []
        for key, unit, scale in (("build", "s", 1), ("first step", "s", 1), ("step", "ms", 1000)):
            values = [run[key] * scale for run in runs[variant]]
            digits = 1 if unit == "ms" else 2
            parts.append(f"{key} {statistics.median(values):.{digits}f} {unit} ({', '.join(f'{v:.{digits}f}' for v in values)})")
        print(f"{label:60s} {'; '.join(parts)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
