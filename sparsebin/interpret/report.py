"""The findings report: the six answers, a paper-style ablation table and the Compare page's figures.

    python -m sparsebin report [--dataset NAME] [--jobs ID ...] --out DIR

writes DIR/report.md, DIR/report.html (self-contained: plotly's script is
embedded, nothing is fetched when it opens) and DIR/table.csv (the ablation
table, mean and sd per metric). The app offers the same report as a download.

The ablation table has one row per setting (runs equal in the comparison key,
pooled over training seeds): mean ± sd over seeds of each metric, with the
part each metric comes from in its header and the loss terms' distances
named with their form (per-entry mean or per-row sum).
"""

import argparse
import html
import math
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go

from sparsebin import charts, runfolder
from sparsebin.datasets import load_dataset
from sparsebin.errors import DataError, JobError, RunFileError
from sparsebin.health import HEALTH_COLUMNS, HEALTH_LABELS, convergence_word
from sparsebin.interpret import bits as interpret
from sparsebin.interpret.comparison import comparison_key, distances_text, finished, run_name, spread, with_settings
from sparsebin.interpret.questions import Answer, answer_questions, default_run
from sparsebin.jobs.queue import Store
from sparsebin.study import STUDY

# (runs-table column, table header naming the part it was measured on, decimals)
TABLE_METRICS = (
    ("recon_loss", "recon (val, hard bits)", 3),
    ("fixed_topk_recon_loss", "fixed-TopK recon (val)", 3),
    ("active_mean", "active mean (val)", 1),
    ("active_std", "active sd (val)", 1),
    ("dead_all_rows", HEALTH_COLUMNS["dead_all_rows"], 1),
    ("silent_held_out", HEALTH_COLUMNS["silent_held_out"], 1),
    ("dense_all_rows", HEALTH_COLUMNS["dense_all_rows"], 1),
    ("bytes_index_list", "bytes/vector (index list, val)", 1),
    ("bytes_elias_fano", "bytes/vector (Elias-Fano, val)", 1),
    ("recall_at_10_jaccard", "recall@10 Jaccard (val queries, all rows)", 3),
    ("recall_at_10_hamming", "recall@10 Hamming (val queries, all rows)", 3),
    ("recall_at_10_asymmetric", "recall@10 asymmetric (val queries, all rows)", 3),
)
TABLE_NOTES = (
    "val = the held-out validation part (the same rows for every run of a dataset: the split seed is fixed); "
    "recon = mean cosine distance between x and the decoder output; "
    f"{'; '.join(HEALTH_LABELS.values())}; "
    "recall@10 = held-out queries searched against every row, ties at the 10th code distance counted by their "
    "chance under a random order; asymmetric = the dense query against each stored code read back through the "
    "decoder, by cosine; mean ± sd over training seeds, n = seeds; "
    "MSE/L1 (mean over entries) is the paper's ablation, (per-row sum, scale-fair) sums over dimensions."
)

STYLE = (
    "body{font-family:sans-serif;max-width:1200px;margin:auto}table{border-collapse:collapse}"
    "td,th{padding:2px 6px;border-bottom:1px solid #ddd}"
)


@dataclass(frozen=True)
class Report:
    markdown: str
    html: str
    table: pd.DataFrame  # numeric ablation table: <metric>_mean, <metric>_sd per setting


def setting_groups(runs: pd.DataFrame) -> list[pd.DataFrame]:
    """Runs equal in the comparison key (they differ at most in seed), in study order when labelled so."""
    runs = with_settings(finished(runs))
    if not len(runs):
        return []
    keyed = runs.assign(**{c: runs[c].astype(str) for c in comparison_key()})
    groups = [runs.loc[group.index] for _, group in keyed.groupby(comparison_key(), sort=False)]
    order = list(STUDY)
    return sorted(groups, key=lambda g: order.index(setting_name(g)) if setting_name(g) in order else len(order))


def setting_name(group: pd.DataFrame) -> str:
    """The study's name of a setting when its runs carry it ("alignment MSE seed=1"), else its settings."""
    labels = {str(label).rsplit(" seed=", 1)[0] for label in group["label"]}
    if len(labels) == 1 and (name := labels.pop()):
        return name
    first = group.iloc[0]
    return f"{first['rounding']}/{first['sparsity']}"


