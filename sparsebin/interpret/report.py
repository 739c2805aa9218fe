"""The findings report: the seven answers, the ablation plan's tables and the Compare page's figures.

    python -m sparsebin report [--dataset NAME] [--jobs ID ...] --out DIR

writes DIR/report.md, DIR/report.html (self-contained: plotly's script is
embedded, nothing is fetched when it opens) and DIR/table.csv (every table's
rows: mean, sd and n per figure). The app offers the same report as a download.

The tables (`sparsebin.interpret.tables`) are one per ablation of METHOD.md's
plan, the loss ablation, the rounding ablation and the paper's N x K experiment,
then every setting; each has a row per setting (runs equal in the comparison
key, pooled over distinct training seeds) under typed column groups, each
figure's header naming the part or rows it is measured on. In HTML a group's
header spans its columns; in markdown each header reads "group: figure".
"""

import argparse
import html
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go

from sparsebin import charts, runfolder
from sparsebin.datasets import load_dataset
from sparsebin.errors import DataError, JobError, RunFileError
from sparsebin.health import HEALTH_LABELS, convergence_word
from sparsebin.interpret import bits as interpret
from sparsebin.interpret.comparison import epoch_curves, finished, run_name, with_settings
from sparsebin.interpret.hierarchy import RunHierarchy, run_hierarchy
from sparsebin.interpret.questions import Answer, answer_questions, default_run
from sparsebin.interpret.tables import NOTES, Table, ablation_tables, numeric, shown
from sparsebin.jobs.queue import Store
from sparsebin.progress import CURVES
from sparsebin.search import frontier
from sparsebin.search.yardsticks import measured_alike

STYLE = (
    "body{font-family:sans-serif;max-width:1400px;margin:auto}table{border-collapse:collapse;font-size:90%}"
    "td,th{padding:2px 6px;border-bottom:1px solid #ddd}th[colspan]{border-bottom:2px solid #888}"
)
EPOCH_CURVES = {"loss": "loss (mean over the epoch's logged batches)", "code_churn": "code churn (held-out probe rows)"}


@dataclass(frozen=True)
class Report:
    markdown: str
    html: str
    table: pd.DataFrame  # every table's rows: table, block, setting, then <figure>_mean, _sd, _n


def tables_markdown(tables: list[Table]) -> str:
    """Every table as markdown: a heading, each block's shared setting, its rows, or what to queue."""
    parts = []
    for table in tables:
        parts.append(f"### {table.ablation.title}")
        if not table.blocks:
            parts.append(table.ablation.missing or "(no finished run)")
        for block in table.blocks:
            if block.setting:
                parts.append(f"At {block.setting}:")
            parts.append(_markdown(shown(block, table.ablation)))
    return "\n\n".join(parts) + "\n\n" + NOTES


def _markdown(frame: pd.DataFrame) -> str:
    headers = [f"{group}: {name}" if group else name for group, name in frame.columns]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def tables_html(tables: list[Table]) -> str:
    """Every table as HTML, each group's header spanning its columns."""
    parts = []
    for table in tables:
        parts.append(f"<h3>{html.escape(table.ablation.title)}</h3>")
        if not table.blocks:
            parts.append(f"<p>{html.escape(table.ablation.missing or '(no finished run)')}</p>")
        for block in table.blocks:
            if block.setting:
                parts.append(f"<p>At {html.escape(block.setting)}:</p>")
            parts.append(shown(block, table.ablation).to_html(index=False, border=0, escape=True))
    parts.append(f"<p><small>{html.escape(NOTES)}</small></p>")
    return "\n".join(parts)


def runs_markdown(runs: pd.DataFrame) -> str:
    """Every run of the report, one line each, with its convergence."""
    lines = ["| job | run | label | seed | converged |", "|---|---|---|---|---|"]
    for _, run in runs.sort_values("job_id").iterrows():
        lines.append(
            f"| {int(run['job_id'])} | {run['run_id']} | {run_name(run)} | {int(run['seed'])} | "
            f"{convergence_word(run['converged'])} |"
        )
    return "\n".join(lines)


