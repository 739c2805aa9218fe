"""Training settings: one frozen dataclass, validated with one sentence per fault.

Every run saves its `TrainConfig` as JSON, so a run folder always says exactly
what was trained. The settings an ablation grid varies, and how a setting is
read from text (a command-line option, a grid field on the Train page), are
described here once, from the dataclass's own fields.
"""

import dataclasses
import itertools
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from sparsebin.errors import ConfigError

LOSSES = ("cosine", "mse", "l1")  # the paper's distance and the two per-entry means of its ablation
# Scale-fair forms: the per-row sum over entries instead of the mean. On unit vectors
# mean((x - x_hat)^2) ~ (2 - 2 cos) / D, so the per-entry mean also shrinks the term's
# weight against alpha D-fold; the per-row sum keeps it on the cosine's scale.
SCALE_FAIR = ("mse_sum", "l1_sum")
DISTANCES = LOSSES + SCALE_FAIR
DISTANCE_NAMES = {
    "cosine": "cosine",
    "mse": "MSE (mean over entries)",
    "l1": "L1 (mean over entries)",
    "mse_sum": "MSE (per-row sum, scale-fair)",
    "l1_sum": "L1 (per-row sum, scale-fair)",
}
DEFAULT_SPLIT_SEED = 0  # every run of a dataset is scored on the same held-out rows and queries
ROUNDINGS = ("ste", "none", "hard", "stochastic")
SPARSITIES = ("align", "hard-topk", "l1", "none")
INITS = ("default", "sparse")
CENTRES = ("none", "mean", "learned-mean", "learned-median")
RATE_CONTROLS = ("none", "balance", "bounds")
REVIVALS = ("none", "auxk", "reinit")


def setting(
    default: Any,
    help: str,
    *,
    choices: tuple = (),
    grid: bool = False,
    remedy: bool = False,
    neutral: bool = False,
) -> Any:
    """A TrainConfig field described once, where it is defined.

    `help` is its line in `train --help` and `submit --help`; `choices` the values it may take (a form
    offers them, validation refuses others; a field whose default is None may also be unset); `grid`
    whether an ablation grid may vary it (the Train page's grid fields, the `submit` options that take
    lists); `remedy` whether it belongs to a remedy beyond the paper (a run that changes one is not of
    the paper's preset); `neutral` whether it leaves what is learned unchanged (where it trains, how often
    it reports): a checkpoint resumes across it and runs are compared across it.
    """
    metadata = {"help": help, "choices": choices, "grid": grid, "remedy": remedy, "neutral": neutral}
    return dataclasses.field(default=default, metadata=metadata)


