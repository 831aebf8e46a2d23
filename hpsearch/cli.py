"""The `hpsearch` command line: thin command functions over importable logic.

Every user mistake is one sentence on stderr and exit code 2; a failure (training diverged, the
study storage gone for longer than hpsearch.storage.RECONNECT_SECONDS) is exit code 1; no
traceback is shown for either (set HPSEARCH_DEBUG=1 to see one).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import sys
import time
from pathlib import Path

from model import BFLOAT16_FALLBACK_NOTICE, InputError, TrainingDiverged, filtered_stderr, import_tensorflow

from hpsearch.errors import HpsearchError, UsageError

# TensorFlow's C++ start-up chatter (oneDNN notices, CPU feature lists) is not for users; the
# notices this does not reach are filtered by import_tensorflow.
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
    from model import write_dataset

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
    parser.add_argument("--loss", choices=("joint", "per_class"), default="joint", help="soft IoU loss: joint (the paper's, default) or per_class")
    parser.add_argument("--block", choices=("factorized", "full"), default="factorized", help="convolution block (default: factorized, the paper's)")
    parser.add_argument("--clip", choices=("global", "per_tensor"), default="global", help="gradient clipping by global norm or per tensor (default: global)")
    parser.add_argument("--seed", type=int, default=0, help="seed for the split, initialisation and patch sampling (default: 0)")
    parser.add_argument("--deterministic", action="store_true", help="deterministic TensorFlow ops (repeatable, slower)")
    parser.add_argument("--val-fraction", type=fraction, default=0.2, help="share of cases for validation (default: 0.2)")
    parser.add_argument("--test-fraction", type=fraction, default=0.2, help="share of cases held out for testing (default: 0.2)")


def cmd_train(args: argparse.Namespace) -> int:
    from model import Hyperparameters, TrainConfig, check_new_folder, load_dataset, load_params, load_train_data, split_cases

    params = load_params(args.params) if args.params else Hyperparameters()
    out = Path(args.out or f"runs/train-{time.strftime('%Y%m%d-%H%M%S')}")
    check_new_folder(out)  # before the hours of training, not after
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

    import_tensorflow()
    from model import save_run, train

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
    import_tensorflow()
    from model import load_run, segment

    run = load_run(args.model)
    with slow_bfloat16_noted(args.precision):
        written = segment(
            run, args.input, args.output, precision=args.precision,
            progress=lambda i, n, name: print(f"[{i}/{n}] {name}"),
        )
    print(f"wrote {len(written)} mask(s) to {args.output}")
    return 0


def add_precision_option(parser: argparse.ArgumentParser) -> None:
    from model import PRECISIONS

    parser.add_argument(
        "--precision", choices=PRECISIONS, default="float32",
        help="arithmetic of inference (default: float32); bfloat16 rounds the probabilities and can be about "
        "twice as fast on a CPU with bfloat16 units (AVX-512 BF16, AMX): time it on yours",
    )


@contextlib.contextmanager
def slow_bfloat16_noted(precision: str):
    """Say so on stderr when bfloat16 is asked for where it would be emulated (slower, not faster),
    and, while inside, drop TensorFlow's own line saying the same in its words."""
    from model import BFLOAT16_CPU_FLAGS, bfloat16_is_native

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
    from model import load_dataset

    import_tensorflow()
    from model import evaluate, inference_model, load_run

    from hpsearch.progress import print_table

    run = load_run(args.model)
    dataset = load_dataset(args.data)
    if dataset.class_names != run.class_names:
        raise UsageError(f"the dataset's classes {list(dataset.class_names)} differ from the model's {list(run.class_names)}; evaluate on data with the same labels.")
    names = run.case_names(dataset.case_names, args.split)
    if not names:
        raise UsageError(f"the {args.split} split of {args.data} is empty; use --split all.")
    cases = dataset.load_cases(names)
    with slow_bfloat16_noted(args.precision):
        model = inference_model(run.model, args.precision)
        result = evaluate(model, cases, depth=run.config.depth, num_classes=len(run.class_names))
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