def figures(
    runs: pd.DataFrame, histories: dict, metrics: dict, depth: interpret.DepthAnalysis | None
) -> dict[str, go.Figure]:
    """The Compare page's figures for these runs (labelled by run name; `histories` keyed so too)."""
    labelled = runs.assign(label=[f"{run_name(r)}" for _, r in runs.iterrows()])
    k = int(runs["k"].iloc[0]) if runs["k"].nunique() == 1 else None
    by_id = {run["run_id"]: histories.get(run["label"], []) for _, run in labelled.iterrows()}
    shown = {
        "Loss while training": charts.training_curves(histories, "loss"),
        "Active bits per concept while training (logged batches)": charts.training_curves(histories, "active_mean"),
    }
    for metric, name in EPOCH_CURVES.items():
        shown[f"{name.capitalize()} per epoch, band over seeds"] = charts.seed_bands(
            epoch_curves(labelled, by_id, metric), CURVES.get(metric, metric)
        )
    shown |= {
        "Active bits per concept (validation part)": charts.active_histograms(
            {name: part["active_histogram"] for name, part in metrics.items()}, k=k
        ),
        "Firing frequency of live bits (validation part)": charts.firing_histograms(
            {name: part["log10_firing_histogram"] for name, part in metrics.items()}
        ),
        "Bit health (over all rows; silent: on held-out rows)": charts.bit_health_bars(labelled),
        "Reconstruction against sparsity (validation part)": charts.recon_vs_active(labelled),
    }
    if depth is not None and len(depth.per_depth):
        shown["Active bits by ontology depth (the named run, all rows)"] = charts.depth_chart(depth.per_depth)
    return shown


def build_report(
    runs: pd.DataFrame,
    *,
    histories: dict[str, list[dict]],
    metrics: dict[str, dict],
    named: pd.Series | None = None,
    why: str = "named by the user",
    sign: dict | None = None,
    sign_equal: dict | None = None,
    depth: interpret.DepthAnalysis | None = None,
    bits: pd.DataFrame | None = None,
    title: str = "sparsebin report",
    hierarchy: dict[str, RunHierarchy] | None = None,
    baselines: pd.DataFrame | None = None,
    frontier_runs: pd.DataFrame | None = None,
) -> Report:
    """The report of `runs` (a runs table); `histories` and `metrics` (the judged part's metrics) are keyed
    by run name; `named` is the run Questions 4-6 describe (default: the paper's setting among the runs).
    `baselines` is the frontier of the named run's yardsticks (its split and queries): Question 4 reads it,
    and the report draws it with the runs measured alike (`frontier_runs`)."""
    runs = with_settings(finished(runs))
    if named is None:
        named, why = default_run(runs)
    answers = answer_questions(
        runs,
        named=named,
        sign=sign,
        sign_equal=sign_equal,
        depth=depth,
        bits=bits,
        sign_run=_name(named),
        hierarchy=hierarchy,
        baselines=baselines,
    )
    tables = ablation_tables(runs)
    drawn = figures(runs, histories, metrics, depth)
    frontier_section = "The yardsticks of the named run's data set are not measured; Question 4 says how."
    if baselines is not None and named is not None:
        alike = runs[runs["dataset"] == named["dataset"]] if frontier_runs is None else frontier_runs
        points = frontier.frontier_points(baselines, frontier.run_points(alike))
        title = f"Recall per byte on {named['dataset']}: the yardsticks and {len(alike)} run(s)"
        drawn[title] = charts.frontier_chart(points, title)
        frontier_section = (
            f"{title}; held-out queries against every row, dense cosine top 10 as truth; runs at their codes' "
            f"stored size (Elias-Fano).\n\n" + frontier.frontier_table(points)
        )
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    datasets = ", ".join(sorted(map(str, runs["dataset"].unique()))) or "none"
    intro = (
        f"{len(runs)} finished run(s) on {datasets}; generated {stamp}. Questions 4-6 describe "
        f"{_name(named) or 'no run'} ({why}). Bit health: {'; '.join(HEALTH_LABELS.values())}."
    )
    sections = [
        ("Ablation tables", tables_markdown(tables)),
        ("The seven questions", answers_markdown(answers)),
        ("Recall per byte", frontier_section),
        ("Runs", runs_markdown(runs)),
        ("Figures", "\n".join(f"- {name} (in report.html)" for name in drawn)),
    ]
    markdown = f"# {title}\n\n{intro}\n\n" + "\n\n".join(f"## {head}\n\n{body}" for head, body in sections) + "\n"
    page = report_html(title, intro, tables, answers, runs, drawn)
    return Report(markdown, page, numeric(tables))