@dataclass(frozen=True)
class TrainConfig:
    n_bits: int = setting(1024, "code length N", grid=True)  # N
    k: int = setting(16, "target number of active bits per concept K", grid=True)
    alpha: float = setting(1.0, "weight of the sparsity term", grid=True)
    # The distance of both terms; cosine is the paper's.
    loss: str = setting(
        "cosine", "distance of both loss terms (_sum = per-row sum, scale-fair)", choices=DISTANCES, grid=True
    )
    # The per-term ablation: replace one term's distance only.
    rec_loss: str | None = setting(None, "override the reconstruction distance only", choices=DISTANCES)
    sparsity_loss: str | None = setting(None, "override the alignment distance only", choices=DISTANCES)
    rounding: str = setting("ste", "round to bits while training (ste = pass-through)", choices=ROUNDINGS, grid=True)
    sparsity: str = setting("align", "sparsity scheme (align = the paper's)", choices=SPARSITIES, grid=True)
    # default: nn.Linear init, ~half the bits fire at first; sparse: encoder bias logit(K/N), few fire
    # (METHOD.md: that leaves most bits dead).
    init: str = setting("default", "encoder initialisation (sparse = bias logit(K/N))", choices=INITS)
    normalize: bool = setting(True, "L2-normalise rows before training (true/false)")
    val_fraction: float = setting(0.1, "share of rows held out for validation metrics")
    lr: float = setting(1e-3, "Adam learning rate")  # on HPO 3e-3 and 1e-2 left 40-85 % of bits dead, 1e-3 under 2 %
    batch_size: int = setting(256, "rows per training step")  # ~67 steps an epoch on HPO
    epochs: int = setting(
        40, "passes over the training rows"
    )  # on HPO (N=1024, K=16) the active count levels off by ~25
    seed: int = setting(0, "training seed: initialisation and batch order", grid=True)
    # The held-out rows and retrieval queries: the same for every run of a dataset.
    split_seed: int = setting(
        DEFAULT_SPLIT_SEED, "seed of the held-out rows and the retrieval queries (keep it fixed per dataset)"
    )
    device: str = setting("auto", "auto, cpu, cuda, cuda:N or mps", neutral=True)  # auto: cuda, then mps, then cpu
    log_every: int = setting(50, "steps between progress reports", neutral=True)  # the only host syncs
    # A step whose loss or gradient is not finite is skipped (never applied) and counted; a run that is diverging
    # soon gives one every step, so a few are tolerated and then it stops (sparsebin.train.train_step).
    max_nonfinite_steps: int = setting(
        10, "stop the run with an error once this many steps were not finite (each is skipped)"
    )
    # Remedies beyond the paper (sparsebin.remedies); each off by default, so the above is the paper's setting.
    # mean: subtract the training mean before the encoder, add it back after the decoder; learned-mean /
    # learned-median: the same centre as a learned pre-bias.
    centre: str = setting(
        "none",
        "subtract a centre before the encoder, decode around it (c + L r / |r|)",
        choices=CENTRES,
        grid=True,
        remedy=True,
    )
    # balance: KL(K/N || each bit's batch firing rate); bounds: penalise a bit's batch firing rate outside
    # [rate_min, rate_max] (in log space).
    rate_control: str = setting(
        "none", "penalise each bit's batch firing rate", choices=RATE_CONTROLS, grid=True, remedy=True
    )
    # On planted data 0.1 removed every always-on bit, 0.01 not.
    rate_weight: float = setting(0.1, "weight of the firing-rate term", remedy=True)
    # Rates are read in 1 / 2B steps.
    rate_min: float = setting(1e-3, "bounds: lowest firing rate without penalty", remedy=True)
    rate_max: float = setting(0.1, "bounds: highest firing rate without penalty", remedy=True)
    # auxk: reconstruct the residual through the top aux_k dead bits; reinit: point dead bits at the
    # worst-reconstructed rows of the batch.
    revive: str = setting(
        "none", "bring back bits idle for revive-after steps", choices=REVIVALS, grid=True, remedy=True
    )
    revive_after: int = setting(200, "steps without firing before a bit counts as dead", remedy=True)
    aux_k: int = setting(0, "auxk: dead bits per row in the auxiliary code (0: 2 K)", remedy=True)
    aux_weight: float = setting(1 / 32, "auxk: weight of the auxiliary term", remedy=True)  # Gao et al. 2024
    unit_decoder: bool = setting(
        False, "keep decoder columns at unit length (true/false)", remedy=True
    )  # renormalised after each step
    tied_init: bool = setting(
        False, "start the encoder as the decoder's transpose (true/false)", remedy=True
    )  # decoder columns unit random
    # K schedule: the TopK target starts at k_start and falls geometrically to k over k_anneal_epochs.
    k_start: int = setting(0, "K schedule: start the TopK target here, anneal to K (0: off)", remedy=True)
    k_anneal_epochs: int = setting(0, "K schedule: epochs to anneal over", remedy=True)

    @property
    def reconstruction_distance(self) -> str:
        return self.rec_loss or self.loss

    @property
    def alignment_distance(self) -> str:
        return self.sparsity_loss or self.loss

    def validate(self, n_rows: int | None = None) -> "TrainConfig":
        """Raise ConfigError naming the first fault; return self when all is well.

        With `n_rows` (rows of the whole data set) the batch is checked against
        the training part, and the validation part must keep at least one row.
        """
        for fault in self._faults(n_rows):
            raise ConfigError(fault)
        return self

    def _faults(self, n_rows: int | None):
        if not isinstance(self.n_bits, int) or self.n_bits < 1:
            yield f"n_bits must be a positive integer, got {self.n_bits!r}."
        if not isinstance(self.k, int) or self.k < 1:
            yield f"k must be at least 1, got {self.k!r}."
        elif isinstance(self.n_bits, int) and self.k >= self.n_bits:
            yield f"k must be smaller than n_bits, got k={self.k} and n_bits={self.n_bits}."
        if not _is_number(self.alpha) or self.alpha < 0:
            yield f"alpha must be a number of at least 0, got {self.alpha!r}."
        if not _is_number(self.lr) or self.lr <= 0:
            yield f"lr must be a positive number, got {self.lr!r}."
        yield from self._choice_faults()
        yield from self._remedy_faults()
        if not _is_number(self.val_fraction) or not 0 <= self.val_fraction <= 0.9:
            yield f"val_fraction must lie between 0 and 0.9, got {self.val_fraction!r}."
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            yield f"batch_size must be a positive integer, got {self.batch_size!r}."
        if not isinstance(self.epochs, int) or self.epochs < 1:
            yield f"epochs must be a positive integer, got {self.epochs!r}."
        if not isinstance(self.log_every, int) or self.log_every < 1:
            yield f"log_every must be a positive integer, got {self.log_every!r}."
        if not isinstance(self.max_nonfinite_steps, int) or self.max_nonfinite_steps < 1:
            yield f"max_nonfinite_steps must be a positive integer, got {self.max_nonfinite_steps!r}."
        for name, value in (("seed", self.seed), ("split_seed", self.split_seed)):
            if not isinstance(value, int) or isinstance(value, bool):
                yield f"{name} must be an integer, got {value!r}."
        device_fault = _device_fault(self.device)
        if device_fault:
            yield device_fault
        if n_rows is not None and isinstance(self.batch_size, int) and _is_number(self.val_fraction):
            n_val = validation_size(n_rows, self.val_fraction)
            n_train = n_rows - n_val
            if n_train < 1:
                yield f"the data has {n_rows} rows, too few to train on after the validation split."
            elif self.batch_size > n_train:
                yield (
                    f"batch_size {self.batch_size} is larger than the {n_train} training rows; "
                    f"choose at most {n_train}."
                )

    def _choice_faults(self):
        """A value outside its field's choices; a field whose default is None may also be unset."""
        for field in dataclasses.fields(self):
            known, value = field.metadata["choices"], getattr(self, field.name)
            unset = field.default is None
            if known and value not in known and not (unset and value is None):
                yield f"{field.name} must be one of {', '.join(known)}{' or unset' if unset else ''}, got {value!r}."

    def _remedy_faults(self):
        for name in ("rate_weight", "aux_weight"):
            value = getattr(self, name)
            if not _is_number(value) or value < 0:
                yield f"{name} must be a number of at least 0, got {value!r}."
        if not _is_number(self.rate_min) or not _is_number(self.rate_max) or not 0 < self.rate_min < self.rate_max < 1:
            yield (
                "rate_min and rate_max must satisfy 0 < rate_min < rate_max < 1, "
                f"got {self.rate_min!r} and {self.rate_max!r}."
            )
        for name in ("revive_after", "aux_k", "k_start", "k_anneal_epochs"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                yield f"{name} must be a whole number of at least 0, got {value!r}."
        if self.revive != "none" and isinstance(self.revive_after, int) and self.revive_after < 1:
            yield f"revive_after must be at least 1 step when revive is {self.revive}, got {self.revive_after}."
        for name in ("unit_decoder", "tied_init"):
            if not isinstance(getattr(self, name), bool):
                yield f"{name} must be true or false, got {getattr(self, name)!r}."
        if isinstance(self.k_start, int) and self.k_start and isinstance(self.n_bits, int) and isinstance(self.k, int):
            if not self.k < self.k_start < self.n_bits:
                yield (
                    f"k_start must lie above k ({self.k}) and below n_bits ({self.n_bits}), "
                    f"or be 0 for no schedule, got {self.k_start}."
                )
            elif isinstance(self.k_anneal_epochs, int) and self.k_anneal_epochs < 1:
                yield "k_anneal_epochs must be at least 1 when k_start is set."

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        """A config from its JSON form. One saved before `split_seed` existed split its rows by
        `seed`, so it reads back with split_seed = seed: exactly what that run was scored on."""
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown setting {unknown[0]!r}; known settings are {', '.join(sorted(known))}.")
        if "split_seed" not in values and "seed" in values:
            values = {**values, "split_seed": values["seed"]}
        return cls(**values)

    @classmethod
    def from_json(cls, text: str) -> "TrainConfig":
        """A config from its JSON text; ConfigError with one sentence for each way the text can be wrong.

        The one reader of a config's JSON: `submit --config`, run folders, the queue and the Ray trainer.
        """
        if not text.strip():
            raise ConfigError("the file is empty; a config is a JSON object of settings.")
        try:
            values = json.loads(text)
        except json.JSONDecodeError as error:
            raise ConfigError(f"not valid JSON ({error.msg} at line {error.lineno}, column {error.colno}).") from None
        if not isinstance(values, dict):
            raise ConfigError(
                f"holds a JSON {type(values).__name__}, not an object of settings "
                '(such as {"n_bits": 1024, "k": 16}).'
            )
        try:
            return cls.from_dict(values)
        except TypeError as error:
            raise ConfigError(f"{error}.") from None

    def replace(self, **changes: Any) -> "TrainConfig":
        return dataclasses.replace(self, **changes)


# Lists derived from the fields' descriptions (see `setting`), so a new setting is described in one place.
FIELDS = dataclasses.fields(TrainConfig)
SETTING_HELP = {field.name: field.metadata["help"] for field in FIELDS}
# The settings an ablation grid may vary: the Train page's grid fields and the `submit` options that take lists.
GRID_SETTINGS = tuple(field.name for field in FIELDS if field.metadata["grid"])
# The settings whose values are a known list: a form offers them as choices instead of free text.
SETTING_CHOICES = {field.name: field.metadata["choices"] for field in FIELDS if field.metadata["choices"]}
REMEDY_FIELDS = frozenset(field.name for field in FIELDS if field.metadata["remedy"])
# Settings that leave what is learned unchanged: a checkpoint resumes across them, runs compare across them.
NEUTRAL_SETTINGS = frozenset(field.name for field in FIELDS if field.metadata["neutral"])
# How each setting is read from text; a setting that may be unset (None) is read as text.
SETTING_KINDS = {field.name: field.type if field.type in (int, float, bool) else str for field in FIELDS}
KIND_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "text"}
TRUE_WORDS, FALSE_WORDS = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def parse_setting(name: str, text: str) -> Any:
    """A setting's value read from text as its field's kind; a ConfigError naming the setting and the text if not."""
    if name not in SETTING_KINDS:
        raise ConfigError(f"unknown setting {name!r}; known settings are {', '.join(sorted(SETTING_KINDS))}.")
    kind, text = SETTING_KINDS[name], text.strip()
    if kind is bool and text.lower() in TRUE_WORDS + FALSE_WORDS:
        return text.lower() in TRUE_WORDS
    if kind is not bool:
        try:
            return kind(text)
        except ValueError:
            pass
    raise ConfigError(f"{name}: {text!r} is not {KIND_NAMES[kind]}.")


