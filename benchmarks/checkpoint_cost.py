"""What a trial's checkpoints cost at paper scale, against the training they protect.

Builds the paper-scale network (30 channels, depth 3, 64×64×16 blocks, batch 2, Table 1), times
training steps, then times what a search does per checkpoint: build the Checkpoint, write it and
upload it to a FileSystemArtifactStore (removing the previous one). A paper-scale trial (5000
steps, an evaluation every 500, a checkpoint every 2 evaluations) stores 4 checkpoints; its share
of the trial is 4 checkpoints over 5000 steps (evaluations left out, so the share is overstated).
Compute lost to a preemption is at most the steps since the last checkpoint: one checkpoint
interval (1000 steps here) by construction, which tests/test_resume.py checks.

    python benchmarks/checkpoint_cost.py [--steps 6] [--checkpoints 3]
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

import numpy as np  # noqa: E402
import optuna  # noqa: E402

import model  # noqa: E402
from model.training import _checkpoint, compiled_unet  # noqa: E402
from model.patches import PatchSampler  # noqa: E402
from model.synth import write_dataset  # noqa: E402

PAPER_STEPS, PAPER_EVAL_EVERY, PAPER_CHECKPOINT_EVERY = 5000, 500, 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6, help="timed training steps (after one warm-up step)")
    parser.add_argument("--checkpoints", type=int, default=3, help="timed checkpoints")
    args = parser.parse_args()
    params = model.Hyperparameters()  # Table 1: 30 channels
    config = model.TrainConfig(steps=PAPER_STEPS, eval_every=PAPER_EVAL_EVERY, patch_shape=(64, 64, 16), depth=3)
    with tempfile.TemporaryDirectory() as folder:
        root = write_dataset(Path(folder) / "data", cases=4, shape=(128, 128, 16), seed=0)
        dataset = model.load_dataset(root)
        cases = dataset.load_cases()
        net = compiled_unet(params, config, in_channels=1, num_classes=dataset.num_classes)
        sampler = PatchSampler(cases, patch_shape=config.patch_shape, batch_size=config.batch_size,
                               num_classes=dataset.num_classes, seed=0)
        net.train_on_batch(*sampler.next_batch())  # the trace
        steps = []
        for _ in range(args.steps):
            images, labels = sampler.next_batch()
            started = time.perf_counter()
            net.train_on_batch(images, labels)
            steps.append(time.perf_counter() - started)
        store = optuna.artifacts.FileSystemArtifactStore(str(Path(folder) / "artifacts"))
        (Path(folder) / "artifacts").mkdir()
        study = optuna.create_study()
        trial = study.ask()
        weights = net.get_weights()
        evaluation = model.evaluate(net, cases[:1], depth=3, num_classes=dataset.num_classes)
        seconds, sizes, previous = [], [], None
        for _ in range(args.checkpoints):
            started = time.perf_counter()
            checkpoint = _checkpoint(1000, net, sampler, [evaluation], evaluation, weights, set())
            path = checkpoint.save(Path(folder) / "checkpoint.npz")
            artifact = optuna.artifacts.upload_artifact(artifact_store=store, file_path=str(path), study_or_trial=trial)
            if previous is not None:
                store.remove(previous)
            previous = artifact
            seconds.append(time.perf_counter() - started)
            sizes.append(path.stat().st_size)
    step, per_checkpoint = statistics.median(steps), statistics.median(seconds)
    checkpoints = PAPER_STEPS // (PAPER_EVAL_EVERY * PAPER_CHECKPOINT_EVERY) - 1
    share = checkpoints * per_checkpoint / (PAPER_STEPS * step)
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; numpy {np.__version__}")
    print("| figure | value |")
    print("| --- | --- |")
    print(f"| paper-scale training step (median of {args.steps}) | {step:.3f} s |")
    print(f"| one checkpoint: build, write, upload, drop the previous (median of {args.checkpoints}) | {per_checkpoint:.3f} s |")
    print(f"| checkpoint size | {statistics.median(sizes) / 2**20:.1f} MiB |")
    print(f"| checkpoints per paper-scale trial | {checkpoints} |")
    print(f"| share of a paper-scale trial's steps (goal ≤ 2 %) | {share:.3%} |")
    print(f"| compute lost per preemption, at most | {PAPER_EVAL_EVERY * PAPER_CHECKPOINT_EVERY} steps (one checkpoint interval) |")


if __name__ == "__main__":
    main()
