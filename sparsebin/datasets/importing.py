"""Bring-your-own embeddings: read, validate and store a user's file as a dataset.

Every fault raises a DataError naming the file and the row or column, and a rejected
import leaves nothing in the data folder. A float .npy is read through a memory map
and written back in fixed chunks, so a file larger than memory imports without ever
being held whole.
"""

import codecs
import csv
import errno
import json
import re
import shutil
import tempfile
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from sparsebin.datasets.store import (
    EMBEDDINGS_FILE,
    META_FILE,
    NpyWriter,
    atomic_dataset_folder,
    check_name,
    now_iso,
    package_versions,
    resolve_data_dir,
    write_concepts,
    write_meta,
)
from sparsebin.errors import DataError
from sparsebin.files import release_pages

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
    if path.is_dir():
        raise DataError(f"{path.name}: is a folder, not a file; give the {path.suffix} file inside it")
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    size = path.stat().st_size
    if size == 0:
        raise DataError(f"{path.name}: the file is empty (0 bytes)")
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
    if not zipfile.is_zipfile(path):
        raise DataError(
            f"{path.name}: not a readable .npz archive (no zip directory at its end: it is truncated "
            "or in another format); save it again with numpy.savez"
        )
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
    except DataError:
        raise
    except (zipfile.BadZipFile, EOFError, OSError, zlib.error) as error:
        raise DataError(
            f"{path.name}: the .npz archive is damaged ({type(error).__name__}); it may be truncated"
        ) from None
    except ValueError as error:
        raise DataError(f"{path.name}: embeddings are not numeric ({_first_line(error)})") from None


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def _npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """The shape, dtype and data offset an .npy file announces, checked against the file's size.

    An .npy file is a signature, a header giving shape and dtype, then the raw
    values; a file cut short, or a header that does not match what follows,
    gets a sentence naming both sizes instead of numpy's EOFError or mmap error.
    """
    size = path.stat().st_size
    with open(path, "rb") as handle:
        if handle.read(6) != b"\x93NUMPY":
            raise DataError(
                f"{path.name}: not a NumPy .npy file (it does not begin with the .npy signature); "
                "save it with numpy.save, or give it the extension of its real format"
            )
        handle.seek(0)
        try:
            version = np.lib.format.read_magic(handle)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(handle)
            else:
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(handle)
        except (ValueError, EOFError) as error:
            raise DataError(f"{path.name}: the .npy header is damaged ({_first_line(error)})") from None
        offset = handle.tell()
    if dtype.hasobject:
        raise DataError(f"{path.name}: embeddings are not numeric (the file holds Python objects)")
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    actual = size - offset
    if actual < expected:
        raise DataError(
            f"{path.name}: the header announces {' x '.join(map(str, shape))} {dtype} values "
            f"({expected:,} bytes) but only {actual:,} bytes follow; the file is truncated"
        )
    if actual > expected:
        raise DataError(
            f"{path.name}: the header announces {' x '.join(map(str, shape))} {dtype} values "
            f"({expected:,} bytes) but {actual:,} bytes follow; the header does not match the data"
        )
    return shape, dtype, offset


def _read_npy(path: Path) -> np.ndarray:
    _npy_header(path)
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as error:
        raise DataError(f"{path.name}: embeddings are not numeric ({_first_line(error)})") from None


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


def _read_parquet_table(path: Path) -> pa.Table:
    """The table in a Parquet file; a file that is not Parquet (or is cut short) gets a sentence."""
    try:
        return pq.read_table(path)
    except (pa.ArrowException, OSError):
        raise DataError(
            f"{path.name}: not a readable Parquet file (its footer is missing or damaged: "
            "it is truncated or in another format)"
        ) from None


def _read_parquet(path: Path) -> np.ndarray:
    """One list column (preferring one named like embeddings), or all numeric columns."""
    table = _read_parquet_table(path)
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


def check_text(path: Path) -> None:
    """Refuse a text file that is not UTF-8 (or is binary), naming the first bad byte."""
    with open(path, "rb") as handle:
        head = handle.read(_CHUNK_BYTES)
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise DataError(f"{path.name}: the text is UTF-16; save it as UTF-8")
    nul = head.find(b"\x00")
    if nul >= 0:
        raise DataError(
            f"{path.name}: not a text file (a NUL byte at byte {nul:,}); is it another format renamed to .csv?"
        )
    decoder = codecs.getincrementaldecoder("utf-8-sig")()
    with open(path, "rb") as handle:
        position = 0
        while chunk := handle.read(_CHUNK_BYTES):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as error:
                raise DataError(
                    f"{path.name}: not UTF-8 text (byte 0x{error.object[error.start]:02x} at byte "
                    f"{position + error.start:,}); save it as UTF-8"
                ) from None
            position += len(chunk)


