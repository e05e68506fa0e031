"""Hyperparameter search: random search against TPE with median pruning, equal trial budgets.

Usage:
    python benchmarks/bench_hpo.py [--trials 12] [--epochs 10] [--num-particles 2000]
        [--seeds 0,1,2] [--presets baseline,deep_regularized] [--batch-size 64]
    python benchmarks/bench_hpo.py --postgres [URL] [--trials 12] [--epochs 10] ...

For each seed both searches run through ``nnlab.hpo.run_search`` with the same
budget (``--trials`` finished trials of ``--epochs`` epochs), the same data
(``--num-particles`` particles simulated with that seed), the default search
space and presets, each in its own fresh output directory and journal storage:

* ``random``: RandomSampler, no pruning (the command's defaults);
* ``tpe_median``: TPESampler + MedianPruner (``--sampler tpe``; startup trials
  ``trials // 3`` within [2, 10], warm-up ``epochs // 5`` epochs).

TensorFlow is imported and one untimed 1-trial search runs first, so neither
side pays the start-up; within a seed the side that goes first alternates.

Prints one JSON line: {"trials", "epochs", "num_particles", "batch_size",
"presets", "seeds", "random": {...}, "tpe_median": {...},
"best_r2_gain_tpe_minus_random", "wall_ratio_tpe_over_random",
"epochs_ratio_tpe_over_random", "tensorflow", "optuna", "cpus"}; each side holds
per-seed lists ``best_val_r2`` (best validation R² of a completed trial),
``wall_s``, ``cpu_s`` (process CPU seconds), ``epochs_trained`` (summed over
trials; pruning lowers it), ``pruned`` and ``failed``, and their means.

``--postgres [URL]``: the storage and the workers instead. The same random
search (seed 0: ``--trials`` trials, default space and presets) on the journal
file with 1 worker, on PostgreSQL with 1 worker and with 2 worker processes
(each run a new study). Without a URL a throwaway server is started from the
machine's PostgreSQL packages (as the tests do). Reports wall time, trials per
hour, the speed-up of 2 workers over 1 and its parallel efficiency (speed-up /
2), and the storage's own cost per trial: claim, 10 reports, tell and the
results files for 30 trials without training, journal against PostgreSQL.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

try:
    import nnlab  # noqa: F401
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import optuna
import tensorflow as tf

from nnlab.hpo import run_search

SIDES = {"random": {"sampler": "random", "pruner": "none"},
         "tpe_median": {"sampler": "tpe", "pruner": "median"}}


def one_search(side: str, seed: int, args: argparse.Namespace, root: Path) -> dict:
    out = root / f"{side}-seed{seed}"
    start, cpu_start = time.perf_counter(), time.process_time()
    summary = run_search(max_trials=args.trials, epochs=args.epochs, num_particles=args.num_particles,
                         batch_size=args.batch_size, presets=tuple(args.presets.split(",")), seed=seed,
                         output_dir=str(out), verbose=False, **SIDES[side])
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    with open(summary.results_path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    return {
        "best_val_r2": summary.best_value,
        "wall_s": round(wall, 2),
        "cpu_s": round(cpu, 2),
        "epochs_trained": sum(int(r["total_epochs"] or 0) for r in rows),
        "pruned": summary.counts["pruned"],
        "failed": summary.counts["failed"],
    }


def _storage_cost_ms(storage: str, root: Path, trials: int = 30, epochs: int = 10) -> float:
    """Milliseconds of storage work per trial without training: claim, per-epoch reports, tell, results."""
    from nnlab.hpo._results import ResultPaths, write_results
    from nnlab.orchestration import claim_trial, open_storage, storage_spec, worker_identity

    root.mkdir(parents=True, exist_ok=True)
    spec = storage_spec(storage, root)
    study = optuna.create_study(study_name="overhead", storage=open_storage(spec), direction="maximize")
    paths, owner = ResultPaths(root / "overhead.csv"), worker_identity()
    started = time.perf_counter()
    for _ in range(trials):
        trial = claim_trial(study, budget=trials, lock_path=root / ".overhead-lock", owner=owner)
        for epoch in range(epochs):
            trial.report(0.5, epoch)
        trial.set_user_attr("outcome", "complete")
        study.tell(trial, 0.5)
        write_results(study, paths, storage_label=spec.label)
    return (time.perf_counter() - started) / trials * 1000


def storage_comparison(args: argparse.Namespace) -> dict:
    """--postgres: the same search on the journal (1 worker) and PostgreSQL (1 and 2 workers)."""
    server = None
    url = args.postgres
    if not url:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from conftest import PostgresServer  # the tests' throwaway server (machine's PostgreSQL packages)

        server = PostgresServer()
    try:
        with tempfile.TemporaryDirectory(prefix="bench_hpo_pg-") as tmp:
            root = Path(tmp)
            run_search(max_trials=1, epochs=1, num_particles=200, presets=("fast_debug",),
                       space={"hidden_layers": [[16]]}, output_dir=str(root / "warmup"), verbose=False)
            runs = {}
            for name, workers, pg in (("journal_1_worker", 1, False), ("postgres_1_worker", 1, True),
                                      ("postgres_2_workers", 2, True)):
                storage = (server.create_database(name) if server else url) if pg else None
                start = time.perf_counter()
                summary = run_search(max_trials=args.trials, epochs=args.epochs, num_particles=args.num_particles,
                                     batch_size=args.batch_size, presets=tuple(args.presets.split(",")), seed=0,
                                     output_dir=str(root / name), storage=storage, workers=workers,
                                     study_name=f"bench-{name}", verbose=False)
                wall = time.perf_counter() - start
                finished = sum(summary.counts.values())
                runs[name] = {"wall_s": round(wall, 1), "finished": finished,
                              "trials_per_hour": round(finished / wall * 3600, 1), "best_val_r2": summary.best_value}
                print(f"# {name}: {runs[name]}", file=sys.stderr, flush=True)
            pg_db = server.create_database("overhead") if server else url
            overhead = {"journal_ms": round(_storage_cost_ms(None, root / "oj"), 1),
                        "postgres_ms": round(_storage_cost_ms(pg_db, root / "op"), 1)}
    finally:
        if server is not None:
            server.close()
    speedup = runs["postgres_1_worker"]["wall_s"] / runs["postgres_2_workers"]["wall_s"]
    return {"mode": "postgres", "trials": args.trials, "epochs": args.epochs, "num_particles": args.num_particles,
            "presets": args.presets.split(","), **runs,
            "speedup_2_workers": round(speedup, 2), "parallel_efficiency": round(speedup / 2, 2),
            "storage_ms_per_trial": overhead, "cpus": os.cpu_count(), "optuna": optuna.__version__}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--num-particles", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--presets", default="baseline,deep_regularized")
    parser.add_argument("--postgres", nargs="?", const="", metavar="URL",
                        help="compare storages and workers instead (a throwaway server without URL)")
    args = parser.parse_args(argv)
    if args.postgres is not None:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        print(json.dumps(storage_comparison(args)))
        return
    seeds = [int(s) for s in args.seeds.split(",")]
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    results: dict[str, list[dict]] = {side: [] for side in SIDES}
    with tempfile.TemporaryDirectory(prefix="bench_hpo-") as tmp:
        root = Path(tmp)
        run_search(max_trials=1, epochs=1, num_particles=200, presets=("fast_debug",),
                   space={"hidden_layers": [[16]]}, output_dir=str(root / "warmup"), verbose=False)
        for i, seed in enumerate(seeds):
            order = list(SIDES) if i % 2 == 0 else list(reversed(SIDES))
            for side in order:
                results[side].append(one_search(side, seed, args, root))
                print(f"# seed {seed} {side}: {results[side][-1]}", file=sys.stderr, flush=True)

    def side_report(runs: list[dict]) -> dict:
        report = {key: [run[key] for run in runs] for key in runs[0]}
        for key in ("best_val_r2", "wall_s", "cpu_s", "epochs_trained"):
            values = [v for v in report[key] if v is not None]
            report[f"mean_{key}"] = round(statistics.fmean(values), 4) if values else None
        return report

    random_side, tpe_side = side_report(results["random"]), side_report(results["tpe_median"])
    gain = (None if None in (tpe_side["mean_best_val_r2"], random_side["mean_best_val_r2"])
            else round(tpe_side["mean_best_val_r2"] - random_side["mean_best_val_r2"], 4))
    print(json.dumps({
        "trials": args.trials, "epochs": args.epochs, "num_particles": args.num_particles,
        "batch_size": args.batch_size, "presets": args.presets.split(","), "seeds": seeds,
        "random": random_side, "tpe_median": tpe_side,
        "best_r2_gain_tpe_minus_random": gain,
        "wall_ratio_tpe_over_random": round(tpe_side["mean_wall_s"] / random_side["mean_wall_s"], 3),
        "epochs_ratio_tpe_over_random": round(tpe_side["mean_epochs_trained"] / random_side["mean_epochs_trained"], 3),
        "tensorflow": tf.__version__, "optuna": optuna.__version__, "cpus": os.cpu_count(),
    }))


if __name__ == "__main__":
    main()
