"""Answers to METHOD.md's seven questions, in plain sentences with the numbers, from a set of runs.

The input is a runs table as `Store.list_runs` gives it (one row per run: every
setting, the validation metrics, bit health over all rows, convergence).

Rules every answer keeps (a reviewer's rules; `sparsebin.interpret.comparison`
holds the machinery):
- A question about a factor (loss distance, rounding, sparsity) compares only
  runs whose comparison key (`comparison_key`: every setting that can change a
  result) is the same but for that factor and the training seed.
- Runs that differ only in seed are pooled: mean ± sd and n over distinct seeds
  (runs identical in every setting and seed are one replicate).
- Bit health is judged against chance: "silent on held-out" is compared as its
  excess over the count expected by chance for bits of the same sizes.
- Two settings differ only when both have at least two seeds and their
  mean ± sd ranges do not overlap; otherwise the answer says "no difference
  beyond the seed spread" or "spread unknown (one seed)", never "best" and "worst".
- A run that did not converge is marked so wherever its numbers appear, and
  Question 1 draws no conclusion from it.
- Where no controlled comparison exists, the answer lists exactly which runs
  to queue (`Answer.to_queue`): none that any held run (`known`: picked or not,
  queued, running or finished) already is; the Compare page offers to queue them.
Questions 4 (sign baseline), 5 and 6 are about one run the user names
(`default_run` picks the paper's setting among the picked runs); Question 7
gives its numbers for every picked run (`sparsebin.interpret.hierarchy`) and
the named run's sign baseline.
"""

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pandas as pd

from sparsebin.health import CONVERGED_ACTIVE, CONVERGED_LOSS, HEALTH_COLUMNS, RARE_BELOW
from sparsebin.interpret.comparison import (
    Planned,
    comparison_key,
    contrast,
    controlled_groups,
    describe_setting,
    distances_text,
    finished,
    plan_variants,
    pool,
    run_name,
    with_settings,
)
from sparsebin.interpret.ontology import format_q
from sparsebin.study import LOSS_ABLATION, PAPER_SETTING, ROUNDING_ABLATION, is_paper_setting

if TYPE_CHECKING:  # bits.py imports torch, which answering questions does not need
    from sparsebin.interpret.bits import DepthAnalysis
    from sparsebin.interpret.hierarchy import Contrast, HierarchySummary, RunHierarchy

QUESTIONS = (
    "Does the cosine alignment give a flexible active-count distribution centred near K?",
    "Does the cosine formulation avoid dead bits, and do MSE and L1 leave more?",
    "How much does the pass-through round matter (ste vs none vs hard, and stochastic)?",
    "What storage reduction comes at what reconstruction and retrieval cost?",
    "Do concepts deeper in the ontology activate more bits?",
    "Which concepts make a given bit fire, and does the bit mean one thing?",
    "Do a concept's bits extend its parent's (the hierarchy, against chance)?",
)
NEAR_K = 0.25  # "centred near K": the mean lies within 25 % of K
SIGNIFICANT = 0.05  # a bit "means one thing" when its best category's FDR-corrected p-value is below this
MIN_ACTIVE = RARE_BELOW  # bits firing for fewer concepts are rare and not judged for coherence
SILENT_EXCESS = (
    "silent_held_out_excess",
    "bits silent on held-out rows beyond chance (the count less the one expected for bits of the same sizes)",
    1,
)


@dataclass(frozen=True)
class Answer:
    number: int
    question: str
    answer: str
    to_queue: tuple[Planned, ...] = ()  # runs that would let this question be answered (or answered better)


def converged_note(runs: pd.DataFrame) -> str:
    """ " (k of n not converged)" when some of the runs did not settle, else ""."""
    flags = runs["converged"].map(_flag)
    bad, unknown = int((flags == False).sum()), int(flags.isna().sum())  # noqa: E712
    notes = []
    if bad:
        notes.append(f"{bad} of {len(runs)} NOT converged")
    if unknown:
        notes.append(f"{unknown} of {len(runs)} of unknown convergence")
    return f" [{'; '.join(notes)}]" if notes else ""


