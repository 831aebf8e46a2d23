"""The loss with two foreground classes of different sizes: does one class swallow the other?

Trains the same U-Net with each loss on synthetic stacks whose myocardium ring is labelled as
class 2 next to the left-ventricle blood pool (class 1), over several seeds, keeps each run's best
validation weights, and prints the held-out (test split) IoU of each class.

    python benchmarks/loss_choice.py [--steps 600] [--seeds 3] [--losses joint,per_class,per_class_ce]
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
from model.synth import write_dataset  # noqa: E402
from model.training import evaluate, train  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--cases", type=int, default=16)
    parser.add_argument("--shape", default="96x96x12")
    parser.add_argument("--channels", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--losses", default="joint,per_class,per_class_ce", help="comma-separated losses to compare")
    args = parser.parse_args()
    shape = tuple(int(s) for s in args.shape.split("x"))
    with tempfile.TemporaryDirectory() as folder:
        root = write_dataset(Path(folder) / "data", cases=args.cases, shape=shape, seed=0, myocardium=True)
        dataset = load_dataset(root)
        split = split_cases(dataset.case_names, seed=0, val_fraction=0.25, test_fraction=0.25)
        data = load_train_data(dataset, split)
        test_cases = dataset.load_cases(list(split.test))
        params = Hyperparameters(channels=args.channels, learning_rate=args.learning_rate)
        rows = {}
        for loss in args.losses.split(","):
            for seed in range(args.seeds):
                config = TrainConfig(steps=args.steps, eval_every=max(args.steps // 4, 1), patch_shape=(32, 32, 16), loss=loss, seed=seed)
                started = time.perf_counter()
                result = train(params, data, config)
                held_out = evaluate(result.model, test_cases, depth=config.depth, num_classes=dataset.num_classes)
                per_class = held_out.per_class
                rows.setdefault(loss, []).append(per_class)
                print(f"{loss:12s} seed {seed}: test IoU LV {per_class[1]:.3f}  myocardium {per_class[2]:.3f}  "
                      f"mean {held_out.iou:.3f}  ({time.perf_counter() - started:.0f} s)", flush=True)
    print(f"\n{args.steps} steps, {args.channels} channels, lr {args.learning_rate}, {args.cases} cases of {args.shape}, {args.seeds} seeds; {platform.processor() or platform.machine()}, {os.cpu_count()} cores")
    print("| loss | LV test IoU | myocardium test IoU | mean foreground test IoU | lowest class IoU in any seed |")
    print("| --- | --- | --- | --- | --- |")
    for loss, values in rows.items():
        cells = []
        for index in (1, 2):
            column = [v[index] for v in values]
            cells.append(f"{statistics.mean(column):.3f} ± {statistics.pstdev(column):.3f}")
        means = [(v[1] + v[2]) / 2 for v in values]
        cells.append(f"{statistics.mean(means):.3f} ± {statistics.pstdev(means):.3f}")
        cells.append(f"{min(min(v[1], v[2]) for v in values):.3f}")
        print(f"| {loss} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