# ---------------------------------------------------------------- search: launch, worker, status

DEFAULT_STUDY = Path("studies/quickstart.yaml")


def study_paths(study_file: Path | None) -> dict[str, Path]:
    """Where the embedded journal, trial models and worker logs live: beside the study file (default studies/)."""
    base = study_file.parent if study_file is not None else DEFAULT_STUDY.parent
    return {"journal": base / "hpsearch.journal", "artifacts": base / "artifacts", "logs": base / "logs"}


def writable_folder(folder: Path, what: str, fix: str) -> Path:
    """Create `folder` if needed and check that a file can be written in it; UsageError naming it otherwise."""
    import tempfile

    if folder.exists() and not folder.is_dir():
        raise UsageError(f"{folder} is a file, but hpsearch keeps {what} in a folder there; {fix}.")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise UsageError(f"cannot write {what} in {folder} ({error.strerror or error}); {fix}.") from None
    return folder


def open_study_storage(args: argparse.Namespace, study_file: Path | None):
    """(url, storage) from --storage, $HPSEARCH_STORAGE, or the embedded journal file."""
    from hpsearch.storage import open_storage, resolve_storage_url

    url = resolve_storage_url(args.storage, default_journal=study_paths(study_file)["journal"])
    return url, open_storage(url)


def resolve_study(args: argparse.Namespace, storage, *, check_data: bool = False):
    """The study's definition from --study: a YAML file, or the name of a study in the storage."""
    import optuna

    from hpsearch.config import load_study
    from hpsearch.worker import stored_config

    if args.study_file is not None:
        return load_study(args.study_file)
    try:
        study = optuna.load_study(study_name=args.study, storage=storage)
    except KeyError:
        names = ", ".join(s.study_name for s in optuna.get_all_study_summaries(storage)) or "none"
        raise UsageError(f"there is no study named {args.study!r} in the storage (studies: {names}); check --study.") from None
    return stored_config(study, check_data=check_data)


def study_argument(args: argparse.Namespace, *, default: Path | None = DEFAULT_STUDY) -> None:
    """Split --study into a YAML file (args.study_file) or a study name (args.study)."""
    value = args.study
    if value is None:
        if default is None or not default.is_file():
            raise UsageError(f"no study given and {default} does not exist; pass --study FILE or --study NAME.")
        value = str(default)
    is_file = value.endswith((".yaml", ".yml")) or Path(value).is_file()
    args.study_file = Path(value) if is_file else None
    args.study = value
    if is_file and not Path(value).is_file():
        raise UsageError(f"study file {value} does not exist; give the path of a study YAML file (see studies/).")


