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
    SETTING_KINDS,
    SPARSITIES,
    TrainConfig,
    parse_grid,
    plan_grid,
    preset_config,
)
from sparsebin.errors import ConfigError, DataError, DuplicateRunError
from sparsebin.search import elias_fano
from sparsebin.study import STUDY, SWEEP, study_configs, sweep_configs

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

# The form's settings, four to a row: (setting, label, widget, the widget's options). Defaults come from TrainConfig.
DISTANCE_CHOICES = {None: "as loss", **DISTANCE_NAMES}
FORM = (
    ("n_bits", "N (bits)", "number_input", {"min_value": 1, "max_value": 65536}),
    ("k", "K (target active bits)", "number_input", {"min_value": 1, "max_value": 65536}),
    ("alpha", "alpha", "number_input", {"min_value": 0.0, "max_value": 100.0}),
    ("loss", "loss", "selectbox", {"options": LOSSES}),
    ("rounding", "rounding", "selectbox", {"options": ROUNDINGS, "format_func": ROUNDING_NAMES.get}),
    ("sparsity", "sparsity", "selectbox", {"options": SPARSITIES, "format_func": SPARSITY_NAMES.get}),
    ("epochs", "epochs", "number_input", {"min_value": 1, "max_value": 10000}),
    ("batch_size", "batch", "number_input", {"min_value": 1, "max_value": 1_000_000}),
    ("lr", "lr", "number_input", {"min_value": 0.0, "max_value": 1.0, "format": "%.4f"}),
    ("seed", "seed", "number_input", {"min_value": 0, "max_value": 2**31 - 1}),
    ("device", "device", "selectbox", {"options": ("auto", "cpu", "cuda", "mps")}),
    (
        "rec_loss",
        "reconstruction distance",
        "selectbox",
        {"options": list(DISTANCE_CHOICES), "format_func": DISTANCE_CHOICES.get},
    ),
    (
        "sparsity_loss",
        "alignment distance",
        "selectbox",
        {"options": list(DISTANCE_CHOICES), "format_func": DISTANCE_CHOICES.get},
    ),
)


def show_preset() -> None:
    """Put the chosen preset's values into the form's fields that a preset sets (its size and sparsity scheme)."""
    chosen = preset_config(st.session_state["preset"])
    for field in {field for field, *_ in FORM} & set().union(*PRESETS.values()):
        st.session_state[field] = getattr(chosen, field)


def form_widget(column, field: str, label: str, widget: str, options: dict):
    """One setting's widget, starting at TrainConfig's default; a number comes back as the setting's kind."""
    default = getattr(defaults, field)
    if widget == "selectbox":
        return column.selectbox(label, index=list(options["options"]).index(default), key=field, **options)
    return SETTING_KINDS[field](column.number_input(label, value=default, key=field, **options))


preset = st.selectbox("preset", list(PRESETS), format_func=PRESET_NAMES.get, key="preset", on_change=show_preset)
settings = ", ".join(f"{field}={value}" for field, value in PRESETS[preset].items()) or "every remedy off"
st.caption(f"The preset's settings: {settings}. The settings below apply on top of it.")

with st.form("train_form", enter_to_submit=False):  # Enter in a number field only moves on
    columns = st.columns(4)
    chosen = {
        field: form_widget(columns[place % 4], field, label, widget, options)
        for place, (field, label, widget, options) in enumerate(FORM)
    }
    label = columns[len(FORM) % 4].text_input("label (optional)", key="label")
    again = columns[(len(FORM) + 1) % 4].checkbox(
        "Queue again", key="again", help="queue a run even when one identical in every setting and seed exists"
    )
    submitted = st.form_submit_button("Queue run", key="submit_run")
    st.caption(
        f"One-click study of the method's ablations at these settings, {len(STUDY)} runs a seed: the paper's setting, "
        "the cosine replaced by MSE and L1 in either term and both (per entry and scale-fair), rounding none, hard "
        "and stochastic; every run is scored on the same held-out rows."
    )
    left, right = st.columns([1, 3])
    seeds = left.number_input("training seeds", 1, 20, 3, key="study_seeds")
    study_submitted = right.form_submit_button("Queue the study", key="submit_study")
    st.caption(
        f"The paper's N x K sweep at its setting and the epochs, batch and lr above: N in "
        f"{', '.join(map(str, SWEEP['n_bits']))} by K in {', '.join(map(str, SWEEP['k']))}; a run already queued "
        "or finished (the study's paper setting at the same N and K) is left out."
    )
    left, right = st.columns([1, 3])
    sweep_seeds = left.number_input("sweep seeds", 1, 20, 1, key="sweep_seeds")
    sweep_submitted = right.form_submit_button("Queue the paper's N x K sweep", key="submit_sweep")

config = preset_config(preset, **chosen)


def queue(planned: list[tuple[str, TrainConfig]], what: str) -> None:
    """Queue the planned (label, config) runs; a refusal shows as its one sentence, and nothing is queued."""
    try:
        configs, labels = [config for _, config in planned], [label for label, _ in planned]
        jobs = _shared.store().submit_many(name, configs, labels, again=again)
    except DuplicateRunError as error:
        st.error(f"{error}; tick Queue again to queue anyway.")
    except (ConfigError, DataError) as error:
        st.error(str(error))
    else:
        first, last = jobs[0], jobs[-1]
        one = f"Queued job {first.id} (run {first.run_id})."
        st.success(one if len(jobs) == 1 else f"Queued {what}: {len(jobs)} runs (jobs {first.id}-{last.id}).")


def queue_plan(planned: list[tuple[str, TrainConfig]], plan: str, what: str) -> None:
    """Queue what a plan (the study, the sweep) lacks: runs already queued, running or finished are left out."""
    kept = planned if again else _shared.store().missing(name, planned)
    if len(kept) < len(planned):
        st.info(f"{len(planned) - len(kept)} of the {plan}'s {len(planned)} runs are already queued or finished.")
    if kept:
        queue(kept, what)


if submitted:
    queue([(label, config)], "the run")
if study_submitted:
    try:
        queue_plan(study_configs(config, int(seeds)), "study", "the study")
    except ConfigError as error:
        st.error(str(error))
if sweep_submitted:
    queue_plan(sweep_configs(config, int(sweep_seeds)), "sweep", "the paper's N x K sweep")

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
            planned = plan_grid(config, grid, count)
            st.write(f"This grid queues **{len(planned)}** runs.")
            if st.button(f"Queue {len(planned)} runs", key="submit_grid"):
                queue(planned, "the grid")
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
        "preset), as a plain list of ceil(log2 N)-bit indices or Elias-Fano coded (what `export` writes)."
    )

_jobs.job_list()
