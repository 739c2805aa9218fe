"""METHOD.md's questions answered from run tables built to tempt each mistake a careless comparison makes."""

import math
from dataclasses import replace

import pandas as pd
import pytest

from sparsebin.config import TrainConfig, preset_config
from sparsebin.errors import ConfigError
from sparsebin.interpret.bits import DepthAnalysis
from sparsebin.interpret.comparison import comparison_key, controlled_groups, run_name
from sparsebin.interpret.questions import answer_questions, answer_storage, default_run
from sparsebin.study import SWEEP, is_paper_setting, study_configs, sweep_configs

METRICS = {
    "recon_loss": 0.30,
    "fixed_topk_recon_loss": 0.35,
    "soft_recon_loss": 0.2,
    "active_mean": 4.2,
    "active_std": 1.5,
    "dead_bits": 0,
    "dense_bits": 0,
    "topk_overlap": 0.8,
    "recall_at_10_hamming": 0.3,
    "recall_at_10_jaccard": 0.4,
    "bits_index_list": 24.0,
    "dead_all_rows": 0,
    "silent_held_out": 0,
    "rare_bits": 0,
    "dense_all_rows": 0,
    "n_rows": 1000,
    "converged": True,
}


def run(seed=0, dataset="hpo", label="", **changes) -> dict:
    """One runs-table row: the paper's setting at N=64, K=4, changed by `changes`
    (settings and metrics alike), as `Store.list_runs` gives it."""
    settings = {key: value for key, value in changes.items() if key in TrainConfig().to_dict()}
    config = TrainConfig(n_bits=64, k=4, epochs=20, seed=seed).replace(**settings)
    metrics = {key: value for key, value in changes.items() if key not in settings}
    return (
        {"run_id": f"r{len(str(changes))}-{seed}-{id(changes)}", "dataset": dataset, "label": label, "status": "done"}
        | config.to_dict()
        | {
            "reconstruction_distance": config.reconstruction_distance,
            "alignment_distance": config.alignment_distance,
        }
        | METRICS
        | metrics
    )


def table(*rows) -> pd.DataFrame:
    return pd.DataFrame(list(rows))


def test_the_comparison_key_holds_every_setting_that_changes_a_result():
    key = comparison_key()
    for setting in ("dataset", "n_rows", "n_bits", "k", "alpha", "rounding", "sparsity", "init", "normalize"):
        assert setting in key
    for setting in ("lr", "batch_size", "epochs", "val_fraction", "split_seed"):
        assert setting in key
    assert "reconstruction_distance" in key and "alignment_distance" in key  # loss with both overrides
    assert "seed" not in key and "device" not in key


def test_rounding_is_never_read_from_runs_that_differ_in_anything_else():
    tempting = table(
        run(recon_loss=0.30),
        run(rounding="none", epochs=5, recon_loss=0.60),  # fewer epochs
        run(rounding="hard", dataset="icd10cm", recon_loss=0.70),  # another dataset
        run(rounding="none", init="sparse", recon_loss=0.65),  # another init
        run(rounding="hard", sparsity_loss="mse", recon_loss=0.80),  # an override
        run(rounding="none", n_rows=999, recon_loss=0.61),  # another row count
    )
    assert controlled_groups(tempting, ["rounding"]) == []
    answer = answer_questions(tempting)[2]
    assert answer.answer.startswith("Select finished runs that differ only in rounding")
    queued = {(plan.dataset, plan.config.rounding, plan.config.epochs, plan.config.init) for plan in answer.to_queue}
    assert queued == {("hpo", rounding, 20, "default") for rounding in ("none", "hard", "stochastic")}
    assert "queue 3 run(s): rounding hard, rounding none, rounding stochastic (seed 0)" in answer.answer


