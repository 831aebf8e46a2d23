"""The search's commands: init, launch, worker."""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
from pathlib import Path

from hpsearch.cli.options import (
    add_study_options,
    load_study_file,
    open_study_storage,
    positive_int,
    resolve_study,
    study_argument,
    storage_url,
    study_paths,
    writable_folder,
)
from hpsearch.artifacts import is_s3, open_artifact_store, resolve_artifacts
from hpsearch.errors import UsageError
from hpsearch.templates import STUDIES_FOLDER, TEMPLATE_NAMES

TEMPLATES = ", ".join(TEMPLATE_NAMES)
ARTIFACTS_HELP = ("where trial models and checkpoints go: a folder, or s3://bucket/prefix that every machine reaches "
                  f"(default: $HPSEARCH_ARTIFACTS, else {STUDIES_FOLDER}/artifacts beside the study)")


def register(commands: argparse._SubParsersAction) -> None:
    """Add init, launch and worker to the command parser."""
    init = commands.add_parser("init", help=f"write the study templates ({TEMPLATES}) into DIR/studies/ to edit")
    init.add_argument("dir", nargs="?", default=".", help="folder to write studies/ into (default: this folder)")
    init.add_argument("--force", action="store_true", help="overwrite study files that already exist there")
    init.set_defaults(handler=cmd_init)

    launch = commands.add_parser("launch", help="create or resume a study and run N supervised workers")
    count = launch.add_mutually_exclusive_group()
    count.add_argument("--workers", type=int, default=1,
                       help="worker processes, spread over the GPUs round-robin (several may share one), "
                            "or sharing the CPU cores (default: 1)")
    count.add_argument("--workers-per-gpu", type=positive_int, metavar="K",
                       help="K workers on each GPU used, instead of --workers")
    add_study_options(launch, f"study YAML file, or a template name ({TEMPLATES}; default: quickstart, "
                              f"{STUDIES_FOLDER}/quickstart.yaml where it exists)")
    launch.add_argument("--trials", type=positive_int,
                        help="COMPLETE trials to reach (default: the study file's 'trials')")
    launch.add_argument("--artifacts", help=ARTIFACTS_HELP)
    launch.add_argument("--gpus", help="GPUs to use: indices, UUIDs (GPU-...) or MIG instances (MIG-...), e.g. 0,1 "
                                       "(default: all found, within an inherited CUDA_VISIBLE_DEVICES)")
    launch.add_argument("--deterministic", action="store_true",
                        help="deterministic TensorFlow ops: a seeded 1-worker search repeats trial by trial (slower)")
    launch.add_argument("--executor", choices=("local", "slurm"), default="local",
                        help="local: worker processes on this machine (default); slurm: a Slurm job array of "
                             "--workers tasks, one GPU each, on a PostgreSQL --storage every node reaches")
    launch.add_argument("--cpu", action="store_true",
                        help="workers on the CPU: no GPU per worker (with --executor slurm: no --gres=gpu:1)")
    slurm = launch.add_argument_group("Slurm (--executor slurm; override the study file's slurm: key)")
    slurm.add_argument("--slurm-partition", help="sbatch --partition")
    slurm.add_argument("--slurm-time", help="sbatch --time per task, e.g. 2-00:00:00")
    slurm.add_argument("--slurm-account", help="sbatch --account")
    slurm.add_argument("--slurm-option", action="append", default=[], metavar="OPTION",
                       help="another sbatch option, repeatable, written with '=': --slurm-option=--mem=16G")
    launch.set_defaults(handler=cmd_launch)

    worker = commands.add_parser("worker", help="join a running study from this machine (one worker process)")
    add_study_options(worker, "study name in the storage, or a study YAML file (required)", required=True)
    placement = worker.add_mutually_exclusive_group()
    placement.add_argument("--gpu",
                           help="GPU this worker uses: an index, UUID or MIG instance (sets CUDA_VISIBLE_DEVICES)")
    placement.add_argument("--cpu", action="store_true", help="train on the CPU even where a GPU is visible")
    worker.add_argument("--trials", type=positive_int, help="COMPLETE trials to reach (default: the launcher's target)")
    worker.add_argument("--threads", type=positive_int, help="CPU threads for TensorFlow (default: all)")
    worker.add_argument("--data", help="dataset folder on this machine, if not where the launcher had it")
    worker.add_argument("--artifacts", help=ARTIFACTS_HELP)
    worker.add_argument("--index", default="0", help=argparse.SUPPRESS)
    worker.add_argument("--status-file", help=argparse.SUPPRESS)
    worker.set_defaults(handler=cmd_worker)


