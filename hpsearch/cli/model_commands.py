"""The model's commands: data synth, train, segment, evaluate (thin, over the model's face)."""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from pathlib import Path

from hpsearch.cli.options import fraction, positive_int, shape_argument
from hpsearch.errors import HpsearchError, UsageError
from hpsearch.outputs import check_not_protected


def register(commands: argparse._SubParsersAction) -> None:
    """Add data synth, train, segment and evaluate to the command parser."""
    data = commands.add_parser("data", help="make datasets")
    data_commands = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    synth = data_commands.add_parser("synth", help="write synthetic cardiac MR stacks in MSD layout")
    synth.add_argument("out", help="new folder to write the dataset into")
    defaults = synth_defaults()
    synth.add_argument("--cases", type=positive_int, default=defaults["cases"],
                       help=f"number of cases (default: {defaults['cases']})")
    synth.add_argument("--shape", type=shape_argument, default=defaults["shape"],
                       help=f"volume size XxYxZ (default: {'x'.join(map(str, defaults['shape']))})")
    synth.add_argument("--vary-shape", action="store_true",
                       help="vary the size per case like the paper's data (128/192/256 in plane, 10-15 slices)")
    synth.add_argument("--seed", type=int, default=defaults["seed"], help=f"random seed (default: {defaults['seed']})")
    synth.add_argument("--myocardium", action="store_true", help="label the myocardium ring as class 2")
    synth.add_argument("--rv", action="store_true",
                       help="label the right-ventricle blood pool, a smaller crescent beside the left ventricle, "
                       "as the next class (3 with --myocardium, else 2)")
    synth.add_argument("--channels", type=int, choices=(1, 2), default=defaults["channels"],
                       help="image channels: 1, or 2 for a second MR contrast written as a 4D NIfTI with the "
                       f"channels last, as MSD Prostate (default: {defaults['channels']})")
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
    add_precision_option(segment)
    segment.set_defaults(handler=cmd_segment)

    evaluate = commands.add_parser("evaluate", help="IoU and Dice per class and per case on a labelled dataset")
    evaluate.add_argument("--model", required=True, help="model folder written by 'hpsearch train'")
    evaluate.add_argument("--data", required=True, help="dataset folder")
    evaluate.add_argument("--split", choices=("test", "val", "all"), default="test",
                          help="which cases (default: test, the split recorded with the model)")
    add_precision_option(evaluate)
    evaluate.set_defaults(handler=cmd_evaluate)


def synth_defaults() -> dict:
    """write_dataset's keyword defaults (cases, shape, seed, ...): the one place they are set."""
    import inspect

    from model import write_dataset

    return {name: p.default for name, p in inspect.signature(write_dataset).parameters.items()
            if p.default is not inspect.Parameter.empty}


# Training choices a --params file may set (its training: mapping, as `hpsearch export` writes it);
# an explicit flag overrides the file, and TrainConfig's default applies when neither says. Their
# options default to None so that an absent flag shows.
TRAINING_CHOICES = ("loss", "block", "augment")


def add_training_options(parser: argparse.ArgumentParser) -> None:
    from model import BLOCKS, LOSSES

    add = parser.add_argument
    add("--steps", type=positive_int, default=5000, help="training steps (default: 5000, as in the paper's search)")
    add("--eval-every", type=positive_int, default=250, help="validate every N steps (default: 250)")
    add("--patch", type=shape_argument, default=(64, 64, 16), help="training block size (default: 64x64x16)")
    add("--batch", type=positive_int, default=2, help="blocks per step (default: 2)")
    add("--depth", type=positive_int, default=3, help="U-Net pooling steps (default: 3)")
    add("--loss", choices=LOSSES, default=None,
        help="per_class_ce: the classes' mean soft IoU plus cross-entropy (default, unless the --params file's "
        "training: says otherwise); per_class: without the cross-entropy; joint: the paper's soft IoU")
    add("--block", choices=BLOCKS, default=None,
        help="convolution block (default: factorized, the paper's, unless the --params file's "
        "training: says otherwise)")
    add("--clip", choices=("global", "per_tensor"), default="global",
        help="gradient clipping by global norm or per tensor (default: global)")
    add("--augment", action=argparse.BooleanOptionalAction, default=None,
        help="augment training blocks on the fly: flips, small rotations and scalings, intensity and gamma "
        "(default: off, unless the --params file's training: says otherwise)")
    add("--seed", type=int, default=0, help="seed for the split, initialisation and patch sampling (default: 0)")
    add("--deterministic", action="store_true", help="deterministic TensorFlow ops (repeatable, slower)")
    add("--val-fraction", type=fraction, default=0.2, help="share of cases for validation (default: 0.2)")
    add("--test-fraction", type=fraction, default=0.2, help="share of cases held out for testing (default: 0.2)")


