"""The Bits page's "What switching this bit off does", driven with AppTest on one finished tiny run."""

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from sparsebin.config import TrainConfig
from sparsebin.datasets import import_dataset
from sparsebin.jobs.queue import Store
from sparsebin.jobs.worker import run_worker

CATEGORIES = ["eye", "heart", "skin", "brain"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A 200 x 16 dataset in four categories and one finished 32-bit run."""
    root = tmp_path_factory.mktemp("app_interventions")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SPARSEBIN_HOME", str(root / "home"))
        patch.setenv("SPARSEBIN_DATA", str(root / "data"))
        rng = np.random.default_rng(0)
        category = np.arange(200) % len(CATEGORIES)
        centres = rng.standard_normal((len(CATEGORIES), 16))
        np.save(root / "tiny.npy", (centres[category] + 0.3 * rng.standard_normal((200, 16))).astype(np.float32))
        pd.DataFrame(
            {
                "id": [f"T:{row:04d}" for row in range(200)],
                "name": [f"{CATEGORIES[c]} finding {row}" for row, c in enumerate(category)],
                "category": [CATEGORIES[c] for c in category],
            }
        ).to_csv(root / "tiny.csv", index=False)
        import_dataset(root / "tiny.npy", name="tiny", labels_file=root / "tiny.csv")
        store = Store()
        store.submit("tiny", TrainConfig(n_bits=32, k=4, epochs=3, batch_size=64, lr=1e-2, device="cpu"))
        assert run_worker(once=True, device="cpu") == 1
        run_id = store.list_runs()["run_id"].iloc[0]
    return {"root": root, "run_id": run_id}


def open_page(world, monkeypatch, page: str) -> AppTest:
    """The app on the world's folders (no worker), switched to `page`."""
    monkeypatch.setenv("SPARSEBIN_HOME", str(world["root"] / "home"))
    monkeypatch.setenv("SPARSEBIN_DATA", str(world["root"] / "data"))
    monkeypatch.setenv("SPARSEBIN_NO_WORKER", "1")
    at = AppTest.from_file("../app.py", default_timeout=60)
    at.run()
    at.switch_page(f"pages/{page}.py")
    at.run()
    return at


def test_bits_page_shows_what_switching_the_bit_off_does_beside_its_firing_label(world, monkeypatch):
    at = open_page(world, monkeypatch, "bits")
    assert not at.exception
    assert "**What switching this bit off does**" in [item.value for item in at.markdown]
    texts = [item.value for item in at.markdown] + [item.value for item in at.caption]
    caption = next(text for text in texts if text.startswith("Switched off in "))
    lost = next(frame.value for frame in at.dataframe if list(frame.value.columns) == ["category", "lost", "share"])
    assert f"{int(lost['lost'].sum()):,} are lost over the sampled concepts" in caption
    assert "(a seeded sample of at most 500 on these 200 rows)" in caption
    labels = next(text for text in texts if text.startswith("Label by firing: "))
    firing = labels.split("(category ")[1].split(")")[0]
    assert f"category lost most often: {lost['category'].iloc[0]})" in labels
    assert ("**agree**" if firing == lost["category"].iloc[0] else "**differ**") in labels


def test_concepts_page_switches_a_bit_off_queries_by_bits_and_contrasts(world, monkeypatch):
    at = open_page(world, monkeypatch, "concepts")
    at.text_input(key="concept_query").input("T:0010").run()
    kept = at.multiselect(key="kept_bits")
    active = list(kept.value)
    assert active and not at.exception
    kept.unselect(active[0]).run()
    caption = next(item.value for item in at.caption if item.value.startswith("Decoded by the run's decoder"))
    assert f"{len(active)} active bits before, {len(active) - 1} after" in caption
    changes = next(frame.value for frame in at.dataframe if "change" in frame.value.columns)
    assert set(changes["change"]) <= {"gained", "lost"}
    assert (changes["change"] == "gained").sum() == (changes["change"] == "lost").sum()
    at.text_input(key="bit_query").input(f"{active[0]} | ~{active[0]}").run()
    assert any(item.value.endswith("200 of 200 concepts; the first 50 by row listed.") for item in at.caption)
    at.text_input(key="bit_query").input(f"{active[0]} &").run()
    assert [item.value for item in at.error] == [
        "the bit expression ends too early: a bit number or '(' is missing at its end."
    ]
    at.text_input(key="contrast_with").input("T:0010").run()
    assert f"**{len(active)} bits both share**" in [item.value for item in at.markdown]
