"""The ablation tables: one per ablation of METHOD.md's plan, each a row per setting in typed column groups.

- Table 1, the loss ablation: the cosine replaced by MSE and by L1 in the alignment
  term, the reconstruction term and both, per entry and scale-fair. Columns:
  reconstruction | sparsity alignment | interpretability | bit health.
- Table 2, the rounding ablation: the pass-through round removed (none) and
  replaced (hard, stochastic). Columns: reconstruction (hard and soft code) |
  training stability | sparsity alignment.
- Table 3, the paper's own N x K experiment at the paper's setting. Columns:
  reconstruction (and fixed-TopK reconstruction) | active bits (mean and sd).
Bit health, storage and retrieval follow in every table. A last table lists every
setting with every group, so runs outside the plan (rigid TopK, remedies) show too.

A table's rows come from controlled groups only (`controlled_groups`: runs equal in
every key setting but the ablation's factor and the seed), each group a block named
by what its runs share; Tables 1 and 2 take a group only when it holds the paper's
setting (the reference), Table 3 only paper-setting runs. A row pools its runs over
distinct training seeds (`pool`): mean ± sd, and n where fewer seeds measured it.
A figure a run was measured without shows as "not measured", never as 0.
"""

import math
from dataclasses import dataclass

import pandas as pd

from sparsebin.health import HEALTH_COLUMNS, convergence_word
from sparsebin.interpret.comparison import (
    controlled_groups,
    describe_setting,
    distances_text,
    finished,
    pool,
    seeds_of,
    setting_groups,
    setting_title,
    with_settings,
)
from sparsebin.study import STUDY, SWEEP_NAME, is_paper_setting

NOT_MEASURED = "not measured"


@dataclass(frozen=True)
class Column:
    """One figure of a table: a runs-table column (or one `measured` derives) and how it is headed."""

    metric: str
    header: str  # names the part or the rows it is measured on
    digits: int
    over_seeds: bool = False  # the sd of `metric` over the setting's seeds, not its mean

    @property
    def key(self) -> str:
        """The figure's name in the numeric table (table.csv): the metric, or `<metric>_seed_sd`."""
        return f"{self.metric}_seed_sd" if self.over_seeds else self.metric


@dataclass(frozen=True)
class Group:
    """Columns under one group header."""

    name: str
    columns: tuple[Column, ...]