def test_seeds_pool_into_mean_sd_and_n_and_a_gap_within_their_spread_is_no_difference():
    runs = table(
        run(seed=0, recon_loss=0.300, soft_recon_loss=0.2),
        run(seed=1, recon_loss=0.310, soft_recon_loss=0.2),
        run(seed=0, rounding="none", recon_loss=0.302, soft_recon_loss=0.1),
        run(seed=1, rounding="none", recon_loss=0.309, soft_recon_loss=0.1),
        run(seed=0, rounding="hard", recon_loss=0.500),
        run(seed=1, rounding="hard", recon_loss=0.520),
    )
    text = answer_questions(runs)[2].answer
    assert "against rounding ste" in text
    recon = "recon loss on the hard bits (validation part)"
    assert (
        f"rounding none: {recon} 0.305 ± 0.005 (n=2) against 0.305 ± 0.007 (n=2), no difference beyond the seed" in text
    )
    assert f"rounding hard: {recon} 0.510 ± 0.014 (n=2) against 0.305 ± 0.007 (n=2), higher by 0.205" in text
    assert "best" not in text and "worst" not in text


def test_one_seed_gives_numbers_but_no_verdict():
    runs = table(run(recon_loss=0.300), run(rounding="none", recon_loss=0.301))
    text = answer_questions(runs)[2].answer
    assert "0.301 (n=1) against 0.300 (n=1) (spread unknown with one seed, no verdict)" in text


def test_dead_bits_compare_loss_distances_only_at_equal_settings_and_name_each_part():
    runs = table(
        run(seed=0, dead_all_rows=0, silent_held_out_excess=10),
        run(seed=1, dead_all_rows=2, silent_held_out_excess=12),
        run(seed=0, sparsity_loss="mse", dead_all_rows=30, silent_held_out_excess=50),
        run(seed=1, sparsity_loss="mse", dead_all_rows=34, silent_held_out_excess=52),
        run(seed=0, loss="mse", dead_all_rows=60, alpha=2.0),  # another alpha: not comparable
        run(seed=0, rounding="hard", sparsity_loss="l1", dead_all_rows=60),  # a rounding ablation
    )
    text = answer_questions(runs)[1].answer
    assert "against cosine (both terms)" in text
    assert (
        "alignment MSE (mean over entries), reconstruction cosine: dead (all rows) 32.0 ± 2.8 (n=2) "
        "against 1.0 ± 1.4 (n=2), higher by 31.0" in text
    )
    beyond = "bits silent on held-out rows beyond chance (the count less the one expected for bits of the same sizes)"
    assert f"; {beyond} 51.0 ± 1.4 (n=2) against 11.0 ± 1.4 (n=2), higher by 40.0" in text
    assert "alpha 1 " in text and "60" not in text


def test_unconverged_runs_are_marked_and_question_one_draws_no_conclusion_from_them():
    runs = table(run(converged=False, active_mean=40.0), run(seed=1, converged=False, active_mean=38.0))
    answer = answer_questions(runs)[0]
    assert answer.answer.startswith("Not answered")
    assert "none of the 2 run(s) converged" in answer.answer and "no conclusion is drawn" in answer.answer
    assert {(plan.config.epochs, plan.config.seed) for plan in answer.to_queue} == {(40, 0), (40, 1)}
    mixed = table(
        run(active_mean=4.1, active_std=1.2),
        run(seed=1, active_mean=4.3, active_std=1.0),
        run(seed=2, converged=False, active_mean=30.0),
    )
    text = answer_questions(mixed)[0].answer
    assert text.startswith("Yes") and "4.2 ± 0.1 (n=2) active bits per concept for K=4" in text
    assert "1 run(s) left out as not converged" in text
    rounding = table(run(), run(rounding="none", converged=False))
    assert "rounding none [1 of 1 NOT converged]: recon loss" in answer_questions(rounding)[2].answer


def test_question_one_leaves_out_ablations_and_overrides():
    runs = table(run(sparsity_loss="mse", active_mean=4.0), run(rounding="none", active_mean=4.0))
    answer = answer_questions(runs)[0]
    assert answer.answer.startswith("No finished run with the paper's setting")
    assert [plan.config.sparsity_loss for plan in answer.to_queue] == [None]


