"""Train: one run or an ablation grid, queued for the worker; the job list with live progress."""

import streamlit as st

from pages import _jobs, _shared
from sparsebin.config import (
    DISTANCE_NAMES,
    GRID_SETTINGS,
    LOSSES,
    PRESETS,
    ROUNDINGS,
    SETTING_CHOICES,
    SPARSITIES,
    TrainConfig,
    expand_grid,
    parse_grid,
    preset_config,
)
from sparsebin.errors import ConfigError, DataError
from sparsebin.search import elias_fano
from sparsebin.study import STUDY, study_configs

ROUNDING_NAMES = {"ste": "pass-through", "none": "removed", "hard": "hard", "stochastic": "stochastic"}
SPARSITY_NAMES = {"align": "paper (align)", "hard-topk": "rigid TopK", "l1": "L1", "none": "none"}
CHOICE_NAMES = {"rounding": ROUNDING_NAMES, "sparsity": SPARSITY_NAMES}
PRESET_NAMES = {
    "paper": "paper (the method as published)",
    "recommended": "recommended (rigid TopK, firing-rate balance, N=8192, K=40)",
}

st.title("Train")
_shared.live_section(_shared.build_banner, "train_builds")
name = _shared.pick_dataset("train_dataset")
if name is None:
    st.stop()
chosen_data = next(item for item in _shared.datasets() if item["name"] == name)
count = chosen_data["count"]
defaults = TrainConfig()

FORM_FIELDS = ("n_bits", "k", "alpha", "loss", "rounding", "sparsity", "epochs", "batch_size", "lr", "seed")


def show_preset() -> None:
    """Put the chosen preset's values into the form's fields that a preset sets (its size and sparsity scheme)."""
    chosen = preset_config(st.session_state["preset"])
    for field in set(FORM_FIELDS) & set().union(*PRESETS.values()):
        st.session_state[field] = getattr(chosen, field)


preset = st.selectbox("preset", list(PRESETS), format_func=PRESET_NAMES.get, key="preset", on_change=show_preset)
settings = ", ".join(f"{field}={value}" for field, value in PRESETS[preset].items()) or "every remedy off"
st.caption(f"The preset's settings: {settings}. The settings below apply on top of it.")

with st.form("train_form"):
    a, b, c, d = st.columns(4)
    n_bits = a.number_input("N (bits)", 1, 65536, defaults.n_bits, key="n_bits")
    k = b.number_input("K (target active bits)", 1, 65536, defaults.k, key="k")
    alpha = c.number_input("alpha", 0.0, 100.0, defaults.alpha, key="alpha")
    loss = d.selectbox("loss", LOSSES, key="loss")
    rounding = a.selectbox("rounding", ROUNDINGS, format_func=ROUNDING_NAMES.get, key="rounding")
    sparsity = b.selectbox("sparsity", SPARSITIES, format_func=SPARSITY_NAMES.get, key="sparsity")
    epochs = c.number_input("epochs", 1, 10000, defaults.epochs, key="epochs")
    batch_size = d.number_input("batch", 1, 1_000_000, defaults.batch_size, key="batch_size")
    lr = a.number_input("lr", 0.0, 1.0, defaults.lr, format="%.4f", key="lr")
    seed = b.number_input("seed", 0, 2**31 - 1, defaults.seed, key="seed")
    device = c.selectbox("device", ["auto", "cpu", "cuda", "mps"], key="device")
    label = d.text_input("label (optional)", key="label")
    named = {None: "as loss", **DISTANCE_NAMES}
    rec_loss = a.selectbox("reconstruction distance", list(named), format_func=named.get, key="rec_loss")
    sparsity_loss = b.selectbox("alignment distance", list(named), format_func=named.get, key="sparsity_loss")
    submitted = st.form_submit_button("Queue run", key="submit_run")
    st.caption(
        "One-click study of the method's ablations at these N, K, epochs and other settings: "
        + ", ".join(STUDY)
        + " (MSE/L1 in the reconstruction term as the scale-fair per-row sum), each for training seeds 0, 1, ...; "
        "the split seed stays fixed, so every run is scored on the same held-out rows."
    )
    left, right = st.columns([1, 3])
    seeds = left.number_input("training seeds", 1, 20, 3, key="study_seeds")
    study_submitted = right.form_submit_button("Queue the study", key="submit_study")

