"""Answers to METHOD.md's six questions, in plain sentences with the numbers, from a set of runs.

The input is a runs table as `Store.list_runs` gives it (one row per run:
settings plus validation metrics). The answers only report what the selected
runs measured; when they cannot answer a question they say which runs would.
"""

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pandas as pd

if TYPE_CHECKING:  # bits.py imports torch, which answering questions does not need
    from sparsebin.interpret.bits import DepthAnalysis

QUESTIONS = (
    "Does the cosine alignment give a flexible active-count distribution centred near K?",
    "Does the cosine formulation avoid dead bits, and do MSE and L1 leave more?",
    "How much does the pass-through round matter (ste vs none vs hard)?",
    "What storage reduction comes at what reconstruction and retrieval cost?",
    "Do concepts deeper in the ontology activate more bits?",
    "Which concepts make a given bit fire, and does the bit mean one thing?",
)
ROUNDING_PEERS = ["n_bits", "k", "loss", "sparsity", "alpha"]  # runs compared for rounding share these
NEAR_K = 0.25  # "centred near K": the mean lies within 25 % of K
COHERENT = 0.5  # a bit "means one thing" when its coherence reaches this
MIN_ACTIVE = 5  # bits firing for fewer concepts are not judged for coherence


@dataclass(frozen=True)
class Answer:
    number: int
    question: str
    answer: str


def run_name(run: Mapping) -> str:
    """A run's label, or its settings when it has none: the one title every page uses.

    `run` is a runs-table row or any mapping with label, loss, rounding, sparsity, n_bits and k.
    """
    label = run.get("label")
    if isinstance(label, str) and label:
        return label
    return f"{run['loss']}/{run['rounding']}/{run['sparsity']} N={int(run['n_bits'])} K={int(run['k'])}"


