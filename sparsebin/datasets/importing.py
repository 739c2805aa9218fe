"""Bring-your-own embeddings: read, validate and store a user's file as a dataset.

Every fault raises a DataError naming the file and the row or column, and a rejected
import leaves nothing in the data folder. A float .npy is read through a memory map
and written back in fixed chunks, so a file larger than memory imports without ever
being held whole.
"""

import csv
import mmap
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from sparsebin.datasets.store import (
    EMBEDDINGS_FILE,
    DataError,
    NpyWriter,
    atomic_dataset_folder,
    check_name,
    now_iso,
    package_versions,
    resolve_data_dir,
    write_concepts,
    write_meta,
)

EMBEDDING_FORMATS = (".npy", ".npz", ".parquet", ".csv")
LABEL_FORMATS = (".csv", ".parquet")
DEFAULT_MAX_BYTES = 4 * 2**30
_CHUNK_BYTES = 32 * 2**20  # per chunk of rows read, checked and written: bounds import memory
_PREFERRED_ARRAY_NAMES = ("embeddings", "embedding", "vectors")


def _check_file(path: Path, formats: tuple[str, ...], max_bytes: int) -> None:
    if path.suffix.lower() not in formats:
        raise DataError(
            f"{path.name}: not a supported format {path.suffix or '(no extension)'!r}; use one of {', '.join(formats)}"
        )
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    size = path.stat().st_size
    if size > max_bytes:
        raise DataError(
            f"{path.name}: the file is {size / 2**30:.2f} GiB, above the import size limit "
            f"of {max_bytes / 2**30:.2f} GiB (max_bytes={max_bytes})"
        )


def _check_numeric_dtype(dtype: np.dtype, path: Path) -> None:
    if dtype.kind not in "iuf":
        raise DataError(f"{path.name}: embeddings are not numeric (dtype {dtype})")


