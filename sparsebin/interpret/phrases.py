"""Any phrase to bits: embed free text with the dataset's own model, then read its code like a concept's.

Only a dataset whose meta names the model that made its embeddings can place a
phrase among its concepts; the built-in datasets record all-MiniLM-L6-v2, which
ships in a Python package, so this works offline. An imported dataset has no
model, and a phrase asked of it gets one sentence saying so.
"""

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from sparsebin.errors import PhraseError
from sparsebin.interpret.bits import RunContext, _with_score, active_bit_table, top_rows
from sparsebin.search.codes import pack_bits

MAX_PHRASE_CHARS = 1000


@dataclass(frozen=True, eq=False)
class PhraseView:
    """`phrase_view`: a phrase's active bits and its nearest concepts by code and by dense embedding."""

    phrase: str
    bits: np.ndarray  # (n_active,) the bits the phrase switches on, ascending
    active_bits: pd.DataFrame  # `bits.active_bit_table`: bit, label, corrected_coherence, q_value, firing_rate, logit
    code_neighbours: pd.DataFrame  # id, name, category, distance (the search metric)
    dense_neighbours: pd.DataFrame  # id, name, category, cosine
    shared: int  # concepts in both lists
    overlap: float  # share of the dense neighbours that are also code neighbours


def check_phrase(text: str) -> str:
    phrase = " ".join(str(text or "").split())
    if not phrase:
        raise PhraseError("type a phrase: an empty phrase has no embedding and no bits.")
    if len(phrase) > MAX_PHRASE_CHARS:
        raise PhraseError(f"the phrase is {len(phrase):,} characters long; keep it under {MAX_PHRASE_CHARS:,}.")
    return phrase


def embedding_model(meta: dict):
    """The sentence model that embedded a dataset, loaded offline; a PhraseError when there is none."""
    from sparsebin.datasets.builtin import MODEL_NAME, load_model

    name = meta.get("name", "this dataset")
    model = meta.get("model")
    if not model:
        raise PhraseError(
            f"dataset {name} was imported without a model, so a phrase cannot be placed among its concepts; "
            "look up its own concepts by name or id instead."
        )
    if model != MODEL_NAME:
        raise PhraseError(
            f"dataset {name} was embedded with {model}, which sparsebin does not ship; only {MODEL_NAME}."
        )
    return load_model()


def embed_phrases(phrases: list[str], meta: dict) -> np.ndarray:
    """(len(phrases), D) float32 embeddings of the phrases with the dataset's model."""
    from sparsebin.datasets.builtin import encode_batch

    checked = [check_phrase(phrase) for phrase in phrases]
    return encode_batch(embedding_model(meta), checked, batch_size=32)


@torch.no_grad()
def phrase_view(ctx: RunContext, phrase: str, vector: np.ndarray, k: int = 10, metric: str = "jaccard") -> PhraseView:
    """A phrase's active bits with their labels, and its nearest concepts by code beside those by embedding.

    The vector goes through the run's encoder exactly as a concept's did (L2
    normalised first when the run normalised its rows), so its code is what the
    phrase would have had as one more concept.
    """
    x = torch.from_numpy(np.asarray(vector, dtype=np.float32).reshape(1, -1))
    if x.shape[1] != ctx.embeddings.shape[1]:
        raise PhraseError(
            f"the phrase's embedding has {x.shape[1]} dimensions but the run's dataset has {ctx.embeddings.shape[1]}."
        )
    if ctx.config.normalize:
        x = x / x.norm().clamp_min(1e-12)
    logits = ctx.model.encode_logits(x)[0].numpy()
    code = ctx.model.encode(x)[0].numpy().astype(np.uint8)
    bits = np.flatnonzero(code)
    packed = pack_bits(code[None])
    found, distances = ctx.code_index.search(packed, k, metric=metric)
    code_neighbours = ctx.concept_rows(found[0])
    code_neighbours["distance"] = distances[0]
    cosines = ctx.cosine_to(np.asarray(vector, dtype=np.float32).ravel())
    dense_rows = top_rows(cosines, k)
    shared = len(np.intersect1d(found[0], dense_rows))
    return PhraseView(
        phrase=phrase,
        bits=bits,
        active_bits=active_bit_table(ctx, bits, logits),
        code_neighbours=code_neighbours,
        dense_neighbours=_with_score(ctx, dense_rows, cosines, "cosine"),
        shared=int(shared),
        overlap=float(shared / max(len(dense_rows), 1)),
    )
