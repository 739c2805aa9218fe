"""Chart builders: the figure holds the data it was given, one trace per run."""

import pandas as pd
import plotly.graph_objects as go
import pytest

from sparsebin import charts
from sparsebin.config import TrainConfig
from sparsebin.interpret.comparison import grid_groups, with_settings


def test_training_curves_one_line_per_run():
    histories = {
        "a": [{"step": 0, "loss": 1.0}, {"step": 50, "loss": 0.5}],
        "b": [{"step": 0, "loss": 0.9}],
    }
    figure = charts.training_curves(histories, "loss")
    assert isinstance(figure, go.Figure)
    assert [trace.name for trace in figure.data] == ["a", "b"]
    assert list(figure.data[0].y) == [1.0, 0.5]


def test_active_histograms_are_shares():
    figure = charts.active_histograms({"run": [0, 2, 6, 2]}, k=2)
    assert list(figure.data[0].y) == [0.0, 0.2, 0.6, 0.2]


def test_firing_histogram_uses_bin_centres():
    figure = charts.firing_histograms({"run": {"edges": [-2.0, -1.0, 0.0], "counts": [3, 4]}})
    assert list(figure.data[0].x) == [-1.5, -0.5]
    assert list(figure.data[0].y) == [3, 4]


def test_grid_heatmap_pivots_two_settings():
    runs = pd.DataFrame(
        {"n_bits": [64, 64, 128, 128], "k": [4, 8, 4, 8], "recon_loss": [0.4, 0.3, 0.35, 0.2], "loss": ["cosine"] * 4}
    )
    assert charts.grid_axes(runs, ["n_bits", "k", "loss"]) == ["n_bits", "k"]
    figure = charts.grid_heatmap(runs, "n_bits", "k", "recon_loss")
    heat = figure.data[0]
    assert list(heat.x) == ["64", "128"] and list(heat.y) == ["4", "8"]
    assert heat.z.tolist() == [[0.4, 0.35], [0.3, 0.2]]


def test_recon_vs_active_one_point_per_run():
    runs = pd.DataFrame({"label": ["a", "b"], "active_mean": [4.0, 8.0], "recon_loss": [0.3, 0.2]})
    figure = charts.recon_vs_active(runs)
    assert list(figure.data[0].x) == [4.0, 8.0] and list(figure.data[0].text) == ["a", "b"]


def test_bit_health_bars_name_each_count_and_enrichment():
    runs = pd.DataFrame(
        {"label": ["a"], "dead_all_rows": [3], "silent_held_out": [7], "rare_bits": [2], "dense_all_rows": [1]}
    )
    figure = charts.bit_health_bars(runs)
    assert [list(trace.y) for trace in figure.data] == [[3], [7], [2], [1]]
    assert figure.data[1].name == "bits silent on held-out rows (fire on training rows only)"
    enrichment = pd.DataFrame(
        {
            "category": ["eye", "ear"],
            "lift": [5.0, 1.0],
            "precision": [0.5, 0.1],
            "recall": [0.4, 0.1],
            "n_active_in_category": [10, 2],
        }
    )
    bars = charts.enrichment_chart(enrichment).data[0]
    assert list(bars.y) == ["ear", "eye"]  # largest lift drawn at the top


def test_concept_map_categorical_and_continuous():
    points = pd.DataFrame(
        {
            "x": [0.0, 1.0, 2.0],
            "y": [0.0, 1.0, 0.5],
            "id": ["a", "b", "c"],
            "name": ["A", "B", "C"],
            "category": ["eye", "ear", "eye"],
            "active": [3, 5, 4],
        }
    )
    assert sorted(trace.name for trace in charts.concept_map(points, "category", continuous=False).data) == [
        "ear",
        "eye",
    ]
    continuous = charts.concept_map(points, "active", continuous=True).data
    assert len(continuous) == 1 and list(continuous[0].marker.color) == [3, 5, 4]


def test_live_curves_and_sigmoid_histogram():
    events = [{"step": 0, "loss": 1.0, "active_mean": 10.0}, {"step": 10, "loss": 0.8, "active_mean": 6.0}]
    figure = charts.live_curves(events, k=4)
    assert [list(trace.y) for trace in figure.data] == [[1.0, 0.8], [10.0, 6.0]]
    histogram = charts.sigmoid_histogram([0.0, 0.5, 1.0], [9, 1])
    assert list(histogram.data[0].x) == [0.25, 0.75]


def test_seed_bands_draw_the_mean_over_seeds_and_a_band_of_one_sd():
    curves = {"paper setting": [{1: 1.0, 2: 0.5}, {1: 3.0, 2: 0.7, 3: 0.4}], "one seed": [{1: 2.0}]}
    figure = charts.seed_bands(curves, "loss")
    band, mean, single = figure.data
    assert list(mean.x) == [1, 2, 3] and list(mean.y) == [2.0, 0.6, 0.4]  # epoch 3: the seed that reached it
    assert mean.name == "paper setting (2 seeds)" and single.name == "one seed (1 seed)"
    assert band.fill == "toself" and list(band.x) == [1, 2, 2, 1]  # only where two seeds are
    sd = 2**0.5
    assert list(band.y) == pytest.approx([2.0 + sd, 0.6 + 0.1 * sd, 0.6 - 0.1 * sd, 2.0 - sd])


def test_the_heatmap_pools_only_runs_equal_in_every_other_setting():
    base = TrainConfig(n_bits=64, k=4)
    rows = [
        base.to_dict() | {"seed": 0, "recon_loss": 0.30},
        base.to_dict() | {"seed": 0, "recon_loss": 0.34},  # queued again: one replicate with the one above
        base.to_dict() | {"seed": 1, "recon_loss": 0.20},
        base.replace(k=8).to_dict() | {"recon_loss": 0.25},
        base.replace(n_bits=128).to_dict() | {"recon_loss": 0.15},
        base.replace(rounding="hard").to_dict() | {"recon_loss": 0.90},  # another rounding, same cell
    ]
    runs = with_settings(pd.DataFrame(rows).assign(dataset="hpo", n_rows=1000, label=""))
    groups = grid_groups(runs, "n_bits", "k")
    assert len(groups) == 1 and 0.90 not in list(groups[0].runs["recon_loss"])
    assert "rounding ste" in groups[0].setting and "N=" not in groups[0].setting
    heat = charts.grid_heatmap(groups[0].runs, "n_bits", "k", "recon_loss", replicate="seed").data[0]
    assert list(heat.x) == ["64", "128"] and list(heat.y) == ["4", "8"]
    assert heat.z[0][0] == pytest.approx((0.32 + 0.20) / 2)  # two seeds, the repeated one averaged first