def test_questions_four_to_six_describe_the_named_run_by_default_the_paper_setting():
    runs = table(run(sparsity="l1", label="l1 run"), run(label="paper run", seed=1), run(label="paper 0"))
    named, why = default_run(runs)
    assert named["label"] == "paper 0" and "paper's setting" in why  # converged, lowest seed
    remedied = table(run(label="centred", centre="mean"), run(label="plain", seed=5))
    assert default_run(remedied)[0]["label"] == "plain"  # a run with a remedy on is not the paper's setting
    unconverged = table(run(label="moving", converged=False), run(label="settled", seed=3))
    assert default_run(unconverged)[0]["label"] == "settled"
    sign = {"bits_bitmap": 16, "compression_bitmap": 32.0, "recall_at_10_hamming": 0.55}
    equal = {"bits_bitmap": 16, "recall_at_10_hamming": 0.31, "model_bits": 24, "capped_at_d": True}
    text = answer_storage(runs, sign, equal, named=named).answer
    assert text.startswith("paper 0 stores 24 bits per vector")
    assert "sign bits cannot spend N bits, so they are compared at D" in text
    assert "Elias-Fano coded, the codes take" not in text  # the row has no Elias-Fano size
    assert "The sign baseline of paper 0 stores 16 bits per vector" in text


def test_storage_names_the_elias_fano_size_when_the_run_has_one():
    coded = table(run(label="coded", bits_elias_fano=20.0))
    text = answer_storage(coded, None, named=coded.iloc[0]).answer
    assert text.startswith("coded stores 24 bits per vector as a list of active indices (20 Elias-Fano coded, 64 as")
    assert "recall@10 0.400 (Jaccard), 0.300 (Hamming)" in text  # the sign baseline's figure is by Hamming
    equal = {"bits_bitmap": 16, "recall_at_10_hamming": 0.31, "model_bits": 24, "capped_at_d": True}
    text = answer_storage(coded, None, equal, named=coded.iloc[0]).answer
    assert "take 24 bits as a plain index list, more than the 16 dimensions" in text
    assert "Elias-Fano coded, the codes take" not in text  # 20 bits: still more than the sign bits' 16
    fits = table(run(label="fits", bits_elias_fano=16.0))
    text = answer_storage(fits, None, equal, named=fits.iloc[0]).answer
    assert "Elias-Fano coded, the codes take 16 bits, no more than the sign bits." in text
    older = table(run(label="older", bits_elias_fano=float("nan")))  # measured before the metric existed
    assert "(64 as a bitmap)" in answer_storage(older, None, named=older.iloc[0]).answer


def test_storage_compares_sparsity_schemes_at_equal_settings():
    runs = table(run(), run(sparsity="hard-topk", bits_index_list=24.0, recall_at_10_jaccard=0.5))
    text = answer_storage(runs, None).answer
    assert "sparsity hard-topk: bits per vector as an index list 24 (n=1)" in text
    assert "recall@10 (Jaccard, held-out queries against every row) 0.500 (n=1) against 0.400 (n=1)" in text


def test_depth_answer_counts_concepts_per_depth_and_names_its_assumption():
    depth = DepthAnalysis(
        per_depth=pd.DataFrame({"source": ["hpo", "hpo"], "depth": [1, 5], "mean_active": [3.0, 6.0], "n": [10, 20]}),
        spearman={"hpo": 0.4},
        p_value={"hpo": 0.001},
    )
    text = answer_questions(table(run()), depth=depth, sign_run="paper run")[4].answer
    assert "Spearman rho = 0.40 (p = 0.001): deeper concepts clearly activate more bits" in text
    assert "(concepts: 10 at depth 1, 20 at depth 5)" in text
    assert "treats concepts as independent" in text and text.startswith("In paper run")
    tiny_p = replace(depth, p_value={"hpo": 0.0})  # a p-value that underflowed reads as a bound, not as 0
    assert "(p < 1e-10)" in answer_questions(table(run()), depth=tiny_p, sign_run="paper run")[4].answer