def _read_csv(path: Path) -> np.ndarray:
    """Numeric columns, with a header row when the first row is not all numbers."""
    check_text(path)
    with open(path, newline="", encoding="utf-8-sig") as handle:
        first_row = next(csv.reader(handle), [])
    # pandas writes a bare frame's header as "0,1,2,..."; that is a header, not a row.
    counting = [str(position) for position in range(len(first_row))]
    has_header = any(not _is_number(field) for field in first_row) or first_row == counting
    first_data_line = 2 if has_header else 1
    try:
        frame = pd.read_csv(path, header=0 if has_header else None, skip_blank_lines=True, encoding="utf-8-sig")
    except pd.errors.ParserError as error:
        raise DataError(f"{path.name}: ragged rows ({error})") from None
    except pd.errors.EmptyDataError:
        raise DataError(f"{path.name}: fewer than 2 rows (the file is empty)") from None
    if frame.empty:
        raise DataError(
            f"{path.name}: fewer than 2 rows (a header line, {', '.join(map(str, frame.columns))}, and no data)"
        )
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
    with open(path, newline="", encoding="utf-8-sig") as handle:
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
        check_text(path)
        try:
            labels = pd.read_csv(path, dtype={"id": str, "name": str, "category": str}, encoding="utf-8-sig")
        except pd.errors.EmptyDataError:
            raise DataError(f"{path.name}: the labels file has no header and no rows") from None
        except pd.errors.ParserError as error:
            raise DataError(f"{path.name}: ragged rows ({_first_line(error)})") from None
    else:
        labels = _read_parquet_table(path).to_pandas()
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
        raise DataError(
            f"a dataset named {name!r} already exists; choose another name, or ask to replace it "
            "(--force on the command line, 'Replace' on the Data page)"
        )
    size = embeddings_path.stat().st_size  # a file that shrinks or grows while it is read is refused
    array = read_embeddings(embeddings_path)
    rows, dim = array.shape
    labels_path = Path(labels_file) if labels_file is not None else None
    concepts = read_labels(labels_path, rows, max_bytes) if labels_path else index_labels(rows)

    try:
        with atomic_dataset_folder(name, data_dir) as folder:
            writer = NpyWriter(folder / EMBEDDINGS_FILE, rows, dim)
            chunk_rows = chunk_rows_for(dim)
            try:
                for start in range(0, rows, chunk_rows):
                    chunk = _read_chunk(array, start, chunk_rows, embeddings_path, size)
                    check_chunk(chunk, start, embeddings_path)
                    writer.write(chunk)
                    release_pages(array)  # the finished chunk's pages leave our resident set
                _check_unchanged(embeddings_path, size)
            except BaseException:
                writer.abort()
                raise
            checksum = writer.close()
            _write_tables(folder, name, rows, dim, concepts, embeddings_path, labels_path, array, checksum)
    except OSError as error:  # the folder being written is gone already (atomic_dataset_folder)
        raise DataError(_write_failure(error, resolve_data_dir(data_dir), name)) from None
    return resolve_data_dir(data_dir) / name


def _write_failure(error: OSError, root: Path, name: str) -> str:
    """The sentence for a write that failed: a full disk, or the system's own reason."""
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return (
            f"the disk holding {root} is full: dataset {name!r} was not imported (nothing was kept); "
            "free some space and import it again"
        )
    return f"dataset {name!r} could not be written in {root} ({error.strerror or error}); nothing was kept"


def _check_unchanged(path: Path, size: int) -> None:
    now = path.stat().st_size if path.exists() else 0
    if now != size:
        raise DataError(
            f"{path.name}: the file changed while it was read ({size:,} bytes at the start, {now:,} bytes now); "
            "import it again once it is complete"
        )


def _read_chunk(array: np.ndarray, start: int, chunk_rows: int, path: Path, size: int) -> np.ndarray:
    """Rows start..start+chunk_rows as float32. A memory-mapped .npy is read with plain file reads, so a
    file cut short while it is read ends in a sentence instead of the process dying of SIGBUS."""
    _check_unchanged(path, size)
    if not isinstance(array, np.memmap):
        return np.asarray(array[start : start + chunk_rows], dtype=np.float32)
    stop = min(start + chunk_rows, array.shape[0])
    row_bytes = array.shape[1] * array.dtype.itemsize
    wanted = (stop - start) * row_bytes
    with open(path, "rb") as handle:
        handle.seek(array.offset + start * row_bytes)
        data = handle.read(wanted)
    if len(data) != wanted:
        _check_unchanged(path, size)
        raise DataError(f"{path.name}: the file ended early at row {start + len(data) // row_bytes} while it was read")
    return np.frombuffer(data, dtype=array.dtype).reshape(stop - start, array.shape[1]).astype(np.float32)