def _flag(value):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return bool(value)


def queue_text(planned: tuple[Planned, ...]) -> str:
    if not planned:
        return ""
    names = sorted({plan.label.rsplit(" seed=", 1)[0] for plan in planned})
    seeds = sorted({plan.config.seed for plan in planned})
    return (
        f" To answer it, queue {len(planned)} run(s): {', '.join(names)} "
        f"(seed {', '.join(map(str, seeds))}), each otherwise identical to the reference run."
    )


def answer_questions(
    runs: pd.DataFrame,
    *,
    named: pd.Series | None = None,
    sign: dict | None = None,
    sign_equal: dict | None = None,
    depth: "DepthAnalysis | None" = None,
    bits: pd.DataFrame | None = None,
    sign_run: str | None = None,
    known: pd.DataFrame | None = None,
    hierarchy: "dict[str, RunHierarchy] | None" = None,
    baselines: pd.DataFrame | None = None,
) -> list[Answer]:
    """All seven answers. `named` is the run Questions 4-6 are about (its runs-table row); `sign`
    is its sign-baseline metrics (one bit per dimension), `sign_equal` the same baseline at
    its storage; `depth` a `depth_analysis` result and `bits` a `bit_table` of that run.
    `known` is every run held (any status; default: `runs`): a run to queue is never one of them.
    `hierarchy` maps run names to their `run_hierarchy` (Question 7; the named run's with its sign baseline).
    `baselines` is the frontier of the named run's yardsticks (`search.yardsticks`, measured with its split and
    queries); None when they are not measured."""
    runs = with_settings(finished(runs))
    known = held_runs(runs, known)
    if sign_run is None and named is not None:
        sign_run = run_name(named)
    answers = (
        answer_flexibility(runs, known),
        answer_dead_bits(runs, known),
        answer_rounding(runs, known),
        answer_storage(runs, sign, sign_equal, sign_run, named=named, known=known, baselines=baselines),
        answer_depth(depth, sign_run, (hierarchy or {}).get(sign_run)),
        answer_bit_meaning(bits, sign_run),
        answer_hierarchy(hierarchy, sign_run),
    )
    return [
        answer if isinstance(answer, Answer) else Answer(number, question, answer)
        for number, (question, answer) in enumerate(zip(QUESTIONS, answers, strict=True), start=1)
    ]


def held_runs(runs: pd.DataFrame, known: pd.DataFrame | None) -> pd.DataFrame:
    """The runs a plan must not repeat: the answered ones and every other run the queue holds (queued,
    running or done, as the queue refuses repeats of; a failed, cancelled or interrupted run holds nothing
    back)."""
    if known is None or not len(known):
        return runs
    known = known[known["status"].isin(("queued", "running", "done"))] if "status" in known else known
    return pd.concat([runs, with_settings(known)], ignore_index=True)


def default_run(runs: pd.DataFrame) -> tuple[pd.Series | None, str]:
    """The run Questions 4-6 describe when the user names none, and why it was chosen:
    the paper's setting among the picked runs (converged first, then the lowest seed)."""
    runs = with_settings(finished(runs))
    if not len(runs):
        return None, "no finished run is picked"
    paper = runs[is_paper_setting(runs)]
    if len(paper):
        order = paper.assign(_bad=paper["converged"].map(lambda v: _flag(v) is not True)).sort_values(
            ["_bad", "seed"], kind="stable"
        )
        return runs.loc[order.index[0]], "the paper's setting among the picked runs"
    return runs.iloc[0], "no picked run has the paper's setting, so the first picked run"


# -- the six questions ---------------------------------------------------------


