"""The results' commands: status, dashboard, export, report."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from hpsearch.cli.options import (
    STUDIES_FOLDER,
    add_study_options,
    open_finished_study,
    open_study_storage,
    resolve_study,
    storage_url,
    study_argument,
    study_paths,
)
from hpsearch.errors import UsageError
from hpsearch.outputs import check_output_file

STUDY_HELP = f"study YAML file or study name (default: {STUDIES_FOLDER}/quickstart.yaml, else the quickstart template)"


def register(commands: argparse._SubParsersAction) -> None:
    """Add status, dashboard, export and report to the command parser."""
    status = commands.add_parser("status", help="the study's trials as a table, JSON or YAML")
    add_study_options(status, STUDY_HELP)
    status.add_argument("--format", choices=("table", "json", "yaml"), default="table",
                        help="table (default, for people), json or yaml (for programs)")
    status.set_defaults(handler=cmd_status)

    dashboard = commands.add_parser("dashboard",
                                    help="watch the study in optuna-dashboard (read-only, 127.0.0.1 by default)")
    add_study_options(dashboard, f"study YAML file or study name (default: {STUDIES_FOLDER}/quickstart.yaml, "
                                 "if it exists; else every study in the storage)")
    dashboard.add_argument("--host", default="127.0.0.1",
                           help="address to listen on (default: 127.0.0.1, this machine only; 0.0.0.0 for all)")
    dashboard.add_argument("--port", type=int, default=8080,
                           help="port to listen on (default: 8080; 0 picks a free one)")
    dashboard.add_argument("--artifacts", help="the trial model store: a folder or s3://bucket/prefix (default: "
                           "$HPSEARCH_ARTIFACTS, else artifacts/ beside the study file)")
    dashboard.add_argument("--allow-writes", action="store_true",
                           help="let the dashboard change the study (notes, finishing trials, deleting studies); "
                           "off so it cannot disturb workers")
    dashboard.set_defaults(handler=cmd_dashboard)

    export = commands.add_parser("export",
                                 help="the best COMPLETE trial as a Table-1 YAML file for 'hpsearch train --params'")
    add_study_options(export, STUDY_HELP)
    export.add_argument("-o", "--output", help="file to write (written atomically; default: print to stdout)")
    export.add_argument("--force", action="store_true", help="replace the -o file if it exists")
    export.add_argument("--format", choices=("yaml", "markdown"), default="yaml",
                        help="yaml (the --params file, default) or a markdown table")
    export.set_defaults(handler=cmd_export)

    report = commands.add_parser("report", help="one self-contained HTML page of plots about the study")
    add_study_options(report, STUDY_HELP)
    report.add_argument("-o", "--output", default="report.html",
                        help="HTML file to write (default: report.html; an earlier report there is replaced)")
    report.add_argument("--force", action="store_true", help="replace the -o file even if it is not a report")
    report.set_defaults(handler=cmd_report)


def print_best(study, *, interrupted: bool = False) -> None:
    """One line: how many trials completed, failed and were pruned, and the best trial."""
    from optuna.trial import TrialState

    from hpsearch.vocabulary import best_trial

    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    failed = sum(t.state == TrialState.FAIL for t in trials)
    pruned = sum(t.state == TrialState.PRUNED for t in trials)
    if interrupted:
        print(f"interrupted: {len(complete)} complete trials kept; running trials marked FAIL and re-queued; "
              "'hpsearch launch' resumes.")
    if not complete:
        print("no complete trial yet.")
        return
    best = best_trial(complete, study.direction)
    params = ", ".join(f"{k} {format_param(v, 4)}" for k, v in best.params.items())
    stopped = f", {pruned} pruned" if pruned else ""  # only studies with a pruner have any
    print(f"{len(complete)} complete{stopped}, {failed} failed; best validation IoU {best.value:.4f} "
          f"in trial {best.number} ({params})")


def format_param(value, digits: int) -> str:
    """A trial parameter for a person: numbers to `digits` significant digits, choices as the study file
    writes them (per_class, true)."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, float)):
        return f"{value:.{digits}g}"
    return str(value)


def trial_note(trial) -> str:
    """Why a trial failed, why it has no model, or what it was drawn from; '' if none of these."""
    from hpsearch.vocabulary import COLLAPSED_ATTR, FAIL_REASON_ATTR, MODEL_ERROR_ATTR, PARENT_ATTR

    attrs = trial.user_attrs
    if attrs.get(FAIL_REASON_ATTR):
        return attrs[FAIL_REASON_ATTR]
    if MODEL_ERROR_ATTR in attrs:
        return f"model not stored: {attrs[MODEL_ERROR_ATTR]}"
    if attrs.get(COLLAPSED_ATTR):
        return f"collapsed: {', '.join(attrs[COLLAPSED_ATTR])} at IoU 0"
    if attrs.get(PARENT_ATTR) is not None:
        return f"from {attrs[PARENT_ATTR]}"
    return ""