def add_precision_option(parser: argparse.ArgumentParser) -> None:
    from model import PRECISIONS

    parser.add_argument(
        "--precision", choices=PRECISIONS, default="float32",
        help="arithmetic of inference (default: float32); bfloat16 rounds the probabilities and can be faster "
        "on a CPU with bfloat16 units (AVX-512 BF16, AMX): time it on yours",
    )


def cmd_data_synth(args: argparse.Namespace) -> int:
    from model import write_dataset

    from hpsearch.progress import bar

    with bar(f"writing {args.cases} synthetic cases", total=args.cases) as advance:
        root = write_dataset(
            args.out,
            cases=args.cases,
            shape=None if args.vary_shape else args.shape,
            seed=args.seed,
            myocardium=args.myocardium,
            rv=args.rv,
            channels=args.channels,
            progress=lambda done, total: advance(done),
        )
    print(f"wrote {args.cases} cases to {root} (MSD layout: dataset.json, imagesTr/, labelsTr/)")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from model import (
        Hyperparameters,
        TrainConfig,
        check_new_folder,
        import_tensorflow,
        load_dataset,
        load_params_file,
        load_train_data,
        split_cases,
    )

    params, file_training = load_params_file(args.params) if args.params else (Hyperparameters(), {})
    # A flag given on the command line wins; else the params file's training: choice; else the default.
    training = {key: getattr(args, key) if getattr(args, key) is not None
                else file_training.get(key, getattr(TrainConfig, key))
                for key in TRAINING_CHOICES}
    out = Path(args.out or f"runs/train-{time.strftime('%Y%m%d-%H%M%S')}")
    check_new_folder(out)  # before the hours of training, not after
    config = TrainConfig(
        steps=args.steps,
        eval_every=min(args.eval_every, args.steps),
        patch_shape=args.patch,
        batch_size=args.batch,
        depth=args.depth,
        block=training["block"],
        loss=training["loss"],
        clip=args.clip,
        augment=training["augment"],
        seed=args.seed,
        deterministic=args.deterministic,
    )
    dataset = load_dataset(args.data)
    split = split_cases(dataset.case_names, seed=args.seed, val_fraction=args.val_fraction,
                        test_fraction=args.test_fraction)
    print(f"dataset {dataset.name}: {len(split.train)} training, {len(split.val)} validation, "
          f"{len(split.test)} test cases")
    data = load_train_data(dataset, split)

    import_tensorflow()
    from model import save_run, train

    from hpsearch.progress import stderr, training_bar

    def on_collapse(step: int, classes: list[int]) -> None:
        names = ", ".join(repr(dataset.class_names[c]) for c in classes)
        fix = ""
        if config.loss == "joint":
            fix = " (the joint loss lets one class swallow another: try --loss per_class_ce)"
        stderr.print(f"hpsearch: warning: class {names} has validation IoU 0 at step {step} of {config.steps}{fix}",
                     soft_wrap=True, markup=False, highlight=False)

    with training_bar(config.steps) as (on_step, on_eval):
        result = train(params, data, config, on_step=on_step, on_eval=on_eval, on_collapse=on_collapse)
    split_record = {"seed": args.seed, "val_fraction": args.val_fraction, "test_fraction": args.test_fraction,
                    "train": list(split.train), "val": list(split.val), "test": list(split.test)}

    def save(folder: Path) -> None:
        save_run(folder, result, params, config, class_names=dataset.class_names, channel_names=dataset.channel_names,
                 extra={"dataset": str(Path(args.data).resolve()), "split": split_record})

    try:
        save(out)
    except OSError as error:  # a full disk, a folder gone read-only while training ran
        raise HpsearchError(rescue_model(save, out, error)) from None
    per_class = ", ".join(f"{name} {iou:.4f}" for name, iou in zip(dataset.class_names[1:], result.best.per_class[1:]))
    print(
        f"validation IoU {result.best.iou:.4f} (step {result.best.step}; {per_class}) "
        f"after {result.steps} steps in {result.seconds:.0f} s; model written to {out}"
    )
    return 0