RECON = Column("recon_loss", "recon (val, hard bits)", 3)
SOFT_RECON = Column("soft_recon_loss", "recon (val, soft code)", 3)
TOPK_RECON = Column("fixed_topk_recon_loss", "fixed-TopK recon (val)", 3)
ACTIVE_MEAN = Column("active_mean", "active mean (val)", 1)
ACTIVE_SD = Column("active_std", "active sd (val)", 1)
ALIGNMENT = Group(
    "sparsity alignment",
    (
        Column("active_ratio", "active mean / K (val)", 2),
        ACTIVE_SD,
        Column("topk_overlap", "TopK overlap (val)", 3),
        Column("alignment_cosine", "d(s, t) cosine (val)", 3),
    ),
)
INTERPRETABILITY = Group(
    "interpretability",
    (
        Column("coherent_share", "coherent share (all rows, bits of 5+ concepts)", 3),
        Column("coherence_median", "coherence median (all rows)", 3),
        Column("probe_f1", "probe F1 (bit chosen on train, held-out rows)", 3),
        Column("probe_f1_chance", "probe F1 by chance (held-out rows)", 3),
        Column("root_labelled_share", "root-labelled share (all rows)", 3),
    ),
)
STABILITY = Group(
    "training stability",
    (
        Column("code_churn", "code churn, last epoch (held-out probe rows)", 4),
        Column("loss_roughness", "loss roughness (training, 2nd half)", 3),
        Column("grad_norm_mean", "encoder grad norm mean (logged steps)", 3),
        Column("grad_norm_max", "encoder grad norm max (logged steps)", 3),
        Column("nonfinite_steps", "non-finite steps (training)", 0),
        Column("recon_loss", "recon sd over seeds (val)", 4, over_seeds=True),
        Column("active_mean", "active mean sd over seeds (val)", 2, over_seeds=True),
    ),
)
BIT_HEALTH = Group(
    "bit health",
    (
        Column("dead_all_rows", HEALTH_COLUMNS["dead_all_rows"], 1),
        Column("silent_held_out", HEALTH_COLUMNS["silent_held_out"], 1),
        Column("silent_held_out_expected", "silent by chance (held-out, expected for these bit sizes)", 1),
        Column("silent_held_out_excess", "silent beyond chance (held-out)", 1),
        Column("rare_bits", HEALTH_COLUMNS["rare_bits"], 1),
        Column("dense_all_rows", HEALTH_COLUMNS["dense_all_rows"], 1),
    ),
)
STORAGE = Group(
    "storage",
    (
        Column("bytes_index_list", "bytes/vector (index list, val)", 1),
        Column("bytes_elias_fano", "bytes/vector (Elias-Fano, val)", 1),
    ),
)
RETRIEVAL = Group(
    "retrieval",
    (
        Column("recall_at_10_jaccard", "recall@10 Jaccard (val queries, all rows)", 3),
        Column("recall_at_10_hamming", "recall@10 Hamming (val queries, all rows)", 3),
        Column("recall_at_10_asymmetric", "recall@10 asymmetric (val queries, all rows)", 3),
    ),
)
FOLLOWING = (BIT_HEALTH, STORAGE, RETRIEVAL)  # METHOD.md: they follow in every table
EVERY_GROUP = (
    Group("reconstruction", (RECON, SOFT_RECON, TOPK_RECON)),
    Group("sparsity alignment", (ACTIVE_MEAN, *ALIGNMENT.columns)),
    INTERPRETABILITY,
    STABILITY,
    *FOLLOWING,
)
NOTES = (
    "val = the held-out validation part (the same rows for every run of a dataset: the split seed is fixed); "
    "recon = mean cosine distance between x and the decoder output (hard bits, the soft code s, or the TopK mask "
    "t as the code), whatever distance the run trained with; d(s, t) cosine = the alignment distance between the "
    "soft code and its TopK mask, measured with the cosine for every run; TopK overlap = mean |h AND t| / K; "
    "silent by chance = the bits expected to fire on no held-out row for bits of the same sizes, "
    "sum over bits of C(M - fM, c) / C(M, c); code churn = share of a fixed probe sample's stored bits that "
    "changed in the last epoch; recall@10 = held-out queries searched against every row, ties at the 10th code "
    "distance counted by their chance under a random order; asymmetric = the dense query against each stored "
    "code read back through the decoder, by cosine; cells are mean ± sd over distinct training seeds (runs "
    f"identical in every setting and seed count once), n = seeds, (n=...) where fewer seeds measured a figure; "
    f"{NOT_MEASURED} = the run was measured before the figure existed (`python -m sparsebin remeasure`); "
    "MSE/L1 (mean over entries) is the paper's ablation, (per-row sum, scale-fair) sums over dimensions."
)


@dataclass(frozen=True)
class Ablation:
    """One table of the plan: the settings it varies and the column groups it is judged by."""

    title: str
    factor: tuple[str, ...]  # the comparison-key settings its rows differ in
    lead: tuple[str, ...]  # the row's leading columns naming its setting (see `_lead`)
    groups: tuple[Group, ...]
    paper_only: bool  # every row of the paper's setting (the N x K sweep), else a group holding one
    missing: str  # what the table says when the runs hold none of it


