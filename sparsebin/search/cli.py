"""`frontier`: the yardsticks and the runs of a data set on one recall-per-byte chart, with its CSV and table."""

import argparse
import os
from pathlib import Path

import pandas as pd

from sparsebin import charts
from sparsebin.datasets import load_dataset
from sparsebin.errors import JobError
from sparsebin.jobs.queue import Store
from sparsebin.search import frontier
from sparsebin.search.yardsticks import Setup, dataset_yardsticks, make_bench


def add_commands(subparsers) -> None:
    parser = subparsers.add_parser(
        "frontier",
        help="recall@10 per byte of the yardsticks (sign-PCA, ITQ, LSH, PQ, OPQ, SQ, two-stage) and of runs",
    )
    parser.add_argument("data", help="a dataset's name")
    parser.add_argument("--runs", nargs="*", default=None, metavar="RUN", help="run ids (default: every finished run)")
    parser.add_argument("--out", type=Path, default=Path("frontier"), help="folder for the CSV, table and chart")
    parser.add_argument(
        "--budgets", nargs="+", type=int, default=None, metavar="BYTES", help="bytes per vector (default: 16 ... 96)"
    )
    parser.add_argument("--rebuild", action="store_true", help="measure the yardsticks again, not from the cache")
    parser.add_argument("--no-timing", action="store_true", help="do not time the runs' own searches")
    parser.add_argument(
        "--nice", type=int, default=0, help="lower the measurement's CPU priority by N (the app's background one: 10)"
    )
    parser.set_defaults(func=frontier_command)


def frontier_command(args: argparse.Namespace) -> int:
    if args.nice > 0:
        os.nice(args.nice)  # training, at normal priority, takes the cores first
    dataset = load_dataset(args.data)
    store = Store()
    runs = store.list_runs(dataset.name)
    runs = runs[runs["status"] == "done"]
    if args.runs is not None:
        unknown = sorted(set(args.runs) - set(runs["run_id"]))
        if unknown:
            raise JobError(f"no finished run {', '.join(unknown)} on dataset {dataset.name}; see `runs`.")
        runs = runs[runs["run_id"].isin(args.runs)]
    setups = {frontier.run_setup(store.run_folder(run_id), args.budgets) for run_id in runs["run_id"]}
    if len(setups) > 1:
        raise JobError(
            "the runs were measured with different splits or query counts, so one set of yardsticks cannot "
            "serve them all; pick runs of one split with --runs."
        )
    setup = setups.pop() if setups else Setup(**({} if args.budgets is None else {"budgets": tuple(args.budgets)}))
    baselines = dataset_yardsticks(dataset, setup, rebuild=args.rebuild, say=print)
    if len(runs) and not args.no_timing:
        bench = make_bench(dataset.embeddings, setup)
        timings = [frontier.time_run_searches(store.run_folder(run_id), bench) for run_id in runs["run_id"]]
        runs = pd.concat([runs.reset_index(drop=True), pd.DataFrame(timings)], axis=1)
    points = frontier.frontier_points(baselines.frontier, frontier.run_points(runs))
    title = f"Recall per byte on {dataset.name} ({len(dataset.embeddings):,} rows, {setup.n_queries} held-out queries)"
    paths, note = frontier.write_frontier(points, charts.frontier_chart(points, title), args.out)
    print(frontier.frontier_table(points))
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    if note:
        print(note)
    return 0
