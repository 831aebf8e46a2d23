"""The three passes of the U-Net's plane convolutions, each timed alone, against a large matrix product.

A training step of the factorized U-Net is mostly its plane convolutions: the forward pass, the
gradient with respect to the input and the gradient with respect to the kernel, each about as
many FLOPs as the forward pass. This script builds the paper's network (zxy layout), collects the
2D convolutions its SliceConv3D layers run (slices, height, width, channels in and out), and times
each pass of each distinct convolution alone, on TensorFlow's own kernels (oneDNN's where
hpsearch turns them on), interleaved with the reference product of benchmarks/train_step.py. The
rate of each pass, weighted by how often the network runs it, bounds what the training-step
efficiency can reach on this CPU with these kernels, whatever the rest of the step costs; the
network's whole training step is timed in the same rounds, for comparison.

    python benchmarks/conv_passes.py [--channels 30] [--patch 64x64x16] [--repeats 10]
"""

from __future__ import annotations

import argparse
import collections
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import model  # noqa: E402, F401  (before TensorFlow: the allocator and oneDNN settings hpsearch uses)
import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from model.config import TrainConfig  # noqa: E402
from model.params import Hyperparameters  # noqa: E402
from model.training import compiled_unet  # noqa: E402
from model.unet import TO_SLICES, SliceConv3D  # noqa: E402
from train_step import MatmulReference, conv_flops, random_batch  # noqa: E402

PASSES = ("forward", "input gradient", "kernel gradient")


def plane_convolutions(network: keras.Model, batch: int) -> collections.Counter:
    """(slices, height, width, kernel height, kernel width, channels in, filters) -> how many of the
    SliceConv3D layers of `network` (built with a fixed spatial shape) run that 2D convolution, for
    a batch of `batch` blocks."""
    shapes = collections.Counter()
    for layer in network.layers:
        if not isinstance(layer, SliceConv3D):
            continue
        _, *spatial, channels_in = layer.input.shape  # (B, D1, D2, D3, C) in the network's (z, x, y) order
        order = TO_SLICES[layer.flat_axis] or (0, 1, 2, 3, 4)
        sliced = [spatial[axis - 1] for axis in order[1:4]]  # the flat axis first, then the two convolved
        kernel = [k for axis, k in enumerate(layer.kernel_size) if axis != layer.flat_axis]
        shapes[(batch * sliced[0], sliced[1], sliced[2], *kernel, channels_in, layer.filters)] += 1
    return shapes


def forward_flops(shape: tuple[int, ...]) -> float:
    """FLOPs (2 × multiply-adds) of one pass of the 2D convolution of `shape` (plane_convolutions' key)."""
    slices, height, width, kh, kw, channels_in, filters = shape
    return 2.0 * slices * height * width * kh * kw * channels_in * filters


def pass_functions(shape: tuple[int, ...]) -> dict[str, Callable[[], tf.Tensor]]:
    """The three passes of one 2D convolution (stride 1, "same" padding) as traced functions that
    return a scalar, so that timing them waits for the result without copying it."""
    slices, height, width, kh, kw, channels_in, filters = shape
    images = tf.random.normal((slices, height, width, channels_in))
    kernel = tf.random.normal((kh, kw, channels_in, filters))
    output_gradient = tf.random.normal((slices, height, width, filters))
    return {
        "forward": tf.function(lambda: tf.reduce_sum(tf.nn.conv2d(images, kernel, 1, "SAME"))),
        "input gradient": tf.function(lambda: tf.reduce_sum(tf.raw_ops.Conv2DBackpropInput(
            input_sizes=images.shape, filter=kernel, out_backprop=output_gradient, strides=[1, 1, 1, 1], padding="SAME"))),
        "kernel gradient": tf.function(lambda: tf.reduce_sum(tf.raw_ops.Conv2DBackpropFilter(
            input=images, filter_sizes=kernel.shape, out_backprop=output_gradient, strides=[1, 1, 1, 1], padding="SAME"))),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--channels", type=int, default=30)
    parser.add_argument("--patch", default="64x64x16")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10, help="timings of each pass (the median is kept)")
    args = parser.parse_args()
    patch = tuple(int(v) for v in args.patch.split("x"))
    # The product's training step (Table 1's keep probability and L2, as benchmarks/train_step.py).
    config = TrainConfig(patch_shape=patch, batch_size=args.batch)
    network = compiled_unet(Hyperparameters(channels=args.channels), config, in_channels=1, num_classes=2, spatial_shape=patch)
    shapes = plane_convolutions(network, args.batch)
    reference = MatmulReference()
    functions = {shape: pass_functions(shape) for shape in shapes}
    for passes in functions.values():
        for function in passes.values():
            function()  # trace, and let oneDNN create its kernels
    images, labels = random_batch(patch, args.batch)
    for _ in range(3):
        network.train_on_batch(images, labels)
    times = {(shape, name): [] for shape in shapes for name in PASSES}
    step_times = []
    for _ in range(args.repeats):
        reference.time_once()
        started = time.perf_counter()
        network.train_on_batch(images, labels)
        step_times.append(time.perf_counter() - started)
        for shape, passes in functions.items():
            for name, function in passes.items():
                started = time.perf_counter()
                function().numpy()
                times[shape, name].append(time.perf_counter() - started)
    peak = reference.flops_per_second(last=args.repeats)
    print(f"{args.channels} channels, {args.patch} blocks, batch {args.batch}: {sum(shapes.values())} plane convolutions "
          f"in {len(shapes)} shapes; reference matmul {peak / 1e9:.0f} GFLOP/s (median of {args.repeats})")
    print("| slices × height × width, kernel, channels in → out | layers | " + " | ".join(f"{name} (ms, share of matmul rate)" for name in PASSES) + " |")
    print("| --- | --- | " + " | ".join("---" for _ in PASSES) + " |")
    totals = {name: 0.0 for name in PASSES}
    total_flops = 0.0
    for shape, count in sorted(shapes.items(), key=lambda item: -forward_flops(item[0])):
        slices, height, width, kh, kw, channels_in, filters = shape
        flops = forward_flops(shape)
        total_flops += count * flops
        cells = []
        for name in PASSES:
            seconds = statistics.median(times[shape, name])
            totals[name] += count * seconds
            cells.append(f"{seconds * 1e3:.1f} ({flops / seconds / peak:.2f})")
        print(f"| {slices}×{height}×{width}, {kh}×{kw}, {channels_in} → {filters} | {count} | " + " | ".join(cells) + " |")
    print("| all, weighted by layers (s per step) | " + f"{sum(shapes.values())} | "
          + " | ".join(f"{totals[name]:.3f} ({total_flops / totals[name] / peak:.2f})" for name in PASSES) + " |")
    # The first layer's input gradient is never needed (the image is not trained), which this ignores.
    print(f"the three passes one after another: {sum(totals.values()):.3f} s per step, "
          f"{3 * total_flops / sum(totals.values()) / peak:.2f} of the matmul's rate")
    step = statistics.median(step_times)
    print(f"the whole training step: {step:.3f} s, efficiency {3 * conv_flops(network) * args.batch / step / peak:.2f} "
          f"(benchmarks/train_step.py's measure; all convolutions' FLOPs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