def _name(run: pd.Series | None) -> str | None:
    return None if run is None else run_name(run)


def answers_markdown(answers: list[Answer]) -> str:
    return "\n\n".join(f"**{a.number}. {a.question}**\n\n{a.answer}" for a in answers)


def report_html(
    title: str, intro: str, tables: list[Table], answers: list[Answer], runs: pd.DataFrame, shown: dict
) -> str:
    """One HTML file: plotly's script embedded once (no CDN), every figure inline."""
    parts = [f"<h1>{html.escape(title)}</h1>", f"<p>{html.escape(intro)}</p>", "<h2>Ablation tables</h2>"]
    parts.append(tables_html(tables))
    parts.append("<h2>The seven questions</h2>")
    for answer in answers:
        parts.append(f"<h3>{answer.number}. {html.escape(answer.question)}</h3><p>{html.escape(answer.answer)}</p>")
    parts.append("<h2>Runs</h2>")
    listing = runs.sort_values("job_id").assign(
        name=[run_name(r) for _, r in runs.sort_values("job_id").iterrows()],
        convergence=[convergence_word(v) for v in runs.sort_values("job_id")["converged"]],
    )[["job_id", "run_id", "name", "seed", "convergence"]]
    parts.append(listing.to_html(index=False, border=0, escape=True))
    parts.append("<h2>Figures</h2>")
    for number, (name, figure) in enumerate(shown.items()):
        parts.append(f"<h3>{html.escape(name)}</h3>")
        parts.append(figure.to_html(full_html=False, include_plotlyjs=number == 0, include_mathjax=False))
    return (
        f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{STYLE}</style></head><body>" + "\n".join(parts) + "</body></html>"
    )