def ablation_table(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per setting: its name, the settings that tell it apart, seeds, and mean/sd per metric."""
    rows = []
    for group in setting_groups(runs):
        group = group.assign(
            bytes_index_list=group["bits_index_list"] / 8,
            bytes_elias_fano=group["bits_elias_fano"] / 8,  # NaN for a run measured before it existed
        )
        first = group.iloc[0]
        flags = [convergence_word(value) for value in group["converged"]]
        row = {
            "setting": setting_name(group),
            "dataset": first["dataset"],
            "N": int(first["n_bits"]),
            "K": int(first["k"]),
            "epochs": int(first["epochs"]),
            "loss terms": distances_text(first),
            "rounding": first["rounding"],
            "sparsity": first["sparsity"],
            "seeds": ", ".join(str(int(seed)) for seed in sorted(group["seed"])),
            "n": len(group),
            "converged": f"{flags.count('converged')} of {len(flags)}",
        }
        for column, _, _ in TABLE_METRICS:
            value = spread(group[column])
            row[f"{column}_mean"], row[f"{column}_sd"] = value.mean, value.sd
        rows.append(row)
    return pd.DataFrame(rows)


def table_markdown(table: pd.DataFrame) -> str:
    """The ablation table as a markdown table: mean ± sd per cell, headers naming each metric's part."""
    if not len(table):
        return "(no finished run)"
    headers = ["setting", "loss terms", "rounding", "sparsity", "epochs", "n", *(h for _, h, _ in TABLE_METRICS)]
    headers.append("converged")
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for _, row in table.iterrows():
        cells = [row["setting"], row["loss terms"], row["rounding"], row["sparsity"], str(row["epochs"]), str(row["n"])]
        for column, _, digits in TABLE_METRICS:
            cells.append(_cell(row[f"{column}_mean"], row[f"{column}_sd"], row["n"], digits))
        cells.append(row["converged"])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cell(mean: float, sd: float, n: int, digits: int) -> str:
    if mean is None or math.isnan(mean):
        return "n/a"
    return f"{mean:.{digits}f}" if n < 2 else f"{mean:.{digits}f} ± {sd:.{digits}f}"


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
    """The Compare page's figures for these runs (labelled by run name)."""
    labelled = runs.assign(label=[f"{run_name(r)}" for _, r in runs.iterrows()])
    k = int(runs["k"].iloc[0]) if runs["k"].nunique() == 1 else None
    shown = {
        "Loss while training": charts.training_curves(histories, "loss"),
        "Active bits per concept while training (logged batches)": charts.training_curves(histories, "active_mean"),
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
) -> Report:
    """The report of `runs` (a runs table); `histories` and `metrics` (the judged part's metrics) are keyed
    by run name; `named` is the run Questions 4-6 describe (default: the paper's setting among the runs)."""
    runs = with_settings(finished(runs))
    if named is None:
        named, why = default_run(runs)
    answers = answer_questions(
        runs, named=named, sign=sign, sign_equal=sign_equal, depth=depth, bits=bits, sign_run=_name(named)
    )
    table = ablation_table(runs)
    shown = figures(runs, histories, metrics, depth)
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    datasets = ", ".join(sorted(map(str, runs["dataset"].unique()))) or "none"
    intro = (
        f"{len(runs)} finished run(s) on {datasets}; generated {stamp}. Questions 4-6 describe "
        f"{_name(named) or 'no run'} ({why}). Bit health: {'; '.join(HEALTH_LABELS.values())}."
    )
    sections = [
        ("Ablation table", table_markdown(table) + "\n\n" + TABLE_NOTES),
        ("The six questions", answers_markdown(answers)),
        ("Runs", runs_markdown(runs)),
        ("Figures", "\n".join(f"- {name} (in report.html)" for name in shown)),
    ]
    markdown = f"# {title}\n\n{intro}\n\n" + "\n\n".join(f"## {head}\n\n{body}" for head, body in sections) + "\n"
    page = report_html(title, intro, table, answers, runs, shown)
    return Report(markdown, page, table)


def _name(run: pd.Series | None) -> str | None:
    return None if run is None else run_name(run)


def answers_markdown(answers: list[Answer]) -> str:
    return "\n\n".join(f"**{a.number}. {a.question}**\n\n{a.answer}" for a in answers)


def report_html(
    title: str, intro: str, table: pd.DataFrame, answers: list[Answer], runs: pd.DataFrame, shown: dict
) -> str:
    """One HTML file: plotly's script embedded once (no CDN), every figure inline."""
    parts = [f"<h1>{html.escape(title)}</h1>", f"<p>{html.escape(intro)}</p>", "<h2>Ablation table</h2>"]
    parts.append(_html_table(table))
    parts.append(f"<p><small>{html.escape(TABLE_NOTES)}</small></p>")
    parts.append("<h2>The six questions</h2>")
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


def _html_table(table: pd.DataFrame) -> str:
    if not len(table):
        return "<p>(no finished run)</p>"
    headers = ["setting", "loss terms", "rounding", "sparsity", "epochs", "n", *(h for _, h, _ in TABLE_METRICS)]
    headers.append("converged")
    rows = ["<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in headers) + "</tr>"]
    for _, row in table.iterrows():
        cells = [row["setting"], row["loss terms"], row["rounding"], row["sparsity"], str(row["epochs"]), str(row["n"])]
        cells += [_cell(row[f"{c}_mean"], row[f"{c}_sd"], row["n"], d) for c, _, d in TABLE_METRICS]
        cells.append(row["converged"])
        rows.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
    return "<table>" + "".join(rows) + "</table>"


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
        title=f"sparsebin report: {', '.join(sorted(map(str, runs['dataset'].unique())))}",
    )


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