def finished(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs that have metrics (a queued or failed run has NaN in recon_loss)."""
    return runs[runs["recon_loss"].notna()] if len(runs) else runs


def answer_questions(
    runs: pd.DataFrame,
    *,
    sign: dict | None = None,
    sign_equal: dict | None = None,
    depth: "DepthAnalysis | None" = None,
    bits: pd.DataFrame | None = None,
    sign_run: str | None = None,
) -> list[Answer]:
    """All six answers. `sign` is one run's sign-baseline metrics (one bit per
    dimension), `sign_equal` the same baseline cut to that run's storage and
    `sign_run` that run's name; `depth` a `depth_analysis` result and `bits` a
    `bit_table`, each for the run they describe."""
    runs = finished(runs)
    texts = (
        answer_flexibility(runs),
        answer_dead_bits(runs),
        answer_rounding(runs),
        answer_storage(runs, sign, sign_equal, sign_run),
        answer_depth(depth),
        answer_bit_meaning(bits),
    )
    return [
        Answer(number, question, text)
        for number, (question, text) in enumerate(zip(QUESTIONS, texts, strict=True), start=1)
    ]


def answer_flexibility(runs: pd.DataFrame) -> str:
    aligned = runs[(runs["sparsity"] == "align") & (runs["loss"] == "cosine")] if len(runs) else runs
    if not len(aligned):
        return "No finished run with the cosine alignment (loss cosine, sparsity align) is selected."
    facts, flexible, near = [], 0, 0
    for _, run in aligned.iterrows():
        k, mean, std = int(run["k"]), float(run["active_mean"]), float(run["active_std"])
        flexible += std > 0
        near += abs(mean - k) <= NEAR_K * k
        facts.append(f"{run_name(run)} has {mean:.1f} ± {std:.1f} active bits for K={k}")
    total = len(aligned)
    verdict = "Yes" if flexible == near == total else "Partly" if flexible or near else "No"
    return (
        f"{verdict}: in {flexible} of {total} cosine-aligned runs the active count varies between concepts "
        f"(std > 0) and in {near} of {total} its mean lies within {NEAR_K:.0%} of K. " + "; ".join(facts) + "."
    )


def answer_dead_bits(runs: pd.DataFrame) -> str:
    """Dead bits by loss among aligned runs with the paper's pass-through round.

    The rounding ablations collapse on their own (most bits die whatever the
    loss), so counting them here would blur the comparison of losses.
    """
    aligned = runs[(runs["sparsity"] == "align") & (runs["rounding"] == "ste")] if len(runs) else runs
    if not len(aligned):
        return "No finished run with the alignment term (sparsity align) and the pass-through round is selected."
    share = aligned.assign(dead_share=aligned["dead_bits"] / aligned["n_bits"])
    by_loss = share.groupby("loss").agg(dead_share=("dead_share", "mean"))
    facts = []
    for loss, group in share.groupby("loss"):
        counts = ", ".join(f"{run.dead_bits:.0f} of {run.n_bits:.0f}" for run in group.itertuples())
        facts.append(f"{loss} leaves {by_loss.loc[loss, 'dead_share']:.1%} of its bits dead ({counts})")
    text = "In the selected aligned runs with the pass-through round, " + "; ".join(facts) + "."
    if "cosine" not in by_loss.index or len(by_loss) < 2:
        return text + " Select aligned runs with cosine and with mse or l1 to compare them."
    cosine = by_loss.loc["cosine", "dead_share"]
    others = by_loss.drop(index="cosine")
    more = [loss for loss, row in others.iterrows() if row.dead_share > cosine]
    fewer = [loss for loss, row in others.iterrows() if row.dead_share <= cosine]
    parts = []
    if more:
        parts.append(f"{' and '.join(more)} leave{'s' if len(more) == 1 else ''} more dead bits than cosine")
    if fewer:
        parts.append(f"{' and '.join(fewer)} leave{'s' if len(fewer) == 1 else ''} no more than cosine")
    return text + " So " + ", and ".join(parts) + "."


def answer_rounding(runs: pd.DataFrame) -> str:
    """Rounding compared only within runs that share every other setting; hard-topk ignores rounding."""
    candidates = runs[runs["sparsity"] != "hard-topk"] if len(runs) else runs
    peers = candidates.groupby(ROUNDING_PEERS, sort=False) if len(candidates) else []
    groups = [group for _, group in peers if group["rounding"].nunique() >= 2]
    if not groups:
        return (
            "Select finished runs that differ in rounding (ste, none, hard) and share N, K, loss, sparsity and "
            "alpha to compare them (hard-topk runs ignore rounding, so they are left out)."
        )
    return " ".join(compare_rounding(group) for group in groups)


def compare_rounding(group: pd.DataFrame) -> str:
    """One sentence for runs that differ only in rounding (and seed)."""
    first = group.iloc[0]
    setting = (
        f"{first['loss']}/{first['sparsity']} N={int(first['n_bits'])} K={int(first['k'])} alpha={first['alpha']:g}"
    )
    by_rounding = group.groupby("rounding").agg(recon=("recon_loss", "mean"), soft=("soft_recon_loss", "mean"))
    facts = []
    for rounding, row in by_rounding.iterrows():
        fact = f"{rounding}: recon loss {row.recon:.3f} on the hard bits"
        if rounding == "none":
            fact += f" against {row.soft:.3f} on the soft code it trained with (gap {row.recon - row.soft:+.3f})"
        facts.append(fact)
    best, worst = by_rounding["recon"].idxmin(), by_rounding["recon"].idxmax()
    return (
        f"At {setting}, " + "; ".join(facts) + f". {best} reconstructs best and {worst} worst "
        f"(a difference of {by_rounding.loc[worst, 'recon'] - by_rounding.loc[best, 'recon']:.3f})."
    )


def answer_storage(
    runs: pd.DataFrame, sign: dict | None, sign_equal: dict | None = None, sign_run: str | None = None
) -> str:
    """Storage against quality per run; the sign baselines come from `sign_run`, which the text names."""
    if not len(runs):
        return "No finished run is selected."
    facts = []
    for _, run in runs.sort_values("bits_index_list").iterrows():
        bits = float(run["bits_index_list"])
        facts.append(
            f"{run_name(run)} ({run['sparsity']}) stores {bits:.0f} bits per vector as a list of active indices "
            f"({int(run['n_bits'])} as a bitmap) at recon loss {run['recon_loss']:.3f} "
            f"and recall@10 {_number(run['recall_at_10_jaccard'])} (Jaccard)"
        )
    text = "; ".join(facts) + "."
    if sign:
        text += (
            f" The sign baseline stores {sign['bits_bitmap']} bits per vector "
            f"({sign['compression_bitmap']:.0f}x smaller than float32) with recall@10 "
            f"{_number(sign['recall_at_10_hamming'])} (Hamming)."
        )
    if sign_equal:
        text += (
            f" Cut to the storage of {sign_run or 'the run it was measured for'} "
            f"({sign_equal['bits_bitmap']} bits, the leading PCA components), "
            f"the sign baseline reaches recall@10 {_number(sign_equal['recall_at_10_hamming'])} (Hamming)."
        )
    missing = {"align", "hard-topk", "l1"} - set(runs["sparsity"])
    if missing:
        text += f" Add runs with sparsity {', '.join(sorted(missing))} at the same N to compare at equal storage."
    return text


def answer_depth(depth: "DepthAnalysis | None") -> str:
    if depth is None or not depth.spearman:
        return "Pick one finished run on an ontology dataset to relate active bits to concept depth."
    per_depth = depth.per_depth
    facts = []
    for source, rho in depth.spearman.items():
        if rho is None or math.isnan(rho):
            facts.append(f"for {source}, too few distinct depths or active counts to correlate")
            continue
        rows = per_depth[per_depth["source"] == source].sort_values("depth")
        p_value = depth.p_value.get(source, float("nan"))
        direction = "more" if rho > 0 else "fewer"
        strength = "hardly" if abs(rho) < 0.1 else "weakly" if abs(rho) < 0.3 else "clearly"
        fact = (
            f"for {source}, Spearman rho = {rho:.2f} (p = {p_value:.2g}): "
            f"deeper concepts {strength} activate {direction} bits"
        )
        if len(rows) >= 2:
            first, last = rows.iloc[0], rows.iloc[-1]
            fact += (
                f", {first['mean_active']:.1f} on average at depth {int(first['depth'])} "
                f"against {last['mean_active']:.1f} at depth {int(last['depth'])}"
            )
        facts.append(fact)
    return "In the picked run, " + "; ".join(facts) + "."


def answer_bit_meaning(bits: pd.DataFrame | None) -> str:
    if bits is None or not len(bits):
        return (
            "Pick one finished run to see how coherent its bits are; open a bit on the Bits page to see its concepts."
        )
    live = bits[bits["n_active"] > 0]
    if not len(live):
        return "The picked run has no live bits."
    judged = live[live["n_active"] >= MIN_ACTIVE]  # one or two concepts always look coherent
    if not len(judged):
        return f"None of the picked run's {len(live)} live bits fires for {MIN_ACTIVE} concepts or more."
    if judged["coherence"].isna().all():  # one category: precision above chance has no chance to beat
        return (
            f"Every concept of the picked run's dataset is in one category, so coherence is undefined for its "
            f"{len(judged)} bits firing for {MIN_ACTIVE} concepts or more; open a bit on the Bits page to see "
            "its concepts and their shared ancestor instead."
        )
    coherent = judged[judged["coherence"] >= COHERENT]
    best = judged.sort_values(["coherence", "n_active"], ascending=False).iloc[0]
    return (
        f"Of the picked run's {len(live)} live bits, {len(judged)} fire for at least {MIN_ACTIVE} concepts; "
        f"{len(coherent)} of those ({len(coherent) / len(judged):.0%}) have coherence of at least {COHERENT} "
        f"(median {judged['coherence'].median():.2f}). The most coherent is bit {int(best['bit'])}, "
        f"'{best['label']}', firing for {int(best['n_active'])} concepts (coherence {best['coherence']:.2f}). "
        "Open a bit on the Bits page for the concepts that make it fire."
    )


def _number(value) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{float(value):.3f}"
