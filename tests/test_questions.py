"""METHOD.md's questions answered in sentences that carry the runs' numbers."""

import math

import pandas as pd

from sparsebin.config import TrainConfig
from sparsebin.interpret.bits import DepthAnalysis
from sparsebin.interpret.questions import answer_questions, answer_storage, run_name


def runs_table() -> pd.DataFrame:
    base = {
        "n_bits": 64,
        "k": 4,
        "alpha": 1.0,
        "label": "",
        "active_std": 1.5,
        "soft_recon_loss": 0.2,
        "bits_index_list": 24.0,
        "recall_at_10_jaccard": 0.4,
        "recall_at_10_hamming": 0.3,
    }
    rows = [
        {
            "loss": "cosine",
            "rounding": "ste",
            "sparsity": "align",
            "active_mean": 4.2,
            "dead_bits": 0,
            "recon_loss": 0.30,
        },
        {
            "loss": "mse",
            "rounding": "ste",
            "sparsity": "align",
            "active_mean": 4.0,
            "dead_bits": 16,
            "recon_loss": 0.40,
        },
        {
            "loss": "cosine",
            "rounding": "none",
            "sparsity": "align",
            "active_mean": 5.5,
            "dead_bits": 2,
            "recon_loss": 0.55,
        },
        {
            "loss": "cosine",
            "rounding": "ste",
            "sparsity": "hard-topk",
            "active_mean": 4.0,
            "dead_bits": 30,
            "recon_loss": 0.25,
        },
        {
            "loss": "cosine",
            "rounding": "ste",
            "sparsity": "align",
            "active_mean": math.nan,
            "dead_bits": math.nan,
            "recon_loss": math.nan,
        },  # queued: ignored
    ]
    return pd.DataFrame([base | row for row in rows])


def test_six_answers_with_numbers():
    answers = answer_questions(runs_table())
    assert [answer.number for answer in answers] == [1, 2, 3, 4, 5, 6]
    assert "4.2 ± 1.5 active bits for K=4" in answers[0].answer
    assert answers[0].answer.startswith("Partly")  # only 1 of 2 cosine-aligned runs is near K
    assert "mse leaves 25.0% of its bits dead (16 of 64)" in answers[1].answer
    assert "mse leaves more dead bits than cosine" in answers[1].answer
    assert "cosine leaves 0.0% of its bits dead (0 of 64)" in answers[1].answer  # the rounding=none run left out
    assert answers[2].answer.startswith("At cosine/align N=64 K=4 alpha=1, ")
    assert "ste: recon loss 0.300 on the hard bits" in answers[2].answer  # the mse and hard-topk runs left out
    assert "none: recon loss 0.550 on the hard bits against 0.200" in answers[2].answer
    assert "ste reconstructs best and none worst (a difference of 0.250)" in answers[2].answer
    assert "Pick one finished run" in answers[4].answer


def test_storage_names_the_sign_baseline_and_missing_baselines():
    sign = {"bits_bitmap": 384, "compression_bitmap": 32.0, "recall_at_10_hamming": 0.55}
    text = answer_storage(runs_table().iloc[:4], sign)
    assert "The sign baseline stores 384 bits per vector (32x smaller than float32) with recall@10 0.550" in text
    equal = {"bits_bitmap": 160, "recall_at_10_hamming": 0.31}
    text = answer_storage(runs_table().iloc[:4], sign, equal, sign_run="mse run")
    assert "Cut to the storage of mse run (160 bits, the leading PCA components)" in text
    assert "recall@10 0.310 (Hamming)" in text
    assert "Add runs with sparsity l1" in text


def test_depth_and_bit_answers():
    depth = DepthAnalysis(
        per_depth=pd.DataFrame({"source": ["hpo", "hpo"], "depth": [1, 5], "mean_active": [3.0, 6.0], "n": [10, 20]}),
        spearman={"hpo": 0.4},
        p_value={"hpo": 0.001},
    )
    bits = pd.DataFrame(
        {
            "bit": [0, 1, 2, 3],
            "n_active": [5, 0, 7, 2],
            "coherence": [0.9, 0.0, 0.2, 1.0],
            "label": ["Eye", "", "Mixed", "Tiny"],
        }
    )
    answers = answer_questions(runs_table(), depth=depth, bits=bits)
    assert "Spearman rho = 0.40 (p = 0.001): deeper concepts clearly activate more bits" in answers[4].answer
    assert "3.0 on average at depth 1 against 6.0 at depth 5" in answers[4].answer
    assert "Of the picked run's 3 live bits, 2 fire for at least 5 concepts; 1 of those (50%)" in answers[5].answer
    assert "bit 0, 'Eye'" in answers[5].answer


def test_rounding_compares_only_runs_sharing_the_other_settings():
    runs = runs_table().iloc[:4]
    topk_hard = runs.iloc[3].to_dict() | {"rounding": "hard", "recon_loss": 0.01}  # hard-topk ignores rounding
    wide_hard = runs.iloc[0].to_dict() | {"rounding": "hard", "n_bits": 128, "recon_loss": 0.02}  # another N
    answer = answer_questions(pd.concat([runs, pd.DataFrame([topk_hard, wide_hard])], ignore_index=True))[2].answer
    assert "hard" not in answer.replace("hard bits", "")
    assert "ste reconstructs best and none worst" in answer
    alone = answer_questions(pd.DataFrame([runs.iloc[0].to_dict(), wide_hard]))[2].answer
    assert alone.startswith("Select finished runs that differ in rounding") and "share N, K" in alone


def test_a_dataset_with_one_category_has_no_coherence_to_report():
    bits = pd.DataFrame({"bit": [0, 1], "n_active": [9, 6], "coherence": [math.nan, math.nan], "label": ["all"] * 2})
    answer = answer_questions(runs_table(), bits=bits)[5].answer
    assert "in one category, so coherence is undefined" in answer and "0%" not in answer


def test_a_run_without_a_label_is_named_by_its_settings():
    settings = TrainConfig(n_bits=64, k=4, loss="mse", rounding="none").to_dict()
    assert run_name({"label": "", **settings}) == "mse/none/align N=64 K=4"  # a job's config, as the job list has it
    assert run_name(runs_table().iloc[1]) == "mse/ste/align N=64 K=4"  # a runs-table row, as the pickers have it
    assert run_name({"label": "mine", **settings}) == "mine"


def test_no_runs_says_what_to_select():
    empty = runs_table().iloc[0:0]
    answers = answer_questions(empty)
    assert "No finished run with the cosine alignment" in answers[0].answer
    assert "Select finished runs that differ in rounding" in answers[2].answer


def test_depth_answer_skips_a_source_without_a_correlation():
    depth = DepthAnalysis(
        per_depth=pd.DataFrame(columns=["source", "depth", "mean_active", "n"]),
        spearman={"user": math.nan},
        p_value={"user": math.nan},
    )
    answer = answer_questions(runs_table(), depth=depth)[4].answer
    assert "for user, too few distinct depths or active counts to correlate" in answer
