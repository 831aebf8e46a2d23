"""Inference in bfloat16 against float32 on a trained model: time per volume, IoU, and how many voxels change.

Loads a model folder written by `hpsearch train` and the cases of one split of its dataset (the
test split by default, as `hpsearch evaluate` does), then segments each case with the model in
float32 and with its bfloat16 copy (`hpsearch segment --precision bfloat16`), interleaved, and
prints per case: seconds of each (median of the repeats), the mean foreground IoU of each, the
share of voxels whose label differs, and the largest difference in a probability.

    python benchmarks/inference_precision.py --model runs/table1 --data data/synth [--split test] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from model.config import PRECISIONS  # noqa: E402
from model.data import load_dataset  # noqa: E402
from model.inference import bfloat16_is_native, inference_model, predict_probabilities  # noqa: E402
from model.metrics import iou_counts, mean_foreground_iou  # noqa: E402
from model.run import load_run  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="model folder written by 'hpsearch train'")
    parser.add_argument("--data", required=True, help="its dataset folder")
    parser.add_argument("--split", choices=("test", "val", "all"), default="test")
    parser.add_argument("--repeats", type=int, default=3, help="timed predictions per case and precision")
    args = parser.parse_args()

    run = load_run(args.model)
    dataset = load_dataset(args.data)
    cases = dataset.load_cases(run.case_names(dataset.case_names, args.split))
    models = {precision: inference_model(run.model, precision) for precision in PRECISIONS}
    depth, num_classes = run.config.depth, len(run.class_names)
    print(f"{platform.machine()}, {os.cpu_count()} cores; bfloat16 units: {bfloat16_is_native()}; "
          f"model {args.model} ({run.params.channels} channels, depth {depth}); {len(cases)} {args.split} case(s)")
    for model in models.values():  # trace each predict function before timing
        predict_probabilities(model, cases[0].image, depth=depth)

    print("| case | shape | float32 (s) | bfloat16 (s) | IoU float32 | IoU bfloat16 | voxels relabelled | max abs Δ probability |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    pooled = {precision: 0 for precision in PRECISIONS}
    seconds = {precision: [] for precision in PRECISIONS}
    changed = voxels = 0
    for case in cases:
        times = {precision: [] for precision in PRECISIONS}
        probabilities = {}
        for _ in range(args.repeats):
            for precision, model in models.items():
                started = time.perf_counter()
                probabilities[precision] = predict_probabilities(model, case.image, depth=depth)
                times[precision].append(time.perf_counter() - started)
        labels = {precision: p.argmax(axis=-1) for precision, p in probabilities.items()}
        counts = {precision: iou_counts(case.label, labels[precision], num_classes) for precision in PRECISIONS}
        for precision in PRECISIONS:
            pooled[precision] = pooled[precision] + counts[precision]
            seconds[precision].append(statistics.median(times[precision]))
        relabelled = int((labels["float32"] != labels["bfloat16"]).sum())
        changed, voxels = changed + relabelled, voxels + case.label.size
        delta = float(abs(probabilities["float32"] - probabilities["bfloat16"]).max())
        print(f"| {case.name} | {'×'.join(map(str, case.image.shape[:3]))} | {seconds['float32'][-1]:.3f} | "
              f"{seconds['bfloat16'][-1]:.3f} | {mean_foreground_iou(counts['float32']):.4f} | "
              f"{mean_foreground_iou(counts['bfloat16']):.4f} | {relabelled / case.label.size:.5%} | {delta:.4f} |", flush=True)
    total = {precision: sum(seconds[precision]) for precision in PRECISIONS}
    print(f"all {len(cases)} cases: float32 {total['float32']:.2f} s, bfloat16 {total['bfloat16']:.2f} s "
          f"(ratio {total['bfloat16'] / total['float32']:.2f}); mean foreground IoU over all voxels "
          f"{mean_foreground_iou(pooled['float32']):.4f} (float32) against {mean_foreground_iou(pooled['bfloat16']):.4f} "
          f"(bfloat16); {changed / voxels:.5%} of the voxels relabelled")


if __name__ == "__main__":
    main()