def status_document(study, storage_text: str) -> dict:
    """The study, its trials and its Slurm job arrays as plain data (what `status --format json|yaml` prints).

    "slurm_jobs" lists every job array `launch --executor slurm` submitted for the study (empty for
    local workers), each with its tasks' states as hpsearch.slurm.job_states gives them.
    """
    from hpsearch.slurm import job_states
    from hpsearch.vocabulary import WORKER_ATTR, study_best_trial

    def when(moment):
        return None if moment is None else moment.isoformat()

    trials = []
    for trial in study.get_trials(deepcopy=False):
        trials.append({
            "number": trial.number,
            "state": trial.state.name,
            "value": trial.value,
            "params": dict(trial.params),
            "started": when(trial.datetime_start),
            "completed": when(trial.datetime_complete),
            "duration_seconds": trial.duration.total_seconds() if trial.duration else None,
            "worker": trial.user_attrs.get(WORKER_ATTR),
            "note": trial_note(trial),
            "user_attrs": dict(trial.user_attrs),
        })
    best = study_best_trial(study)
    return {
        "study": study.study_name,
        "storage": storage_text,
        "direction": study.direction.name,
        "best": None if best is None else {"number": best.number, "value": best.value, "params": dict(best.params)},
        "trials": trials,
        "slurm_jobs": job_states(study),
    }


def cmd_status(args: argparse.Namespace) -> int:
    from hpsearch.progress import print_table
    from hpsearch.storage import describe

    study, _, url = open_finished_study(args)  # refuses a missing journal rather than creating it
    if args.format != "table":
        document = status_document(study, describe(url))
        if args.format == "json":
            print(json.dumps(document, indent=2, default=str))
        else:
            import yaml

            # Through JSON first: user attributes may hold tuples or numpy scalars that safe_dump refuses.
            print(yaml.safe_dump(json.loads(json.dumps(document, default=str)), sort_keys=False), end="")
        return 0
    from hpsearch.vocabulary import WORKER_ATTR

    rows = []
    for trial in study.get_trials(deepcopy=False):
        duration = trial.duration.total_seconds() if trial.duration else None
        rows.append([
            str(trial.number), trial.state.name,
            "-" if trial.value is None else f"{trial.value:.4f}",
            ", ".join(f"{k}={format_param(v, 3)}" for k, v in trial.params.items()),
            "-" if duration is None else f"{duration:.0f} s",
            str(trial.user_attrs.get(WORKER_ATTR, "-")),
            trial_note(trial),
        ])
    print_table(f"study {study.study_name} ({describe(url)})",
                ["#", "state", "IoU", "hyperparameters", "duration", "worker", "note"], rows)
    from hpsearch.slurm import job_lines

    for line in job_lines(study):  # the study's Slurm job arrays, a line per task (launch --executor slurm)
        print(line)
    print_best(study)
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    """Serve optuna-dashboard on the study storage; read-only unless --allow-writes (see hpsearch.dashboard)."""
    import optuna

    from hpsearch.artifacts import open_artifact_store, resolve_artifacts
    from hpsearch.dashboard import make_dashboard_server, serve, url_of, warn_if_exposed
    from hpsearch.export import check_storage_exists
    from hpsearch.storage import describe

    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port {args.port} is not a port number; give one in 1-65535 (0 picks a free one).")
    if args.study is not None or (STUDIES_FOLDER / "quickstart.yaml").is_file():
        study_argument(args, templates=False)
    else:  # no study file here: serve whatever the storage holds
        args.study_file, args.study_home = None, STUDIES_FOLDER
    check_storage_exists(storage_url(args))
    url, storage = open_study_storage(args)
    folder = resolve_artifacts(args.artifacts, default_folder=study_paths(args.study_home)["artifacts"])
    store = open_artifact_store(folder, create=False)
    name = None
    if args.study is not None:
        name = resolve_study(args, storage).name if args.study_file is not None else args.study
    server = make_dashboard_server(storage, host=args.host, port=args.port, artifacts=store,
                                   allow_writes=args.allow_writes)
    page = "/dashboard"
    if name is not None:
        try:
            page = f"/dashboard/studies/{storage.get_study_id_from_name(name)}"
        except KeyError:
            studies = ", ".join(repr(s.study_name) for s in optuna.get_all_study_summaries(storage)) or "none yet"
            print(f"hpsearch: note: no study named {name!r} in the storage yet (studies: {studies}); "
                  "the dashboard lists what is there.", file=sys.stderr)
    print(f"dashboard of {describe(url)} at {url_of(server, args.host, page)}", flush=True)
    if store is None:
        print(f"hpsearch: note: no artifact folder {folder}, so trial models cannot be downloaded; "
              "pass --artifacts DIR.", file=sys.stderr)
    print(f"{'read-write' if args.allow_writes else 'read-only'}; Ctrl-C stops it.", flush=True)
    warn_if_exposed(args.host, server.server_address[1], args.allow_writes)
    return serve(server)


def cmd_export(args: argparse.Namespace) -> int:
    from hpsearch.export import exported_trial, to_markdown, to_yaml, write_output
    from hpsearch.storage import describe

    if args.output not in (None, "-"):
        check_output_file(Path(args.output), force=args.force)  # before anything is read
    study, definition, url = open_finished_study(args)
    exported = exported_trial(study, definition, source=describe(url))
    write_output(to_markdown(exported) if args.format == "markdown" else to_yaml(exported), args.output)
    if args.output not in (None, "-"):
        print(f"wrote trial {exported.trial} of study {exported.study!r} (validation IoU {exported.iou:.4f}) "
              f"to {args.output}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from hpsearch.export import write_atomically
    from hpsearch.report import REPORT_MARKER, render_report
    from hpsearch.storage import describe

    check_output_file(Path(args.output), force=args.force, rewritable_marker=REPORT_MARKER)
    study, definition, url = open_finished_study(args)
    text = render_report(study, definition, storage_text=describe(url))
    write_atomically(Path(args.output), text)
    print(f"wrote the report of study {study.study_name!r} ({len(study.get_trials(deepcopy=False))} trials) "
          f"to {args.output}")
    return 0