def write_report(report: Report, out: Path) -> dict[str, Path]:
    """report.md, report.html and table.csv under `out`, each written whole (atomically)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": out / "report.md", "html": out / "report.html", "table": out / "table.csv"}
    runfolder.write_atomic(paths["markdown"], report.markdown.encode())
    runfolder.write_atomic(paths["html"], report.html.encode())
    runfolder.write_atomic(paths["table"], report.table.to_csv(index=False).encode())
    return paths


def report_for_store(store: Store, runs: pd.DataFrame, named_run_id: str | None = None) -> Report:
    """Everything `build_report` needs, read from the store, run folders and the named run's dataset."""
    runs = with_settings(finished(runs))
    if not len(runs):
        raise JobError("no finished run to report on; train some first (or widen --dataset / --jobs).")
    names = {row["run_id"]: run_name(row) for _, row in runs.iterrows()}
    if len(set(names.values())) < len(names):  # repeated labels: tell the runs apart by id
        names = {run_id: f"{name} · {run_id[-6:]}" for run_id, name in names.items()}
    runs = runs.assign(label=runs["run_id"].map(names))
    histories = {names[run_id]: store.history(run_id) for run_id in runs["run_id"]}
    metrics, all_metrics = {}, {}
    for run_id in runs["run_id"]:
        loaded = runfolder.load_metrics(store.run_folder(run_id))
        all_metrics[run_id] = loaded
        metrics[names[run_id]] = loaded.get("validation") or loaded["train"]
    if named_run_id is not None:
        chosen = runs[runs["run_id"] == named_run_id]
        if not len(chosen):
            raise JobError(f"run {named_run_id!r} is not among the runs of the report.")
        named, why = chosen.iloc[0], "named by the user"
    else:
        named, why = default_run(runs)
    split = "validation" if all_metrics[named["run_id"]].get("validation") else "train"
    sign = all_metrics[named["run_id"]].get(f"sign_{split}")
    sign_equal = all_metrics[named["run_id"]].get(f"sign_{split}_equal_storage")
    depth = bits = None
    try:
        context = interpret.RunContext.load(store.run_folder(named["run_id"]), load_dataset(named["dataset"]))
        depth, bits = interpret.depth_analysis(context), interpret.bit_table(context)
    except (DataError, RunFileError):
        pass  # Questions 5 and 6 then say which run they need
    hierarchy = run_hierarchies(store, runs, named["run_id"])
    baselines, alike = named_yardsticks(store, runs, named)
    return build_report(
        runs,
        histories=histories,
        metrics=metrics,
        named=named,
        why=why,
        sign=sign,
        sign_equal=sign_equal,
        depth=depth,
        bits=bits,
        hierarchy=hierarchy,
        baselines=baselines,
        frontier_runs=alike,
        title=f"sparsebin report: {', '.join(sorted(map(str, runs['dataset'].unique())))}",
    )


def named_yardsticks(store: Store, runs: pd.DataFrame, named: pd.Series) -> tuple[pd.DataFrame | None, pd.DataFrame]:
    """The cached yardsticks' frontier at the named run's split and queries (None when not measured), and the
    runs of its data set measured with that same split and query count."""
    try:
        setup = frontier.run_setup(store.run_folder(named["run_id"]))
        measured = measured_alike(load_dataset(named["dataset"]), setup)
    except (DataError, RunFileError):
        return None, runs.iloc[0:0]
    alike = frontier.measured_like(runs[runs["dataset"] == named["dataset"]], setup, store.run_folder)
    return (None if measured is None else measured.frontier), alike


def run_hierarchies(store: Store, runs: pd.DataFrame, named_run_id: str) -> dict[str, RunHierarchy]:
    """Question 7's figures of each run by its label (the named run's with its sign baseline); a run whose
    dataset has no parents column or whose codes do not match it is left out."""
    found, loaded = {}, {}
    for _, run in runs.iterrows():
        try:
            dataset = loaded.setdefault(run["dataset"], load_dataset(run["dataset"]))
            embeddings = dataset.embeddings if run["run_id"] == named_run_id else None
            found[run["label"]] = run_hierarchy(store.run_folder(run["run_id"]), dataset.concepts, embeddings)
        except (DataError, RunFileError):
            continue
    return found


def add_commands(subparsers) -> None:
    report = subparsers.add_parser("report", help="write the findings report (markdown, HTML, CSV) of finished runs")
    report.add_argument("--dataset", help="only runs on this dataset")
    report.add_argument("--jobs", type=int, nargs="+", help="only these job ids")
    report.add_argument("--run", help="the run Questions 4-6 describe (default: the paper's setting)")
    report.add_argument("--out", type=Path, required=True, help="folder to write report.md, report.html, table.csv")
    report.set_defaults(func=run_report)


def run_report(args: argparse.Namespace) -> int:
    store = Store()
    runs = store.list_runs(args.dataset)
    runs = runs[runs["status"] == "done"]
    if args.jobs:
        missing = sorted(set(args.jobs) - set(runs["job_id"]))
        if missing:
            raise JobError(f"job(s) {', '.join(map(str, missing))} have no finished run here.")
        runs = runs[runs["job_id"].isin(args.jobs)]
    paths = write_report(report_for_store(store, runs, args.run), args.out)
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    return 0