def cmd_launch(args: argparse.Namespace) -> int:
    from hpsearch.config import load_study
    from hpsearch.devices import choose_gpus, cpu_threads
    from hpsearch.launcher import Launcher, prepare_study
    from hpsearch.live import LiveView
    from hpsearch.storage import describe, mask_password
    from hpsearch.vocabulary import counts
    from hpsearch.worker import ensure_dataset

    from hpsearch.progress import bar

    if args.workers < 1:
        raise UsageError(f"--workers {args.workers} must be at least 1.")
    study_argument(args)
    if args.study_file is None:
        raise UsageError(
            f"--study {args.study!r} is not a study file; 'hpsearch launch' needs a study YAML file "
            f"(to join a study already in the storage by name, use 'hpsearch worker --study {args.study}')."
        )
    config = load_study(args.study_file)
    if args.deterministic:
        import dataclasses

        config = dataclasses.replace(config, deterministic=True)
    target = args.trials or config.trials
    gpus = choose_gpus(args.gpus, args.workers)
    threads = None if any(g is not None for g in gpus) else cpu_threads(args.workers)
    paths = study_paths(args.study_file)
    fix = f"move it away, or put the study file {args.study_file} in another folder"
    writable_folder(paths["artifacts"], "trial models", fix)
    writable_folder(paths["logs"] / config.name, "worker logs", fix)
    url, storage = open_study_storage(args, args.study_file)
    if config.synth is not None and not config.data_path.exists():
        with bar(f"writing synthetic data to {config.data_path}", total=config.synth["cases"]) as advance:
            ensure_dataset(config, progress=lambda done, total: advance(done))
    study = prepare_study(config, storage, target=target)
    complete, _ = counts(study)
    shown = mask_password(url)
    print(f"study {config.name!r} in {describe(url)}: {complete} of {target} complete trials")
    if complete >= target:
        print(f"the study already holds {complete} complete trials; raise --trials to search further.")
        return 0
    default_journal = study_paths(None)["journal"]
    dashboard = "hpsearch dashboard" if url == str(default_journal) else f"hpsearch dashboard --storage '{shown}'"
    launcher = Launcher(
        config, url, storage, target=target, gpus=gpus, threads=threads,
        artifacts=paths["artifacts"], log_dir=paths["logs"] / config.name,
    )
    devices = ", ".join(f"GPU {g}" for g in gpus) if threads is None else f"CPU, {threads} thread(s) each"
    print(f"starting {args.workers} worker(s) on {devices}; logs in {launcher.log_dir}")
    try:
        with LiveView(study_name=config.name, storage=storage, storage_text=describe(url), dashboard_command=dashboard, target=target) as view:
            code = launcher.run(display=view)
    finally:
        launcher.cleanup()
    print_best(study, interrupted=code == 130)
    if code == 0:
        # The same study and storage flags as this launch, so the commands can be pasted as they are.
        flags = "" if args.study_file == DEFAULT_STUDY else f" --study {shlex.quote(str(args.study_file))}"
        flags += f" --storage {shlex.quote(shown)}" if args.storage else ""
        data = os.path.relpath(config.data_path) if config.data_path.is_relative_to(Path.cwd()) else config.data_path
        data = shlex.quote(str(data))
        print(
            "next: write the best trial as Table 1, then train the final model with it:\n"
            f"  hpsearch export{flags} -o best.yaml\n"
            f"  hpsearch train --data {data} --params best.yaml"
        )
    return code


def print_best(study, *, interrupted: bool = False) -> None:
    from optuna.trial import TrialState

    from hpsearch.vocabulary import best_trial

    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    failed = sum(t.state == TrialState.FAIL for t in trials)
    pruned = sum(t.state == TrialState.PRUNED for t in trials)
    if interrupted:
        print(f"interrupted: {len(complete)} complete trials kept; running trials marked FAIL and re-queued; 'hpsearch launch' resumes.")
    if not complete:
        print("no complete trial yet.")
        return
    best = best_trial(complete, study.direction)
    params = ", ".join(f"{k} {v:.4g}" for k, v in best.params.items())
    stopped = f", {pruned} pruned" if pruned else ""  # only studies with a pruner have any
    print(f"{len(complete)} complete{stopped}, {failed} failed; best validation IoU {best.value:.4f} in trial {best.number} ({params})")


def cmd_worker(args: argparse.Namespace) -> int:
    if args.gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = args.gpu  # before TensorFlow loads
    import optuna

    from hpsearch.storage import mask_password
    from hpsearch.vocabulary import TARGET_ATTR
    from hpsearch.worker import run_worker

    if args.study is None:
        raise UsageError("hpsearch worker needs --study NAME (or a study FILE) to join.")
    study_argument(args, default=None)
    url, storage = open_study_storage(args, args.study_file)
    config = resolve_study(args, storage, check_data=True)
    if args.data:
        import dataclasses

        config = dataclasses.replace(config, data_path=Path(args.data).resolve())
    try:
        stored_target = optuna.load_study(study_name=config.name, storage=storage).user_attrs.get(TARGET_ATTR)
    except KeyError:
        if args.study_file is None:
            raise UsageError(f"there is no study named {config.name!r} in {mask_password(url)}; start it with 'hpsearch launch'.") from None
        # A worker given the study file may be the first to arrive: it creates the study.
        from hpsearch.launcher import prepare_study

        stored_target = prepare_study(config, storage, target=args.trials or config.trials).user_attrs[TARGET_ATTR]
    target = args.trials or stored_target or config.trials
    artifacts = Path(args.artifacts or study_paths(args.study_file)["artifacts"])
    writable_folder(artifacts, "trial models", "pass --artifacts DIR to name a writable folder")
    import optuna.artifacts

    store = optuna.artifacts.FileSystemArtifactStore(str(artifacts.resolve()))
    return run_worker(
        config, storage, index=args.index, target=target, threads=args.threads,
        artifact_store=store, status_path=args.status_file,
    )


