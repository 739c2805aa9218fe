"""Plotly figure builders: plain data in, `plotly.graph_objects.Figure` out.

The app renders these figures; tests read their traces. Every builder takes
labelled series (a dict from run label to values, or a DataFrame) so it
knows nothing about runs, stores or Streamlit.
"""

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from sparsebin.health import HEALTH_LABELS
from sparsebin.progress import CURVES

PALETTE = qualitative.Plotly  # '#rrggbb' colours, in plotly's own trace order
_LAYOUT = {"margin": {"l": 40, "r": 10, "t": 40, "b": 40}, "legend": {"orientation": "h", "y": -0.2}}


def _figure(title: str, x_title: str, y_title: str) -> go.Figure:
    figure = go.Figure()
    figure.update_layout(title=title, xaxis_title=x_title, yaxis_title=y_title, **_LAYOUT)
    return figure


def training_curves(histories: Mapping[str, Sequence[dict]], metric: str = "loss") -> go.Figure:
    """One line per run: `metric` of each logged history record against its step, named as CURVES names it."""
    name = CURVES.get(metric, metric)
    figure = _figure(f"{name} while training", "step", name)
    for label, events in histories.items():
        points = [(event["step"], event[metric]) for event in events if event.get(metric) is not None]
        steps, values = zip(*points, strict=True) if points else ((), ())
        figure.add_trace(go.Scatter(x=list(steps), y=list(values), mode="lines", name=label))
    return figure


def seed_bands(curves: Mapping[str, Sequence[Mapping[int, float]]], name: str) -> go.Figure:
    """Per setting, the mean over its seeds of one value per epoch as a line, and mean ± sd as a band.

    `curves` maps a setting's label to one {epoch: value} curve per seed; an epoch
    counts the seeds that reached it, and the band is drawn where two or more did.
    """
    figure = _figure(f"{name} per epoch (mean over seeds, band: ± sd)", "epoch", name)
    for place, (label, seeds) in enumerate(curves.items()):
        colour = PALETTE[place % len(PALETTE)]
        epochs = sorted({epoch for curve in seeds for epoch in curve})
        values = [np.array([curve[epoch] for curve in seeds if epoch in curve], dtype=float) for epoch in epochs]
        mean = [float(v.mean()) for v in values]
        sd = [float(v.std(ddof=1)) if len(v) > 1 else 0.0 for v in values]
        banded = [index for index, v in enumerate(values) if len(v) > 1]
        if banded:
            upper = [mean[index] + sd[index] for index in banded]
            lower = [mean[index] - sd[index] for index in banded][::-1]
            figure.add_trace(
                go.Scatter(
                    x=[epochs[index] for index in banded] + [epochs[index] for index in banded][::-1],
                    y=upper + lower,
                    fill="toself",
                    fillcolor=_translucent(colour),
                    line={"width": 0},
                    hoverinfo="skip",
                    showlegend=False,
                    name=f"{label} ± sd",
                )
            )
        figure.add_trace(
            go.Scatter(
                x=epochs,
                y=mean,
                mode="lines+markers",
                line={"color": colour},
                name=f"{label} ({len(seeds)} seed{'s' if len(seeds) != 1 else ''})",
            )
        )
    return figure


def _translucent(colour: str, alpha: float = 0.2) -> str:
    """A '#rrggbb' colour as rgba with `alpha`, for a band under its line."""
    red, green, blue = (int(colour[place : place + 2], 16) for place in (1, 3, 5))
    return f"rgba({red},{green},{blue},{alpha})"


def live_curves(events: Sequence[dict], k: int | None = None) -> go.Figure:
    """A running job's loss and active bits per concept, side by side, against the step."""
    figure = make_subplots(rows=1, cols=2, subplot_titles=("loss", "active bits per concept"))
    steps = [event["step"] for event in events]
    for column, (name, values) in enumerate(
        (
            ("loss", [event.get("loss") for event in events]),
            ("active_mean", [event.get("active_mean") for event in events]),
        ),
        start=1,
    ):
        figure.add_trace(go.Scatter(x=steps, y=values, mode="lines", name=name, showlegend=False), row=1, col=column)
    if k is not None:
        figure.add_hline(y=k, line_dash="dot", annotation_text=f"K={k}", row=1, col=2)
    figure.update_layout(height=260, margin={"l": 40, "r": 10, "t": 30, "b": 30})
    return figure


