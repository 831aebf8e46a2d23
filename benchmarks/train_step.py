"""Training-step efficiency of the paper's U-Net, the factorized block against the full 3×3×3 block, the
network's internal axis order (zxy, hpsearch's, against plain Conv3D layers in xyz from
tests/reference_unet.py, and against zxy with only the xy planes as 2D convolutions, the network
before), its dropout (hpsearch's BitsDropout, the default, against Keras's Dropout), and whole-volume
inference.

Efficiency = model FLOP/s of one training step (convolution FLOPs counted from the layer shapes;
forward + backward ≈ 3 × forward) ÷ the FLOP/s of a large float32 matrix product in the same
process. The networks' steps are interleaved in one process, so the ratios hold on a noisy machine.
TensorFlow's CPU allocator is chosen per process: TF_CPU_ALLOCATOR_USE_BFC=false runs the
benchmark on TensorFlow's default allocator instead of the pooling one hpsearch chooses.

    python benchmarks/train_step.py [--channels 30] [--batch 2] [--steps 10] [--patches 64x64x16,128x128x16]

On a GPU without TensorFlow, run it on Keras's JAX backend: KERAS_BACKEND=jax python benchmarks/train_step.py
--matmul-size 8192 [--dtype-policy mixed_bfloat16].
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path
from unittest import mock

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # reference_unet: the plain-Conv3D network
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import model  # noqa: E402, F401  (before Keras: it chooses TensorFlow's CPU allocator)
import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import ops  # noqa: E402

from model.config import TrainConfig  # noqa: E402
from model.dropout import BitsDropout  # noqa: E402
from model.inference import inference_model, predict_labels  # noqa: E402
from model.params import Hyperparameters  # noqa: E402
from model.training import compiled_unet  # noqa: E402
from model.unet import SliceConv3D, build_unet  # noqa: E402
from reference_unet import build_reference_unet  # noqa: E402

# The "zxy-xy" layout: the (z, x, y) network as it was before its xz and yz planes ran as 2D
# convolutions too; those stay Conv3D layers with flat kernels. The same network and weights.
XY_PLANES_ONLY = "zxy-xy"


def _xy_planes_only(filters, kernel_size, **kwargs):
    """SliceConv3D for kernels flat in the first axis (z), a plain Conv3D for the others."""
    conv = SliceConv3D if kernel_size[0] == 1 else keras.layers.Conv3D
    return conv(filters, kernel_size, **kwargs)


def _build_xy_planes_only(**kwargs) -> keras.Model:
    """build_unet's network with only the planes flat in z as SliceConv3D."""
    with mock.patch("model.unet.SliceConv3D", _xy_planes_only):
        return build_unet(**kwargs)


# layout -> a network builder with build_unet's arguments
BUILDERS = {"zxy": build_unet, "xyz": build_reference_unet, XY_PLANES_ONLY: _build_xy_planes_only}


def build_variant(layout: str, build, *args, **kwargs):
    """`build(*args, **kwargs)`, build_unet or compiled_unet, with the network of `layout` (a key of BUILDERS)."""
    if build is build_unet:
        return BUILDERS[layout](*args, **kwargs)
    with mock.patch("model.training.build_unet", BUILDERS[layout]):
        return build(*args, **kwargs)


def conv_flops(model: keras.Model) -> float:
    """Forward FLOPs (2 × multiply-adds) of all convolutions of a model built with a fixed spatial shape, per sample."""
    total = 0.0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv3DTranspose):
            voxels = np.prod(layer.input.shape[1:4])  # a 1×1×1 kernel touches each input voxel once
        elif isinstance(layer, keras.layers.Conv3D):
            voxels = np.prod(layer.output.shape[1:4])
        else:
            continue
        total += 2.0 * voxels * np.prod(layer.kernel_size) * layer.input.shape[-1] * layer.filters
    return float(total)


def random_batch(patch: tuple[int, int, int], batch: int) -> tuple[np.ndarray, np.ndarray]:
    """A fixed batch for timing: images (B, X, Y, Z, 1) float32 of N(0, 1), one-hot labels (B, X, Y, Z, 2)."""
    rng = np.random.default_rng(0)
    images = rng.normal(size=(batch, *patch, 1)).astype(np.float32)
    labels = np.eye(2, dtype=np.float32)[rng.integers(0, 2, size=(batch, *patch))]
    return images, labels