def cmd_status(args: argparse.Namespace) -> int:
    from hpsearch.progress import print_table
    from hpsearch.storage import describe
    from hpsearch.vocabulary import FAIL_REASON_ATTR, MODEL_ERROR_ATTR, PARENT_ATTR, WORKER_ATTR

    study, _, url = open_finished_study(args)  # refuses a missing journal rather than creating it
    name = study.study_name
    rows = []
    for trial in study.get_trials(deepcopy=False):
        duration = trial.duration.total_seconds() if trial.duration else None
        note = trial.user_attrs.get(FAIL_REASON_ATTR, "")
        if MODEL_ERROR_ATTR in trial.user_attrs and not note:
            note = f"model not stored: {trial.user_attrs[MODEL_ERROR_ATTR]}"
        parent = trial.user_attrs.get(PARENT_ATTR)
        if parent is not None and not note:
            note = f"from {parent}"
        rows.append([
            str(trial.number), trial.state.name,
            "-" if trial.value is None else f"{trial.value:.4f}",
            ", ".join(f"{k}={v:.3g}" for k, v in trial.params.items()),
            "-" if duration is None else f"{duration:.0f} s",
            str(trial.user_attrs.get(WORKER_ATTR, "-")),
            note,
        ])
    print_table(f"study {name} ({describe(url)})", ["#", "state", "IoU", "hyperparameters", "duration", "worker", "note"], rows)
    print_best(study)
    return 0


# ---------------------------------------------------------------- dashboard, export, report


def cmd_dashboard(args: argparse.Namespace) -> int:
    """Serve optuna-dashboard on the study storage; read-only unless --allow-writes (see hpsearch.dashboard)."""
    import optuna

    from hpsearch.dashboard import artifact_store, make_dashboard_server, serve, url_of, warn_if_exposed
    from hpsearch.export import check_storage_exists
    from hpsearch.storage import describe, resolve_storage_url

    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port {args.port} is not a port number; give one in 1-65535 (0 picks a free one).")
    if args.study is not None or DEFAULT_STUDY.is_file():
        study_argument(args)
    else:
        args.study_file = None  # no study file here: serve whatever the storage holds
    check_storage_exists(resolve_storage_url(args.storage, default_journal=study_paths(args.study_file)["journal"]))
    url, storage = open_study_storage(args, args.study_file)
    folder = Path(args.artifacts) if args.artifacts else study_paths(args.study_file)["artifacts"]
    store = artifact_store(folder)
    name = None
    if args.study is not None:
        name = resolve_study(args, storage).name if args.study_file is not None else args.study
    server = make_dashboard_server(storage, host=args.host, port=args.port, artifacts=store, allow_writes=args.allow_writes)
    page = "/dashboard"
    if name is not None:
        try:
            page = f"/dashboard/studies/{storage.get_study_id_from_name(name)}"
        except KeyError:
            studies = ", ".join(repr(s.study_name) for s in optuna.get_all_study_summaries(storage)) or "none yet"
            print(f"hpsearch: note: no study named {name!r} in the storage yet (studies: {studies}); the dashboard lists what is there.", file=sys.stderr)
    print(f"dashboard of {describe(url)} at {url_of(server, args.host, page)}", flush=True)
    if store is None:
        print(f"hpsearch: note: no artifact folder {folder}, so trial models cannot be downloaded; pass --artifacts DIR.", file=sys.stderr)
    print(f"{'read-write' if args.allow_writes else 'read-only'}; Ctrl-C stops it.", flush=True)
    warn_if_exposed(args.host, server.server_address[1], args.allow_writes)
    return serve(server)