def answer_flexibility(runs: pd.DataFrame, known: pd.DataFrame | None = None) -> Answer:
    number, question = 1, QUESTIONS[0]
    known = runs if known is None else known
    paper = runs[is_paper_setting(runs)] if len(runs) else runs
    if not len(paper):
        planned = plan_variants(runs.head(1), {"paper setting": PAPER_SETTING}, known) if len(runs) else ()
        text = "No finished run with the paper's setting (cosine in both terms, pass-through round, align) is picked."
        return Answer(number, question, text + queue_text(planned), planned)
    facts, planned = [], []
    verdicts = []
    for _, group in paper.groupby([c for c in comparison_key()], dropna=False, sort=False):
        first = group.iloc[0]
        k = int(first["k"])
        settled = group[group["converged"].map(_flag) == True]  # noqa: E712
        unsettled = group.drop(index=settled.index)
        setting = describe_setting(first, skip=("rounding", "sparsity", "alignment_distance"))
        if not len(settled):
            longer = plan_variants(unsettled, {"longer training": {"epochs": int(first["epochs"]) * 2}}, known)
            planned += longer
            facts.append(
                f"at {setting}, none of the {len(group)} run(s) converged (the active mean still moved by more "
                f"than {CONVERGED_ACTIVE:.0%} of K, or the loss by more than {CONVERGED_LOSS:.0%} of its final value, "
                f"over the last tenth of training; "
                f"active mean {pool(group, 'active_mean').text(1)} for K={k}), so no conclusion is drawn; "
                f"train them longer (epochs={int(first['epochs']) * 2})"
            )
            continue
        mean, std = pool(settled, "active_mean"), pool(settled, "active_std")
        flexible, near = std.mean > 0, abs(mean.mean - k) <= NEAR_K * k
        verdicts.append(flexible and near)
        left_out = f"; {len(unsettled)} run(s) left out as not converged or unknown" if len(unsettled) else ""
        facts.append(
            f"at {setting}, {mean.text(1)} active bits per concept for K={k} with a per-concept sd of "
            f"{std.text(1)} ({'varies between concepts' if flexible else 'the same for every concept'}, mean "
            f"{'within' if near else 'outside'} {NEAR_K:.0%} of K){left_out}"
        )
    if not verdicts:
        head = "Not answered"
    else:
        head = "Yes" if all(verdicts) else "No" if not any(verdicts) else "Partly"
    text = f"{head}: " + "; ".join(facts) + ". Active counts are on the validation part."
    planned = tuple(planned)
    return Answer(number, question, text + queue_text(planned), planned)


def _factor_answer(
    runs: pd.DataFrame,
    number: int,
    factor: list[str],
    reference: dict,
    variants: dict[str, dict],
    metrics: list[tuple[str, str, int]],
    name_of,
    missing_text: str,
    known: pd.DataFrame | None = None,
) -> Answer:
    """Shared body of Questions 2-4: controlled groups over `factor`, each value against the reference;
    without one, the runs to queue that no run of `known` (default: `runs`) already is."""
    question = QUESTIONS[number - 1]
    known = runs if known is None else known
    groups = controlled_groups(runs, factor)
    groups = [g for g in groups if (g[list(reference)] == pd.Series(reference)).all(axis=1).any()]
    if not groups:
        # What to queue: the factor's missing values next to the paper-setting runs picked.
        matches = (runs[list(reference)] == pd.Series(reference)).all(axis=1) if len(runs) else []
        references = runs[matches & is_paper_setting(runs)] if len(runs) else runs
        if not len(references) and len(runs):
            references = plan_variants(runs.head(1), {"paper setting": PAPER_SETTING}, known)
            references = (
                pd.DataFrame([{**plan.config.to_dict(), "dataset": plan.dataset} for plan in references])
                if references
                else runs.head(0)
            )
        planned = plan_variants(references, variants, known) if len(references) else ()
        return Answer(number, question, missing_text + queue_text(planned), planned)
    sentences = []
    for group in groups:
        is_reference = (group[list(reference)] == pd.Series(reference)).all(axis=1)
        base = group[is_reference]
        setting = describe_setting(group.iloc[0], skip=tuple(factor))
        parts = []
        for value, runs_of in group[~is_reference].groupby(factor, sort=True):
            value = value if isinstance(value, tuple) else (value,)
            name = name_of(dict(zip(factor, value, strict=True)))
            facts = [contrast(pool(runs_of, m), pool(base, m), what, d) for m, what, d in metrics]
            parts.append(f"{name}{converged_note(runs_of)}: " + "; ".join(facts))
        base_name = name_of(dict(zip(factor, [base.iloc[0][f] for f in factor], strict=True)))
        sentences.append(f"At {setting}, against {base_name}{converged_note(base)}: " + ". ".join(parts) + ".")
    return Answer(number, question, " ".join(sentences))


