"""The study plans: the paper's setting and the method's ablation study around it.

The paper's setting is the `paper` preset (`sparsebin.config.PRESETS`): the paper's method (cosine in
both loss terms, the pass-through round, the alignment term) with every remedy off, whatever its size
and schedule. `PAPER` is that preset's config, and everything here that names the paper's setting
derives from it and from `preset_of`, so the study, the questions' choice of the paper's runs and the
runs table's preset column cannot disagree: a run of the paper's setting is always of the `paper`
preset, which also holds the paper's own ablations of loss and rounding.
"""

import pandas as pd

from sparsebin.config import TrainConfig, preset_config, preset_of
from sparsebin.errors import ConfigError

PAPER = preset_config("paper")
# The settings that make the method (each loss term's distance, the rounding, the sparsity scheme) at the
# paper's values: what the study pins before it changes one of them. Size, schedule and remedies stay free.
PAPER_SETTING = {name: getattr(PAPER, name) for name in ("loss", "rec_loss", "sparsity_loss", "rounding", "sparsity")}

# The method's ablation study, one setting per row: what the Train page's one-click study
# queues and the report's ablation table lists. Each replaces one thing of the paper's setting.
STUDY = {
    "paper setting": {},
    "alignment MSE": {"sparsity_loss": "mse"},
    "alignment L1": {"sparsity_loss": "l1"},
    "reconstruction MSE (scale-fair)": {"rec_loss": "mse_sum"},
    "reconstruction L1 (scale-fair)": {"rec_loss": "l1_sum"},
    "both MSE": {"rec_loss": "mse_sum", "sparsity_loss": "mse"},
    "both L1": {"rec_loss": "l1_sum", "sparsity_loss": "l1"},
    "rounding none": {"rounding": "none"},
    "rounding hard": {"rounding": "hard"},
}


def study_configs(base: TrainConfig, seeds: int = 3) -> list[tuple[str, TrainConfig]]:
    """(label, config) for every setting of the study times `seeds` training seeds (0, 1, ...).

    Everything but the studied setting comes from `base` (N, K, epochs, lr, ...),
    so the runs pair up as controlled comparisons; seeds run in the outer loop,
    so a study stopped early still holds one run of every setting.
    """
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ConfigError(f"the study needs at least one seed, got {seeds!r}.")
    paper = base.replace(**PAPER_SETTING)
    return [
        (f"{name} seed={seed}", paper.replace(seed=seed, **changes))
        for seed in range(seeds)
        for name, changes in STUDY.items()
    ]


def is_paper_setting(runs: pd.DataFrame) -> pd.Series:
    """Per run of a runs table (with both terms' resolved distances, as `with_settings` gives it): whether
    it has the paper's setting, the paper's distances and rounding in a run `preset_of` names "paper"
    (the paper's sparsity, every remedy off; a "recommended" run is not the paper's setting)."""
    method = (
        (runs["reconstruction_distance"] == PAPER.reconstruction_distance)
        & (runs["alignment_distance"] == PAPER.alignment_distance)
        & (runs["rounding"] == PAPER.rounding)
    )
    preset = pd.Series([preset_of(run) == "paper" for _, run in runs.iterrows()], index=runs.index, dtype=bool)
    return method & preset
