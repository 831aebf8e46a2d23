"""TensorFlow's oneDNN kernels on and off: training steps, the first (tracing) step and inference.

TensorFlow's CPU wheel turns its oneDNN operations on by itself only on CPUs with AVX-512 VNNI,
BF16 or AMX; hpsearch turns them on everywhere (model/__init__.py sets TF_ENABLE_ONEDNN_OPTS=1
unless the user chose). TensorFlow reads the switch once, as it loads, so each setting runs in
fresh processes, the two alternating (a shared machine drifts), and every process also times a
2048² float32 matrix product, so that efficiencies compare like with like.

    python benchmarks/onednn.py                        # 3 processes per setting
    python benchmarks/onednn.py --repeats 2 --patches 64x64x16 --inference ''

Each process: the quick-start network (8 channels, 32×32×16) built, its first training step
(tracing + one step) and the mean of the next `--steps`; the paper's network (30 channels, depth
3, batch 2) at each of `--patches`, median of `--steps` steps after 2 warm-up steps; whole-volume
inference of `--inference` with the paper's network, median of 3.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = ("0", "1")  # TF_ENABLE_ONEDNN_OPTS: off, on


def measure(patches: list[str], inference: str, steps: int) -> dict:
    """All figures of one process (seconds; GFLOP/s for "matmul"), with oneDNN as the environment says."""
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import model  # noqa: F401  (before Keras: TensorFlow's allocator and oneDNN switch)
    import numpy as np

    from model.config import TrainConfig
    from model.inference import predict_labels
    from model.params import Hyperparameters
    from model.training import compiled_unet
    from model.unet import build_unet
    from train_step import MatmulReference, conv_flops, random_batch

    reference = MatmulReference()
    result: dict = {}
    patch = (32, 32, 16)
    started = time.perf_counter()
    network = compiled_unet(Hyperparameters(channels=8), TrainConfig(patch_shape=patch), in_channels=1, num_classes=2)
    result["quick-start build"] = time.perf_counter() - started
    images, labels = random_batch(patch, 2)
    started = time.perf_counter()
    network.train_on_batch(images, labels)
    result["quick-start first step"] = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(steps * 5):  # its steps are short
        network.train_on_batch(images, labels)
    result["quick-start step"] = (time.perf_counter() - started) / (steps * 5)
    result["quick-start flops"] = conv_flops(build_unet(channels=8, spatial_shape=patch)) * 2
    for name in patches:
        patch = tuple(int(v) for v in name.split("x"))
        config = TrainConfig(patch_shape=patch, batch_size=2)
        network = compiled_unet(Hyperparameters(channels=30), config, in_channels=1, num_classes=2, spatial_shape=patch)
        images, labels = random_batch(patch, 2)
        for _ in range(2):  # tracing and warm-up
            network.train_on_batch(images, labels)
        times = []
        for _ in range(steps):
            reference.time_once()
            started = time.perf_counter()
            network.train_on_batch(images, labels)
            times.append(time.perf_counter() - started)
        result[f"step {name}"] = statistics.median(times)
        result[f"flops {name}"] = conv_flops(network) * 2
    if inference:
        shape = tuple(int(v) for v in inference.split("x"))
        network = build_unet(channels=30)
        image = np.random.default_rng(0).normal(size=(*shape, 1)).astype(np.float32)
        predict_labels(network, image, depth=3)  # warm up
        times = []
        for _ in range(3):
            reference.time_once()
            started = time.perf_counter()
            predict_labels(network, image, depth=3)
            times.append(time.perf_counter() - started)
        result[f"inference {inference}"] = statistics.median(times)
        result[f"inference flops {inference}"] = conv_flops(build_unet(channels=30, spatial_shape=shape))
    reference.time_once()
    result["matmul"] = reference.flops_per_second(last=len(reference.times)) / 1e9
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="fresh processes per setting")
    parser.add_argument("--steps", type=int, default=3, help="paper-scale steps timed per patch (5× as many at quick-start scale)")
    parser.add_argument("--patches", default="64x64x16,128x128x16", help="paper-scale training patches ('' to skip)")
    parser.add_argument("--inference", default="256x256x16", help="volume for the inference timing ('' to skip)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)  # measure in this process
    args = parser.parse_args()
    patches = [p for p in args.patches.split(",") if p]
    if args.child:
        print(json.dumps(measure(patches, args.inference, args.steps)), flush=True)
        return 0
    print(f"TF_ENABLE_ONEDNN_OPTS=0 and =1, {args.repeats} fresh processes each, alternating; "
          "medians over processes, every process's figure in brackets")
    runs: dict[str, list[dict]] = {setting: [] for setting in SETTINGS}
    for round_number in range(args.repeats):
        for setting in SETTINGS:
            command = [sys.executable, __file__, "--child", "--steps", str(args.steps), "--patches", args.patches, "--inference", args.inference]
            environment = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": setting, "TF_CPP_MIN_LOG_LEVEL": "2"}
            done = subprocess.run(command, capture_output=True, text=True, env=environment)
            if done.returncode != 0:
                print(done.stderr[-3000:], file=sys.stderr)
                return 1
            runs[setting].append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"  round {round_number + 1}, oneDNN {'on' if setting == '1' else 'off'}: done", file=sys.stderr, flush=True)

    def cell(setting: str, key: str, scale: float = 1.0, digits: int = 3) -> str:
        values = [run[key] * scale for run in runs[setting]]
        return f"{statistics.median(values):.{digits}f} ({', '.join(f'{v:.{digits}f}' for v in values)})"

    def efficiency(setting: str, key: str, flops_key: str, passes: int) -> str:
        # model FLOP/s ÷ matrix-product FLOP/s of the same process; 3 passes for training (forward + backward)
        values = [passes * run[flops_key] / run[key] / (run["matmul"] * 1e9) for run in runs[setting]]
        return f"{statistics.median(values):.2f}"

    def ratio(key: str) -> str:
        off, on = (statistics.median(run[key] for run in runs[setting]) for setting in SETTINGS)
        return f"{on / off:.2f}"

    print("| figure | oneDNN off (TensorFlow's default on AVX2) | oneDNN on (hpsearch's default) | on ÷ off |")
    print("| --- | --- | --- | --- |")
    print(f"| reference matmul (GFLOP/s) | {cell('0', 'matmul', digits=0)} | {cell('1', 'matmul', digits=0)} | |")
    for key, label in (("quick-start build", "quick-start: build and compile (s)"), ("quick-start first step", "quick-start: first step, tracing + step (s)"),
                       ("quick-start step", "quick-start: later step (s)")):
        print(f"| {label} | {cell('0', key)} | {cell('1', key)} | {ratio(key)} |")
    print(f"| quick-start: efficiency | {efficiency('0', 'quick-start step', 'quick-start flops', 3)} | "
          f"{efficiency('1', 'quick-start step', 'quick-start flops', 3)} | |")
    for name in patches:
        key = f"step {name}"
        print(f"| paper, {name}: step (s) | {cell('0', key)} | {cell('1', key)} | {ratio(key)} |")
        print(f"| paper, {name}: efficiency | {efficiency('0', key, f'flops {name}', 3)} | {efficiency('1', key, f'flops {name}', 3)} | |")
    if args.inference:
        key = f"inference {args.inference}"
        print(f"| inference {args.inference} (s) | {cell('0', key, digits=2)} | {cell('1', key, digits=2)} | {ratio(key)} |")
        print(f"| inference: efficiency (forward only) | {efficiency('0', key, f'inference flops {args.inference}', 1)} | "
              f"{efficiency('1', key, f'inference flops {args.inference}', 1)} | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