def test_bit_answer_uses_the_chance_corrected_coherence():
    bits = pd.DataFrame(
        {
            "bit": [0, 1, 2, 3],
            "n_active": [50, 0, 7, 2],
            "coherence": [0.9, math.nan, 0.5, 1.0],
            "corrected_coherence": [0.85, math.nan, 0.2, 0.6],
            "q_value": [1e-6, math.nan, 0.2, 0.5],
            "precision": [0.92, math.nan, 0.6, 1.0],
            "category_size": [400, 0, 300, 20],
            "label": ["Abnormal eye, 90 % of 50", None, "Mixed", "Tiny"],
            "category": ["Eye", None, "Skin", "Ear"],
        }
    )
    text = answer_questions(table(run()), bits=bits)[5].answer
    assert "Of the picked run's 3 live bits, 2 fire for at least 5 concepts; 1 of those (50%)" in text
    assert "bit 0, 'Abnormal eye, 90 % of 50' (category Eye)" in text
    assert "corrected 0.85, raw precision 0.92, category of 400 concepts" in text


def test_a_dataset_with_one_category_has_no_coherence_to_report():
    bits = pd.DataFrame({"bit": [0, 1], "n_active": [9, 6], "coherence": [math.nan, math.nan], "label": ["all"] * 2})
    answer = answer_questions(table(run()), bits=bits)[5].answer
    assert "in one category, so coherence is undefined" in answer and "0%" not in answer


def test_a_run_without_a_label_is_named_by_its_settings():
    settings = TrainConfig(n_bits=64, k=4, loss="mse", rounding="none").to_dict()
    assert run_name({"label": "", **settings}) == "mse/none/align N=64 K=4"
    assert run_name({"label": "mine", **settings}) == "mine"
    rigid = TrainConfig(n_bits=64, k=4, sparsity="hard-topk")
    assert run_name({"label": "", **rigid.to_dict()}) == "cosine/ste/hard-topk N=64 K=4"
    recommended = preset_config("recommended", n_bits=64, k=4)
    assert run_name({"label": "", **recommended.to_dict()}) == "recommended N=64 K=4"
    centred = TrainConfig(n_bits=64, k=4, centre="mean", rate_control="balance", rate_weight=0.3)
    assert run_name({"label": "", **centred.to_dict()}) == (
        "cosine/ste/align centre=mean rate_control=balance rate_weight=0.3 N=64 K=4"
    )
    older = {"label": "", "loss": "cosine", "rounding": "ste", "sparsity": "align", "n_bits": 64, "k": 4}
    assert run_name(older) == "cosine/ste/align N=64 K=4"  # a table from before the remedies


def test_no_runs_says_what_to_select():
    answers = answer_questions(table(run()).iloc[0:0])
    assert "No finished run with the paper's setting" in answers[0].answer
    assert "Select finished runs that differ only in rounding" in answers[2].answer


def test_the_study_queues_every_setting_times_the_seeds():
    pairs = study_configs(TrainConfig(n_bits=128, k=8, epochs=7, rounding="hard", init="sparse"), seeds=2)
    # The whole plan: the paper's setting, ten loss rows (alignment; reconstruction and both, each per entry
    # and scale-fair) and three roundings (none, hard, stochastic), for each of the two seeds.
    assert len(pairs) == 14 * 2
    configs = {label: config for label, config in pairs}
    paper = configs["paper setting seed=0"]
    assert (paper.rounding, paper.init) == ("ste", "default")  # the paper's setting, whatever the form said
    assert configs["reconstruction MSE (scale-fair) seed=1"].rec_loss == "mse_sum"
    assert configs["both L1 (scale-fair) seed=0"].reconstruction_distance == "l1_sum"
    assert configs["both L1 (scale-fair) seed=0"].alignment_distance == "l1"
    for name, distance in (("MSE", "mse"), ("L1", "l1")):
        per_entry = configs[f"reconstruction {name} (per entry) seed=0"]
        assert (per_entry.reconstruction_distance, per_entry.alignment_distance) == (distance, "cosine")
        both = configs[f"both {name} (per entry) seed=1"]
        assert (both.reconstruction_distance, both.alignment_distance) == (distance, distance)
    assert configs["rounding stochastic seed=1"].rounding == "stochastic"
    assert {config.n_bits for config in configs.values()} == {128} and {c.seed for c in configs.values()} == {0, 1}
    with pytest.raises(ValueError, match="at least one seed"):
        study_configs(TrainConfig(), seeds=0)