def answer_dead_bits(runs: pd.DataFrame, known: pd.DataFrame | None = None) -> Answer:
    """Bit health by loss distance among aligned runs with the pass-through round: the rounding
    ablations collapse whatever the loss, so they would blur the comparison. Silent bits are compared
    by their excess over chance: a code of smaller bits leaves more of them silent on held-out rows by
    chance alone."""
    aligned = runs[(runs["sparsity"] == "align") & (runs["rounding"] == "ste")] if len(runs) else runs
    return _factor_answer(
        aligned,
        2,
        ["alignment_distance", "reconstruction_distance"],
        {"alignment_distance": "cosine", "reconstruction_distance": "cosine"},
        LOSS_ABLATION,
        [("dead_all_rows", HEALTH_COLUMNS["dead_all_rows"], 1), SILENT_EXCESS],
        distances_text,
        "Select runs with the alignment term and the pass-through round that differ only in the loss "
        "distances (cosine against MSE or L1) and the seed.",
        known,
    )


def answer_rounding(runs: pd.DataFrame, known: pd.DataFrame | None = None) -> Answer:
    """Rounding compared within runs that share every other setting; hard-topk ignores rounding. Silent
    bits by their excess over chance, as in Question 2."""
    candidates = runs[runs["sparsity"] != "hard-topk"] if len(runs) else runs
    answer = _factor_answer(
        candidates,
        3,
        ["rounding"],
        {"rounding": "ste"},
        ROUNDING_ABLATION,
        [
            ("recon_loss", "recon loss on the hard bits (validation part)", 3),
            ("soft_recon_loss", "on the soft code", 3),
            SILENT_EXCESS,
        ],
        lambda values: f"rounding {values['rounding']}",
        "Select finished runs that differ only in rounding (ste, none, hard, stochastic) and the seed "
        "(hard-topk runs ignore rounding, so they are left out).",
        known,
    )
    return answer


