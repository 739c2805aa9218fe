"""Built-in data sets that join terminologies: `hpo-icd10cm` holds every HPO term and every ICD-10-CM code.

A joined data set is made from its parts' builds (each built first when it is
missing), row for row: the parts' rows in the order the parts are named, each
concept keeping its own id, source, category, depth and parents, so the
ontology questions still read each terminology's own hierarchy and the
`source` column tells the terminologies apart. Nothing is embedded again: the
rows are the parts' embeddings, copied in chunks.
"""

from pathlib import Path

import numpy as np
import pandas as pd

from sparsebin.datasets.builtin import BUILTIN_DATASETS, MODEL_NAME, Progress, build_dataset, sample_rows
from sparsebin.datasets.store import (
    EMBEDDINGS_FILE,
    NpyWriter,
    atomic_dataset_folder,
    is_dataset,
    load_dataset,
    now_iso,
    resolve_data_dir,
    write_concepts,
    write_meta,
)
from sparsebin.errors import DataError
from sparsebin.files import CHUNK_ROWS

JOINED_DATASETS = {"hpo-icd10cm": ("hpo", "icd10cm")}
BUILDABLE_DATASETS = (*BUILTIN_DATASETS, *JOINED_DATASETS)


def build_named(
    name: str,
    *,
    force: bool = False,
    limit: int | None = None,
    progress: Progress | None = None,
    data_dir: Path | None = None,
) -> Path:
    """Build any buildable data set: a terminology (`build_dataset`) or a join of them (`build_joined`)."""
    if name in JOINED_DATASETS:
        return build_joined(name, force=force, limit=limit, progress=progress, data_dir=data_dir)
    if name not in BUILTIN_DATASETS:
        raise DataError(f"unknown built-in dataset {name!r}; choose one of {', '.join(BUILDABLE_DATASETS)}")
    return build_dataset(name, force=force, limit=limit, progress=progress, data_dir=data_dir)


def build_joined(
    name: str,
    *,
    force: bool = False,
    limit: int | None = None,
    progress: Progress | None = None,
    data_dir: Path | None = None,
) -> Path:
    """Build the joined data set `name` into data_dir/name and return the folder.

    `limit` takes that many concepts of each part (the evenly spread sample a
    part's own `--limit` build holds). A part already built whole serves any
    limit (its sample rows are picked by position); a part built with another
    limit is refused, since its rows are not the sample asked for. Progress
    counts the parts' rows: embedding a missing part, then copying the rows.
    """
    if name not in JOINED_DATASETS:
        raise DataError(f"{name!r} is not a joined dataset; choose one of {', '.join(JOINED_DATASETS)}")
    root = resolve_data_dir(data_dir)
    target = root / name
    if is_dataset(target) and not force:
        return target
    parts = [_part_rows(part, limit, progress, root) for part in JOINED_DATASETS[name]]
    total = sum(len(rows) for _, rows in parts)
    dim = {dataset.embeddings.shape[1] for dataset, _ in parts}
    if len(dim) != 1:
        raise DataError(f"the parts of {name} have embeddings of different widths {sorted(dim)}; rebuild them")
    if progress is not None:
        progress(0, total)
    with atomic_dataset_folder(name, data_dir) as folder:
        writer = NpyWriter(folder / EMBEDDINGS_FILE, total, dim.pop())
        try:
            for dataset, rows in parts:
                for start in range(0, len(rows), CHUNK_ROWS):
                    writer.write(dataset.embeddings[rows[start : start + CHUNK_ROWS]])
                    if progress is not None:
                        progress(writer.written, total)
        except BaseException:
            writer.abort()
            raise
        checksum = writer.close()
        concepts = pd.concat([dataset.concepts.iloc[rows] for dataset, rows in parts], ignore_index=True)
        if not concepts["id"].is_unique:
            raise DataError(f"the parts of {name} share concept ids; a joined dataset needs them distinct")
        write_concepts(folder, concepts)
        write_meta(
            folder,
            {
                "name": name,
                "kind": "builtin",
                "source": " + ".join(dataset.meta.get("source", dataset.name) for dataset, _ in parts),
                "model": MODEL_NAME,
                "dimension": int(parts[0][0].embeddings.shape[1]),
                "count": total,
                "limit": limit,
                "normalized": True,
                "built_at": now_iso(),
                "parts": {
                    dataset.name: {
                        "rows": len(rows),
                        "checksum": dataset.meta.get("checksum", {}).get(EMBEDDINGS_FILE),
                    }
                    for dataset, rows in parts
                },
                "checksum": {EMBEDDINGS_FILE: "sha256:" + checksum},
            },
        )
    return target


def _part_rows(part: str, limit: int | None, progress: Progress | None, root: Path):
    """(the part's dataset, the positions of its rows the join takes), building the part when it is missing."""
    folder = root / part
    if not is_dataset(folder):
        build_dataset(part, limit=limit, progress=progress, data_dir=root)
    dataset = load_dataset(part, data_dir=root)
    held = dataset.meta.get("limit")
    if held == limit:
        return dataset, np.arange(len(dataset.concepts))
    if held is None:  # a whole build: take the sample a `--limit` build would hold
        wanted = set(sample_rows(dataset.concepts, limit)["id"])
        return dataset, np.flatnonzero(dataset.concepts["id"].isin(wanted).to_numpy())
    asked = "every concept" if limit is None else f"a sample of {limit}"
    raise DataError(
        f"{folder} holds a sample of {held} concepts, and the join asks for {asked}; rebuild it with "
        f"`python -m sparsebin build-data {part} --force`" + ("" if limit is None else f" --limit {limit}")
    )