def active_histograms(histograms: Mapping[str, Sequence[int]], k: int | None = None) -> go.Figure:
    """Overlaid share of concepts with i active bits, one trace per run (the sparsity histogram).

    Each histogram is a list whose entry i counts concepts with i active bits;
    shares rather than counts let runs on different datasets overlay.
    """
    figure = _figure("Active bits per concept", "active bits", "share of concepts")
    for label, counts in histograms.items():
        counts = np.asarray(counts, dtype=float)
        share = counts / counts.sum() if counts.sum() else counts
        figure.add_trace(go.Bar(x=np.arange(len(counts)), y=share, name=label, opacity=0.6))
    if k is not None:
        figure.add_vline(x=k, line_dash="dot", annotation_text=f"K={k}")
    figure.update_layout(barmode="overlay")
    return figure


def firing_histograms(histograms: Mapping[str, Mapping[str, Sequence[float]]]) -> go.Figure:
    """Overlaid log10 firing-frequency histograms ({"edges", "counts"} per run); dead bits are not in them."""
    figure = _figure("Firing frequency of live bits", "log10 firing frequency", "bits")
    for label, histogram in histograms.items():
        edges = np.asarray(histogram["edges"], dtype=float)
        centres = (edges[:-1] + edges[1:]) / 2
        figure.add_trace(go.Bar(x=centres, y=histogram["counts"], name=label, opacity=0.6))
    figure.update_layout(barmode="overlay")
    return figure


def bit_health_bars(runs: pd.DataFrame) -> go.Figure:
    """The bit-health counts side by side per run (columns label and HEALTH_LABELS' keys):
    dead over all rows, silent on held-out rows, rare, always-on."""
    figure = _figure("Bit health", "run", "bits")
    for column, name in HEALTH_LABELS.items():
        if column in runs:
            figure.add_trace(go.Bar(x=runs["label"], y=runs[column], name=name))
    figure.update_layout(barmode="group", legend={"orientation": "h", "y": -0.3})
    return figure


def recon_vs_active(runs: pd.DataFrame) -> go.Figure:
    """One point per run: validation reconstruction loss against mean active bits."""
    figure = _figure(
        "Reconstruction against sparsity (validation part)",
        "active bits per concept (mean)",
        "recon loss (cosine, hard bits)",
    )
    figure.add_trace(
        go.Scatter(
            x=runs["active_mean"],
            y=runs["recon_loss"],
            mode="markers+text",
            text=runs["label"],
            textposition="top center",
            marker={"size": 10},
            name="runs",
        )
    )
    return figure


def grid_axes(runs: pd.DataFrame, candidates: Sequence[str]) -> list[str]:
    """The settings that vary across the runs, in `candidates` order (the axes of a grid)."""
    return [name for name in candidates if name in runs and runs[name].nunique(dropna=True) > 1]


def grid_heatmap(runs: pd.DataFrame, x: str, y: str, metric: str, replicate: str | None = None) -> go.Figure:
    """A heatmap of `metric` over two settings: the mean over the runs sharing a cell, or, with `replicate`
    (a column such as the seed), the mean over the cell's distinct replicates, each replicate's runs
    averaged first. Pass it runs that differ in nothing else (`comparison.grid_groups`)."""
    runs = runs.assign(**{metric: pd.to_numeric(runs[metric], errors="coerce")})
    if replicate and replicate not in (x, y):
        runs = runs.groupby([y, x, replicate], as_index=False)[metric].mean()
    table = runs.pivot_table(index=y, columns=x, values=metric, aggfunc="mean").sort_index().sort_index(axis=1)
    figure = _figure(f"{metric} over {y} x {x}", x, y)
    figure.add_trace(
        go.Heatmap(
            z=table.to_numpy(),
            x=[str(value) for value in table.columns],
            y=[str(value) for value in table.index],
            text=np.round(table.to_numpy(), 4),
            texttemplate="%{text}",
            colorscale="Viridis",
            colorbar={"title": metric},
        )
    )
    figure.update_xaxes(type="category")
    figure.update_yaxes(type="category")
    return figure


def enrichment_chart(enrichment: pd.DataFrame, top: int = 12) -> go.Figure:
    """Categories where a bit fires most often relative to their base rate (lift), largest first."""
    table = enrichment.sort_values("lift", ascending=False).head(top).iloc[::-1]
    figure = _figure("Categories the bit fires for", "lift (precision / base rate)", "")
    figure.add_trace(
        go.Bar(
            x=table["lift"],
            y=table["category"].astype(str),
            orientation="h",
            customdata=np.stack([table["precision"], table["recall"], table["n_active_in_category"]], axis=1),
            hovertemplate="%{y}<br>lift %{x:.2f}<br>precision %{customdata[0]:.2f}"
            "<br>recall %{customdata[1]:.2f}<br>concepts %{customdata[2]}<extra></extra>",
        )
    )
    figure.update_layout(height=max(240, 28 * len(table) + 80))
    return figure


