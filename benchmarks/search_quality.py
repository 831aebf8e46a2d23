"""Search quality at equal compute: the paper's scheme against pruning, random search and TPE.

Every search trains on the same study data (the packaged hpsearch/studies/quickstart.yaml by default) with the real
hpsearch objective, in an in-memory Optuna study, and stops once it has spent its budget of
`--trials` × the study's steps training steps (a pruned trial costs the steps it ran). All
searches begin with the study's start point, so they differ only in what they do next. The
test split is never used for selection: after a search, its winner's stored model is segmented
on the test cases.

A search's best validation IoU is partly the luck of its trials' training seeds. `--retrain K`
measures what a user gets from it instead: each winner's configuration (and the start point, for
reference) is trained from scratch K more times, with fresh seeds and the study's training
settings, and scored on the validation and test cases.

    python benchmarks/search_quality.py                 # 4 methods x 3 seeds x 16 trials
    python benchmarks/search_quality.py --methods paper,tpe --seeds 1 --trials 4 --jobs 2
    python benchmarks/search_quality.py --methods paper --resume --retrain 4 --jobs 2

Prints a table (mean ± spread over seeds), and writes the raw records (search_quality.json) and
a plotly figure of best validation IoU against training steps spent (search_quality.html) to
--out.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import math
import multiprocessing
import os
import random
import statistics
import sys
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def study_config(study_file: str):
    """The study file's definition; the packaged quick-start template is used from the checkout's studies/
    (its data in data/quickstart), as `hpsearch launch` uses it."""
    from hpsearch.config import load_study

    template = ROOT / "hpsearch" / "studies"
    return load_study(study_file, home=ROOT / "studies" if Path(study_file).parent == template else None)
sys.path.insert(0, str(ROOT))

# method name -> (sampler section, pruner section) of a study file
METHODS: dict[str, tuple[dict, dict | None]] = {
    "paper": ({"name": "neighborhood"}, None),
    "paper+median": ({"name": "neighborhood"}, {"name": "median", "n_startup_trials": 4}),
    "random": ({"name": "random"}, None),
    "tpe": ({"name": "tpe"}, None),
    "tpe+median": ({"name": "tpe"}, {"name": "median", "n_startup_trials": 4}),
    # A narrower neighbourhood, [best / 3, best * 3]: many factor-10 children do not train at all.
    "factor3+median": ({"name": "neighborhood", "factor": 3.0}, {"name": "median", "n_startup_trials": 4}),
    # The same, pruning from the first evaluation (step 50 of the quick-start study's 200).
    "factor3+median@50": (
        {"name": "neighborhood", "factor": 3.0},
        {"name": "median", "n_startup_trials": 4, "n_warmup_steps": 50},
    ),
    # Successive halving on the factor-3 neighbourhood: a trial goes on past step 50 (and 150) only
    # if its IoU there is in the top third of the trials that reached that step, so most trials
    # cost 50 steps and the budget buys about three times as many.
    "factor3+sha": (
        {"name": "neighborhood", "factor": 3.0},
        {"name": "successive_halving", "min_resource": 50, "reduction_factor": 3},
    ),
}
# Methods that also change the study: "+shared" trains every trial with the search's seed
# (trial_seeds: shared), so trials differ by their hyperparameters, not their training luck.
STUDY_CHANGES: dict[str, dict] = {}
for _name in ("paper", "paper+median", "factor3+median@50"):
    METHODS[f"{_name}+shared"] = METHODS[_name]
    STUDY_CHANGES[f"{_name}+shared"] = {"trial_seeds": "shared"}
DEFAULT_METHODS = "paper,paper+median,random,tpe"
# Retrain k trains with training seed RETRAIN_SEED + k: far from any search's trial seeds
# (study seed + trial number), so no retrain repeats a training run of a search.
RETRAIN_SEED = 10_000


def _start_process(threads: int) -> None:
    """Pool initializer: cap TensorFlow's threads before it loads, keep Optuna quiet."""
    from hpsearch.devices import configure_tensorflow

    configure_tensorflow(threads)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)