ABLATIONS = (
    Ablation(
        "Table 1: the loss ablation",
        ("reconstruction_distance", "alignment_distance"),
        ("loss terms",),
        (Group("reconstruction", (RECON,)), ALIGNMENT, INTERPRETABILITY, *FOLLOWING),
        False,
        "No loss ablation among these runs: no paper-setting run has runs equal to it but for the loss "
        "distances. The Train page's one-click study (or `submit --study SEEDS`) queues every one.",
    ),
    Ablation(
        "Table 2: the rounding ablation",
        ("rounding",),
        ("rounding",),
        (Group("reconstruction", (RECON, SOFT_RECON)), STABILITY, ALIGNMENT, *FOLLOWING),
        False,
        "No rounding ablation among these runs: no paper-setting run has runs equal to it but for the "
        "rounding. The Train page's one-click study (or `submit --study SEEDS`) queues ste, none, hard and "
        "stochastic.",
    ),
    Ablation(
        "Table 3: the paper's N x K experiment",
        ("n_bits", "k"),
        ("N", "K"),
        (Group("reconstruction", (RECON, TOPK_RECON)), Group("active bits", (ACTIVE_MEAN, ACTIVE_SD)), *FOLLOWING),
        True,
        "No N x K sweep among these runs: no two paper-setting runs differ only in N and K. The Train page's "
        '"paper\'s N x K sweep" (or `submit --sweep [SEEDS]`) queues one.',
    ),
)
EVERY_SETTING = Ablation(
    "Every setting", (), ("loss terms", "rounding", "sparsity", "N", "K", "epochs"), EVERY_GROUP, False, ""
)


@dataclass(frozen=True)
class Block:
    """Rows of one controlled group: what they share, and one row per setting."""

    setting: str  # the settings every row shares, in words ("" for the every-setting table)
    rows: pd.DataFrame  # lead columns, seeds, n, converged, then <key>_mean, <key>_sd, <key>_n per figure


@dataclass(frozen=True)
class Table:
    ablation: Ablation
    blocks: tuple[Block, ...]  # none when the runs hold no such comparison (`ablation.missing` says why)


def ablation_tables(runs: pd.DataFrame) -> list[Table]:
    """The three tables of the plan, then every setting, from a runs table."""
    runs = with_figures(with_settings(finished(runs)))
    tables = [Table(ablation, tuple(_blocks(runs, ablation))) for ablation in ABLATIONS]
    every = (Block("", _rows(runs, EVERY_SETTING)),) if len(runs) else ()
    return [*tables, Table(EVERY_SETTING, every)]


def with_figures(runs: pd.DataFrame) -> pd.DataFrame:
    """Every figure a table shows: those a table derives (active mean / K, the storage sizes in bytes), and
    NaN ("not measured") for those an older runs table lacks."""
    lacking = {column.metric for group in EVERY_GROUP for column in group.columns} - set(runs.columns)
    runs = runs.assign(
        **{name: math.nan for name in sorted(lacking | {"bits_index_list", "bits_elias_fano"} - set(runs))}
    )
    return runs.assign(
        active_ratio=runs["active_mean"] / runs["k"],
        bytes_index_list=runs["bits_index_list"] / 8,
        bytes_elias_fano=runs["bits_elias_fano"] / 8,  # NaN for a run measured before it existed
    )


def _blocks(runs: pd.DataFrame, ablation: Ablation) -> list[Block]:
    if not len(runs):
        return []
    paper = is_paper_setting(runs)
    factor = list(ablation.factor)
    candidates = runs[paper] if ablation.paper_only else runs
    blocks = []
    for group in controlled_groups(candidates, factor):
        if not ablation.paper_only and not paper[group.index].any():
            continue
        blocks.append(Block(describe_setting(group.iloc[0], skip=ablation.factor), _rows(group, ablation)))
    return blocks


def _rows(runs: pd.DataFrame, ablation: Ablation) -> pd.DataFrame:
    rows = []
    for group in sorted(setting_groups(runs), key=_order):
        first = group.iloc[0]
        seeds = seeds_of(group)
        flags = [convergence_word(value) for value in group["converged"]]
        row = {"setting": setting_title(group)}
        row |= {name: _lead(first, name) for name in ablation.lead}
        row |= {"seeds": ", ".join(map(str, seeds)), "n": len(seeds)}
        row["converged"] = f"{flags.count('converged')} of {len(flags)} runs"
        for group_of in ablation.groups:
            for column in group_of.columns:
                value = pool(group, column.metric)
                row[f"{column.key}_mean"] = value.sd if column.over_seeds else value.mean
                row[f"{column.key}_sd"] = math.nan if column.over_seeds else value.sd
                row[f"{column.key}_n"] = value.n
        rows.append(row)
    return pd.DataFrame(rows)


