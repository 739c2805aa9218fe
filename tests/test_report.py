"""The findings report from a small finished grid: every section, a self-contained HTML file, the CSV table."""

import math
import re

import numpy as np
import pandas as pd
import pytest

from sparsebin.cli import main
from sparsebin.config import TrainConfig
from sparsebin.datasets import import_dataset
from sparsebin.interpret.tables import ablation_tables, shown
from sparsebin.jobs.queue import Store
from sparsebin.jobs.worker import run_worker
from sparsebin.study import study_configs

CATEGORIES = ["eye", "heart", "skin", "brain"]
TITLES = ("Table 1: the loss ablation", "Table 2: the rounding ablation", "Table 3: the paper's N x K", "Every setting")


@pytest.fixture
def grid(tmp_path):
    """Paper setting and rounding none, two seeds each, on a 240 x 12 dataset with an ontology table."""
    rng = np.random.default_rng(0)
    category = np.arange(240) % len(CATEGORIES)
    centres = rng.standard_normal((len(CATEGORIES), 12))
    np.save(tmp_path / "tiny.npy", (centres[category] + 0.3 * rng.standard_normal((240, 12))).astype(np.float32))
    pd.DataFrame(
        {
            "id": [f"T:{row:04d}" for row in range(240)],
            "name": [f"{CATEGORIES[c]} finding {row}" for row, c in enumerate(category)],
            "category": [CATEGORIES[c] for c in category],
            "depth": 1 + np.arange(240) % 3,
            "parents": ["" if row < 4 else f"T:{row % 4:04d}" for row in range(240)],
        }
    ).to_csv(tmp_path / "tiny.csv", index=False)
    import_dataset(tmp_path / "tiny.npy", name="tiny", labels_file=tmp_path / "tiny.csv")
    base = TrainConfig(n_bits=24, k=3, epochs=3, batch_size=60, lr=1e-2, device="cpu", log_every=1)
    study = [
        (label, config)
        for label, config in study_configs(base, seeds=2)
        if label.startswith(("paper", "rounding none"))
    ]
    store = Store()
    jobs = store.submit_many("tiny", [config for _, config in study], [label for label, _ in study])
    assert run_worker(once=True, device="cpu") == 4
    return store, jobs


