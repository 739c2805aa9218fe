"""The study plans: the paper's setting, the method's ablation study around it, and the paper's N x K sweep.

The paper's setting is the `paper` preset (`sparsebin.config.PRESETS`): the paper's method (cosine in
both loss terms, the pass-through round, the alignment term, the standard initialisation) with every
remedy off, whatever its size and schedule. `PAPER` is that preset's config, and everything here that
names the paper's setting derives from it and from `preset_of`, so the study, the questions' choice of the
paper's runs and the runs table's preset column cannot disagree: a run of the paper's setting is always
of the `paper` preset, which also holds the paper's own ablations of loss and rounding.
"""

from collections.abc import Iterable

import pandas as pd

from sparsebin.config import TrainConfig, preset_config, preset_of
from sparsebin.errors import ConfigError

PAPER = preset_config("paper")
# The settings that make the method (each loss term's distance, the rounding, the sparsity scheme, the
# initialisation: METHOD.md, the "no dead bits" behaviour depends on starting dense) at the paper's values:
# what the study pins before it changes one of them. Size, schedule and remedies stay free.
PAPER_SETTING = {
    name: getattr(PAPER, name) for name in ("loss", "rec_loss", "sparsity_loss", "rounding", "sparsity", "init")
}

# The method's ablation study, one setting per row: what the Train page's one-click study queues and the
# report's ablation tables list. Each replaces one thing of the paper's setting. The loss rows replace the
# cosine by MSE and by L1 in the alignment term, the reconstruction term and both; a reconstruction MSE or
# L1 comes per entry (the paper's ablation: a mean over D entries, about 1/D of the cosine's scale) and
# scale-fair (the per-row sum).
STUDY = {
    "paper setting": {},
    "alignment MSE": {"sparsity_loss": "mse"},
    "alignment L1": {"sparsity_loss": "l1"},
    "reconstruction MSE (per entry)": {"rec_loss": "mse"},
    "reconstruction L1 (per entry)": {"rec_loss": "l1"},
    "reconstruction MSE (scale-fair)": {"rec_loss": "mse_sum"},
    "reconstruction L1 (scale-fair)": {"rec_loss": "l1_sum"},
    "both MSE (per entry)": {"loss": "mse"},
    "both L1 (per entry)": {"loss": "l1"},
    "both MSE (scale-fair)": {"rec_loss": "mse_sum", "sparsity_loss": "mse"},
    "both L1 (scale-fair)": {"rec_loss": "l1_sum", "sparsity_loss": "l1"},
    "rounding none": {"rounding": "none"},
    "rounding hard": {"rounding": "hard"},
    "rounding stochastic": {"rounding": "stochastic"},
}
LOSS_SETTINGS = frozenset({"loss", "rec_loss", "sparsity_loss"})
# The study's rows of each ablation, in study order: those that change a loss distance, and the rounding.
LOSS_ABLATION = {name: changes for name, changes in STUDY.items() if changes and set(changes) <= LOSS_SETTINGS}
ROUNDING_ABLATION = {name: changes for name, changes in STUDY.items() if set(changes) == {"rounding"}}

# The paper's own experiment: every code length N with every target K, at the paper's setting.
SWEEP = {"n_bits": (512, 1024, 2048), "k": (8, 16, 32)}
SWEEP_NAME = "N x K sweep"


def study_configs(base: TrainConfig, seeds: int = 3) -> list[tuple[str, TrainConfig]]:
    """(label, config) for every setting of the study times `seeds` training seeds (0, 1, ...).

    Everything but the studied setting comes from `base` (N, K, epochs, lr, ...),
    so the runs pair up as controlled comparisons; seeds run in the outer loop,
    so a study stopped early still holds one run of every setting.
    """
    _check_seeds(seeds, "the study")
    paper = base.replace(**PAPER_SETTING)
    return [
        (f"{name} seed={seed}", paper.replace(seed=seed, **changes))
        for seed in range(seeds)
        for name, changes in STUDY.items()
    ]


def sweep_configs(
    base: TrainConfig, seeds: int = 1, n_bits: Iterable[int] = SWEEP["n_bits"], ks: Iterable[int] = SWEEP["k"]
) -> list[tuple[str, TrainConfig]]:
    """(label, config) for every N with every K at the paper's setting, times `seeds` training seeds.

    Everything else (epochs, lr, batch size, ...) comes from `base`; seeds run in the outer loop, as in
    the study. A cell with K >= N (a code cannot have as many active bits as it has bits) is refused with
    a ConfigError naming it, before anything is planned.
    """
    _check_seeds(seeds, "the N x K sweep")
    cells = [(int(n), int(k)) for n in n_bits for k in ks]
    for n, k in cells:
        if k >= n:
            raise ConfigError(f"the N x K sweep's cell N={n} K={k} would be refused: K must be smaller than N.")
    paper = base.replace(**PAPER_SETTING)
    return [
        (f"{SWEEP_NAME} N={n} K={k} seed={seed}", paper.replace(n_bits=n, k=k, seed=seed))
        for seed in range(seeds)
        for n, k in cells
    ]


def _check_seeds(seeds: int, what: str) -> None:
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ConfigError(f"{what} needs at least one seed, got {seeds!r}.")


def is_paper_setting(runs: pd.DataFrame) -> pd.Series:
    """Per run of a runs table (with both terms' resolved distances, as `with_settings` gives it): whether
    it has the paper's setting, the paper's distances, rounding and initialisation in a run `preset_of`
    names "paper" (the paper's sparsity, every remedy off; a "recommended" run is not the paper's setting)."""
    method = (
        (runs["reconstruction_distance"] == PAPER.reconstruction_distance)
        & (runs["alignment_distance"] == PAPER.alignment_distance)
        & (runs["rounding"] == PAPER.rounding)
        & (runs["init"] == PAPER.init)
    )
    preset = pd.Series([preset_of(run) == "paper" for _, run in runs.iterrows()], index=runs.index, dtype=bool)
    return method & preset
