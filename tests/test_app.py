"""The Streamlit app, driven with AppTest against a tiny dataset and two finished tiny runs.

SPARSEBIN_NO_WORKER=1 keeps app.py from starting a background worker; the
runs are trained in-process by `run_worker(once=True)` before any page opens.
"""

import base64
import json
import os
import socket
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from streamlit import dataframe_util
from streamlit.testing.v1 import AppTest

from sparsebin import runfolder
from sparsebin.config import TrainConfig, preset_config
from sparsebin.datasets import import_dataset
from sparsebin.interpret import phrases
from sparsebin.interpret.ontology import format_q
from sparsebin.jobs.queue import Store
from sparsebin.jobs.service import run_summary
from sparsebin.jobs.worker import run_worker
from sparsebin.search.codes import active_counts, unpack_bits

PAGES = ["home", "train", "compare", "bits", "concepts", "map", "data"]
CATEGORIES = ["eye", "heart", "skin", "brain", "bone", "blood"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A 300 x 16 dataset in six categories, its cached map, and three finished 32-bit runs
    (the newest trained on every row, without a validation split)."""
    root = tmp_path_factory.mktemp("app")
    home, data = root / "home", root / "data"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SPARSEBIN_HOME", str(home))
        patch.setenv("SPARSEBIN_DATA", str(data))
        rng = np.random.default_rng(0)
        centres = rng.standard_normal((len(CATEGORIES), 16))
        category = np.arange(300) % len(CATEGORIES)
        np.save(root / "tiny.npy", (centres[category] + 0.3 * rng.standard_normal((300, 16))).astype(np.float32))
        labels = pd.DataFrame(
            {
                "id": [f"T:{row:04d}" for row in range(300)],
                "name": [f"{CATEGORIES[c]} finding {row}" for row, c in enumerate(category)],
                "category": [CATEGORIES[c] for c in category],
                "depth": 1 + np.arange(300) % 4,
                "parents": ["" if row < 6 else f"T:{row % 6:04d}" for row in range(300)],
            }
        )
        labels.to_csv(root / "tiny.csv", index=False)
        folder = import_dataset(root / "tiny.npy", name="tiny", labels_file=root / "tiny.csv")
        np.save(folder / "umap.npy", rng.standard_normal((300, 2)).astype(np.float32))
        store = Store()
        base = TrainConfig(n_bits=32, k=4, epochs=3, batch_size=64, lr=1e-2, device="cpu", log_every=2)
        store.submit("tiny", base, label="cosine run")
        store.submit("tiny", base.replace(loss="mse"), label="mse run")
        store.submit("tiny", base.replace(val_fraction=0.0), label="all-train run")
        run_worker(once=True, device="cpu")
        runs = store.list_runs()
        assert list(runs["status"]) == ["done"] * 3, [job.error for job in store.jobs()]
    return {"home": home, "data": data, "root": root, "runs": runs}


@pytest.fixture
def app(world, monkeypatch):
    monkeypatch.setenv("SPARSEBIN_HOME", str(world["home"]))
    monkeypatch.setenv("SPARSEBIN_DATA", str(world["data"]))
    monkeypatch.setenv("SPARSEBIN_NO_WORKER", "1")
    at = AppTest.from_file("../app.py", default_timeout=60)
    at.run()
    return at


def open_page(at: AppTest, page: str) -> AppTest:
    at.switch_page(f"pages/{page}.py")
    at.run()
    assert not at.exception, at.exception
    return at


def texts(at: AppTest) -> str:
    parts = [element.value for kind in ("markdown", "success", "error", "info", "warning", "caption", "subheader")
             for element in getattr(at, kind)]  # fmt: skip
    return "\n".join(str(part) for part in parts)


def shown(table) -> pd.DataFrame:
    """A table's cells as the browser shows them: a pandas Styler's text where the page gives one, and the
    table's placeholder ("None" unless set) where a value is missing, whatever the Styler says."""
    display = table.proto.arrow_data.styler.display_values
    text = dataframe_util.convert_arrow_bytes_to_pandas_df(display) if display else table.value.astype(str)
    return text.where(table.value.notna(), table.proto.placeholder if table.proto.HasField("placeholder") else "None")


@pytest.mark.parametrize("page", PAGES)
def test_every_page_renders(app, page):
    open_page(app, page)
    assert app.title[0].value == ("sparsebin" if page == "home" else page.capitalize())


def test_home_lists_datasets_and_runs(app):
    assert "tiny" in texts(app)
    table = app.dataframe[0].value
    assert set(table["label"]) == {"cosine run", "mse run", "all-train run"}


def test_train_queues_a_run_and_refuses_bad_settings(app, world):
    at = open_page(app, "train")
    at.number_input(key="n_bits").set_value(8)
    at.number_input(key="k").set_value(8)
    at.button(key="submit_run").click().run()
    assert "k must be smaller than n_bits, got k=8 and n_bits=8." in [error.value for error in at.error]
    at.number_input(key="k").set_value(2)
    at.number_input(key="batch_size").set_value(32)
    at.text_input(key="label").set_value("queued from the test")
    at.button(key="submit_run").click().run()
    assert any("Queued job" in success.value for success in at.success)
    assert "queued from the test" in texts(at)
    at.text_input(key="grid_k").set_value("2, 3")
    at.multiselect(key="grid_loss").set_value(["cosine", "mse", "l1"]).run()
    assert "This grid queues **6** runs." in texts(at)
    assert at.multiselect(key="grid_rounding").options == ["pass-through", "removed", "hard", "stochastic"]
    job = Store(world["home"]).jobs(limit=1)[0]
    assert job.label == "queued from the test" and job.status.name == "QUEUED"
    assert job.config.reconstruction_distance == "cosine"  # "as loss" unless chosen
    Store(world["home"]).cancel(job.id)  # leave the other tests the finished runs and nothing queued


def test_train_refuses_a_run_identical_to_one_already_queued_unless_queued_again(app, world):
    at = open_page(app, "train")
    for field, value in (("n_bits", 16), ("k", 2), ("batch_size", 32), ("seed", 7)):
        at.number_input(key=field).set_value(value)
    at.button(key="submit_run").click().run()
    first = Store(world["home"]).jobs(limit=1)[0]
    at.button(key="submit_run").click().run()
    (refused,) = [error.value for error in at.error]
    assert refused.startswith("this run is identical in every setting and seed to a run already queued")
    assert f"job {first.id} (run {first.run_id}, queued); tick Queue again to queue anyway." in refused
    assert Store(world["home"]).jobs(limit=1)[0].id == first.id  # nothing queued
    at.checkbox(key="again").check()
    at.button(key="submit_run").click().run()
    again = Store(world["home"]).jobs(limit=1)[0]
    assert again.id == first.id + 1 and again.config == first.config
    for job in (first, again):
        Store(world["home"]).cancel(job.id)


def test_train_queues_the_recommended_preset_with_its_settings_shown_in_the_form(app, world):
    at = open_page(app, "train")
    at.selectbox(key="preset").set_value("recommended").run()
    recommended = preset_config("recommended")
    assert "The preset's settings: n_bits=8192, k=40, sparsity=hard-topk, rate_control=balance" in texts(at)
    assert at.selectbox(key="sparsity").value == recommended.sparsity  # the form shows the preset's scheme
    assert (at.number_input(key="n_bits").value, at.number_input(key="k").value) == (8192, 40)  # and size
    at.number_input(key="k").set_value(4)
    at.number_input(key="n_bits").set_value(32)
    at.number_input(key="batch_size").set_value(32)
    at.button(key="submit_run").click().run()
    assert any("Queued job" in success.value for success in at.success)
    job = Store(world["home"]).jobs(limit=1)[0]
    assert job.config == recommended.replace(k=4, n_bits=32, batch_size=32)
    Store(world["home"]).cancel(job.id)
    at.selectbox(key="preset").set_value("paper").run()
    assert at.selectbox(key="sparsity").value == "align"  # back to the paper's scheme
    assert (at.number_input(key="n_bits").value, at.number_input(key="k").value) == (1024, 16)


def test_train_says_how_many_active_bits_fit_in_a_byte_budget(app):
    at = open_page(app, "train")
    assert at.number_input(key="byte_budget").value == 2  # the 16-dimension dataset's sign bits: 2 bytes
    at.number_input(key="byte_budget").set_value(48).run()
    table = next(frame.value for frame in at.dataframe if "K Elias-Fano coded" in frame.value.columns)
    row = table.set_index("N").loc[4096]
    assert (row["K as a plain index list"], row["K Elias-Fano coded"]) == (32, 45)


def test_a_grid_value_of_the_wrong_kind_is_named_in_one_sentence(app):
    at = open_page(app, "train")
    at.text_input(key="grid_n_bits").set_value("64, abc").run()
    assert not at.exception
    assert "n_bits: 'abc' is not an integer." in [error.value for error in at.error]
    at.text_input(key="grid_n_bits").set_value("1.5").run()
    assert "n_bits: '1.5' is not an integer." in [error.value for error in at.error]
    at.text_input(key="grid_n_bits").set_value("")
    at.text_input(key="grid_alpha").set_value("0.5, x").run()
    assert "alpha: 'x' is not a number." in [error.value for error in at.error]


def test_a_grid_whose_run_would_be_refused_says_which_before_queuing(app, world):
    at = open_page(app, "train")
    at.text_input(key="grid_n_bits").set_value("8, 64")
    at.text_input(key="grid_k").set_value("4, 16").run()
    sentence = "the grid's run n_bits=8 k=16 would be refused: k must be smaller than n_bits, got k=16 and n_bits=8."
    assert sentence in [error.value for error in at.error]
    assert not [button for button in at.button if button.key == "submit_grid"]  # nothing to press
    at.text_input(key="grid_k").set_value("2, 4").run()
    assert "This grid queues **4** runs." in texts(at)
    assert [button.label for button in at.button if button.key == "submit_grid"] == ["Queue 4 runs"]


def test_compare_shows_both_picked_runs(app, world):
    at = open_page(app, "compare")
    ids = list(world["runs"]["run_id"])
    at.multiselect(key="compare_runs").set_value(ids[:1]).run()
    assert len(at.dataframe[0].value.columns) == 1
    at.multiselect(key="compare_runs").set_value(ids).run()
    shown = at.dataframe[0].value
    columns = " ".join(shown.columns)
    assert "cosine run" in columns and "mse run" in columns
    figures = set(shown.index.get_level_values(-1))
    assert {"dead (all rows)", "silent (held-out)", "recon (val, hard bits)", "converged"} <= figures
    assert "val_fraction" in figures  # the all-train run differs from the others in it
    answers = texts(at)
    # cosine and mse differ only in the loss: a controlled pair, one seed each
    assert "against cosine (both terms)" in answers and "MSE (mean over entries) (both terms)" in answers
    assert "spread unknown with one seed, no verdict" in answers
    # Question 7: each picked run's links against chance, and the named run's sign baseline
    assert "7. Do a concept's bits extend its parent's" in answers and "The sign baseline of" in answers
    assert "mse run · tiny · " in answers and "(294 links): a child keeps " in answers


def test_compare_picks_a_whole_submission_and_queues_what_the_answers_need(app, world):
    at = open_page(app, "compare")
    assert len(at.selectbox(key="compare_submission").options) == 3  # three separate submissions
    at.button(key="pick_submission").click().run()
    assert len(at.multiselect(key="compare_runs").value) == 1
    at.multiselect(key="compare_runs").set_value(list(world["runs"]["run_id"])).run()
    before = len(Store(world["home"]).jobs())
    at.button(key="queue_needed").click().run()
    store = Store(world["home"])
    queued = [job for job in store.jobs() if job.status.name == "QUEUED"]
    assert len(store.jobs()) > before and any("rounding none" in job.label for job in queued)
    for job in queued:
        store.cancel(job.id)  # leave the other tests nothing queued


def test_compare_answers_for_a_run_without_a_validation_split(app, world):
    at = open_page(app, "compare")
    runs = world["runs"]
    all_train = runs.loc[runs["label"] == "all-train run", "run_id"].iloc[0]
    at.multiselect(key="compare_runs").set_value([all_train]).run()
    assert not at.exception
    answers = texts(at)
    assert "The sign baseline of all-train run" in answers and "stores 16 bits per vector" in answers


def test_compare_names_the_runs_measured_by_an_older_asymmetric_recall(app, world):
    store, runs = Store(world["home"]), world["runs"]
    job_id = int(runs.loc[runs["label"] == "mse run", "job_id"].iloc[0])
    summary = run_summary(store.run_folder(store.job(job_id).run_id))
    store.set_summary(job_id, summary | {"asymmetric_score": None})  # as the plain sum left it
    try:
        at = open_page(app, "compare")
        at.multiselect(key="compare_runs").set_value(list(runs["run_id"])[:2]).run()
        captions = " ".join(caption.value for caption in at.caption)
        assert "Of the 2 picked runs, 1 show no asymmetric recall" in captions
        assert "`python -m sparsebin remeasure` measures them again" in captions
        at.multiselect(key="compare_runs").set_value(list(runs["run_id"])[2:]).run()
        assert "show no asymmetric recall" not in " ".join(caption.value for caption in at.caption)
        store.set_summary(job_id, summary | {"bits_elias_fano": None})  # measured before the metric existed
        at.multiselect(key="compare_runs").set_value(list(runs["run_id"])[:2]).run()
        captions = " ".join(caption.value for caption in at.caption)
        assert "Of the 2 picked runs, 1 show no Elias-Fano size: they were measured before it existed." in captions
    finally:
        store.set_summary(job_id, summary)


def test_compare_offers_the_report_of_the_picked_runs(app, world):
    at = open_page(app, "compare")
    at.multiselect(key="compare_runs").set_value(list(world["runs"]["run_id"])[:2]).run()
    assert not at.get("download_button")
    at.button(key="build_report").click().run()
    assert not at.exception
    labels = [button.proto.label for button in at.get("download_button")]
    assert labels == ["report.html (self-contained)", "report.md", "table.csv"]


def test_the_one_click_study_queues_every_setting_times_the_seeds(app, world):
    at = open_page(app, "train")
    at.number_input(key="n_bits").set_value(24)
    at.number_input(key="k").set_value(3)
    at.number_input(key="epochs").set_value(2)
    at.number_input(key="batch_size").set_value(32)
    at.selectbox(key="rounding").set_value("hard")  # the study starts from the paper's setting whatever the form says
    at.selectbox(key="rec_loss").set_value("l1")  # so do the distances
    at.number_input(key="study_seeds").set_value(2)
    at.button(key="submit_study").click().run()
    # 14 settings (the paper's, ten loss forms, three roundings) for each of the two seeds: the whole plan
    assert any("Queued the study: 28 runs" in success.value for success in at.success), texts(at)
    store = Store(world["home"])
    queued = [job for job in store.jobs() if job.status.name == "QUEUED"]
    assert len(queued) == 28
    by_label = {job.label: job.config for job in queued}
    assert {config.n_bits for config in by_label.values()} == {24} and {c.epochs for c in by_label.values()} == {2}
    assert {config.seed for config in by_label.values()} == {0, 1}
    assert by_label["paper setting seed=1"].rounding == "ste" and by_label["rounding hard seed=0"].rounding == "hard"
    assert by_label["alignment L1 seed=0"].alignment_distance == "l1"
    assert by_label["alignment L1 seed=0"].reconstruction_distance == "cosine"
    assert by_label["reconstruction MSE (scale-fair) seed=1"].reconstruction_distance == "mse_sum"
    assert by_label["both MSE (scale-fair) seed=0"].alignment_distance == "mse"
    assert by_label["both MSE (per entry) seed=1"].reconstruction_distance == "mse"
    assert by_label["rounding stochastic seed=0"].rounding == "stochastic"
    assert by_label["rounding none seed=1"].rounding == "none"
    at.number_input(key="study_seeds").set_value(3)
    at.button(key="submit_study").click().run()  # a third seed: only its 14 runs are new
    assert "28 of the study's 42 runs are already queued or finished." in texts(at)
    assert any("Queued the study: 14 runs" in success.value for success in at.success), texts(at)
    queued = [job for job in store.jobs() if job.status.name == "QUEUED"]
    assert len(queued) == 42
    for job in queued:
        store.cancel(job.id)


def test_bits_opens_a_bit_with_its_top_concepts(app):
    at = open_page(app, "bits")
    table = at.dataframe[0].value
    bit = int(table.sort_values("n_active", ascending=False)["bit"].iloc[0])
    at.number_input(key="bit").set_value(bit).run()
    assert not at.exception
    assert at.subheader[0].value.startswith(f"Bit {bit}:")
    top = at.dataframe[1].value
    assert len(top) > 0 and top["name"].str.contains("finding").all()


def test_bits_shows_q_values_a_person_reads_and_sorts_them_as_numbers(app):
    at = open_page(app, "bits")
    table = at.dataframe[0]
    q_values = table.value["q_value"]  # the numbers beneath, which the browser sorts by
    assert shown(table)["q_value"].tolist() == [format_q(q) for q in q_values]
    assert "< 1e-10" in shown(table)["q_value"].tolist()  # six clean clusters: some bits are far beyond chance
    assert not shown(table)["q_value"].str.fullmatch(r"0\.0*").any()
    bit = int(q_values.idxmin())
    at.number_input(key="bit").set_value(bit).run()
    assert f"(q-value {format_q(q_values[bit])})" in texts(at)  # the bit's own caption


def test_a_concepts_bits_show_the_bits_pages_corrected_coherence_and_q_values(app):
    bits = open_page(app, "bits").dataframe[0].value.set_index("bit")
    at = open_page(app, "concepts")
    at.text_input(key="concept_query").set_value("heart finding 1").run()
    table = at.dataframe[0]
    active = table.value
    assert len(active) and "coherence" not in active  # raw coherence favours small bits
    expected = bits.loc[active["bit"]]
    np.testing.assert_array_equal(active["corrected_coherence"], expected["corrected_coherence"])
    assert shown(table)["q_value"].tolist() == [format_q(q) for q in expected["q_value"]]
    assert "corrected coherence is precision above chance" in texts(at)


def test_a_phrases_bits_show_the_bits_pages_corrected_coherence_and_q_values(app, world, monkeypatch):
    row = 1  # "heart finding 1": the phrase is placed where that concept is
    vector = np.load(world["root"] / "tiny.npy")[row]
    monkeypatch.setattr(phrases, "embed_phrases", lambda given, meta: vector[None])  # tiny has no model
    bits = open_page(app, "bits").dataframe[0].value.set_index("bit")
    at = open_page(app, "concepts")
    at.radio(key="lookup_mode").set_value("any phrase").run()
    at.text_input(key="phrase").set_value("a heart finding, typed").run()
    assert not at.exception and not at.error
    table = at.dataframe[0]
    active = table.value
    assert len(active) and "coherence" not in active
    expected = bits.loc[active["bit"]]
    np.testing.assert_array_equal(active["corrected_coherence"], expected["corrected_coherence"])
    assert shown(table)["q_value"].tolist() == [format_q(q) for q in expected["q_value"]]


def test_concepts_search_shows_the_concepts_bits(app):
    at = open_page(app, "concepts")
    at.text_input(key="concept_query").set_value("heart finding 1").run()
    assert not at.exception
    assert at.subheader[0].value.startswith("heart finding 1")
    bits = at.dataframe[0].value
    assert {"bit", "label"} <= set(bits.columns)
    assert len(at.dataframe[1].value) == 10


def test_concepts_phrase_box_on_a_dataset_without_a_model_says_so(app):
    at = open_page(app, "concepts")
    at.radio(key="lookup_mode").set_value("any phrase").run()
    at.text_input(key="phrase").set_value("recurrent febrile seizures in infancy").run()
    assert not at.exception
    assert [error.value for error in at.error] == [
        "dataset tiny was imported without a model, so a phrase cannot be placed among its concepts; "
        "look up its own concepts by name or id instead."
    ]


def test_concepts_rerun_reuses_the_concept_view(app, monkeypatch):
    from sparsebin.interpret import bits as interpret

    calls, real = [], interpret.concept_view
    monkeypatch.setattr(interpret, "concept_view", lambda *a, **kw: calls.append(a) or real(*a, **kw))
    at = open_page(app, "concepts")
    at.text_input(key="concept_query").set_value("heart finding 1").run()
    at.radio(key="concept_metric").set_value("hamming").run()
    computed = len(calls)
    at.run()
    at.run()
    assert len(calls) == computed <= 1 and at.subheader[0].value.startswith("heart finding 1")


def chart_traces(at: AppTest) -> list[dict]:
    return json.loads(at.get("plotly_chart")[0].proto.spec)["data"]


def plotted(values) -> np.ndarray:
    """A figure's array as plotly writes it: a list, or base64 bytes with a dtype."""
    if isinstance(values, dict):
        return np.frombuffer(base64.b64decode(values["bdata"]), dtype=values["dtype"])
    return np.asarray(values)


def test_map_colours_by_category_then_by_active_bits_then_one_bit(app, world):
    at = open_page(app, "map")
    assert [trace["name"] for trace in chart_traces(at)] == sorted(CATEGORIES)  # one legend entry per category
    at.radio(key="map_colour").set_value("active bits").run()
    assert not at.exception
    run_id = at.selectbox(key="map_run").value
    codes = runfolder.load_codes(Store(world["home"]).run_folder(run_id))
    (trace,) = chart_traces(at)
    assert np.array_equal(plotted(trace["marker"]["color"]), active_counts(codes))
    at.radio(key="map_colour").set_value("one bit").run()
    at.number_input(key="map_bit").set_value(9).run()
    assert not at.exception
    (trace,) = chart_traces(at)
    assert np.array_equal(plotted(trace["marker"]["color"]), unpack_bits(codes, 32)[:, 9])


def test_data_upload_of_a_bad_file_shows_the_library_message(app):
    at = open_page(app, "data")
    at.text_input(key="upload_name").set_value("broken")
    at.file_uploader(key="upload_embeddings").set_value(("bad.csv", b"a,b\n1,x\n", "text/csv"))
    at.button(key="upload_submit").click().run()
    assert len(at.error) == 1 and "bad.csv" in at.error[0].value


def test_data_upload_of_an_empty_npy_says_so_without_a_traceback_or_server_path(app, world):
    at = open_page(app, "data")
    at.text_input(key="upload_name").set_value("empty")
    at.file_uploader(key="upload_embeddings").set_value(("empty.npy", b"", "application/octet-stream"))
    at.button(key="upload_submit").click().run()
    assert not at.exception
    assert [error.value for error in at.error] == ["empty.npy: the file is empty (0 bytes)"]
    assert sorted(path.name for path in world["data"].iterdir()) == ["tiny"]  # nothing left behind


def test_data_upload_of_two_files_with_the_same_name(app, world):
    """An embeddings table and a labels table both called data.csv are each read as what they are."""
    rows = np.random.default_rng(3).normal(size=(5, 3))
    embeddings = pd.DataFrame(rows, columns=list("xyz")).to_csv(index=False).encode()
    labels = pd.DataFrame({"id": [f"U{i}" for i in range(5)], "name": list("abcde")}).to_csv(index=False).encode()
    at = open_page(app, "data")
    at.text_input(key="upload_name").set_value("twins")
    at.file_uploader(key="upload_embeddings").set_value(("data.csv", embeddings, "text/csv"))
    at.file_uploader(key="upload_labels").set_value(("data.csv", labels, "text/csv"))
    at.button(key="upload_submit").click().run()
    try:
        assert not at.error, [error.value for error in at.error]
        assert "Imported data.csv as dataset twins (5 concepts)." in [success.value for success in at.success]
        assert str(world["data"]) not in texts(at)  # no server path on the page
        at.button(key="upload_submit").click().run()  # the same name again, without Replace
        assert any("a dataset named 'twins' already exists" in error.value for error in at.error)
    finally:
        import shutil

        shutil.rmtree(world["data"] / "twins", ignore_errors=True)


def test_first_start_without_data_builds_hpo_and_says_so(tmp_path, monkeypatch):
    import os

    from sparsebin import startup
    from sparsebin.datasets.status import write_status

    started, priorities = [], []

    def fake_start_build(name, data_dir=None, niceness=10):  # records the call instead of spawning a build process
        started.append(name)
        priorities.append(niceness)
        write_status(name, data_dir, state="running", done=5, total=10, pid=os.getpid())

    monkeypatch.setenv("SPARSEBIN_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SPARSEBIN_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("SPARSEBIN_NO_WORKER", "1")
    monkeypatch.setattr(startup, "start_build", fake_start_build)  # app.py runs startup's check on each run
    monkeypatch.setitem(startup._chain, "started", False)  # forget any chain an earlier app run began
    at = AppTest.from_file("../app.py", default_timeout=60)
    at.run()
    assert not at.exception
    assert started == ["hpo"]
    assert "First start: building the built-in datasets" in texts(at)
    assert "Building hpo: 5 of 10 concepts embedded" in [bar.proto.text for bar in at.get("progress")]
    np.save(tmp_path / "hpo.npy", np.eye(4, dtype=np.float32))  # hpo's build "finishes"
    import_dataset(tmp_path / "hpo.npy", name="hpo")
    for _ in range(2):  # fresh sessions, as a browser reload would be
        AppTest.from_file("../app.py", default_timeout=60).run()
    assert started == ["hpo", "icd10cm"]  # the chain continues once
    assert priorities == [0, 10]  # the first build at full priority (nothing trains yet), icd10cm in the background


def test_the_server_start_begins_the_first_build_before_any_page_is_opened(tmp_path, monkeypatch):
    import asyncio
    import concurrent.futures
    from pathlib import Path

    from streamlit.web.server.app_discovery import discover_asgi_app

    from sparsebin import startup

    started = []
    monkeypatch.setenv("SPARSEBIN_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SPARSEBIN_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("SPARSEBIN_NO_WORKER", "1")
    monkeypatch.setattr(startup, "start_build", lambda name, niceness=10: started.append((name, niceness)))
    monkeypatch.setitem(startup._chain, "started", False)
    # `streamlit run app.py` serves app.py's st.App (ASGI mode) when it finds one, and runs its lifespan at start.
    assert discover_asgi_app(Path(__file__).resolve().parent.parent / "app.py").import_string == "app:app"

    async def serve_briefly():
        async with startup.server_lifespan(None):
            assert started == [("hpo", 0)]  # under way while the server starts, before any page view

    # In a thread of its own: earlier browser tests can leave an event loop running on this one.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, serve_briefly()).result()


def test_home_says_a_worker_is_starting_while_its_lock_is_held_before_it_registers(tmp_path, monkeypatch):
    import fcntl

    monkeypatch.setenv("SPARSEBIN_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SPARSEBIN_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("SPARSEBIN_NO_WORKER", "1")
    np.save(tmp_path / "tiny.npy", np.eye(8, dtype=np.float32))
    import_dataset(tmp_path / "tiny.npy", name="tiny")
    (tmp_path / "home").mkdir(parents=True, exist_ok=True)
    at = AppTest.from_file("../app.py", default_timeout=60)
    at.run()
    assert any("No worker is running" in warning.value for warning in at.warning)
    with open(tmp_path / "home" / "worker-cpu.lock", "a+") as lock:  # what ensure_worker holds for a worker it started
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        lock.write(str(os.getpid()))
        lock.flush()
        at = AppTest.from_file("../app.py", default_timeout=60)
        at.run()
    assert not at.exception
    assert "A worker is starting; it takes the queued runs once it is up." in [info.value for info in at.info]
    assert not any("No worker is running" in warning.value for warning in at.warning)


def test_home_shows_the_ray_dispatcher_and_where_each_running_job_trains(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARSEBIN_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SPARSEBIN_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("SPARSEBIN_NO_WORKER", "1")
    np.save(tmp_path / "tiny.npy", np.random.default_rng(0).standard_normal((100, 8)).astype(np.float32))
    import_dataset(tmp_path / "tiny.npy", name="tiny")
    store = Store()
    config = TrainConfig(n_bits=16, k=2, epochs=5, batch_size=16, device="cpu")
    placed = store.submit("tiny", config, label="on gpu-node")
    store.submit("tiny", config, label="waiting", again=True)  # the same run, queued again on purpose
    host = socket.gethostname()
    name = f"{host}:{os.getpid()}"  # this process stands in for a live dispatcher
    store.register_worker(name, os.getpid(), host, "ray", kind="ray-dispatcher", address="10.0.0.5:6379")
    store.claim(name), store.claim(name)
    store.place(placed.id, name, "gpu-node-3", "cuda:1", 4242)
    store.record_progress(placed.id, placed.run_id, [], {"epoch": 2, "step": 9, "total_steps": 30})
    at = AppTest.from_file("../app.py", default_timeout=60)
    at.run()
    assert not at.exception, at.exception
    assert f"Ray dispatcher alive ({name}) on cluster **10.0.0.5:6379**" in texts(at)
    running = next(frame.value for frame in at.dataframe if "node" in frame.value.columns)
    rows = running.set_index("label")
    assert rows.loc["on gpu-node", ["node", "device", "epoch"]].tolist() == ["gpu-node-3", "cuda:1", "2/5"]
    assert rows.loc["waiting", ["node", "device", "epoch"]].tolist() == ["waiting for room", "", "0/5"]


def test_compare_shows_the_figures_in_the_reports_groups_and_the_tables_pooled_over_seeds(app, world):
    at = open_page(app, "compare")
    at.multiselect(key="compare_runs").set_value(list(world["runs"]["run_id"])).run()
    shown, loss, every = (frame.value for frame in at.dataframe)  # the runs; Tables 1 and "every setting"
    groups = list(dict.fromkeys(shown.index.get_level_values(0)))
    assert groups[:2] == ["settings", "reconstruction"] and groups[-1] == "convergence"
    for group in ("sparsity alignment", "interpretability", "training stability", "bit health", "storage"):
        assert group in groups
    health = shown.xs("bit health", level=0).index
    assert "silent by chance (held-out, expected for these bit sizes)" in health  # beside the silent count
    assert list(loss[("", "loss terms")]) == ["cosine (both terms)", "MSE (mean over entries) (both terms)"]
    assert list(dict.fromkeys(group for group, _ in loss.columns))[1:4] == [
        "reconstruction",
        "sparsity alignment",
        "interpretability",
    ]
    assert ("bit health", "silent beyond chance (held-out)") in every.columns
    assert "No N x K sweep among these runs" in texts(at)
    titles = [json.loads(chart.proto.spec)["layout"]["title"]["text"] for chart in at.get("plotly_chart")]
    assert "loss per epoch (mean over seeds, band: ± sd)" in titles


def test_compare_queues_only_runs_that_no_run_held_already_is(app, world):
    store = Store(world["home"])
    runs = world["runs"]
    cosine = runs.loc[runs["label"] == "cosine run"].iloc[0]
    held = store.job(int(cosine["job_id"])).config
    store.submit("tiny", held.replace(rounding="none"), label="queued, not picked")  # what Question 3 would plan
    try:
        at = open_page(app, "compare")
        at.multiselect(key="compare_runs").set_value([cosine["run_id"]]).run()
        at.button(key="queue_needed").click().run()
        assert not at.error, [error.value for error in at.error]  # nothing planned repeats a held run
        queued = [job for job in store.jobs() if job.status.name == "QUEUED"]
        assert [job.label for job in queued].count("queued, not picked") == 1
        planned = {(job.config.rounding, job.config.reconstruction_distance) for job in queued}
        assert ("stochastic", "cosine") in planned and ("cosine", "mse") not in planned
        loss = [job for job in queued if job.config.loss == "mse" and job.config.rec_loss is None]
        assert loss == []  # both MSE (per entry) is the mse run, picked or not
    finally:
        for job in store.jobs():
            if job.status.name == "QUEUED":
                store.cancel(job.id)


def test_train_queues_the_papers_n_by_k_sweep_at_its_setting(app, world):
    at = open_page(app, "train")
    at.number_input(key="epochs").set_value(2)
    at.selectbox(key="rounding").set_value("none")  # the sweep is at the paper's setting whatever the form says
    at.button(key="submit_sweep").click().run()
    assert any("Queued the paper's N x K sweep: 9 runs" in success.value for success in at.success), texts(at)
    store = Store(world["home"])
    queued = [job for job in store.jobs() if job.status.name == "QUEUED"]
    try:
        assert {(job.config.n_bits, job.config.k) for job in queued} == {
            (n, k) for n in (512, 1024, 2048) for k in (8, 16, 32)
        }
        assert {(job.config.rounding, job.config.epochs, job.config.seed) for job in queued} == {("ste", 2, 0)}
        at.button(key="submit_sweep").click().run()  # again: every run is already queued, none repeats
        assert "9 of the sweep's 9 runs are already queued or finished." in texts(at)
        assert len([job for job in store.jobs() if job.status.name == "QUEUED"]) == 9
    finally:
        for job in queued:
            store.cancel(job.id)


def test_compare_measures_the_yardsticks_in_the_background_then_draws_them_beside_the_runs(app, world):
    import shutil
    import time

    from sparsebin.search.measuring import measuring_status

    runs = world["runs"]
    cosine = runs.loc[runs["label"] == "cosine run", "run_id"].iloc[0]
    folder = world["data"] / "tiny"
    at = open_page(app, "compare")
    at.multiselect(key="compare_runs").set_value([cosine]).run()
    shown = texts(at)
    assert "The yardsticks of tiny (sign-PCA, ITQ, LSH, PQ, OPQ, scalar quantisation, two-stage) are not" in shown
    assert f"`python -m sparsebin frontier tiny --runs {cosine}`" in shown
    assert f"are not measured yet: `python -m sparsebin frontier tiny --runs {cosine}` measures them." in shown
    try:
        at.button(key="measure_yardsticks").click().run()
        deadline = time.monotonic() + 240
        while (measuring_status(folder) or {}).get("state") == "running" and time.monotonic() < deadline:
            time.sleep(1)
        status = measuring_status(folder)
        assert status["state"] == "finished", (status, Path(status["log"]).read_text())
        at.run()
        shown = texts(at)
        assert "Recall per byte: the picked runs beside the yardsticks (Question 4)" in shown
        assert "Each point: recall@10 of one code and search on the named run's held-out queries" in shown
        # 16 dimensions: PQ 16x8 is the one budget of BYTE_BUDGETS a code can spend; the run is 32 bits, K=4.
        assert "Against the strongest yardstick at no more than its " in shown
        assert "by float-query-to-code search its recall@10" in shown
        table = next(frame.value for frame in at.dataframe if "pareto" in frame.value.columns)
        assert {"PQ 16x8", "OPQ 16x8", "scalar quantiser int8", "float32, exact"} <= set(table["setting"])
        assert {"hamming", "jaccard", "asymmetric"} <= set(
            table.loc[table["setting"].str.startswith("cosine run"), "search"]
        )
    finally:
        shutil.rmtree(folder / "yardsticks", ignore_errors=True)  # the other tests see the data set unmeasured