def test_the_report_opens_with_every_section_and_its_html_loads_nothing_remote(grid, tmp_path, capsys):
    store, jobs = grid
    out = tmp_path / "report"
    assert main(["report", "--dataset", "tiny", "--out", str(out)]) == 0
    assert "report.html" in capsys.readouterr().out
    markdown = (out / "report.md").read_text()
    for section in ("## Ablation tables", "## The seven questions", "## Runs", "## Figures"):
        assert section in markdown
    for number in range(1, 8):
        assert f"**{number}. " in markdown
    tables = markdown.split("### ")
    loss, rounding, sweep, every = (next(t for t in tables if t.startswith(title)) for title in TITLES)
    assert "No loss ablation among these runs" in loss and "`submit --study SEEDS`" in loss
    assert "No N x K sweep among these runs" in sweep and "`submit --sweep [SEEDS]`" in sweep
    assert "At tiny N=24 K=3 loss cosine (both terms) sparsity align" in rounding  # what its rows share
    header = rounding.split("\n")[4]
    assert header.startswith("| setting | rounding | n | converged | reconstruction: recon (val, hard bits) | ")
    for group, figure in (
        ("reconstruction", "recon (val, soft code)"),
        ("training stability", "code churn, last epoch (held-out probe rows)"),
        ("training stability", "recon sd over seeds (val)"),
        ("sparsity alignment", "d(s, t) cosine (val)"),
        ("bit health", "silent by chance (held-out, expected for these bit sizes)"),
        ("storage", "bytes/vector (Elias-Fano, val)"),
        ("retrieval", "recall@10 Jaccard (val queries, all rows)"),
    ):
        assert f"| {group}: {figure} |" in header
    assert "| paper setting | ste | 2 | " in rounding and "| rounding none | none | 2 | " in rounding
    assert "| paper setting | cosine (both terms) | ste | align | 24 | 3 | 3 | 2 | " in every
    assert "Questions 4-6 describe paper setting seed=0" in markdown  # the paper's setting, converged or lowest seed
    assert "against rounding ste" in markdown  # Question 3 pairs the controlled runs
    page = (out / "report.html").read_text()
    assert "Plotly.newPlot" in page and page.count("<h3>") >= 6 + 6  # six answers and the figures
    assert '<th colspan="2" halign="left">reconstruction</th>' in page  # a group's header over its columns
    assert "Code churn (held-out probe rows) per epoch, band over seeds" in page
    scripts = re.findall(r"<script\b([^>]*)>", page, flags=re.IGNORECASE)
    assert scripts and not any("src" in attributes.lower() for attributes in scripts)  # plotly.js embedded, no CDN
    markup = re.sub(r"<script\b[^>]*>.*?</script>", "", page, flags=re.IGNORECASE | re.DOTALL)  # code, not tags
    remote = re.findall(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", markup, flags=re.IGNORECASE)
    assert remote == [] and "<link" not in markup.lower()  # no remote image, style sheet or frame
    table = pd.read_csv(out / "table.csv")
    rounding_rows = table[table["table"] == "Table 2: the rounding ablation"]
    assert list(rounding_rows["setting"]) == ["paper setting", "rounding none"] and list(rounding_rows["n"]) == [2, 2]
    assert set(table["table"]) == {"Table 2: the rounding ablation", "Every setting"}
    assert {"recon_loss_mean", "recon_loss_sd", "recon_loss_n", "recon_loss_seed_sd_mean"} <= set(table)
    assert {"dead_all_rows_mean", "silent_held_out_expected_mean", "recall_at_10_jaccard_mean"} <= set(table)


def test_the_report_of_chosen_jobs_and_a_clear_error_for_unknown_ones(grid, tmp_path, capsys):
    store, jobs = grid
    out = tmp_path / "two"
    assert main(["report", "--jobs", str(jobs[0].id), str(jobs[2].id), "--out", str(out)]) == 0
    table = pd.read_csv(out / "table.csv")
    assert list(table["n"]) == [2]  # jobs 1 and 3: the paper setting with seeds 0 and 1, in no ablation's table
    assert main(["report", "--jobs", "999", "--out", str(out)]) == 2
    assert "job(s) 999 have no finished run here." in capsys.readouterr().err


def test_the_report_draws_the_yardsticks_once_measured_and_question_4_meets_the_best_of_them(grid, tmp_path, capsys):
    store, jobs = grid
    before = tmp_path / "before"
    assert main(["report", "--dataset", "tiny", "--out", str(before)]) == 0
    markdown = (before / "report.md").read_text()
    assert "## Recall per byte\n\nThe yardsticks of the named run's data set are not measured" in markdown
    assert "are not measured yet: `python -m sparsebin frontier tiny --runs " in markdown
    named = store.list_runs("tiny").sort_values("job_id").iloc[0]
    # 12 dimensions: one byte is the only budget a sign code or PQ can spend here.
    assert (
        main(["frontier", "tiny", "--runs", named["run_id"], "--budgets", "1", "--no-timing", "--out", str(tmp_path)])
        == 0
    )
    said = capsys.readouterr().out  # 240 rows: too few to train PQ's 256 centroids, said, not a faiss traceback
    assert "PQ and OPQ left out: their 8-bit codebooks need at least 256 training rows, this data set's " in said
    after = tmp_path / "after"
    assert main(["report", "--dataset", "tiny", "--out", str(after)]) == 0
    markdown = (after / "report.md").read_text()
    frontier = markdown.split("## Recall per byte")[1].split("## Runs")[0]
    assert "Recall per byte on tiny: the yardsticks and 4 run(s)" in frontier
    assert "| code | search | bytes / vector | recall@10 | ms / query | Pareto |" in frontier
    for setting in ("ITQ, 8 bits", "sign-PCA, 8 bits", "LSH, 8 hyperplanes", "scalar quantiser int8", "float32, exact"):
        assert f"| {setting} |" in frontier, setting
    assert "| PQ 1x8 |" not in frontier
    assert frontier.count("Elias-Fano |") == 4 * 3  # each run by Hamming, Jaccard and asymmetric search
    question = markdown.split("**4. ")[1].split("**5. ")[0]
    assert "Against the strongest yardstick at no more than its " in question
    assert "by code-to-code search its recall@10" in question and "by float-query-to-code search" in question
    page = (after / "report.html").read_text()
    assert "Recall per byte on tiny: the yardsticks and 4 run(s)" in page


def row(seed=0, label="", **changes) -> dict:
    """A runs-table row of a finished run at N=64, K=4, changed by `changes` (settings and figures alike)."""
    settings = {name: value for name, value in changes.items() if name in TrainConfig().to_dict()}
    config = TrainConfig(n_bits=64, k=4, epochs=20, seed=seed).replace(**settings)
    figures = {"recon_loss": 0.3, "fixed_topk_recon_loss": 0.4, "active_mean": 4.0, "active_std": 1.0}
    figures |= {"bits_index_list": 24.0, "bits_elias_fano": 20.0, "n_rows": 1000, "converged": True}
    return (
        {"run_id": f"r{seed}-{label}-{len(changes)}", "job_id": 1, "dataset": "hpo", "label": label, "status": "done"}
        | config.to_dict()
        | {"reconstruction_distance": config.reconstruction_distance, "alignment_distance": config.alignment_distance}
        | figures
        | {name: value for name, value in changes.items() if name not in settings}
    )


def test_the_n_by_k_table_holds_the_paper_setting_sweep_only():
    sweep = [row(n_bits=n, k=k, label=f"N x K sweep N={n} K={k} seed=0", recon_loss=0.1 * k / n * 64) for n, k in
             ((128, 8), (64, 4), (64, 8), (128, 4))]  # fmt: skip
    runs = pd.DataFrame(
        [
            *sweep,
            row(seed=1, n_bits=64, k=4, recon_loss=0.2, fixed_topk_recon_loss=math.nan),  # a second seed
            row(n_bits=64, k=8, rounding="none"),  # not the paper's setting
            row(n_bits=256, k=8, init="sparse"),  # nor this: the sparse initialisation
        ]
    )
    tables = {table.ablation.title: table for table in ablation_tables(runs)}
    (block,) = tables["Table 3: the paper's N x K experiment"].blocks
    assert "N=" not in block.setting and "rounding ste" in block.setting
    assert [(r["N"], r["K"], r["n"]) for _, r in block.rows.iterrows()] == [
        ("64", "4", 2),
        ("64", "8", 1),
        ("128", "4", 1),
        ("128", "8", 1),
    ]
    frame = shown(block, tables["Table 3: the paper's N x K experiment"].ablation)
    groups = list(dict.fromkeys(group for group, _ in frame.columns))
    assert groups == ["", "reconstruction", "active bits", "bit health", "storage", "retrieval"]
    first = frame.iloc[0]
    assert first[("reconstruction", "recon (val, hard bits)")] == "0.300 ± 0.141"  # seeds 0 and 1
    assert first[("reconstruction", "fixed-TopK recon (val)")] == "0.400 (n=1)"  # one of its two seeds measured it
    assert first[("bit health", "silent beyond chance (held-out)")] == "not measured"  # never 0
    assert tables["Table 1: the loss ablation"].blocks == ()


def test_the_loss_table_takes_a_group_only_around_the_paper_setting_in_every_form():
    runs = pd.DataFrame(
        [
            row(label="paper setting seed=0"),
            row(label="both MSE (per entry) seed=0", loss="mse"),
            row(label="both MSE (scale-fair) seed=0", rec_loss="mse_sum", sparsity_loss="mse"),
            row(label="reconstruction L1 (per entry) seed=0", rec_loss="l1", recon_loss=0.9),
            row(rounding="none"),
            row(rounding="none", loss="l1"),  # a loss pair without the paper's setting: no block of Table 1
        ]
    )
    tables = {table.ablation.title: table for table in ablation_tables(runs)}
    (block,) = tables["Table 1: the loss ablation"].blocks
    assert list(block.rows["setting"]) == [
        "paper setting",
        "reconstruction L1 (per entry)",
        "both MSE (per entry)",
        "both MSE (scale-fair)",
    ]
    assert list(block.rows["loss terms"])[1:] == [
        "alignment cosine, reconstruction L1 (mean over entries)",
        "MSE (mean over entries) (both terms)",
        "alignment MSE (mean over entries), reconstruction MSE (per-row sum, scale-fair)",
    ]
    assert "rounding ste" in block.setting
    (rounding,) = tables["Table 2: the rounding ablation"].blocks
    assert list(rounding.rows["rounding"]) == ["ste", "none"]
