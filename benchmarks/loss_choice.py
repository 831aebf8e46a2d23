"""The loss with two foreground classes of different sizes: does one class swallow the other?

Trains the same U-Net with each loss on synthetic stacks whose myocardium ring is labelled as
class 2 next to the left-ventricle blood pool (class 1), over several seeds, keeps each run's best
validation weights, and prints the held-out (test split) IoU of each class.

    python benchmarks/loss_choice.py [--steps 600] [--seeds 3] [--losses joint,per_class,per_class_ce]
    python benchmarks/loss_choice.py --data DIR ...     # an MSD dataset instead, e.g. benchmarks/brain_slabs.py's

`--rv` labels the right-ventricle blood pool too (class 3, the smallest: RV < LV < myocardium in
size) and `--image-channels 2` adds a second MR contrast (as `hpsearch data synth --rv --channels 2`).
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

# Short column names of the synthetic classes (model.synth.class_names).
SHORT_NAMES = {"left ventricle": "LV", "myocardium": "myocardium", "right ventricle": "RV"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--cases", type=int, default=16)
    parser.add_argument("--shape", default="96x96x12")
    parser.add_argument("--channels", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--losses", default="joint,per_class,per_class_ce", help="comma-separated losses to compare")
    parser.add_argument("--rv", action="store_true",
                        help="label the right-ventricle blood pool as class 3 too (three foreground classes)")
    parser.add_argument("--image-channels", type=int, choices=(1, 2), default=1,
                        help="image channels of the synthetic data: 1, or 2 for a second MR contrast (default: 1)")
    parser.add_argument("--augment", action="store_true", help="augment training blocks on the fly (flips, rotations, ...)")
    parser.add_argument("--data", type=Path,
                        help="train on this MSD dataset instead of synthetic stacks (e.g. benchmarks/brain_slabs.py's)")
    args = parser.parse_args()
    shape = tuple(int(s) for s in args.shape.split("x"))
    with tempfile.TemporaryDirectory() as folder:
        root = args.data or write_dataset(Path(folder) / "data", cases=args.cases, shape=shape, seed=0,
                                          myocardium=True, rv=args.rv, channels=args.image_channels)
        dataset = load_dataset(root)
        foreground = range(1, dataset.num_classes)
        short = [SHORT_NAMES.get(name, name) for name in dataset.class_names]
        split = split_cases(dataset.case_names, seed=0, val_fraction=0.25, test_fraction=0.25)
        data = load_train_data(dataset, split)
        test_cases = dataset.load_cases(list(split.test))
        params = Hyperparameters(channels=args.channels, learning_rate=args.learning_rate)
        rows = {}
        for loss in args.losses.split(","):
            for seed in range(args.seeds):
                config = TrainConfig(steps=args.steps, eval_every=max(args.steps // 4, 1), patch_shape=(32, 32, 16), loss=loss, seed=seed,
                                     augment=args.augment)
                started = time.perf_counter()
                result = train(params, data, config)
                held_out = evaluate(result.model, test_cases, depth=config.depth, num_classes=dataset.num_classes)
                per_class = held_out.per_class
                rows.setdefault(loss, []).append(per_class)
                classes = "  ".join(f"{short[c]} {per_class[c]:.3f}" for c in foreground)
                print(f"{loss:12s} seed {seed}: test IoU {classes}  "
                      f"mean {held_out.iou:.3f}  ({time.perf_counter() - started:.0f} s)", flush=True)
    data_note = (", RV labelled" if args.rv else "") + (f", {args.image_channels} image channels" if args.image_channels > 1 else "")
    cases = f"{args.data} ({len(dataset.case_names)} cases)" if args.data else f"{args.cases} cases of {args.shape}{data_note}"
    print(f"\n{args.steps} steps, {args.channels} channels, lr {args.learning_rate}, {cases}, {args.seeds} seeds"
          f"{', augmented' if args.augment else ''}; {platform.processor() or platform.machine()}, {os.cpu_count()} cores")
    columns = [f"{short[c]} test IoU" for c in foreground] + ["mean foreground test IoU", "lowest class IoU in any seed"]
    print("| loss | " + " | ".join(columns) + " |")
    print("|" + " --- |" * (len(columns) + 1))
    for loss, values in rows.items():
        cells = []
        for index in foreground:
            column = [v[index] for v in values]
            cells.append(f"{statistics.mean(column):.3f} ± {statistics.pstdev(column):.3f}")
        means = [statistics.fmean(v[c] for c in foreground) for v in values]
        cells.append(f"{statistics.mean(means):.3f} ± {statistics.pstdev(means):.3f}")
        cells.append(f"{min(min(v[c] for c in foreground) for v in values):.3f}")
        print(f"| {loss} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