def test_depth_answer_skips_a_source_without_a_correlation():
    depth = DepthAnalysis(
        per_depth=pd.DataFrame({"source": ["user"], "depth": [2], "mean_active": [4.0], "n": [7]}),
        spearman={"user": math.nan},
        p_value={"user": math.nan},
    )
    answer = answer_questions(table(run()), depth=depth)[4].answer
    assert "for user, too few distinct depths or active counts to correlate (concepts: 7 at depth 2)" in answer


RECON = "recon loss on the hard bits (validation part)"
BEYOND = "bits silent on held-out rows beyond chance (the count less the one expected for bits of the same sizes)"


def test_runs_identical_in_every_setting_and_seed_are_one_replicate_when_pooled():
    runs = table(
        run(seed=0, recon_loss=0.30),
        run(seed=0, recon_loss=0.32),  # queued again: the same replicate, not a second seed
        run(seed=0, rounding="none", recon_loss=0.50),
        run(seed=1, rounding="none", recon_loss=0.52),
    )
    text = answer_questions(runs)[2].answer
    assert f"rounding none: {RECON} 0.510 ± 0.014 (n=2) against 0.310 (n=1) (spread unknown with one seed" in text


def test_the_runs_to_queue_are_none_that_any_held_run_already_is():
    picked = table(run(label="paper run"))
    held = table(
        run(label="paper run"),
        run(rounding="none", label="not picked") | {"status": "done"},
        run(rounding="hard", label="still queued") | {"status": "queued", "recon_loss": math.nan, "n_rows": math.nan},
        run(rounding="stochastic", label="failed") | {"status": "failed", "recon_loss": math.nan},
    )
    alone = {plan.config.rounding for plan in answer_questions(picked)[2].to_queue}
    assert alone == {"none", "hard", "stochastic"}
    planned = answer_questions(picked, known=held)[2].to_queue
    assert [plan.config.rounding for plan in planned] == ["stochastic"]  # a failed run holds nothing back


def test_silent_on_held_out_is_compared_by_its_excess_over_the_count_expected_by_chance():
    # Rounding none leaves more bits silent on held-out rows, but no more than its smaller bits leave by chance.
    runs = table(
        *(run(seed=s, silent_held_out=10 + s, silent_held_out_expected=8.0 + s) for s in (0, 1)),
        *(run(seed=s, rounding="none", silent_held_out=30 + s, silent_held_out_expected=28.0 + s) for s in (0, 1)),
        *(run(seed=s, sparsity_loss="l1", silent_held_out=40 + s, silent_held_out_expected=20.0) for s in (0, 1)),
    )
    runs["silent_held_out_excess"] = runs["silent_held_out"] - runs["silent_held_out_expected"]
    rounding = answer_questions(runs)[2].answer
    assert f"{BEYOND} 2.0 ± 0.0 (n=2) against 2.0 ± 0.0 (n=2), no difference beyond the seed spread" in rounding
    assert "silent (held-out)" not in rounding  # the raw count is not what is compared
    loss = answer_questions(runs)[1].answer
    assert f"{BEYOND} 20.5 ± 0.7 (n=2) against 2.0 ± 0.0 (n=2), higher by 18.5" in loss
    older = table(run(), run(rounding="none"))  # measured before the expected count existed
    assert f"{BEYOND} not measured against not measured (no verdict)" in answer_questions(older)[2].answer


def test_the_paper_setting_requires_the_paper_initialisation():
    runs = table(run(label="sparse start", init="sparse"), run(label="dense start", seed=4))
    assert list(is_paper_setting(runs)) == [False, True]
    assert default_run(runs)[0]["label"] == "dense start"
    only_sparse = table(run(label="sparse start", init="sparse"))
    answer = answer_questions(only_sparse)[0]
    assert answer.answer.startswith("No finished run with the paper's setting")
    assert [plan.config.init for plan in answer.to_queue] == ["default"]


