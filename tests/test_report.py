"""The findings report from a small finished grid: every section, a self-contained HTML file, the CSV table."""

import re

import numpy as np
import pandas as pd
import pytest

from sparsebin.cli import main
from sparsebin.config import TrainConfig
from sparsebin.datasets import import_dataset
from sparsebin.jobs.queue import Store
from sparsebin.jobs.worker import run_worker
from sparsebin.study import study_configs

CATEGORIES = ["eye", "heart", "skin", "brain"]


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
    for section in ("## Ablation table", "## The six questions", "## Runs", "## Figures"):
        assert section in markdown
    for number in range(1, 7):
        assert f"**{number}. " in markdown
    assert "| paper setting | cosine (both terms) | ste | align | 3 | 2 |" in markdown
    assert "| rounding none | cosine (both terms) | none | align | 3 | 2 |" in markdown
    assert "dead (all rows)" in markdown and "recall@10 Jaccard (val queries, all rows)" in markdown
    assert "Questions 4-6 describe paper setting seed=0" in markdown  # the paper's setting, converged or lowest seed
    assert "against rounding ste" in markdown  # Question 3 pairs the controlled runs
    page = (out / "report.html").read_text()
    assert "Plotly.newPlot" in page and page.count("<h3>") >= 6 + 6  # six answers and the figures
    scripts = re.findall(r"<script\b([^>]*)>", page, flags=re.IGNORECASE)
    assert scripts and not any("src" in attributes.lower() for attributes in scripts)  # plotly.js embedded, no CDN
    markup = re.sub(r"<script\b[^>]*>.*?</script>", "", page, flags=re.IGNORECASE | re.DOTALL)  # code, not tags
    remote = re.findall(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", markup, flags=re.IGNORECASE)
    assert remote == [] and "<link" not in markup.lower()  # no remote image, style sheet or frame
    table = pd.read_csv(out / "table.csv")
    assert list(table["setting"]) == ["paper setting", "rounding none"] and list(table["n"]) == [2, 2]
    assert {"recon_loss_mean", "recon_loss_sd", "dead_all_rows_mean", "recall_at_10_jaccard_mean"} <= set(table)


def test_the_report_of_chosen_jobs_and_a_clear_error_for_unknown_ones(grid, tmp_path, capsys):
    store, jobs = grid
    out = tmp_path / "two"
    assert main(["report", "--jobs", str(jobs[0].id), str(jobs[2].id), "--out", str(out)]) == 0
    table = pd.read_csv(out / "table.csv")
    assert list(table["n"]) == [2]  # jobs 1 and 3: the paper setting with seeds 0 and 1
    assert main(["report", "--jobs", "999", "--out", str(out)]) == 2
    assert "job(s) 999 have no finished run here." in capsys.readouterr().err