def _write_tables(folder, name, rows, dim, concepts, embeddings_path, labels_path, array, checksum) -> None:
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
            "source_stat": _file_stat(embeddings_path),
            "source_dtype": str(array.dtype),
            "package_versions": package_versions(),
            "checksum": {EMBEDDINGS_FILE: f"sha256:{checksum}"},
        },
    )


def chunk_rows_for(dim: int) -> int:
    """Rows per import chunk: about 32 MiB of float32, whatever the dimension."""
    return max(1, _CHUNK_BYTES // (4 * dim))


def _file_stat(path: Path) -> dict:
    """Where a file was and its size and modification time: enough to tell it was imported before."""
    stat = path.stat()
    return {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def is_embeddings_path(text: str) -> bool:
    """Whether a command-line DATA argument names an embeddings file rather than a dataset."""
    return Path(text).suffix.lower() in EMBEDDING_FORMATS


def derived_name(path: Path) -> str:
    """A dataset name made from a file's name: unsafe characters become '-'."""
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", path.stem).strip("-._")[:60]
    return stem or "imported"


def import_for_command(path_text: str, data_dir: Path | None = None) -> tuple[str, str]:
    """Import an embeddings file given where a dataset is expected; return (dataset name, one sentence).

    The name is derived from the file name. The same file (same place, size and
    modification time) imported before is reused, and a different dataset that
    holds the name is never replaced: the next free name (`name-2`, ...) is taken.
    """
    path = Path(path_text)
    _check_file(path, EMBEDDING_FORMATS, DEFAULT_MAX_BYTES)
    stem = derived_name(path)
    current = _file_stat(path)
    root = resolve_data_dir(data_dir)
    for number in range(1, 1000):
        name = stem if number == 1 else f"{stem}-{number}"
        folder = root / name
        if not folder.exists():
            import_dataset(path, name=name, data_dir=data_dir)
            rows = _meta_count(folder)
            return name, f"imported {path.name} as dataset {name!r} ({rows:,} rows)"
        if _meta_stat(folder) == current:
            return name, f"using dataset {name!r}, imported from {path.name} before ({_meta_count(folder):,} rows)"
    raise DataError(f"{path.name}: datasets {stem!r} to {stem}-999 all exist; import it with --name")


def _meta(folder: Path) -> dict:
    try:
        return json.loads((folder / META_FILE).read_text())
    except (OSError, ValueError):
        return {}


def _meta_stat(folder: Path) -> dict | None:
    return _meta(folder).get("source_stat")


def _meta_count(folder: Path) -> int:
    return int(_meta(folder).get("count") or 0)


def read_embeddings_file(path: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> np.ndarray:
    """A user's embeddings file checked as an import checks it, without storing it (for `train` and `eval`)."""
    path = Path(path)
    _check_file(path, EMBEDDING_FORMATS, max_bytes)
    array = read_embeddings(path)
    chunk_rows = chunk_rows_for(array.shape[1])
    for start in range(0, len(array), chunk_rows):
        check_chunk(np.asarray(array[start : start + chunk_rows], dtype=np.float32), start, path)
    return array


def import_uploaded(
    embeddings: tuple[str, bytes],
    *,
    name: str,
    labels: tuple[str, bytes] | None = None,
    data_dir: Path | None = None,
    overwrite: bool = False,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> Path:
    """Import files received as (file name, bytes), as the Data page's uploads arrive.

    Each file is written into its own sub-folder of a hidden folder inside the
    data folder (so an embeddings file and a labels file of the same name do not
    overwrite each other, and nothing lands outside the data folder), imported,
    and the hidden folder removed whatever happens.
    """
    check_name(name)
    root = resolve_data_dir(data_dir)
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".upload-", dir=root))
    try:
        saved = {}
        for role, upload in (("embeddings", embeddings), ("labels", labels)):
            if upload is None:
                continue
            file_name = Path(upload[0]).name or role  # the browser's name, without any folder part
            folder = staging / role
            folder.mkdir()
            saved[role] = folder / file_name
            saved[role].write_bytes(upload[1])
        return import_dataset(
            saved["embeddings"],
            name=name,
            labels_file=saved.get("labels"),
            data_dir=data_dir,
            overwrite=overwrite,
            max_bytes=max_bytes,
        )
    finally:
        shutil.rmtree(staging, ignore_errors=True)