def parse_grid(texts: dict[str, str]) -> dict[str, list]:
    """Comma-separated values typed per setting, as the grid `expand_grid` takes; empty fields are left out."""
    grid = {}
    for name, text in texts.items():
        values = [parse_setting(name, value) for value in text.split(",") if value.strip()]
        if values:
            grid[name] = values
    return grid


def expand_grid(base: TrainConfig, grid: dict[str, list]) -> list[TrainConfig]:
    """Every combination of the listed values on top of `base`, each once, in the order given.

    Repeated values in one list are dropped, so `k=[4, 4]` is a single run.
    """
    for name in grid:
        if name not in SETTING_KINDS:
            raise ConfigError(
                f"unknown setting {name!r} in the grid; known settings are {', '.join(sorted(SETTING_KINDS))}."
            )
    names = list(grid)
    choices = [list(dict.fromkeys(_as_list(grid[name]))) for name in names]
    for name, values in zip(names, choices, strict=True):
        if not values:
            raise ConfigError(f"the grid lists no values for {name}.")
    return [base.replace(**dict(zip(names, combination, strict=True))) for combination in itertools.product(*choices)]


def plan_grid(base: TrainConfig, grid: dict[str, list], n_rows: int) -> list[tuple[str, TrainConfig]]:
    """(label, config) for every run of the grid, each checked against a data set of `n_rows` rows.

    The label names the run's grid values (`n_bits=64 k=4`); a run that would be refused raises
    ConfigError naming it, before anything is queued. The Train page, `submit` and the queue call this.
    """
    planned = []
    for config in expand_grid(base, grid):
        label = " ".join(f"{name}={getattr(config, name)}" for name in grid)
        try:
            config.validate(n_rows=n_rows)
        except ConfigError as error:
            raise ConfigError(f"the grid's run {label} would be refused: {error}") from None
        planned.append((label, config))
    return planned