def rescue_model(save, out: Path, error: OSError) -> str:
    """The trained model lives only in memory now: save it under the temporary folder (`save(folder)`) rather than
    lose the training, and return the sentence that says where it went (or that it is lost)."""
    reason = error.strerror or " ".join(str(error).split())
    fallback = Path(tempfile.gettempdir()) / f"hpsearch-rescued-{out.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    try:
        save(fallback)
    except OSError as second:
        return (f"the model could not be written to {out} ({reason}) nor to {fallback} "
                f"({second.strerror or second}); the trained weights are lost: free space and train again.")
    return (f"the model could not be written to {out} ({reason}); it was saved to {fallback} instead: "
            "move it to where you want it.")


def cmd_segment(args: argparse.Namespace) -> int:
    from model import import_tensorflow

    import_tensorflow()
    from model import load_run, segment

    check_not_protected(Path(args.output))  # masks never go over or into a dataset or a model
    run = load_run(args.model)
    with slow_bfloat16_noted(args.precision):
        written = segment(
            run, args.input, args.output, precision=args.precision,
            progress=lambda i, n, name: print(f"[{i}/{n}] {name}"),
        )
    print(f"wrote {len(written)} mask(s) to {args.output}")
    return 0


@contextlib.contextmanager
def slow_bfloat16_noted(precision: str):
    """Say so on stderr when bfloat16 is asked for where it would be emulated (slower, not faster),
    and, while inside, drop TensorFlow's own line saying the same in its words."""
    from model import BFLOAT16_CPU_FLAGS, BFLOAT16_FALLBACK_NOTICE, bfloat16_is_native, filtered_stderr

    if precision != "bfloat16" or bfloat16_is_native() is not False:
        yield
        return
    print(
        f"hpsearch: note: this machine has no GPU and its CPU lacks bfloat16 units ({', '.join(BFLOAT16_CPU_FLAGS)}), "
        "so --precision bfloat16 will likely be slower than float32 here.",
        file=sys.stderr,
    )
    with filtered_stderr((BFLOAT16_FALLBACK_NOTICE,)):
        yield


def cmd_evaluate(args: argparse.Namespace) -> int:
    from model import import_tensorflow, load_dataset

    from hpsearch.progress import print_table

    dataset = load_dataset(args.data)
    import_tensorflow()
    from model import dice_from_counts, evaluate, inference_model, iou_from_counts, load_run

    run = load_run(args.model)
    if dataset.class_names != run.class_names:
        raise UsageError(f"the dataset's classes {list(dataset.class_names)} differ from the model's "
                         f"{list(run.class_names)}; evaluate on data with the same labels.")
    names = run.case_names(dataset.case_names, args.split)
    if not names:
        raise UsageError(f"the {args.split} split of {args.data} is empty; use --split all.")
    cases = dataset.load_cases(names)
    with slow_bfloat16_noted(args.precision):
        model = inference_model(run.model, args.precision)
        result = evaluate(model, cases, depth=run.config.depth, num_classes=len(run.class_names))
    foreground = run.class_names[1:]
    rows, case_iou, case_dice = [], [], []
    for name, counts in result.case_counts.items():
        iou, dice = iou_from_counts(counts)[1:], dice_from_counts(counts)[1:]
        case_iou.append(iou.mean())
        case_dice.append(dice.mean())
        rows.append([name, *(f"{i:.4f} / {d:.4f}" for i, d in zip(iou, dice)), f"{iou.mean():.4f} / {dice.mean():.4f}"])
    print_table(f"IoU / Dice per case ({args.split} split)", ["case", *foreground, "mean foreground"], rows)
    print_table(
        "IoU / Dice per class (all voxels of the split pooled)",
        ["class", "IoU", "Dice"],
        [[name, f"{iou:.4f}", f"{dice:.4f}"]
         for name, iou, dice in zip(run.class_names, result.per_class, result.per_class_dice)],
    )
    pooled_dice = sum(result.per_class_dice[1:]) / len(foreground)
    print(f"mean foreground IoU {result.iou:.4f}, Dice {pooled_dice:.4f} (voxels pooled); "
          f"mean over {len(cases)} case(s): IoU {sum(case_iou) / len(case_iou):.4f}, "
          f"Dice {sum(case_dice) / len(case_dice):.4f}")
    return 0