def cmd_init(args: argparse.Namespace) -> int:
    from hpsearch.templates import write_templates

    written = write_templates(args.dir, force=args.force)
    print(f"wrote {', '.join(str(path) for path in written)}")
    print(f"next: edit them, then  hpsearch launch --study {shlex.quote(str(written[0]))} --workers 2")
    return 0


def cmd_launch(args: argparse.Namespace) -> int:
    from hpsearch.cli.results_commands import print_best
    from hpsearch.devices import choose_gpus, cpu_threads, describe_gpus
    from hpsearch.launcher import Launcher, prepare_study
    from hpsearch.live import LiveView
    from hpsearch.progress import bar
    from hpsearch.storage import describe, mask_password
    from hpsearch.vocabulary import counts
    from hpsearch.worker import ensure_dataset

    if args.workers < 1:
        raise UsageError(f"--workers {args.workers} must be at least 1.")
    study_argument(args, templates=True)
    if args.study_file is None:
        raise UsageError(
            f"--study {args.study!r} is not a study file; 'hpsearch launch' needs a study YAML file or a template "
            f"name ({TEMPLATES}); to join a study already in the storage by name, use "
            f"'hpsearch worker --study {args.study}'."
        )
    config = load_study_file(args)
    if args.deterministic:
        config = dataclasses.replace(config, deterministic=True)
    target = args.trials or config.trials
    if args.executor == "slurm":
        if args.workers_per_gpu is not None:
            raise UsageError("--workers-per-gpu is for workers on this machine; with --executor slurm, "
                             "--workers N submits N tasks of one GPU each.")
        return _launch_slurm(args, config, target)
    gpus = choose_gpus(args.gpus, args.workers, per_gpu=args.workers_per_gpu, cpu=args.cpu)
    threads = None if any(g is not None for g in gpus) else cpu_threads(len(gpus))
    artifacts, log_dir = _checked_outputs(args, config)
    url, storage = open_study_storage(args)
    if config.synth is not None and not config.data_path.exists():
        with bar(f"writing synthetic data to {config.data_path}", total=config.synth["cases"]) as advance:
            ensure_dataset(config, progress=lambda done, total: advance(done))
    from hpsearch.preflight import check_dataset

    check_dataset(config)  # one image and label opened now: a bad file is one line here, not a failed trial each
    study = prepare_study(config, storage, target=target)
    complete, _ = counts(study)
    shown = mask_password(url)
    print(f"study {config.name!r} in {describe(url)}: {complete} of {target} complete trials")
    if complete >= target:
        print(f"the study already holds {complete} complete trials; raise --trials to search further.")
        return 0
    # The same study and storage flags as this launch, so the printed commands can be pasted as they are.
    flags = "" if args.study_label is None else f" --study {shlex.quote(args.study_label)}"
    flags += f" --storage {shlex.quote(shown)}" if args.storage else ""
    launcher = Launcher(
        config, url, storage, target=target, gpus=gpus, threads=threads,
        artifacts=artifacts, log_dir=log_dir,
    )
    devices = describe_gpus(gpus) if threads is None else f"CPU, {threads} thread(s) each"
    print(f"starting {len(gpus)} worker(s) on {devices}; logs in {launcher.log_dir}")
    try:
        with LiveView(study_name=config.name, storage=storage, storage_text=describe(url),
                      dashboard_command=f"hpsearch dashboard{flags}", target=target) as view:
            code = launcher.run(display=view)
    finally:
        launcher.cleanup()
    print_best(study, interrupted=code == 130)
    if code == 0:
        data = os.path.relpath(config.data_path) if config.data_path.is_relative_to(Path.cwd()) else config.data_path
        print(
            "next: write the best trial as Table 1, then train the final model with it:\n"
            f"  hpsearch export{flags} -o best.yaml\n"
            f"  hpsearch train --data {shlex.quote(str(data))} --params best.yaml"
        )
    return code


def _checked_outputs(args: argparse.Namespace, config) -> tuple[str, Path]:
    """A launch's trial model store (a folder or s3://bucket/prefix) and worker-log folder, checked before
    any worker starts: the bucket once here, not by every worker's trial; the folders writable."""
    paths = study_paths(args.study_home)
    fix = f"move it away, or keep the study file in another folder than {args.study_home}"
    artifacts = resolve_artifacts(args.artifacts, default_folder=paths["artifacts"])
    if is_s3(artifacts):
        open_artifact_store(artifacts, create=False)
    else:
        writable_folder(Path(artifacts), "trial models", fix)
    log_dir = paths["logs"] / config.name
    writable_folder(log_dir, "worker logs", fix)
    return artifacts, log_dir