def test_the_paper_n_by_k_sweep_at_the_paper_setting_one_seed_by_default():
    base = TrainConfig(epochs=7, rounding="none", loss="mse", init="sparse")
    pairs = sweep_configs(base)
    assert len(pairs) == len(SWEEP["n_bits"]) * len(SWEEP["k"]) == 9
    cells = {(config.n_bits, config.k) for _, config in pairs}
    assert cells == {(n, k) for n in (512, 1024, 2048) for k in (8, 16, 32)}
    for label, config in pairs:
        assert label == f"N x K sweep N={config.n_bits} K={config.k} seed=0"
        assert (config.loss, config.rounding, config.init, config.epochs, config.seed) == (
            "cosine",
            "ste",
            "default",
            7,
            0,
        )
    assert {config.seed for _, config in sweep_configs(base, seeds=2)} == {0, 1}
    with pytest.raises(ConfigError, match="the N x K sweep's cell N=16 K=16 would be refused: K must be smaller"):
        sweep_configs(base, n_bits=(16, 64), ks=(4, 16))
    with pytest.raises(ConfigError, match="at least one seed"):
        sweep_configs(base, seeds=0)


def yardstick(setting, search, size, recall, disk=0.0):
    """One frontier row of `search.yardsticks` (the columns Question 4 reads)."""
    storage = f"{size:g} B" if not disk else f"{size:g} B in memory + {disk:g} B on disk"
    code = setting.split(",")[0].split(" ")[0]
    return {"code": code, "setting": setting, "search": search, "bytes": size, "second_stage_bytes": disk}, {
        "storage": storage,
        "recall_at_10": recall,
    }


def frontier(*rows) -> pd.DataFrame:
    return pd.DataFrame([left | right for left, right in rows])


def test_storage_sets_the_named_run_against_the_best_yardstick_at_no_more_bytes():
    baselines = frontier(
        yardstick("ITQ, 384 bits", "hamming", 48, 0.74),
        yardstick("ITQ, 512 bits", "hamming", 64, 0.79),  # more bytes than the run's codes: out
        yardstick("sign-PCA, 384 bits", "jaccard", 48, 0.60),
        yardstick("OPQ 48x8", "asymmetric", 48, 0.84),
        yardstick("OPQ 24x8", "asymmetric", 24, 0.72),
        yardstick("PQ 96x8", "asymmetric", 96, 0.90),  # out
        yardstick("ITQ, 384 bits, top 100 by Hamming rescored with int8", "two-stage", 48, 0.97, 384),  # out
    )
    coded = table(
        run(
            label="preset",
            bits_elias_fano=384.0,  # 48 B as stored
            recall_at_10_hamming=0.65,
            recall_at_10_jaccard=0.62,
            recall_at_10_asymmetric=0.80,
        )
    )
    text = answer_storage(coded, None, named=coded.iloc[0], baselines=baselines).answer
    assert "Against the strongest yardstick at no more than its 48 B per vector (Elias-Fano coded)" in text
    assert (
        "by code-to-code search its recall@10 0.650 (hamming) trails ITQ, 384 bits (48 B, hamming: 0.740, -0.090)"
        in text
    )
    assert (
        "by float-query-to-code search its recall@10 0.800 (asymmetric) trails OPQ 48x8 "
        "(48 B, asymmetric: 0.840, -0.040)" in text
    )
    assert "top 100" not in text and "PQ 96x8" not in text and "512 bits" not in text
    # A run that finds more by float query than every baseline of its size beats it; at 24 B only OPQ 24x8 fits.
    small = table(run(label="small", bits_elias_fano=192.0, recall_at_10_hamming=0.5, recall_at_10_asymmetric=0.75))
    text = answer_storage(small, None, named=small.iloc[0], baselines=baselines).answer
    assert "(asymmetric) beats OPQ 24x8 (24 B, asymmetric: 0.720, +0.030)" in text
    assert "by code-to-code search its recall@10 0.500 (hamming) has no yardstick of at most 24 B to meet" in text


def test_storage_says_how_to_measure_the_yardsticks_when_they_are_not():
    coded = table(run(label="coded", bits_elias_fano=384.0))
    named = coded.iloc[0]
    text = answer_questions(coded, named=named)[3].answer
    assert f"are not measured yet: `python -m sparsebin frontier hpo --runs {named['run_id']}` measures them." in text