def answer_storage(
    runs: pd.DataFrame,
    sign: dict | None,
    sign_equal: dict | None = None,
    sign_run: str | None = None,
    *,
    named: pd.Series | None = None,
    known: pd.DataFrame | None = None,
    baselines: pd.DataFrame | None = None,
) -> Answer:
    """Storage against quality: sparsity schemes compared at an otherwise equal setting, the named run's
    sign baselines (which cannot spend more than one bit per dimension), and the named run against the
    strongest yardstick at no more bytes than its codes are stored at, by each kind of search."""
    runs = with_settings(runs)
    if not len(runs):
        return Answer(4, QUESTIONS[3], "No finished run is selected.")
    if sign_run is None and named is not None:
        sign_run = run_name(named)
    metrics = [
        ("bits_index_list", "bits per vector as an index list", 0),
        ("recon_loss", "recon loss", 3),
        ("recall_at_10_jaccard", "recall@10 (Jaccard, held-out queries against every row)", 3),
    ]
    answer = _factor_answer(
        runs,
        4,
        ["sparsity"],
        {"sparsity": "align"},
        {"rigid TopK": {"sparsity": "hard-topk"}, "L1 penalty": {"sparsity": "l1"}},
        metrics,
        lambda values: f"sparsity {values['sparsity']}",
        "Select runs that differ only in sparsity (align against hard-topk and l1) and the seed to compare "
        "storage at equal settings.",
        known,
    )
    text = answer.answer
    # The named run's Elias-Fano size; NaN without a named run, or for one measured before the metric existed.
    coded = math.nan if named is None else float(named.get("bits_elias_fano", math.nan))
    if named is not None:
        other_forms = ("" if math.isnan(coded) else f"{coded:.0f} Elias-Fano coded, ") + f"{int(named['n_bits'])}"
        text = (
            f"{run_name(named)} stores {float(named['bits_index_list']):.0f} bits per vector as a list of active "
            f"indices ({other_forms} as a bitmap) at recon loss {_number(named['recon_loss'])} and "
            f"recall@10 {_number(named['recall_at_10_jaccard'])} (Jaccard), "
            f"{_number(named['recall_at_10_hamming'])} (Hamming){converged_note(pd.DataFrame([named]))}. " + text
        )
    if sign:
        text += (
            f" The sign baseline of {sign_run or 'the named run'} stores {sign['bits_bitmap']} bits per vector "
            f"(one per dimension, {sign['compression_bitmap']:.0f}x smaller than float32) with recall@10 "
            f"{_number(sign['recall_at_10_hamming'])} (Hamming)."
        )
    if sign_equal:
        if sign_equal.get("capped_at_d"):
            text += (
                f" The run's codes take {sign_equal.get('model_bits')} bits as a plain index list, more than the "
                f"{sign_equal['bits_bitmap']} dimensions: sign bits cannot spend N bits, so they are compared at D."
            )
            if coded <= sign_equal["bits_bitmap"]:  # False for NaN
                text += f" Elias-Fano coded, the codes take {coded:.0f} bits, no more than the sign bits."
        else:
            text += (
                f" Cut to that run's storage ({sign_equal['bits_bitmap']} bits, the leading PCA components), "
                f"the sign baseline reaches recall@10 {_number(sign_equal['recall_at_10_hamming'])} (Hamming)."
            )
    if named is not None:
        text += " " + yardstick_text(named, baselines)
    return dataclasses.replace(answer, answer=text)


def yardstick_text(named: pd.Series, baselines: pd.DataFrame | None) -> str:
    """The named run against the best baseline at no more bytes, by code-to-code and by float-query search."""
    from sparsebin.search.frontier import standings  # faiss: only where the yardsticks are read

    name = run_name(named)
    if baselines is None or not len(baselines):
        return (
            f"The yardsticks (ITQ, LSH, PQ, OPQ, scalar quantisation) of {named.get('dataset', 'its data set')} at "
            f"{name}'s split and queries are not measured yet: `python -m sparsebin frontier "
            f"{named.get('dataset', 'DATA')} --runs {named.get('run_id', 'RUN')}` measures them."
        )
    found = standings(named, baselines)
    if not found:
        return f"{name} has no stored size or recall to set against the yardsticks (measured by an older version)."
    size, form = found[0].size, found[0].form
    clauses = "; ".join(standing.text() for standing in found)
    return (
        f"Against the strongest yardstick at no more than its {size:g} B per vector ({form} coded), on the same "
        f"held-out queries: {clauses}."
    )