config = preset_config(
    preset,
    n_bits=int(n_bits),
    k=int(k),
    alpha=float(alpha),
    loss=loss,
    rec_loss=rec_loss,
    sparsity_loss=sparsity_loss,
    rounding=rounding,
    sparsity=sparsity,
    epochs=int(epochs),
    batch_size=int(batch_size),
    lr=float(lr),
    seed=int(seed),
    device=device,
)
if submitted:
    try:
        job = _shared.store().submit(name, config.validate(n_rows=count), label=label)
        st.success(f"Queued job {job.id} (run {job.run_id}).")
    except (ConfigError, DataError) as error:
        st.error(str(error))
if study_submitted:
    try:
        study = study_configs(config, int(seeds))
        jobs = _shared.store().submit_many(name, [c for _, c in study], [study_label for study_label, _ in study])
        st.success(f"Queued the study: {len(jobs)} runs (jobs {jobs[0].id}-{jobs[-1].id}).")
    except (ConfigError, DataError) as error:
        st.error(str(error))

with st.expander("Ablation grid: every combination of the listed values, on top of the settings above"):
    st.caption(
        "Pick values for the settings with known choices and type comma-separated numbers for the others; "
        "a setting left empty keeps the form's value."
    )
    columns = st.columns(len(GRID_SETTINGS))
    grid, typo = {}, False
    for column, setting in zip(columns, GRID_SETTINGS, strict=True):
        choices = SETTING_CHOICES.get(setting)
        if choices:
            names = CHOICE_NAMES.get(setting, {})
            picked = column.multiselect(
                setting, choices, key=f"grid_{setting}", format_func=lambda v, n=names: n.get(v, v)
            )
            if picked:
                grid[setting] = picked
            continue
        text = column.text_input(setting, key=f"grid_{setting}", placeholder="e.g. 1, 2")
        try:  # checked as typed: the sentence sits under the field
            grid.update(parse_grid({setting: text}))
        except ConfigError as error:
            column.error(str(error))
            typo = True
    if grid and not typo:
        try:
            planned = expand_grid(config, grid)
            for planned_config in planned:
                try:
                    planned_config.validate(n_rows=count)
                except ConfigError as error:
                    which = " ".join(f"{setting}={getattr(planned_config, setting)}" for setting in grid)
                    raise ConfigError(f"the grid's run {which} would be refused: {error}") from None
            st.write(f"This grid queues **{len(planned)}** runs.")
            if st.button(f"Queue {len(planned)} runs", key="submit_grid"):
                jobs = _shared.store().submit_grid(name, config, grid)
                st.success(f"Queued {len(jobs)} runs (jobs {jobs[0].id}-{jobs[-1].id}).")
        except (ConfigError, DataError) as error:
            st.error(str(error))

with st.expander("How many active bits fit in a byte budget"):
    budget = st.number_input(
        "bytes per concept",
        1,
        1 << 20,
        max(1, -(-int(chosen_data["dim"] or 8) // 8)),
        key="byte_budget",
        help="starts at the size of this dataset's sign bits: one bit per dimension",
    )
    st.dataframe(elias_fano.counts_within(int(budget)), hide_index=True)
    st.caption(
        "The largest K for each N when every concept has exactly K active bits (rigid TopK, the recommended "
        "preset): stored as a plain list of ceil(log2 N)-bit indices, or Elias-Fano coded (what `export` writes "
        "as codes_elias_fano.npz; the runs table's bits_elias_fano). Measured at 48 bytes, the size of sign bits "
        "of 384 dimensions (README): with the recommended preset, N=8192, K=40 and N=4096, K=44 both beat sign "
        "bits by Hamming, Jaccard and asymmetric recall on HPO and on HPO + ICD-10-CM; N=4096, K=44 searches "
        "more slowly (each query walks M K^2 / N postings)."
    )

_jobs.job_list()