def _as_list(values) -> list:
    return list(values) if isinstance(values, list | tuple) else [values]


# Named starting points. "paper" is the paper's setting (every remedy off). "recommended" is the best code
# benchmarks/bench_codes.py found for storage and retrieval (HPO and HPO + ICD-10-CM; the README has the
# tables): the rigid TopK code of the paper's own ablation, exactly K bits a concept, with a light
# firing-rate balance that brings back its dead bits (alone, rigid TopK left 30 % of the bits dead on HPO).
# The remedies on the paper's alignment instead kept ~50 active bits at K = 32 whatever their weights. Its
# size, N=8192 and K=40, is the one that beat sign bits by every search at their 48 bytes a concept
# (Elias-Fano coded) and kept exact Hamming search over 10x faster than faiss's float search; N and K set
# in a form or on the command line replace it, and a run is of the preset whatever its N and K.
PRESETS: dict[str, dict[str, Any]] = {
    "paper": {},
    "recommended": {
        "n_bits": 8192,
        "k": 40,
        "sparsity": "hard-topk",
        "rate_control": "balance",
        "rate_weight": 0.01,
    },
}


def preset_config(name: str, **changes: Any) -> TrainConfig:
    """The TrainConfig of a named preset, with `changes` on top; ConfigError for an unknown name."""
    if name not in PRESETS:
        raise ConfigError(f"preset must be one of {', '.join(PRESETS)}, got {name!r}.")
    return TrainConfig(**(PRESETS[name] | changes))