def _launch_slurm(args: argparse.Namespace, config, target: int) -> int:
    """`launch --executor slurm`: submit the workers as a job array, watch the study until its target."""
    from hpsearch import slurm
    from hpsearch.cli.results_commands import print_best
    from hpsearch.launcher import prepare_study
    from hpsearch.storage import DEFAULT_ENV, describe
    from hpsearch.vocabulary import counts
    from hpsearch.worker import ensure_dataset

    url = storage_url(args)
    slurm.check_storage(url)  # before anything is created: the nodes could not share a journal file
    slurm.check_installed()
    settings = slurm.SlurmSettings.merged(
        config.slurm, partition=args.slurm_partition, time=args.slurm_time, account=args.slurm_account,
        options=args.slurm_option, cpu=args.cpu,
    )
    artifacts, log_dir = _checked_outputs(args, config)
    _, storage = open_study_storage(args)
    ensure_dataset(config)  # the nodes read it from the shared file system
    from hpsearch.preflight import check_dataset

    check_dataset(config)  # as the local launch: a bad file is one line here, before any study or sbatch
    study = prepare_study(config, storage, target=target)
    complete, _ = counts(study)
    print(f"study {config.name!r} in {describe(url)}: {complete} of {target} complete trials")
    if complete >= target:
        print(f"the study already holds {complete} complete trials; raise --trials to search further.")
        return 0
    script = log_dir / "slurm-job.sh"
    script.write_text(slurm.batch_script(
        study=config.name, workers=args.workers, target=target, settings=settings, log_dir=log_dir,
        artifacts=artifacts, workdir=Path.cwd(),
    ), encoding="utf-8")
    job = slurm.submit(script, env={**os.environ, DEFAULT_ENV: url})
    slurm.record_job(study, job, args.workers)
    print(f"submitted Slurm job {job}: {args.workers} task(s), "
          f"{'one GPU each' if settings.gpu else 'CPU only'}; script {script}, logs {log_dir}/slurm-{job}_*.log\n"
          f"watch: squeue -j {job}   or   hpsearch status{_flags(args)}; Ctrl-C cancels the job (the study resumes)")
    code = slurm.watch(job, study, target=target, log_dir=log_dir)
    print_best(study, interrupted=code == 130)
    return code


def _flags(args: argparse.Namespace) -> str:
    from hpsearch.storage import mask_password

    flags = "" if args.study_label is None else f" --study {shlex.quote(args.study_label)}"
    return flags + (f" --storage {shlex.quote(mask_password(args.storage))}" if args.storage else "")


def cmd_worker(args: argparse.Namespace) -> int:
    if args.gpu is not None or args.cpu:
        os.environ["CUDA_VISIBLE_DEVICES"] = "" if args.cpu else args.gpu  # before TensorFlow loads
    import optuna

    from hpsearch.launcher import prepare_study
    from hpsearch.storage import mask_password
    from hpsearch.vocabulary import TARGET_ATTR
    from hpsearch.worker import run_worker

    study_argument(args, default=False)
    url, storage = open_study_storage(args)
    config = resolve_study(args, storage, check_data=True)
    if args.data:
        config = dataclasses.replace(config, data_path=Path(args.data).resolve())
    try:
        stored_target = optuna.load_study(study_name=config.name, storage=storage).user_attrs.get(TARGET_ATTR)
    except KeyError:
        if args.study_file is None:
            raise UsageError(f"there is no study named {config.name!r} in {mask_password(url)}; "
                             "start it with 'hpsearch launch'.") from None
        # A worker given the study file may be the first to arrive: it creates the study.
        stored_target = prepare_study(config, storage, target=args.trials or config.trials).user_attrs[TARGET_ATTR]
    target = args.trials or stored_target or config.trials
    artifacts = resolve_artifacts(args.artifacts, default_folder=study_paths(args.study_home)["artifacts"])
    if not is_s3(artifacts):
        writable_folder(Path(artifacts), "trial models", "pass --artifacts DIR (or s3://bucket/prefix)")
    store = open_artifact_store(artifacts, create=True)
    return run_worker(
        config, storage, index=args.index, target=target, threads=args.threads,
        artifact_store=store, status_path=args.status_file,
    )