def sigmoid_histogram(edges: Sequence[float], counts: Sequence[int]) -> go.Figure:
    """How a bit's sigmoid value is spread over all concepts (bins between `edges`); the bit fires above 0.5."""
    edges = np.asarray(edges, dtype=float)
    figure = _figure("Sigmoid value over all concepts", "sigmoid(u)", "concepts")
    figure.add_trace(go.Bar(x=(edges[:-1] + edges[1:]) / 2, y=list(counts), name="concepts"))
    figure.add_vline(x=0.5, line_dash="dot", annotation_text="fires")
    figure.update_yaxes(type="log")
    return figure


def concept_map(points: pd.DataFrame, color: str, *, continuous: bool) -> go.Figure:
    """A 2-D map (columns x, y, name, id and `color`); hover shows the concept.

    Categorical colours get one trace per value (a clickable legend); a
    continuous colour (active-bit count, a bit's value) gets one trace and a scale.
    """
    figure = go.Figure()
    hover = "%{customdata[0]}<br>%{customdata[1]}<extra></extra>"
    if continuous:
        figure.add_trace(
            go.Scattergl(
                x=points["x"],
                y=points["y"],
                mode="markers",
                marker={"size": 3, "color": points[color], "colorscale": "Viridis", "colorbar": {"title": color}},
                customdata=points[["name", "id"]].to_numpy(),
                hovertemplate=hover,
                name=color,
            )
        )
    else:
        for value, group in points.groupby(color, sort=True):
            figure.add_trace(
                go.Scattergl(
                    x=group["x"],
                    y=group["y"],
                    mode="markers",
                    marker={"size": 3},
                    customdata=group[["name", "id"]].to_numpy(),
                    hovertemplate=hover,
                    name=str(value)[:40],
                )
            )
    figure.update_layout(
        height=650, xaxis={"visible": False}, yaxis={"visible": False}, margin={"l": 0, "r": 0, "t": 10, "b": 0}
    )
    return figure


def depth_chart(per_depth: pd.DataFrame) -> go.Figure:
    """Mean active bits per concept at each ontology depth, one line per source."""
    figure = _figure("Active bits by ontology depth", "depth", "active bits (mean)")
    for source, group in per_depth.groupby("source", sort=True):
        group = group.sort_values("depth")
        figure.add_trace(
            go.Scatter(
                x=group["depth"], y=group["mean_active"], mode="lines+markers", name=str(source), text=group["n"]
            )
        )
    return figure


FRONTIER_MARKERS = {"hamming": "circle", "jaccard": "diamond", "asymmetric": "square", "two-stage": "triangle-up"}


def frontier_chart(points: pd.DataFrame, title: str = "Recall per byte") -> go.Figure:
    """recall@10 against bytes per vector (log axis): one trace per code family and search (the marker names
    the search), runs drawn larger, the Pareto front of one-stage codes as a line; hover names the setting
    and its storage. `points` is `search.frontier.frontier_points`."""
    figure = _figure(title, "bytes per vector held in memory (log)", "recall@10 (held-out queries, dense top 10)")
    families = list(dict.fromkeys(points["code"]))
    for (code, search), group in points.groupby(["code", "search"], sort=False):
        run = (group["kind"] == "run").any()
        figure.add_trace(
            go.Scatter(
                x=group["bytes"],
                y=group["recall_at_10"],
                mode="markers",
                name=f"{code} · {search}",
                marker={
                    "symbol": FRONTIER_MARKERS.get(search, "circle"),
                    "size": 13 if run else 9,
                    "color": PALETTE[families.index(code) % len(PALETTE)],
                    "line": {"width": 1.5 if run else 0, "color": "black"},
                },
                customdata=np.stack([group["setting"], group["storage"]], axis=1),
                hovertemplate="%{customdata[0]}<br>"
                + search
                + ": recall@10 %{y:.3f}<br>%{customdata[1]}<extra></extra>",
            )
        )
    front = points[points.get("pareto", pd.Series(False, index=points.index)).astype(bool)].sort_values("bytes")
    if len(front):
        figure.add_trace(
            go.Scatter(
                x=front["bytes"],
                y=front["recall_at_10"],
                mode="lines",
                line={"shape": "hv", "dash": "dot", "color": "grey"},
                name="Pareto front (one-stage codes)",
                hoverinfo="skip",
            )
        )
    figure.update_xaxes(type="log")
    return figure
