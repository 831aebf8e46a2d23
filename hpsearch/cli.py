"""The `hpsearch` command line: thin command functions over importable logic.

Every user mistake is one sentence on stderr and exit code 2; a failure is exit code 1; no
traceback is shown for either (set HPSEARCH_DEBUG=1 to see one).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from model.errors import InputError, TrainingDiverged

from hpsearch.errors import HpsearchError, UsageError

# TensorFlow's C++ start-up chatter (oneDNN notices, CPU feature lists) is not for users.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def shape_argument(text: str) -> tuple[int, int, int]:
    """Parse '192x192x12' into (192, 192, 12)."""
    parts = text.lower().split("x")
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a shape; write three sizes like 192x192x12")
    return shape


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number ≥ 1")
    return value


def fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a fraction in [0, 1)")
    return value


# ---------------------------------------------------------------- data synth


def cmd_data_synth(args: argparse.Namespace) -> int:
    from model.synth import write_dataset

    from hpsearch.progress import bar

    with bar(f"writing {args.cases} synthetic cases", total=args.cases) as advance:
        root = write_dataset(
            args.out,
            cases=args.cases,
            shape=None if args.vary_shape else args.shape,
            seed=args.seed,
            myocardium=args.myocardium,
            progress=lambda done, total: advance(done),
        )
    print(f"wrote {args.cases} cases to {root} (MSD layout: dataset.json, imagesTr/, labelsTr/)")
    return 0


# ---------------------------------------------------------------- train


def add_training_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--steps", type=positive_int, default=5000, help="training steps (default: 5000, as in the paper's search)")
    parser.add_argument("--eval-every", type=positive_int, default=250, help="validate every N steps (default: 250)")
    parser.add_argument("--patch", type=shape_argument, default=(64, 64, 16), help="training block size (default: 64x64x16)")
    parser.add_argument("--batch", type=positive_int, default=2, help="blocks per step (default: 2)")
    parser.add_argument("--depth", type=positive_int, default=3, help="U-Net pooling steps (default: 3)")
    parser.add_argument("--loss", choices=("per_class", "joint"), default="per_class", help="soft IoU loss (default: per_class; joint is the paper's)")
    parser.add_argument("--block", choices=("factorized", "full"), default="factorized", help="convolution block (default: factorized, the paper's)")
    parser.add_argument("--clip", choices=("global", "per_tensor"), default="global", help="gradient clipping by global norm or per tensor (default: global)")
    parser.add_argument("--seed", type=int, default=0, help="seed for the split, initialisation and patch sampling (default: 0)")
    parser.add_argument("--deterministic", action="store_true", help="deterministic TensorFlow ops (repeatable, slower)")
    parser.add_argument("--val-fraction", type=fraction, default=0.2, help="share of cases for validation (default: 0.2)")
    parser.add_argument("--test-fraction", type=fraction, default=0.2, help="share of cases held out for testing (default: 0.2)")


def cmd_train(args: argparse.Namespace) -> int:
    from model.params import Hyperparameters, load_params
    from model.run import check_new_folder

    params = load_params(args.params) if args.params else Hyperparameters()
    out = Path(args.out or f"runs/train-{time.strftime('%Y%m%d-%H%M%S')}")
    check_new_folder(out)  # before the hours of training, not after
    from model.data import load_dataset, load_train_data, split_cases
    from model.config import TrainConfig

    config = TrainConfig(
        steps=args.steps,
        eval_every=min(args.eval_every, args.steps),
        patch_shape=args.patch,
        batch_size=args.batch,
        depth=args.depth,
        block=args.block,
        loss=args.loss,
        clip=args.clip,
        seed=args.seed,
        deterministic=args.deterministic,
    )
    dataset = load_dataset(args.data)
    split = split_cases(dataset.case_names, seed=args.seed, val_fraction=args.val_fraction, test_fraction=args.test_fraction)
    print(f"dataset {dataset.name}: {len(split.train)} training, {len(split.val)} validation, {len(split.test)} test cases")
    data = load_train_data(dataset, split)

    from model.run import save_run
    from model.train import train

    from hpsearch.progress import training_bar

    with training_bar(config.steps) as (on_step, on_eval):
        result = train(params, data, config, on_step=on_step, on_eval=on_eval)
    save_run(
        out, result, params, config,
        class_names=dataset.class_names,
        channel_names=dataset.channel_names,
        extra={"dataset": str(Path(args.data).resolve()), "split": {"seed": args.seed, "val_fraction": args.val_fraction, "test_fraction": args.test_fraction, "train": list(split.train), "val": list(split.val), "test": list(split.test)}},
    )
    per_class = ", ".join(f"{name} {iou:.4f}" for name, iou in zip(dataset.class_names[1:], result.best.per_class[1:]))
    print(
        f"validation IoU {result.best.iou:.4f} (step {result.best.step}; {per_class}) "
        f"after {result.steps} steps in {result.seconds:.0f} s; model written to {out}"
    )
    return 0


# ---------------------------------------------------------------- segment, evaluate


def cmd_segment(args: argparse.Namespace) -> int:
    from model.run import load_run
    from model.segment import segment

    run = load_run(args.model)
    written = segment(run, args.input, args.output, progress=lambda i, n, name: print(f"[{i}/{n}] {name}"))
    print(f"wrote {len(written)} mask(s) to {args.output}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from model.data import load_dataset, split_cases
    from model.run import load_run
    from model.train import evaluate

    from hpsearch.progress import print_table

    run = load_run(args.model)
    dataset = load_dataset(args.data)
    if dataset.class_names != run.class_names:
        raise UsageError(f"the dataset's classes {list(dataset.class_names)} differ from the model's {list(run.class_names)}; evaluate on data with the same labels.")
    if args.split == "all":
        names = dataset.case_names
    else:
        recorded = run.info.get("split", {})
        split = split_cases(
            dataset.case_names,
            seed=recorded.get("seed", 0),
            val_fraction=recorded.get("val_fraction", 0.2),
            test_fraction=recorded.get("test_fraction", 0.2),
        )
        names = list(split.test if args.split == "test" else split.val)
        if not names:
            raise UsageError(f"the {args.split} split of {args.data} is empty; use --split all.")
    cases = dataset.load_cases(names)
    result = evaluate(run.model, cases, depth=run.config.depth, num_classes=len(run.class_names))
    print_table(
        f"IoU per case ({args.split} split)",
        ["case", "mean foreground IoU"],
        [[name, f"{iou:.4f}"] for name, iou in result.per_case.items()],
    )
    print_table(
        "IoU per class (all voxels of the split)",
        ["class", "IoU"],
        [[name, f"{iou:.4f}"] for name, iou in zip(run.class_names, result.per_class)],
    )
    print(f"mean foreground IoU {result.iou:.4f} over {len(cases)} case(s)")
    return 0


# ---------------------------------------------------------------- parser, main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hpsearch",
        description="Hyperparameter search for volumetric medical-image segmentation (Avetisian's factorized 3D U-Net).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data = commands.add_parser("data", help="make datasets")
    data_commands = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    synth = data_commands.add_parser("synth", help="write synthetic cardiac MR stacks in MSD layout")
    synth.add_argument("out", help="new folder to write the dataset into")
    synth.add_argument("--cases", type=positive_int, default=20, help="number of cases (default: 20)")
    synth.add_argument("--shape", type=shape_argument, default=(192, 192, 12), help="volume size XxYxZ (default: 192x192x12)")
    synth.add_argument("--vary-shape", action="store_true", help="vary the size per case like the paper's data (128/192/256 in plane, 10-15 slices)")
    synth.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    synth.add_argument("--myocardium", action="store_true", help="label the myocardium ring as class 2")
    synth.set_defaults(handler=cmd_data_synth)

    train = commands.add_parser("train", help="train one model (Table 1 hyperparameters by default)")
    train.add_argument("--data", required=True, help="dataset folder (MSD or nnU-Net v2 layout)")
    train.add_argument("--params", help="Table-1 YAML file of hyperparameters (as 'hpsearch export' writes)")
    train.add_argument("--out", help="new folder for the model (default: runs/train-DATE-TIME)")
    add_training_options(train)
    train.set_defaults(handler=cmd_train)

    segment = commands.add_parser("segment", help="segment a NIfTI file or a folder of them")
    segment.add_argument("--model", required=True, help="model folder written by 'hpsearch train'")
    segment.add_argument("input", help="NIfTI file or folder")
    segment.add_argument("output", help="output NIfTI file or folder")
    segment.set_defaults(handler=cmd_segment)

    evaluate = commands.add_parser("evaluate", help="IoU per class and per case on a labelled dataset")
    evaluate.add_argument("--model", required=True, help="model folder written by 'hpsearch train'")
    evaluate.add_argument("--data", required=True, help="dataset folder")
    evaluate.add_argument("--split", choices=("test", "val", "all"), default="test", help="which cases (default: test, the split recorded with the model)")
    evaluate.set_defaults(handler=cmd_evaluate)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; return its exit code."""
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (InputError, HpsearchError) as error:
        if os.environ.get("HPSEARCH_DEBUG"):
            raise
        print(f"hpsearch: error: {error}", file=sys.stderr)
        return getattr(error, "exit_code", 2)
    except TrainingDiverged as error:
        print(f"hpsearch: training failed: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("hpsearch: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