def preset_of(settings: "TrainConfig | Mapping[str, Any]") -> str | None:
    """The preset whose settings a config (or a runs-table row) has: its remedies and, for recommended, its
    sparsity; the others free. None when it is neither: a rigid-TopK run without the rate balance is neither.
    A setting a row lacks (an older table) counts as its default."""
    values = settings.to_dict() if isinstance(settings, TrainConfig) else settings
    default = TrainConfig().sparsity
    mine = remedy_changes(values) | {"sparsity": values.get("sparsity", default)}
    for name, preset in PRESETS.items():
        if mine == remedy_changes(preset) | {"sparsity": preset.get("sparsity", default)}:
            return name
    return None


def remedy_changes(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The remedy settings whose value differs from the default, in TrainConfig's field order (a setting
    missing from `settings` counts as its default)."""
    defaults = TrainConfig().to_dict()
    return {
        name: settings[name]
        for name in defaults
        if name in REMEDY_FIELDS and name in settings and settings[name] != defaults[name]
    }


def validation_size(n_rows: int, val_fraction: float) -> int:
    """Rows held out: round(M * fraction), at least one when the fraction is positive."""
    if val_fraction <= 0 or n_rows < 2:
        return 0
    return max(1, min(n_rows - 1, round(n_rows * val_fraction)))


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value == value


def _device_fault(device: str) -> str | None:
    if not isinstance(device, str):
        return f"device must be a string such as auto, cpu, cuda or mps, got {device!r}."
    if device in ("auto", "cpu"):
        return None
    if device == "mps":
        if not torch.backends.mps.is_available():
            return "device mps is not available on this machine; use auto or cpu."
        return None
    if device == "cuda" or device.startswith("cuda:"):
        if not torch.cuda.is_available():
            return f"device {device} is not available on this machine (no CUDA GPU); use auto or cpu."
        index = device.partition(":")[2]
        if index and (not index.isdigit() or int(index) >= torch.cuda.device_count()):
            return f"device {device} does not exist; this machine has {torch.cuda.device_count()} CUDA device(s)."
        return None
    return f"device must be auto, cpu, cuda, cuda:N or mps, got {device!r}."