def _read_npz(path: Path) -> np.ndarray:
    """The array named like embeddings, else the only array in the archive."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            names = list(archive.files)
            chosen = next((name for name in _PREFERRED_ARRAY_NAMES if name in names), None)
            if chosen is None and len(names) == 1:
                chosen = names[0]
            if chosen is None:
                raise DataError(
                    f"{path.name}: holds {len(names)} arrays ({', '.join(names) or 'none'}); "
                    "name the embeddings array 'embeddings' or save a single array"
                )
            return archive[chosen]
    except ValueError as error:
        if isinstance(error, DataError):
            raise
        raise DataError(f"{path.name}: embeddings are not numeric ({error})") from None


def _read_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as error:
        raise DataError(f"{path.name}: embeddings are not numeric ({error})") from None


def _list_column_to_array(column: pa.ChunkedArray, column_name: str, path: Path) -> np.ndarray:
    """A list/array column as a (rows, dim) array, refusing rows of different lengths."""
    column = column.combine_chunks()
    lengths = column.value_lengths().to_numpy(zero_copy_only=False)
    if len(lengths) and (np.isnan(lengths.astype(float)).any() or (lengths != lengths[0]).any()):
        lengths = np.nan_to_num(lengths.astype(float), nan=-1)
        bad = int(np.flatnonzero(lengths != lengths[0])[0])
        raise DataError(
            f"{path.name}: ragged rows in column {column_name!r}: row 0 has {int(lengths[0])} "
            f"values but row {bad} has {max(int(lengths[bad]), 0)}"
        )
    values = column.flatten()
    if not (pa.types.is_integer(values.type) or pa.types.is_floating(values.type)):
        raise DataError(f"{path.name}: column {column_name!r} is not numeric (values of type {values.type})")
    dim = int(lengths[0]) if len(lengths) else 0
    return values.to_numpy(zero_copy_only=False).astype(np.float32).reshape(len(column), dim)


def _read_parquet(path: Path) -> np.ndarray:
    """One list column (preferring one named like embeddings), or all numeric columns."""
    table = pq.read_table(path)
    list_columns = [
        field.name
        for field in table.schema
        if pa.types.is_list(field.type) or pa.types.is_large_list(field.type) or pa.types.is_fixed_size_list(field.type)
    ]
    if list_columns:
        preferred = [name for name in _PREFERRED_ARRAY_NAMES if name in list_columns]
        if len(list_columns) > 1 and not preferred:
            raise DataError(
                f"{path.name}: several list columns ({', '.join(list_columns)}); "
                "name the embeddings column 'embeddings'"
            )
        name = (preferred or list_columns)[0]
        return _list_column_to_array(table.column(name), name, path)
    for field in table.schema:
        if not (pa.types.is_integer(field.type) or pa.types.is_floating(field.type)):
            raise DataError(f"{path.name}: column {field.name!r} is not numeric (type {field.type})")
    return (
        np.column_stack([column.to_numpy(zero_copy_only=False).astype(np.float32) for column in table.columns])
        if table.num_columns
        else np.empty((table.num_rows, 0), np.float32)
    )


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _read_csv(path: Path) -> np.ndarray:
    """Numeric columns, with a header row when the first row is not all numbers."""
    with open(path, newline="") as handle:
        first_row = next(csv.reader(handle), [])
    # pandas writes a bare frame's header as "0,1,2,..."; that is a header, not a row.
    counting = [str(position) for position in range(len(first_row))]
    has_header = any(not _is_number(field) for field in first_row) or first_row == counting
    first_data_line = 2 if has_header else 1
    try:
        frame = pd.read_csv(path, header=0 if has_header else None, skip_blank_lines=True)
    except pd.errors.ParserError as error:
        raise DataError(f"{path.name}: ragged rows ({error})") from None
    except pd.errors.EmptyDataError:
        raise DataError(f"{path.name}: fewer than 2 rows (the file is empty)") from None
    for position, column in enumerate(frame.columns):
        if not pd.api.types.is_numeric_dtype(frame[column]):
            values = pd.to_numeric(frame[column], errors="coerce")
            bad = int(np.flatnonzero(values.isna() & frame[column].notna())[0])
            label = column if has_header else position
            raise DataError(
                f"{path.name}: column {label!r} is not numeric "
                f"(line {bad + first_data_line}: {frame[column].iloc[bad]!r})"
            )
    values = frame.to_numpy(dtype=np.float32)
    missing = np.flatnonzero(np.isnan(values).any(axis=1))
    if len(missing):
        _raise_if_short_row(path, int(missing[0]), frame.shape[1], has_header, first_data_line)
    return values


def _raise_if_short_row(path: Path, row: int, width: int, has_header: bool, first_data_line: int) -> None:
    """pandas pads short rows with NaN; name them as ragged rather than as NaN."""
    with open(path, newline="") as handle:
        rows = (fields for fields in csv.reader(handle) if fields)
        if has_header:
            next(rows)
        for index, fields in enumerate(rows):
            if index == row:
                if len(fields) != width:
                    raise DataError(
                        f"{path.name}: ragged rows: line {row + first_data_line} has "
                        f"{len(fields)} values, expected {width}"
                    )
                return


READERS = {
    ".npy": _read_npy,
    ".npz": _read_npz,
    ".parquet": _read_parquet,
    ".csv": _read_csv,
}


def read_embeddings(path: Path) -> np.ndarray:
    """The (rows, dim) numeric array in a supported file; .npy stays memory-mapped."""
    array = READERS[path.suffix.lower()](path)
    _check_numeric_dtype(array.dtype, path)
    if array.ndim != 2:
        raise DataError(f"{path.name}: embeddings must be a 2-d table (rows x dims), got shape {array.shape}")
    rows, dim = array.shape
    if rows < 2 or dim < 2:
        raise DataError(f"{path.name}: need at least 2 rows and 2 dims, got {rows} rows x {dim} dims")
    return array


def check_chunk(chunk: np.ndarray, first_row: int, path: Path) -> None:
    """Refuse NaN/inf and all-zero rows, naming the first bad row of the whole file."""
    finite = np.isfinite(chunk).all(axis=1)
    if not finite.all():
        bad = first_row + int(np.flatnonzero(~finite)[0])
        raise DataError(f"{path.name}: row {bad} contains NaN or inf")
    zero = ~chunk.any(axis=1)
    if zero.any():
        bad = first_row + int(np.flatnonzero(zero)[0])
        raise DataError(f"{path.name}: row {bad} is all zeros (it has no direction)")


def read_labels(path: Path, rows: int, max_bytes: int) -> pd.DataFrame:
    """The concept table from a labels file: id and name required; category, parents optional."""
    _check_file(path, LABEL_FORMATS, max_bytes)
    if path.suffix.lower() == ".csv":
        labels = pd.read_csv(path, dtype={"id": str, "name": str, "category": str})
    else:
        labels = pd.read_parquet(path)
    missing = [column for column in ("id", "name") if column not in labels.columns]
    if missing:
        raise DataError(f"{path.name}: labels need columns 'id' and 'name'; missing {', '.join(missing)}")
    if len(labels) != rows:
        raise DataError(f"{path.name}: {len(labels)} label rows but the embeddings have {rows} rows")
    ids = labels["id"].astype(str)
    if labels["id"].isna().any():
        bad = int(np.flatnonzero(labels["id"].isna())[0])
        raise DataError(f"{path.name}: row {bad} has no id")
    duplicated = ids.duplicated(keep=False)
    if duplicated.any():
        first = ids[duplicated].iloc[0]
        where = np.flatnonzero(ids == first)[:5].tolist()
        raise DataError(f"{path.name}: duplicate id {first!r} in column 'id' (rows {where})")
    concepts = pd.DataFrame(
        {
            "id": ids.to_numpy(),
            "name": labels["name"].fillna("").astype(str).to_numpy(),
            "source": "user",
            "category": (labels["category"].fillna("").astype(str).to_numpy() if "category" in labels else ""),
            "depth": _read_depths(labels, path) if "depth" in labels else -1,
            "parents": (
                [_parse_parents(value) for value in labels["parents"]]
                if "parents" in labels
                else [[] for _ in range(rows)]
            ),
        }
    )
    return concepts


def _read_depths(labels: pd.DataFrame, path: Path) -> np.ndarray:
    depths = pd.to_numeric(labels["depth"], errors="coerce")
    bad = depths.isna() & labels["depth"].notna()
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DataError(f"{path.name}: column 'depth' is not an integer at row {row}: {labels['depth'].iloc[row]!r}")
    return depths.fillna(-1).astype(int).to_numpy()


def _parse_parents(value) -> list[str]:
    """Parents as a list, or in a CSV cell as ids separated by ';' or '|'."""
    if isinstance(value, list | tuple | np.ndarray):
        return [str(item) for item in value]
    if value is None or (isinstance(value, float) and np.isnan(value)) or value == "":
        return []
    return [item.strip() for item in str(value).replace("|", ";").split(";") if item.strip()]


def index_labels(rows: int) -> pd.DataFrame:
    """Without a labels file, each row is named by its index."""
    return pd.DataFrame(
        {
            "id": [str(row) for row in range(rows)],
            "name": [f"row {row}" for row in range(rows)],
            "source": "user",
            "category": "",
            "depth": -1,
            "parents": [[] for _ in range(rows)],
        }
    )


def import_dataset(
    embeddings_file: str | Path,
    *,
    name: str,
    labels_file: str | Path | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    data_dir: Path | None = None,
    overwrite: bool = False,
) -> Path:
    """Validate a user's embeddings (and labels) and store them as dataset `name`.

    Returns the dataset folder. Raises DataError, naming the file and the row or
    column, for every fault; nothing is written unless the whole import succeeds.
    """
    check_name(name)
    embeddings_path = Path(embeddings_file)
    _check_file(embeddings_path, EMBEDDING_FORMATS, max_bytes)
    if (resolve_data_dir(data_dir) / name).exists() and not overwrite:
        raise DataError(f"a dataset named {name!r} already exists; choose another name")
    array = read_embeddings(embeddings_path)
    rows, dim = array.shape
    labels_path = Path(labels_file) if labels_file is not None else None
    concepts = read_labels(labels_path, rows, max_bytes) if labels_path else index_labels(rows)

    with atomic_dataset_folder(name, data_dir) as folder:
        writer = NpyWriter(folder / EMBEDDINGS_FILE, rows, dim)
        chunk_rows = chunk_rows_for(dim)
        try:
            for start in range(0, rows, chunk_rows):
                chunk = np.asarray(array[start : start + chunk_rows], dtype=np.float32)
                check_chunk(chunk, start, embeddings_path)
                writer.write(chunk)
                _release_pages(array, start, len(chunk))
        except BaseException:
            writer.abort()
            raise
        checksum = writer.close()
        write_concepts(folder, concepts)
        write_meta(
            folder,
            {
                "name": name,
                "kind": "user",
                "source": "user",
                "model": None,
                "dimension": dim,
                "count": rows,
                "normalized": False,
                "built_at": now_iso(),
                "source_files": {
                    "embeddings": embeddings_path.name,
                    "labels": labels_path.name if labels_path else None,
                },
                "source_dtype": str(array.dtype),
                "package_versions": package_versions(),
                "checksum": {EMBEDDINGS_FILE: f"sha256:{checksum}"},
            },
        )
    return resolve_data_dir(data_dir) / name


def chunk_rows_for(dim: int) -> int:
    """Rows per import chunk: about 32 MiB of float32, whatever the dimension."""
    return max(1, _CHUNK_BYTES // (4 * dim))


def _release_pages(array: np.ndarray, start: int, count: int) -> None:
    """Drop a finished chunk of a memory-mapped input from our resident set.

    Pages read through a map count towards the process's RSS until unmapped; letting
    them go chunk by chunk keeps a 3 GiB import near one chunk of resident memory.
    The pages stay in the OS file cache, so nothing is read twice.
    """
    mapping = getattr(array, "_mmap", None)
    if mapping is None or not hasattr(mmap, "MADV_DONTNEED"):
        return
    row_bytes = array.strides[0]
    # np.memmap maps from the offset rounded down to the allocation granularity.
    begin = array.offset % mmap.ALLOCATIONGRANULARITY + start * row_bytes
    aligned = begin - begin % mmap.PAGESIZE
    try:
        mapping.madvise(mmap.MADV_DONTNEED, aligned, begin + count * row_bytes - aligned)
    except (OSError, ValueError):
        return
