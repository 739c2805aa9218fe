"""Data: the built-in datasets with build buttons and progress, and uploads of your own embeddings."""

import streamlit as st

from pages import _shared
from sparsebin.datasets import BUILDABLE_DATASETS, JOINED_DATASETS, start_build
from sparsebin.datasets.importing import import_uploaded
from sparsebin.errors import DataError

st.title("Data")


def builtin_panel() -> None:
    st.subheader("Built-in datasets")
    present = {item["name"]: item for item in _shared.datasets()}  # read on every refresh, so a finished build shows
    building = False
    for name in BUILDABLE_DATASETS:
        with st.container(border=True):
            info, action = st.columns([4, 1])
            item = present.get(name)
            info.markdown(
                f"**{name}**: "
                + (f"{item['count']:,} concepts x {item['dim']}, built {item['built_at']}" if item else "not built")
            )
            if name in JOINED_DATASETS:
                parts = " and ".join(JOINED_DATASETS[name])
                info.caption(
                    f"Every concept of {parts} in one dataset (the `source` column tells them apart); "
                    "made from their builds, building a missing one first."
                )
            with info:
                running = _shared.build_progress(name)
            building |= running
            if not running and action.button("Rebuild" if item else "Build", key=f"build_{name}"):
                start_build(name)
                st.rerun()
    if building:
        st.caption("Builds run at low priority (nice 10): a run you queue trains at full speed meanwhile.")


_shared.live_section(builtin_panel, "data")
st.subheader("Your own embeddings")
st.caption(".npy, .npz, .parquet or .csv with one row per concept; an optional labels table (.csv or .parquet).")
with st.form("upload_form"):
    name = st.text_input("Dataset name", key="upload_name")
    embeddings = st.file_uploader("Embeddings", type=["npy", "npz", "parquet", "csv"], key="upload_embeddings")
    labels = st.file_uploader("Labels (optional)", type=["csv", "parquet"], key="upload_labels")
    replace = st.checkbox("Replace a dataset of the same name", key="upload_replace")
    submitted = st.form_submit_button("Import", key="upload_submit")
if submitted:
    if embeddings is None:
        st.error("Choose an embeddings file to import.")
    else:
        try:
            import_uploaded(
                (embeddings.name, embeddings.getvalue()),
                labels=(labels.name, labels.getvalue()) if labels is not None else None,
                name=name,
                overwrite=replace,
            )
            count = next(item["count"] for item in _shared.datasets() if item["name"] == name)
            st.success(f"Imported {embeddings.name} as dataset {name} ({count:,} concepts).")
        except DataError as error:
            st.error(str(error))

present = _shared.datasets()
if present:
    st.subheader("Present")
    st.dataframe([{k: str(v) for k, v in item.items()} for item in present], hide_index=True, key="data_list")