def open_finished_study(args: argparse.Namespace):
    """(study, its definition, storage URL) for the read-only commands; never creates a storage or study."""
    from hpsearch.export import check_storage_exists, find_study, study_definition
    from hpsearch.storage import resolve_storage_url

    study_argument(args)
    check_storage_exists(resolve_storage_url(args.storage, default_journal=study_paths(args.study_file)["journal"]))
    url, storage = open_study_storage(args, args.study_file)
    file_config = resolve_study(args, storage) if args.study_file is not None else None
    study = find_study(storage, file_config.name if file_config else args.study, url)
    return study, study_definition(study, file_config), url


def cmd_export(args: argparse.Namespace) -> int:
    from hpsearch.export import exported_trial, to_markdown, to_yaml, write_output
    from hpsearch.storage import describe

    study, definition, url = open_finished_study(args)
    exported = exported_trial(study, definition, source=describe(url))
    write_output(to_markdown(exported) if args.format == "markdown" else to_yaml(exported), args.output)
    if args.output not in (None, "-"):
        print(f"wrote trial {exported.trial} of study {exported.study!r} (validation IoU {exported.iou:.4f}) to {args.output}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from hpsearch.export import write_atomically
    from hpsearch.report import render_report
    from hpsearch.storage import describe

    study, definition, url = open_finished_study(args)
    text = render_report(study, definition, storage_text=describe(url))
    write_atomically(Path(args.output), text)
    print(f"wrote the report of study {study.study_name!r} ({len(study.get_trials(deepcopy=False))} trials) to {args.output}")
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
    synth.add_argument("--cases", type=positive_int, default=40, help="number of cases (default: 40: 24 training, 8 validation, 8 test)")
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
    add_precision_option(segment)
    segment.set_defaults(handler=cmd_segment)

    evaluate = commands.add_parser("evaluate", help="IoU per class and per case on a labelled dataset")
    evaluate.add_argument("--model", required=True, help="model folder written by 'hpsearch train'")
    evaluate.add_argument("--data", required=True, help="dataset folder")
    evaluate.add_argument("--split", choices=("test", "val", "all"), default="test", help="which cases (default: test, the split recorded with the model)")
    add_precision_option(evaluate)
    evaluate.set_defaults(handler=cmd_evaluate)

    launch = commands.add_parser("launch", help="create or resume a study and run N supervised workers")
    launch.add_argument("--workers", type=int, default=1, help="worker processes: one per GPU, or sharing the CPU cores (default: 1)")
    launch.add_argument("--study", help=f"study YAML file (default: {DEFAULT_STUDY})")
    launch.add_argument("--storage", help="Optuna storage URL (postgresql+psycopg2://...) or journal file; default: $HPSEARCH_STORAGE, else studies/hpsearch.journal")
    launch.add_argument("--trials", type=positive_int, help="COMPLETE trials to reach (default: the study file's 'trials')")
    launch.add_argument("--gpus", help="GPU indices to use, e.g. 0,1 (default: all found)")
    launch.add_argument("--deterministic", action="store_true", help="deterministic TensorFlow ops: a seeded 1-worker search repeats trial by trial (slower)")
    launch.set_defaults(handler=cmd_launch)

    worker = commands.add_parser("worker", help="join a running study from this machine (one worker process)")
    worker.add_argument("--study", help="study name in the storage, or a study YAML file")
    worker.add_argument("--storage", help="Optuna storage URL or journal file (default: $HPSEARCH_STORAGE, else studies/hpsearch.journal)")
    worker.add_argument("--gpu", help="GPU index this worker uses (sets CUDA_VISIBLE_DEVICES)")
    worker.add_argument("--trials", type=positive_int, help="COMPLETE trials to reach (default: the launcher's target)")
    worker.add_argument("--threads", type=positive_int, help="CPU threads for TensorFlow (default: all)")
    worker.add_argument("--data", help="dataset folder on this machine, if not where the launcher had it")
    worker.add_argument("--artifacts", help="folder of the trial model store (default: studies/artifacts)")
    worker.add_argument("--index", default="0", help=argparse.SUPPRESS)
    worker.add_argument("--status-file", help=argparse.SUPPRESS)
    worker.set_defaults(handler=cmd_worker)

    status = commands.add_parser("status", help="the study's trials as a table")
    status.add_argument("--study", help=f"study YAML file or study name (default: {DEFAULT_STUDY})")
    status.add_argument("--storage", help="Optuna storage URL or journal file (default: $HPSEARCH_STORAGE, else studies/hpsearch.journal)")
    status.set_defaults(handler=cmd_status)

    dashboard = commands.add_parser("dashboard", help="watch the study in optuna-dashboard (read-only, 127.0.0.1 by default)")
    dashboard.add_argument("--study", help=f"study YAML file or study name (default: {DEFAULT_STUDY}, if it exists)")
    dashboard.add_argument("--storage", help="Optuna storage URL or journal file (default: $HPSEARCH_STORAGE, else studies/hpsearch.journal)")
    dashboard.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only; 0.0.0.0 for all)")
    dashboard.add_argument("--port", type=int, default=8080, help="port to listen on (default: 8080; 0 picks a free one)")
    dashboard.add_argument("--artifacts", help="folder of the trial model store (default: studies/artifacts beside the study file)")
    dashboard.add_argument("--allow-writes", action="store_true", help="let the dashboard change the study (notes, finishing trials, deleting studies); off so it cannot disturb workers")
    dashboard.set_defaults(handler=cmd_dashboard)

    export = commands.add_parser("export", help="the best COMPLETE trial as a Table-1 YAML file for 'hpsearch train --params'")
    export.add_argument("--study", help=f"study YAML file or study name (default: {DEFAULT_STUDY})")
    export.add_argument("--storage", help="Optuna storage URL or journal file (default: $HPSEARCH_STORAGE, else studies/hpsearch.journal)")
    export.add_argument("-o", "--output", help="file to write (written atomically; default: print to stdout)")
    export.add_argument("--format", choices=("yaml", "markdown"), default="yaml", help="yaml (the --params file, default) or a markdown table")
    export.set_defaults(handler=cmd_export)

    report = commands.add_parser("report", help="one self-contained HTML page of plots about the study")
    report.add_argument("--study", help=f"study YAML file or study name (default: {DEFAULT_STUDY})")
    report.add_argument("--storage", help="Optuna storage URL or journal file (default: $HPSEARCH_STORAGE, else studies/hpsearch.journal)")
    report.add_argument("-o", "--output", default="report.html", help="HTML file to write (default: report.html)")
    report.set_defaults(handler=cmd_report)
    return parser


def _quiet_libraries() -> None:
    # Optuna logs every study and trial event at INFO; our own output says what matters.
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)


def _storage_errors() -> tuple[type[BaseException], ...]:
    import optuna
    import sqlalchemy.exc

    return (optuna.exceptions.StorageInternalError, sqlalchemy.exc.SQLAlchemyError)


def main(argv: list[str] | None = None) -> int:
    """Run one command; return its exit code."""
    args = build_parser().parse_args(argv)
    _quiet_libraries()
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
    except _storage_errors() as error:
        if os.environ.get("HPSEARCH_DEBUG"):
            raise
        # The database went away for longer than hpsearch.storage.RECONNECT_SECONDS.
        cause = error.__cause__ or error
        detail = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
        print(f"hpsearch: the study storage failed ({detail}); check that the database is up, then run the command again.", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("hpsearch: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