def run_search(study_file: str, method: str, seed: int, trials: int) -> dict:
    """One search of `method` with study seed `seed`; returns its trials and its winner's test IoU."""
    import optuna
    from optuna.artifacts import FileSystemArtifactStore, download_artifact
    from optuna.trial import TrialState

    from hpsearch.config import PRUNERS
    from hpsearch.objective import Objective
    from hpsearch.vocabulary import MODEL_ARTIFACT_ATTR
    from hpsearch.worker import load_data
    from model.run import load_run

    sampler, pruner = METHODS[method]
    config = study_config(study_file)
    steps = config.training["steps"]
    if pruner is not None and "n_warmup_steps" in inspect.signature(getattr(optuna.pruners, PRUNERS[pruner["name"]])).parameters:
        # Unless the method says otherwise, a pruner with a warm-up (median, percentile, threshold)
        # prunes from half-way: the first evaluations are mostly noise.
        pruner = {"n_warmup_steps": steps // 2, **pruner}
    config = dataclasses.replace(config, seed=seed, sampler=sampler, pruner=pruner, **STUDY_CHANGES.get(method, {}))
    data = load_data(config)
    budget = trials * steps

    with tempfile.TemporaryDirectory(prefix="search-quality-") as folder:
        store = FileSystemArtifactStore(folder)
        study = optuna.create_study(direction="maximize", sampler=config.make_sampler(), pruner=config.make_pruner())
        if sampler["name"] != "neighborhood":  # the neighbourhood sampler evaluates the start point first itself
            # the searched dimensions' start values: a categorical one (loss, block, augment) starts at its training: value
            study.enqueue_trial(config._searched_start())
        objective = Objective(config, data, worker=f"{method}/seed{seed}", artifact_store=store)
        spent, records, started = 0, [], time.perf_counter()
        while spent < budget:
            study.optimize(objective, n_trials=1, catch=(Exception,))
            trial = study.trials[-1]
            cost = steps if trial.state == TrialState.COMPLETE else max(trial.intermediate_values, default=0)
            spent += cost
            complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
            records.append({
                "number": trial.number,
                "state": trial.state.name,
                "steps": cost,
                "spent": spent,
                "value": trial.value,
                "best": max(t.value for t in complete) if complete else None,
                "params": trial.params,
                "seconds": time.perf_counter() - started,
            })

        winner = study.best_trial
        archive = Path(folder) / "winner.zip"
        download_artifact(artifact_store=store, file_path=str(archive), artifact_id=winner.user_attrs[MODEL_ARTIFACT_ATTR])
        with zipfile.ZipFile(archive) as zipped:
            zipped.extractall(Path(folder) / "winner")
        test_iou, test_cases = evaluate_on_test(load_run(Path(folder) / "winner").model, config)

    return {
        "method": method, "seed": seed, "budget": budget, "trials": records,
        "winner": winner.number, "validation_iou": winner.value, "test_iou": test_iou,
        "test_cases": test_cases, "seconds": time.perf_counter() - started,
    }


def retrain(study_file: str, params: dict, seed: int) -> dict:
    """Train `params` (Table 1 names over the study's start point, and any searched training
    choices: loss, block, augment) from scratch with training seed `seed` and the study's other
    training settings; returns the final validation IoU (the
    objective's measure) and the test IoU of the model it keeps (its best validation weights,
    as `hpsearch train` and the search's stored models keep)."""
    from hpsearch.worker import load_data
    from model.training import train

    config = study_config(study_file)
    started = time.perf_counter()
    train_config = dataclasses.replace(config.train_config(0, params), seed=seed)
    result = train(config.hyperparameters(params), load_data(config), train_config)
    test_iou, _ = evaluate_on_test(result.model, config)
    return {
        "params": params, "seed": seed, "validation_iou": result.final.iou, "test_iou": test_iou,
        "seconds": time.perf_counter() - started,
    }


def evaluate_on_test(model, config) -> tuple[float, int]:
    """IoU of `model` on the study's test cases (never used for selection), and how many there are."""
    from model.data import load_dataset, split_cases
    from model.training import evaluate

    dataset = load_dataset(config.data_path)
    names = list(split_cases(dataset.case_names, **config.split).test)
    test = evaluate(model, dataset.load_cases(names), depth=config.training["depth"], num_classes=dataset.num_classes)
    return test.iou, len(names)


def retrain_key(params: dict, seed: int) -> str:
    """One retrain's identity: the configuration and the training seed."""
    return json.dumps([params, seed], sort_keys=True)


def winner_params(search: dict) -> dict:
    """The searched hyperparameters of `search`'s winner (Table 1 names)."""
    return next(t["params"] for t in search["trials"] if t["number"] == search["winner"])


def winner_at(search: dict, share: float) -> dict | None:
    """The searched hyperparameters of the best trial `search` had after `share` of its budget
    (its final winner at share 1; the budget's last trial may run past the budget); None if no
    trial had completed by then."""
    if share >= 1:
        return winner_params(search)
    done = [r for r in search["trials"] if r["state"] == "COMPLETE" and r["spent"] <= share * search["budget"]]
    return max(done, key=lambda r: r["value"])["params"] if done else None


def retrained(retrains: dict[str, dict], params: dict | None, count: int, field: str) -> float | None:
    """Mean of `field` over the first `count` retrains of `params`; None if any is missing."""
    if params is None or count == 0:
        return None
    runs = [retrains.get(retrain_key(params, RETRAIN_SEED + k)) for k in range(count)]
    return None if None in runs else statistics.fmean(r[field] for r in runs)


def best_at(search: dict, spent: int) -> float:
    """Best validation IoU of `search` after `spent` training steps (0 before any complete trial)."""
    values = [r["best"] for r in search["trials"] if r["spent"] <= spent and r["best"] is not None]
    return values[-1] if values else 0.0


def steps_to_reach(search: dict, target: float) -> int | None:
    """Training steps `search` spent when its best validation IoU first reached `target`."""
    for record in search["trials"]:
        if record["best"] is not None and record["best"] >= target - 1e-12:
            return record["spent"]
    return None


def mean_curve_reaches(runs: list[dict], target: float) -> int | None:
    """Training steps at which the mean over seeds of the best-so-far curves first reaches `target`."""
    grid = sorted({r["spent"] for s in runs for r in s["trials"]})
    for spent in grid:
        if statistics.fmean(best_at(s, spent) for s in runs) >= target - 1e-12:
            return spent
    return None


def mean_curve_interval(runs: list[dict], paper: list[dict], resamples: int = 2000, level: float = 0.9) -> tuple[float, float] | None:
    """Bootstrap interval of `mean_curve_reaches` as a share of the budget, resampling seeds with
    replacement (a seed brings both its search and the paper scheme's, and the target is the
    resample's mean paper best); inf where a resample's mean curve never reaches its target.
    None with fewer than 3 seeds that both methods ran."""
    paper_by_seed = {s["seed"]: s for s in paper}
    paired = [(s, paper_by_seed[s["seed"]]) for s in runs if s["seed"] in paper_by_seed]
    if len(paired) < 3:
        return None
    rng = random.Random(0)  # the same interval on every report
    shares = []
    for _ in range(resamples):
        sample = [rng.choice(paired) for _ in paired]
        target = statistics.fmean(p["validation_iou"] for _, p in sample)
        crossing = mean_curve_reaches([s for s, _ in sample], target)
        shares.append(math.inf if crossing is None else crossing / sample[0][0]["budget"])
    shares.sort()
    tail = (1 - level) / 2
    return shares[int(tail * resamples)], shares[int((1 - tail) * resamples) - 1]


def spread(values: list[float]) -> str:
    mean = statistics.fmean(values)
    return f"{mean:.3f} ± {statistics.stdev(values):.3f}" if len(values) > 1 else f"{mean:.3f}"


def summarise(searches: list[dict], methods: list[str], retrains: dict[str, dict], count: int) -> list[list[str]]:
    """Table rows: per method, final best validation IoU, winner's test IoU, steps to the paper's
    final best, and (with `count` retrains) the winner's IoUs when trained again."""
    by_method = {m: [s for s in searches if s["method"] == m] for m in methods}
    paper = by_method.get("paper")
    target = statistics.fmean(s["validation_iou"] for s in paper) if paper else None
    rows = []
    for method, runs in by_method.items():
        reach = [steps_to_reach(s, target) for s in runs] if target is not None else []
        reached = [r for r in reach if r is not None]
        budget = runs[0]["budget"]
        reach_text = "—" if target is None else (
            f"{statistics.fmean(reached) / budget:.2f} ({len(reached)}/{len(runs)} seeds)" if reached else f"never (0/{len(runs)})"
        )
        crossing = mean_curve_reaches(runs, target) if target is not None else None
        crossing_text = "—" if target is None else ("never" if crossing is None else f"{crossing / budget:.2f}")
        interval = mean_curve_interval(runs, paper) if paper and method != "paper" else None
        if interval is not None:
            # With a dozen seeds the crossing moves a lot with which seeds ran: say how much.
            crossing_text += " (90 % bootstrap interval {} to {})".format(*(
                "never" if math.isinf(share) else f"{share:.2f}" for share in interval))
        rows.append([
            method,
            spread([s["validation_iou"] for s in runs]),
            spread([s["test_iou"] for s in runs]),
            f"{statistics.fmean(len(s['trials']) for s in runs):.1f}",
            f"{statistics.fmean(sum(r['state'] == 'PRUNED' for r in s['trials']) for s in runs):.1f}",
            reach_text,
            crossing_text,
            f"{statistics.fmean(s['seconds'] for s in runs) / 60:.1f}",
        ])
        for share in RETRAIN_AT if count else ():
            for field in ("validation_iou", "test_iou"):
                means = [retrained(retrains, winner_at(s, share), count, field) for s in runs]
                rows[-1].append("—" if None in means else spread(means))
    return rows


HEADER = [
    "method", "best validation IoU", "winner's test IoU", "trials", "pruned",
    "compute to reach paper's final best: per seed (share of budget)", "mean curve", "minutes per search",
]
# Winners retrained: the best trial after half the budget (is the paper scheme's final quality
# reached with half its compute?) and the final winner.
RETRAIN_AT = (0.5, 1.0)
RETRAIN_HEADER = [
    "winner after ½ the budget, retrained: validation IoU", "test IoU",
    "final winner, retrained: validation IoU", "test IoU",
]


def write_figure(searches: list[dict], methods: list[str], path: Path) -> None:
    """Mean best validation IoU (band: min to max over seeds) against training steps spent."""
    import plotly.graph_objects as go

    figure = go.Figure()
    budget = max(s["budget"] for s in searches)
    grid = sorted({r["spent"] for s in searches for r in s["trials"]} | {0, budget})
    for method in methods:
        runs = [s for s in searches if s["method"] == method]
        curves = [[best_at(s, x) for x in grid] for s in runs]
        low = [min(c[i] for c in curves) for i in range(len(grid))]
        high = [max(c[i] for c in curves) for i in range(len(grid))]
        mean = [statistics.fmean(c[i] for c in curves) for i in range(len(grid))]
        band = go.Scatter(x=grid + grid[::-1], y=high + low[::-1], fill="toself", line={"width": 0},
                          opacity=0.15, showlegend=False, hoverinfo="skip", line_shape="hv", legendgroup=method)
        figure.add_trace(band)
        figure.add_trace(go.Scatter(x=grid, y=mean, name=f"{method} (mean of {len(runs)} seeds)",
                                    line_shape="hv", legendgroup=method))
    figure.update_layout(
        title="Best validation IoU against training steps spent (band: min to max over seeds)",
        xaxis_title="training steps spent", yaxis_title="best validation IoU", template="plotly_white",
    )
    figure.write_html(path, include_plotlyjs="cdn")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--study", default=str(ROOT / "hpsearch/studies/quickstart.yaml"),
                        help="study file whose data, training and search space to use (default: the quick-start template, used from studies/)")
    parser.add_argument("--methods", default=DEFAULT_METHODS, help=f"comma-separated, from {', '.join(METHODS)}")
    parser.add_argument("--seeds", type=int, default=3, help="searches per method, with study seeds 0, 1, ...")
    parser.add_argument("--trials", type=int, default=16, help="budget: this many full trials' training steps per search")
    parser.add_argument("--jobs", type=int, default=1, help="searches run at once, each in its own process")
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results"), help="folder for search_quality.json and .html")
    parser.add_argument("--resume", action="store_true", help="keep the searches already in --out's search_quality.json (all of them stay in it) and run only the missing ones")
    parser.add_argument("--retrain", type=int, default=0, metavar="K", help="train each winner (and the start point) again with K fresh seeds and report their mean IoUs (default: 0)")
    parser.add_argument("--report", action="store_true", help="run nothing: print the table and draw the figure from the records in --out (with --resume's selection)")
    args = parser.parse_args(argv)
    if args.report:
        if not (Path(args.out) / "search_quality.json").is_file():
            parser.error(f"--report reads {Path(args.out) / 'search_quality.json'}, which does not exist; run the searches first.")
        args.resume = True
    if args.retrain < 0:
        parser.error(f"--retrain must be 0 or more, got {args.retrain}.")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        parser.error(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}")

    cores = len(os.sched_getaffinity(0))
    threads = max(1, cores // args.jobs)
    tasks = [(args.study, m, seed, args.trials) for m in methods for seed in range(args.seeds)]
    print(f"{len(tasks)} searches of {args.trials} trials' compute each, {args.jobs} at a time, {threads} thread(s) each", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    searches, others, retrains = [], [], {}
    if args.resume and (out / "search_quality.json").is_file():
        record = json.loads((out / "search_quality.json").read_text())
        retrains = {retrain_key(r["params"], r["seed"]): r for r in record.get("retrains", [])}
        kept = record["searches"]
        selected = [s["method"] in methods and s["seed"] < args.seeds for s in kept]
        searches = [s for s, chosen in zip(kept, selected) if chosen]
        # Records of other methods or seeds stay in the file, out of this run's table.
        others = [s for s, chosen in zip(kept, selected) if not chosen]
        done = {(s["method"], s["seed"]) for s in searches}
        tasks = [t for t in tasks if (t[1], t[2]) not in done]
        if args.report:
            print(f"report: {len(searches)} searches on record, {len(tasks)} missing (left out)", flush=True)
            tasks = []
        else:
            print(f"resuming: {len(searches)} searches kept, {len(tasks)} to run", flush=True)
    if tasks:
        with multiprocessing.get_context("spawn").Pool(args.jobs, initializer=_start_process, initargs=(threads,)) as pool:
            for search in pool.imap_unordered(_star, tasks):
                searches.append(search)
                print(
                    f"{search['method']:>14} seed {search['seed']}: {len(search['trials'])} trials, "
                    f"best validation IoU {search['validation_iou']:.4f} (trial {search['winner']}), "
                    f"test IoU {search['test_iou']:.4f}, {search['seconds'] / 60:.1f} min",
                    flush=True,
                )
                # Written after every search: hours of results survive an interrupted run.
                write_records(out, args, others + searches, retrains)

    study = study_config(args.study)  # no TensorFlow import: the pools' workers load it
    start = study._searched_start()  # categorical dimensions start at their training: value
    winners = [winner_at(s, share) for s in searches for share in RETRAIN_AT]
    configurations = [start] + [w for w in winners if w is not None]
    wanted = {retrain_key(c, RETRAIN_SEED + k): (c, RETRAIN_SEED + k) for c in configurations for k in range(args.retrain)}
    missing = [(args.study, *wanted[key]) for key in wanted if key not in retrains]
    if missing and args.report:
        print(f"report: {len(missing)} retrains missing (their columns show —)", flush=True)
    elif missing:
        print(f"{len(missing)} retrains of {len({retrain_key(c, 0) for c in configurations})} configurations, {args.jobs} at a time", flush=True)
        with multiprocessing.get_context("spawn").Pool(args.jobs, initializer=_start_process, initargs=(threads,)) as pool:
            for run in pool.imap_unordered(_retrain_star, missing):
                retrains[retrain_key(run["params"], run["seed"])] = run
                print(f"retrain seed {run['seed']}: validation IoU {run['validation_iou']:.4f}, test IoU {run['test_iou']:.4f}, "
                      f"{run['seconds']:.0f} s, {json.dumps(run['params'])}", flush=True)
                write_records(out, args, others + searches, retrains)

    write_figure(searches, methods, out / "search_quality.html")
    header = HEADER + (RETRAIN_HEADER if args.retrain else [])
    print()
    print("| " + " | ".join(header) + " |")
    print("| " + " | ".join("---" for _ in header) + " |")
    for row in summarise(searches, methods, retrains, args.retrain):
        print("| " + " | ".join(row) + " |")
    if args.retrain:
        print(
            f"\nthe start point alone, trained {args.retrain} times: validation IoU "
            f"{_or_dash(retrained(retrains, start, args.retrain, 'validation_iou'))}, test IoU "
            f"{_or_dash(retrained(retrains, start, args.retrain, 'test_iou'))}"
        )
    print(f"\nwrote {out / 'search_quality.json'} and {out / 'search_quality.html'}")
    return 0


def write_records(out: Path, args: argparse.Namespace, searches: list[dict], retrains: dict[str, dict]) -> None:
    """The raw records, rewritten whole: searches and retrains."""
    record = {"args": vars(args), "searches": searches, "retrains": list(retrains.values())}
    (out / "search_quality.json").write_text(json.dumps(record, indent=1))


def _or_dash(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def _star(task: tuple) -> dict:
    return run_search(*task)


def _retrain_star(task: tuple) -> dict:
    return retrain(*task)


if __name__ == "__main__":
    sys.exit(main())