class MatmulReference:
    """A size×size matrix product in dtype, the machine's practical peak FLOP/s for that dtype.

    It is timed between the networks' steps (`time_once`), not once before them: a shared machine's
    speed drifts by 10–20 % over minutes, and efficiency is a ratio of two rates at the same moment.
    """

    def __init__(self, size: int = 2048, dtype: str = "float32"):
        self.flops = 2.0 * size**3  # one multiply and one add per term
        self.a = keras.random.normal((size, size), dtype=dtype)
        self.b = keras.random.normal((size, size), dtype=dtype)
        self.times: list[float] = []
        self._run()  # warm up

    def _run(self) -> None:
        # Reading back a scalar waits for the product without timing a copy of the whole matrix.
        ops.convert_to_numpy(ops.sum(ops.matmul(self.a, self.b)))

    def time_once(self) -> None:
        started = time.perf_counter()
        self._run()
        self.times.append(time.perf_counter() - started)

    def rates(self, last: int) -> list[float]:
        """FLOP/s of each of the `last` timings."""
        return [self.flops / t for t in self.times[-last:]]

    def flops_per_second(self, last: int) -> float:
        """FLOP/s from the median of the `last` timings."""
        return self.flops / statistics.median(self.times[-last:])


# The networks timed side by side at each patch size: (block, layout, dropout layer). The first is
# hpsearch's network; each of the others differs from it in one thing ("none": keep probability 1,
# to show what dropout costs).
VARIANTS = (
    ("factorized", "zxy", "bits"),
    ("factorized", "xyz", "bits"),
    ("factorized", XY_PLANES_ONLY, "bits"),
    ("factorized", "zxy", "keras"),
    ("factorized", "zxy", "none"),
    ("full", "zxy", "bits"),
)


@dataclasses.dataclass
class StepTiming:
    seconds: float  # median seconds per training step
    flops: float  # forward FLOPs per batch
    faults: float  # minor page faults per step (memory the allocator handed back and takes again)


def step_timings(
    patch: tuple[int, int, int], *, channels: int, batch: int, steps: int, reference: MatmulReference
) -> dict[tuple[str, str, str], StepTiming]:
    """Every network of VARIANTS trained on the same batch, their steps interleaved with each other and
    with the reference product (`reference` gains one timing per round) so that all of them see the
    same machine."""
    x, y = random_batch(patch, batch)
    models = {}
    for key in VARIANTS:
        block, layout, dropout = key
        config = TrainConfig(patch_shape=patch, batch_size=batch, block=block)
        # "keras": the network as it was before BitsDropout, with Keras's own Dropout layers.
        layer = BitsDropout if dropout == "bits" else keras.layers.Dropout
        with mock.patch("model.unet.BitsDropout", layer), mock.patch("reference_unet.BitsDropout", layer):
            params = Hyperparameters(channels=channels, keep_prob=1.0 if dropout == "none" else 0.85)
            models[key] = build_variant(layout, compiled_unet, params, config, in_channels=1, num_classes=2, spatial_shape=patch)
        for _ in range(3):  # tracing and warm-up
            models[key].train_on_batch(x, y)
    times: dict = {key: [] for key in models}
    faults: dict = {key: 0 for key in models}
    for _ in range(steps):
        reference.time_once()
        for key, model in models.items():
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            started = time.perf_counter()
            model.train_on_batch(x, y)
            times[key].append(time.perf_counter() - started)
            faults[key] += resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    return {
        key: StepTiming(statistics.median(times[key]), conv_flops(model) * batch, faults[key] / steps)
        for key, model in models.items()
    }


