"""Export a finished run for use outside sparsebin.

<out>/codes.npy              packed bits (np.packbits), one row per concept
<out>/codes_elias_fano.npz   the same codes as Elias-Fano coded lists of active indices, the compact form
                              (`sparsebin.search.elias_fano.load` / `decode` read it back to packed bits)
<out>/encoder.safetensors    encoder weight and bias (and centre c when trained with one: u = (x - c) W^T + b);
                              the model and config in its metadata
<out>/metrics.csv            one row per split, scalar metrics only
<out>/concepts.csv           each concept's active bits, beside its id and name
<out>/config.json            exactly what was trained
"""

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
from safetensors.torch import save_file

from sparsebin import runfolder
from sparsebin.errors import DataError
from sparsebin.files import BIT_CHUNK_ROWS, atomic_path, write_atomic
from sparsebin.search import elias_fano
from sparsebin.search.codes import unpack_bits


def export_run(run_folder: Path, out_dir: Path, concepts: pd.DataFrame | None = None) -> dict[str, Path]:
    """Write the run's codes, encoder, metrics and concept table to `out_dir`; return the paths.

    Every artifact is read (and checked) before anything is written, so a damaged
    run leaves no half-filled export behind.
    """
    run_folder, out_dir = Path(run_folder), Path(out_dir)
    config = runfolder.load_config(run_folder)
    metrics = runfolder.load_metrics(run_folder)
    codes = runfolder.load_codes(run_folder, mmap=True)
    model = runfolder.load_model(run_folder)
    if concepts is not None and len(concepts) != len(codes):
        raise DataError(f"the concept table has {len(concepts)} rows but run {run_folder.name} has {len(codes)} codes.")
    try:
        coded = elias_fano.encode(codes, config.n_bits)
    except ValueError as error:
        raise DataError(f"run {run_folder.name} has damaged codes: {error}") from error
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {
        "codes": out_dir / "codes.npy",
        "codes_elias_fano": out_dir / "codes_elias_fano.npz",
        "encoder": out_dir / "encoder.safetensors",
        "metrics": out_dir / "metrics.csv",
        "concepts": out_dir / "concepts.csv",
        "config": out_dir / "config.json",
    }
    with atomic_path(written["codes"]) as partial:
        shutil.copyfile(run_folder / "codes.npy", partial)  # copied, not read: it can be 100+ MB
    elias_fano.save(written["codes_elias_fano"], coded)
    encoder = {name: value.detach().cpu().contiguous() for name, value in model.encoder.state_dict().items()}
    if model.centre is not None:  # u = (x - centre) @ weight.T + bias
        encoder["centre"] = model.centre.detach().cpu().contiguous()
    meta = {"model": model.spec.to_json(), "config": config.to_json()}
    with atomic_path(written["encoder"]) as partial:
        save_file(encoder, str(partial), metadata=meta)
    write_atomic(written["metrics"], metrics_table(metrics).to_csv(index=False).encode())
    concept_csv = concept_table(codes, config.n_bits, concepts).to_csv(index=False).encode()
    write_atomic(written["concepts"], concept_csv)
    runfolder.save_json(written["config"], config.to_dict())
    return written


def metrics_table(metrics: dict) -> pd.DataFrame:
    """One row per split; lists (histograms, firing frequencies) are left out of the CSV."""
    rows = []
    for split, values in metrics.items():
        row = {"split": split}
        row.update({name: value for name, value in values.items() if name != "split" and _is_scalar(value)})
        rows.append(row)
    return pd.DataFrame(rows)


def concept_table(codes: np.ndarray, n_bits: int, concepts: pd.DataFrame | None = None) -> pd.DataFrame:
    """Each concept's active bit indices as a space-separated string, with its count.

    Codes are unpacked a block of rows at a time: all at once would take M x N
    bytes (about 1 GB at 117k concepts x 8192 bits).
    """
    table = pd.DataFrame({"row": np.arange(len(codes))})
    if concepts is not None:
        for column in ("id", "name", "source", "category"):
            if column in concepts:
                table[column] = concepts[column].to_numpy()
    counts, lists = [], []
    for start in range(0, len(codes), BIT_CHUNK_ROWS):
        bits = unpack_bits(codes[start : start + BIT_CHUNK_ROWS], n_bits)  # (rows, N) of 0/1
        counts.append(bits.sum(axis=1))
        lists += [" ".join(map(str, np.flatnonzero(row))) for row in bits]
    table["n_active"] = np.concatenate(counts) if counts else np.zeros(0, dtype=int)
    table["bits"] = lists
    return table


def _is_scalar(value) -> bool:
    return isinstance(value, int | float | str | bool) or value is None