def answer_depth(depth: "DepthAnalysis | None", run: str | None = None, hierarchy: "RunHierarchy | None" = None) -> str:
    if depth is None or not depth.spearman:
        return "Pick one finished run on an ontology dataset to relate active bits to concept depth."
    per_depth = depth.per_depth
    facts = []
    for source, rho in depth.spearman.items():
        rows = per_depth[per_depth["source"] == source].sort_values("depth")
        counts = ", ".join(f"{int(r['n'])} at depth {int(r['depth'])}" for _, r in rows.iterrows())
        if rho is None or math.isnan(rho):
            facts.append(f"for {source}, too few distinct depths or active counts to correlate (concepts: {counts})")
            continue
        p_value = depth.p_value.get(source, float("nan"))
        direction = "more" if rho > 0 else "fewer"
        strength = "hardly" if abs(rho) < 0.1 else "weakly" if abs(rho) < 0.3 else "clearly"
        fact = (
            f"for {source}, Spearman rho = {rho:.2f} (p {_p_text(p_value)}): "
            f"deeper concepts {strength} activate {direction} bits"
        )
        if len(rows) >= 2:
            first, last = rows.iloc[0], rows.iloc[-1]
            fact += (
                f", {first['mean_active']:.1f} on average at depth {int(first['depth'])} "
                f"against {last['mean_active']:.1f} at depth {int(last['depth'])}"
            )
        facts.append(fact + f" (concepts: {counts})")
    who = f"In {run}" if run else "In the picked run"
    return (
        f"{who}, "
        + "; ".join(facts)
        + ". The p-value treats concepts as independent; concepts of one branch share ancestors, so it is optimistic. "
        + depth_and_links(hierarchy, run)
    )


def depth_and_links(hierarchy: "RunHierarchy | None", run: str | None) -> str:
    """How Question 5 relates to Question 7, with the named run's link figure when it is known."""
    text = (
        "This compares depths over all concepts at once; Question 7 follows each parent-child link instead, "
        "against random pairs at the same depths"
    )
    if hierarchy is None or not hierarchy.codes:
        return text + "."
    facts = [
        f"{_share(s.more.real)} of {s.source} children fire more bits than their own parent "
        f"(chance {_share(s.more.chance)})"
        for s in hierarchy.codes
    ]
    return text + f": in {run or 'the picked run'}, " + "; ".join(facts) + "."


def answer_bit_meaning(bits: pd.DataFrame | None, run: str | None = None) -> str:
    who = run or "the picked run"
    if bits is None or not len(bits):
        return (
            "Pick one finished run to see how coherent its bits are; open a bit on the Bits page to see its concepts."
        )
    live = bits[bits["n_active"] > 0]
    if not len(live):
        return f"{who} has no live bits."
    judged = live[live["n_active"] >= MIN_ACTIVE]  # one or two concepts always look coherent
    if not len(judged):
        return f"None of {who}'s {len(live)} live bits fires for {MIN_ACTIVE} concepts or more."
    if judged["coherence"].isna().all():  # one category: precision above chance has no chance to beat
        return (
            f"Every concept of {who}'s dataset is in one category, so coherence is undefined for its "
            f"{len(judged)} bits firing for {MIN_ACTIVE} concepts or more; open a bit on the Bits page to see "
            "its concepts and their shared ancestor instead."
        )
    if "corrected_coherence" not in judged.columns:
        best = judged.sort_values(["coherence", "n_active"], ascending=False).iloc[0]
        return (
            f"Of {who}'s {len(live)} live bits, {len(judged)} fire for at least {MIN_ACTIVE} concepts "
            f"(median raw coherence {judged['coherence'].median():.2f}, not corrected for chance). The highest is "
            f"bit {int(best['bit'])}, '{best['label']}', firing for {int(best['n_active'])} concepts."
        )
    significant = judged[judged["q_value"] < SIGNIFICANT]
    best = judged.sort_values(["corrected_coherence", "n_active"], ascending=False).iloc[0]
    return (
        f"Of {who}'s {len(live)} live bits, {len(judged)} fire for at least {MIN_ACTIVE} concepts; "
        f"{len(significant)} of those ({len(significant) / len(judged):.0%}) are enriched in one category beyond "
        f"chance (hypergeometric test, Benjamini-Hochberg q < {SIGNIFICANT} across bits). Coherence corrected for "
        f"chance and size (precision above chance minus its mean for random sets of the bit's size; about 0 "
        f"at random): median {judged['corrected_coherence'].median():.2f}. The most coherent is bit "
        f"{int(best['bit'])}, '{best['label']}' (category {best['category']}), firing for "
        f"{int(best['n_active'])} concepts: corrected {best['corrected_coherence']:.2f}, raw precision "
        f"{best['precision']:.2f}, category of {int(best['category_size'])} concepts. "
        "Open a bit on the Bits page for the concepts that make it fire."
    )


