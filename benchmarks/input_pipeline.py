"""Input pipeline: a training step with real patch sampling from NIfTI-loaded volumes ÷ a step on a preloaded batch.

Writes synthetic cases as NIfTI files, reads them back through nibabel as `hpsearch train` does
(`model.data.load_dataset` + `load_train_data`), and times the training loop's two parts side by
side in one process: `PatchSampler.next_batch()` + `train_on_batch` (what every step of
model/training.py does) against `train_on_batch` on one batch sampled beforehand. The two are
interleaved in rounds so that a noisy machine slows both alike.

    python benchmarks/input_pipeline.py [--channels 30] [--patch 64x64x16] [--steps 40] [--cases 20]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from model.config import TrainConfig  # noqa: E402
from model.data import load_dataset, load_train_data, split_cases  # noqa: E402
from model.params import Hyperparameters  # noqa: E402
from model.patches import PatchSampler  # noqa: E402
from model.synth import write_dataset  # noqa: E402
from model.training import compiled_unet  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--channels", type=int, default=30)
    parser.add_argument("--patch", default="64x64x16")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=40, help="timed steps of each kind")
    parser.add_argument("--rounds", type=int, default=4, help="alternations of the two kinds")
    parser.add_argument("--cases", type=int, default=20, help="synthetic cases of 192x192x12 (12 train)")
    args = parser.parse_args()
    patch = tuple(int(v) for v in args.patch.split("x"))

    with tempfile.TemporaryDirectory(prefix="input-pipeline-") as folder:
        started = time.perf_counter()
        root = write_dataset(Path(folder) / "data", cases=args.cases, seed=0)
        dataset = load_dataset(root)
        data = load_train_data(dataset, split_cases(dataset.case_names))
        load_seconds = time.perf_counter() - started
    sampler = PatchSampler(data.train, patch_shape=patch, batch_size=args.batch, num_classes=data.num_classes, seed=0)

    config = TrainConfig(patch_shape=patch, batch_size=args.batch)
    model = compiled_unet(Hyperparameters(channels=args.channels), config, in_channels=1, num_classes=data.num_classes)
    preloaded = sampler.next_batch()
    for _ in range(3):  # tracing and warm-up
        model.train_on_batch(*preloaded)

    sampling, sampled_steps, preloaded_steps = [], [], []
    per_round = max(1, args.steps // args.rounds)
    for _ in range(args.rounds):
        for _ in range(per_round):
            began = time.perf_counter()
            images, labels = sampler.next_batch()
            sampled = time.perf_counter()
            model.train_on_batch(images, labels)
            sampling.append(sampled - began)
            sampled_steps.append(time.perf_counter() - began)
        for _ in range(per_round):
            began = time.perf_counter()
            model.train_on_batch(*preloaded)
            preloaded_steps.append(time.perf_counter() - began)

    real, baseline = statistics.median(sampled_steps), statistics.median(preloaded_steps)
    print(f"{platform.machine()}, {os.cpu_count()} cores; {len(data.train)} training cases of 192x192x12 "
          f"written and read back as NIfTI in {load_seconds:.1f} s")
    print("| step | median (ms) |")
    print("| --- | --- |")
    print(f"| patch sampling alone | {statistics.median(sampling) * 1e3:.1f} |")
    print(f"| sampling + training step | {real * 1e3:.1f} |")
    print(f"| training step on a preloaded batch | {baseline * 1e3:.1f} |")
    print(f"ratio (goal <= 1.05): {real / baseline:.3f}")


if __name__ == "__main__":
    main()