def inference_seconds(
    shape: tuple[int, int, int], *, channels: int, reference: MatmulReference, repeats: int = 3
) -> tuple[dict[str, float], float]:
    """Median seconds of whole-volume inference per layout, and in bfloat16 (zxy; `hpsearch segment
    --precision bfloat16`), interleaved with the reference product; and its forward FLOPs."""
    models = {layout: build_variant(layout, build_unet, channels=channels) for layout in ("zxy", "xyz", XY_PLANES_ONLY)}
    models["bfloat16"] = inference_model(models["zxy"], "bfloat16")
    flops = conv_flops(build_unet(channels=channels, spatial_shape=shape))
    image = np.random.default_rng(0).normal(size=(*shape, 1)).astype(np.float32)
    times: dict = {layout: [] for layout in models}
    for model in models.values():
        predict_labels(model, image, depth=3)  # warm up
    for _ in range(repeats):
        reference.time_once()
        for layout, model in models.items():
            started = time.perf_counter()
            predict_labels(model, image, depth=3)
            times[layout].append(time.perf_counter() - started)
    return {layout: statistics.median(t) for layout, t in times.items()}, flops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--channels", type=int, default=30)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--patches", default="64x64x16,128x128x16", help="training-step patch sizes ('' to skip)")
    parser.add_argument("--inference", default="256x256x16", help="volume for the inference timing ('' to skip)")
    parser.add_argument("--matmul-size", type=int, default=2048, help="size of the reference matrix product (use 8192 on a GPU)")
    parser.add_argument("--dtype-policy", default="float32", help="Keras dtype policy of the networks, e.g. mixed_bfloat16 on a GPU")
    args = parser.parse_args()
    patches = [tuple(int(v) for v in p.split("x")) for p in args.patches.split(",") if p]
    keras.config.set_dtype_policy(args.dtype_policy)
    # The reference product runs in the networks' compute dtype, so efficiency compares like with like.
    compute_dtype = keras.config.dtype_policy().compute_dtype
    reference = MatmulReference(args.matmul_size, dtype=compute_dtype)
    print(f"backend {keras.backend.backend()}; {platform.machine()}, {os.cpu_count()} cores; dtype policy {args.dtype_policy}; "
          f"reference: {compute_dtype} {args.matmul_size}² matmul, timed once per round of steps")
    if keras.backend.backend() == "tensorflow":
        allocator = "pooling (BFC)" if os.environ.get("TF_CPU_ALLOCATOR_USE_BFC", "").lower() in ("1", "true") else "default"
        print(f"TensorFlow CPU allocator: {allocator}")
    print("| patch | block | layout | dropout | step (s) | model GFLOP/s | efficiency | page faults per step |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for patch in patches:
        timings = step_timings(patch, channels=args.channels, batch=args.batch, steps=args.steps, reference=reference)
        peak = reference.flops_per_second(last=args.steps)
        spread = reference.rates(last=args.steps)
        print(f"|   | reference matmul during these steps: {peak / 1e9:.1f} GFLOP/s (median; "
              f"{min(spread) / 1e9:.0f}–{max(spread) / 1e9:.0f}) | | | | | | |")
        for (block, layout, dropout), timing in timings.items():
            rate = 3 * timing.flops / timing.seconds
            print(f"| {'x'.join(map(str, patch))} | {block} | {layout} | {dropout} | {timing.seconds:.3f} | {rate / 1e9:.1f} | {rate / peak:.2f} | {timing.faults:,.0f} |")
        ours, plain, xy_only, keras_dropout, no_dropout, full = (timings[key].seconds for key in VARIANTS)
        print(f"|   | factorized/full step time: {ours / full:.2f}; zxy/xyz: {ours / plain:.2f}; zxy/{XY_PLANES_ONLY}: {ours / xy_only:.2f}; "
              f"BitsDropout/Keras Dropout: {ours / keras_dropout:.2f}; no dropout/BitsDropout: {no_dropout / ours:.2f} | | | | | | |", flush=True)
    if args.inference:
        shape = tuple(int(v) for v in args.inference.split("x"))
        seconds, flops = inference_seconds(shape, channels=args.channels, reference=reference)
        peak = reference.flops_per_second(last=3)
        # The forward pass alone: what the fastest possible inference would take at the matmul's rate.
        print(f"whole-volume inference of {args.inference}, {args.channels} channels ({flops / 1e9:.0f} GFLOP, "
              f"{flops / peak:.2f} s at the matmul's rate): {seconds['zxy']:.2f} s (zxy, efficiency "
              f"{flops / seconds['zxy'] / peak:.2f}), {seconds['xyz']:.2f} s (xyz), {seconds[XY_PLANES_ONLY]:.2f} s ({XY_PLANES_ONLY}), "
              f"{seconds['bfloat16']:.2f} s (zxy in bfloat16, --precision bfloat16)")


if __name__ == "__main__":
    main()