def _order(group: pd.DataFrame) -> tuple:
    """Study order first (the paper's setting leads), then by N and K (the sweep), then by name."""
    name = setting_title(group)
    study = list(STUDY)
    first = group.iloc[0]
    place = study.index(name) if name in study else len(study) + name.startswith(SWEEP_NAME)
    return (place, int(first["n_bits"]), int(first["k"]), name)


def _lead(run: pd.Series, name: str) -> str:
    if name == "loss terms":
        return distances_text(run)
    column = {"N": "n_bits", "K": "k"}.get(name, name)
    value = run[column]
    return str(int(value)) if column in ("n_bits", "k", "epochs") else str(value)


# -- cells -------------------------------------------------------------------------


def cell(row: pd.Series, column: Column) -> str:
    """A figure as a table shows it: mean ± sd over seeds, (n=...) where fewer seeds measured it."""
    mean, sd, n = row[f"{column.key}_mean"], row[f"{column.key}_sd"], int(row[f"{column.key}_n"])
    if n == 0 or mean is None or math.isnan(mean):
        return NOT_MEASURED
    if column.over_seeds:
        return "n/a (one seed)" if n < 2 else f"{mean:.{column.digits}f}"
    text = f"{mean:.{column.digits}f}" if n < 2 else f"{mean:.{column.digits}f} ± {sd:.{column.digits}f}"
    return text if n >= int(row["n"]) else f"{text} (n={n})"


def shown(block: Block, ablation: Ablation) -> pd.DataFrame:
    """A block's rows as text, its columns under their group headers (a two-level column index)."""
    lead = ["setting", *ablation.lead, "n", "converged"]
    columns = [("", name) for name in lead]
    columns += [(group.name, column.header) for group in ablation.groups for column in group.columns]
    rows = []
    for _, row in block.rows.iterrows():
        cells = [str(row[name]) for name in lead]
        cells += [cell(row, column) for group in ablation.groups for column in group.columns]
        rows.append(cells)
    return pd.DataFrame(rows, columns=pd.MultiIndex.from_tuples(columns))


def numeric(tables: list[Table]) -> pd.DataFrame:
    """Every table's rows in one frame (table.csv): the table and block they belong to, then the figures."""
    frames = [
        block.rows.assign(table=table.ablation.title, block=block.setting) for table in tables for block in table.blocks
    ]
    if not frames:
        return pd.DataFrame(columns=["table", "block", "setting"])
    frame = pd.concat(frames, ignore_index=True)
    return frame[["table", "block", *(column for column in frame.columns if column not in ("table", "block"))]]


def runs_shown(runs: pd.DataFrame, settings: list[str]) -> pd.DataFrame:
    """One column per run (by label), one row per figure under its group (Compare's table): the settings
    that tell the runs apart, then every group's figures of the run, then its convergence."""
    runs = with_figures(with_settings(runs))
    rows = {("settings", name): [_text(value) for value in runs[name]] for name in settings}
    for group in EVERY_GROUP:
        for column in group.columns:
            if not column.over_seeds:  # a single run has no spread over seeds
                rows[(group.name, column.header)] = [_text(value, column.digits) for value in runs[column.metric]]
    rows[("convergence", "converged")] = [convergence_word(value) for value in runs["converged"]]
    frame = pd.DataFrame(rows, index=list(runs["label"])).T
    frame.index = pd.MultiIndex.from_tuples(frame.index, names=["group", "figure"])
    return frame


def _text(value, digits: int | None = None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return NOT_MEASURED if digits is not None else ""
    if digits is not None:
        return f"{float(value):.{digits}f}"
    return f"{value:.4g}" if isinstance(value, float) else str(value)