def _number(value) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{float(value):.3f}"


def _p_text(p_value: float) -> str:
    """ "= 0.003" or "< 1e-10": a p-value as a person reads it (never "= 0")."""
    shown = format_q(p_value)
    return shown if shown.startswith("<") else f"= {shown}"


def answer_hierarchy(hierarchy: "dict[str, RunHierarchy] | None", sign_run: str | None = None) -> str:
    """Question 7 for every picked run: kept share and "child fires more" on the ontology's links against
    random pairs at the same depths; then the named run's sign baseline on the same links."""
    if not hierarchy:
        return "Pick finished runs on a dataset with parent links to compare a child's bits with its parent's."
    judged = {name: h for name, h in hierarchy.items() if h.codes}
    if not judged:
        names = ", ".join(hierarchy)
        return f"The datasets of the picked runs ({names}) have no parent-child link with both concepts present."
    extend = [name for name, h in judged.items() if all(s.kept.beyond_chance for s in h.codes)]
    head = "Yes" if len(extend) == len(judged) else "No" if not extend else "Partly"
    parts = [f"{name}: " + "; ".join(describe_summary(s) for s in h.codes) for name, h in judged.items()]
    text = (
        f"{head}: in {len(extend)} of {len(judged)} run(s) a child keeps more of its parent's bits than random pairs "
        "at the same depths (the interval of the difference lies above zero). " + ". ".join(parts) + "."
    )
    with_sign = [(name, h) for name, h in judged.items() if h.sign]
    if with_sign:
        name, h = next(((n, x) for n, x in with_sign if n == sign_run), with_sign[0])
        text += (
            f" The sign baseline of {name} ({h.sign_bits} bits, one per PCA dimension fitted on its training part): "
            + "; ".join(describe_summary(s) for s in h.sign)
            + "."
        )
    level = next(iter(judged.values())).codes[0].kept.level
    return text + (
        " Links: every parent-child pair of the concept table with both concepts in the data set, all rows; chance: "
        "seeded random pairs of a concept at the parent's depth and one at the child's (same source); intervals: "
        f"{level:.0%} paired bootstrap over links (seeded), optimistic since links of one branch share ancestors."
    )


def describe_summary(summary: "HierarchySummary") -> str:
    """One clause with the numbers of one source: kept share and "fires more", each against chance."""
    kept, more = summary.kept, summary.more
    if not kept.links and not more.links:
        return f"{summary.source}: no link to judge"
    text = (
        f"{summary.source} ({summary.links:,} links): a child keeps {_share(kept.real)} of its parent's bits "
        f"against {_share(kept.chance)} by chance ({_points(kept)}{_times(kept)}; over the {kept.links:,} links "
        f"whose parent fires a bit), and {_share(more.real)} of children fire more bits than their parent against "
        f"{_share(more.chance)} by chance ({_points(more)}{_times(more)})"
    )
    if summary.same >= 0.5:
        text += f"; {_share(summary.same)} fire exactly as many"
    return text


def _share(value: float) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.1%}"


def _points(contrast: "Contrast") -> str:
    """ "+21.3 points, 95% interval +21.1 to +21.5" """
    if math.isnan(contrast.difference):
        return "no difference to measure"
    return (
        f"{100 * contrast.difference:+.1f} points, {contrast.level:.0%} interval "
        f"{100 * contrast.low:+.1f} to {100 * contrast.high:+.1f}"
    )


def _times(contrast: "Contrast") -> str:
    return "" if math.isnan(contrast.ratio) else f"; {contrast.ratio:.2f}x chance"
