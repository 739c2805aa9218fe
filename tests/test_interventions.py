"""Switching bits, a bit's effect, query by bits and contrast, on a run whose decoder writes planted directions.

Four categories of 40 concepts each lie along one axis apiece (plus noise); bit c (c < 4) fires exactly on
category c and its decoder column is that axis, bits 4..7 fire at random and write small random directions
orthogonal to those axes.
"""

import re

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import TINY, make_dataset

from sparsebin.cli import main
from sparsebin.config import TrainConfig
from sparsebin.errors import QueryError
from sparsebin.interpret.bits import RunContext, bit_table
from sparsebin.interpret.interventions import (
    EFFECT_SAMPLE,
    bit_effect,
    contrast,
    edit_code,
    effect_sample_size,
    matching_rows,
    parse_query,
    query_codes,
    show_query,
)
from sparsebin.jobs.queue import Store
from sparsebin.jobs.worker import run_worker
from sparsebin.model import BinaryAutoencoder, ModelSpec
from sparsebin.search.codes import pack_bits, unpack_bits

N_CATEGORIES, PER_CATEGORY, DIM, N_BITS = 4, 40, 12, 8


@pytest.fixture(scope="module")
def ctx() -> RunContext:
    rng = np.random.default_rng(0)
    category = np.repeat(np.arange(N_CATEGORIES), PER_CATEGORY)
    axes = np.eye(DIM, dtype=np.float32)
    extra = 0.1 * rng.standard_normal((N_BITS - N_CATEGORIES, DIM)).astype(np.float32)
    extra[:, :N_CATEGORIES] = 0  # the random bits write directions apart from the category axes
    bits = np.zeros((len(category), N_BITS), dtype=np.uint8)
    bits[np.arange(len(category)), category] = 1
    bits[:, N_CATEGORIES:] = rng.random((len(category), N_BITS - N_CATEGORIES)) < 0.4
    embeddings = bits[:, :N_CATEGORIES] @ axes[:N_CATEGORIES] + bits[:, N_CATEGORIES:] @ extra
    embeddings = (embeddings + 0.1 * rng.standard_normal(embeddings.shape)).astype(np.float32)
    model = BinaryAutoencoder(ModelSpec(d_in=DIM, n_bits=N_BITS, k=2)).eval()
    with torch.no_grad():
        model.decoder.weight.copy_(torch.from_numpy(np.concatenate([axes[:N_CATEGORIES], extra]).T))
        model.decoder.bias.zero_()
    concepts = pd.DataFrame(
        {
            "id": [f"C{row}" for row in range(len(category))],
            "name": [f"concept {row}" for row in range(len(category))],
            "category": [f"category {value}" for value in category],
            "depth": 1,
            "parents": [[] for _ in category],
        }
    )
    config = TrainConfig(n_bits=N_BITS, k=2, normalize=False)
    return RunContext("planted", config, model, pack_bits(bits), concepts, embeddings, N_BITS)


def category_share(table: pd.DataFrame, name: str) -> float:
    return float((table["category"] == name).mean())


def test_switching_a_planted_bit_on_moves_the_decoded_concept_towards_its_category(ctx):
    edit = edit_code(ctx, "C0", on=[2])  # a category-0 concept given category 2's bit
    assert edit.switched_on == [2] and edit.switched_off == [] and 2 in edit.bits_after
    assert category_share(edit.dense_before, "category 0") == 1.0
    assert category_share(edit.dense_after, "category 2") > category_share(edit.dense_before, "category 2")
    gained = edit.changes[(edit.changes["list"] == "dense") & (edit.changes["change"] == "gained")]
    assert len(gained) > 0 and set(gained["category"]) == {"category 2"}
    # Among the stored codes, one more shared bit brings category 2's concepts closer too.
    assert category_share(edit.code_after, "category 2") > category_share(edit.code_before, "category 2")
    assert edit.cosine < 0.99


def test_switching_a_planted_bit_off_moves_the_decoded_concept_away_from_its_category(ctx):
    edit = edit_code(ctx, "C45", off=[1])  # category 1
    assert category_share(edit.dense_before, "category 1") == 1.0
    assert category_share(edit.dense_after, "category 1") < 0.5
    lost = edit.changes[(edit.changes["list"] == "dense") & (edit.changes["change"] == "lost")]
    assert len(lost) > 0 and set(lost["category"]) == {"category 1"}


def test_the_edit_decodes_as_the_run_decodes_a_centred_model(ctx):
    spec = ModelSpec(d_in=DIM, n_bits=N_BITS, k=2, centre="mean")
    model = BinaryAutoencoder(spec).eval()
    with torch.no_grad():
        model.decoder.weight.copy_(ctx.model.decoder.weight)
        model.decoder.bias.zero_()
        model.centre.fill_(0.5)
        model.centre_length.fill_(0.8)
    centred = RunContext("centred", ctx.config, model, ctx.codes, ctx.concepts, ctx.embeddings, N_BITS)
    edit = edit_code(centred, "C0", on=[3])
    code = torch.from_numpy(unpack_bits(ctx.codes[:1], N_BITS).astype(np.float32))
    code[0, 3] = 1
    expected = (0.5 + 0.8 * ctx.model.decoder(code) / ctx.model.decoder(code).norm()).detach().numpy()[0]
    cosines = ctx.embeddings @ expected / (np.linalg.norm(ctx.embeddings, axis=1) * np.linalg.norm(expected))
    cosines[0] = -np.inf
    assert edit.dense_after["id"].tolist() == [f"C{row}" for row in np.argsort(-cosines, kind="stable")[:10]]


def test_the_effect_label_of_a_planted_bit_names_its_category_beside_its_firing_label(ctx):
    effect = bit_effect(ctx, 2)
    assert (effect.n_active, effect.n_sampled) == (PER_CATEGORY, PER_CATEGORY)
    assert effect.intervention_category == "category 2" == effect.firing_category
    assert effect.agree is True
    assert effect.lost_categories["category"].iloc[0] == "category 2"
    assert effect.lost_categories["lost"].sum() == effect.n_lost > 0
    assert 0 < effect.mean_movement < 2
    small = bit_effect(ctx, 2, sample=10)
    assert small.n_sampled == 10 and small.n_active == PER_CATEGORY


def test_a_bits_effect_samples_fewer_concepts_only_on_a_very_large_data_set():
    assert effect_sample_size(117_000) == EFFECT_SAMPLE == 500  # HPO + ICD-10-CM: every firing concept up to 500
    assert effect_sample_size(1_000_000) == 100  # a million rows: 100 x 1M cosines a side
    assert effect_sample_size(10**9) == 50


def random_tree(rng, depth: int, n_bits: int):
    roll = rng.random()
    if depth == 0 or roll < 0.3:
        return ("bit", int(rng.integers(n_bits)))
    if roll < 0.45:
        return ("~", random_tree(rng, depth - 1, n_bits))
    return (rng.choice(["&", "|"]), random_tree(rng, depth - 1, n_bits), random_tree(rng, depth - 1, n_bits))


def written(tree, rng) -> str:
    """The tree as a user might type it: spaces at random, brackets only where precedence needs them."""
    space = " " if rng.random() < 0.5 else ""
    if tree[0] == "bit":
        return str(tree[1])
    if tree[0] == "~":
        inner = written(tree[1], rng)
        return f"~{inner}" if tree[1][0] in ("bit", "~") else f"~({inner})"
    left, right = written(tree[1], rng), written(tree[2], rng)
    if tree[0] == "&":  # an | below & needs brackets
        left = f"({left})" if tree[1][0] == "|" else left
        right = f"({right})" if tree[2][0] in ("|", "&") else right
    else:
        right = f"({right})" if tree[2][0] == "|" else right
    return f"{left}{space}{tree[0]}{space}{right}"


def brute_force(tree, bits: np.ndarray) -> bool:
    if tree[0] == "bit":
        return bool(bits[tree[1]])
    if tree[0] == "~":
        return not brute_force(tree[1], bits)
    left, right = brute_force(tree[1], bits), brute_force(tree[2], bits)
    return (left and right) if tree[0] == "&" else (left or right)


def test_a_bit_expression_selects_exactly_the_rows_a_brute_force_filter_does():
    rng = np.random.default_rng(1)
    n_bits = 21  # not a whole number of bytes
    bits = (rng.random((300, n_bits)) < 0.3).astype(np.uint8)
    packed = pack_bits(bits)
    for _ in range(60):
        tree = random_tree(rng, 4, n_bits)
        text = written(tree, rng)
        parsed = parse_query(text, n_bits)
        assert show_query(parsed) == show_query(tree), text
        expected = [row for row in range(len(bits)) if brute_force(tree, bits[row])]
        assert matching_rows(parsed, packed, chunk_rows=37).tolist() == expected, text


def test_a_query_counts_and_lists_the_matching_concepts(ctx):
    result = query_codes(ctx, "1 & ~(4 | 5)")
    bits = unpack_bits(ctx.codes, N_BITS)
    expected = np.flatnonzero(bits[:, 1] & ~(bits[:, 4] | bits[:, 5]).astype(bool))
    assert result.count == len(expected) and result.n_rows == len(ctx.concepts)
    assert result.concepts["id"].tolist() == [f"C{row}" for row in expected]
    assert set(result.concepts["category"]) == {"category 1"}
    assert result.expression == "(1 & ~(4 | 5))"


def test_a_quoted_label_stands_for_the_bits_it_names(ctx):
    result = query_codes(ctx, "'Category 2' & ~4")  # any case, single or double quotes
    table = bit_table(ctx)
    named = np.flatnonzero((table["category"] == "category 2") | (table["label"] == "category 2"))
    assert 2 in named and not {0, 1, 3} & set(named)  # the planted bit, not the other categories' bits
    bits = unpack_bits(ctx.codes, N_BITS).astype(bool)
    expected = np.flatnonzero(bits[:, named].any(axis=1) & ~bits[:, 4])
    assert result.count == len(expected) > 0
    assert result.concepts["id"].tolist() == [f"C{row}" for row in expected[:50]]
    assert result.expression.startswith('("Category 2" (') and result.expression.endswith(" & ~4)")


@pytest.mark.parametrize(
    ("expression", "fault"),
    [
        ("", "is empty"),
        ("4 &", "ends too early"),
        ("(4 | 5", "bracket opened at position 1"),
        ("4 5", "unexpected '5' at position 3"),
        ("4 and 5", "'a' at position 3"),
        ("4 & 99", "bit 99 in the bit expression does not exist"),
        ("4 | )", "unexpected ')' at position 5"),
        ('4 & "category 2', "quote opened at position 5 of the bit expression is not closed"),
        ('4 & "no such label"', "no bit of this run has the label 'no such label'"),
    ],
)
def test_a_malformed_expression_or_unknown_bit_gives_one_sentence_naming_the_fault(ctx, expression, fault):
    with pytest.raises(QueryError) as error:
        query_codes(ctx, expression)
    message = str(error.value)
    assert fault in message and "\n" not in message and message.endswith(".")


def test_switching_an_unknown_or_inactive_bit_gives_one_sentence(ctx):
    with pytest.raises(QueryError, match=r"^bit 8 to switch on does not exist: this run's bits are 0\.\.7\.$"):
        edit_code(ctx, "C0", on=[8])
    with pytest.raises(QueryError, match=r"^bit 3 is not active in the code of concept 0 \(C0\), so it cannot"):
        edit_code(ctx, "C0", off=[3])
    with pytest.raises(QueryError, match="no concept has the id or name 'nothing'"):
        edit_code(ctx, "nothing", off=[0])


def test_contrast_splits_two_concepts_bits_into_shared_and_own(ctx):
    bits = unpack_bits(ctx.codes[[0, 50]], N_BITS).astype(bool)
    result = contrast(ctx, "C0", "concept 50")  # by id and by whole name
    assert result.shared["bit"].tolist() == np.flatnonzero(bits[0] & bits[1]).tolist()
    assert result.first_only["bit"].tolist() == np.flatnonzero(bits[0] & ~bits[1]).tolist()
    assert result.second_only["bit"].tolist() == np.flatnonzero(bits[1] & ~bits[0]).tolist()
    assert 0 in result.first_only["bit"].tolist() and 1 in result.second_only["bit"].tolist()
    assert result.first_only.set_index("bit").loc[0, "category"] == "category 0"


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("interventions")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SPARSEBIN_HOME", str(root / "home"))
        patch.setenv("SPARSEBIN_DATA", str(root / "data"))
        name = make_dataset(n_rows=120, categories=4)
        store = Store()
        job = store.submit(name, TINY)
        assert run_worker(once=True, device="cpu") == 1
        run_id = store.job(job.id).run_id
        from sparsebin.runfolder import load_codes

        codes = unpack_bits(load_codes(store.run_folder(run_id)), TINY.n_bits)
    return {"root": root, "run_id": run_id, "codes": codes}


@pytest.fixture
def run(finished_run, monkeypatch):
    monkeypatch.setenv("SPARSEBIN_HOME", str(finished_run["root"] / "home"))
    monkeypatch.setenv("SPARSEBIN_DATA", str(finished_run["root"] / "data"))
    return finished_run


def test_edit_command_prints_the_switched_bits_and_the_neighbours_gained_and_lost(run, capsys):
    active = np.flatnonzero(run["codes"][10]).tolist()
    silent = np.flatnonzero(run["codes"][10] == 0).tolist()
    assert main(["edit", run["run_id"], "C10", "--off", str(active[0]), "--on", str(silent[0]), "--k", "5"]) == 0
    out = capsys.readouterr().out
    first = out.splitlines()[0]
    assert first.startswith("concept 10 (C10, category ")
    assert f"{len(active)} active bits, {len(active)} after switching off {active[0]} and on {silent[0]}" in first
    assert re.search(r"decoded vector after against before: cosine -?\d\.\d{3}", out)
    assert f"bit {active[0]:>5} (off):" in out and f"bit {silent[0]:>5} (on):" in out
    assert "nearest 5 concepts by cosine of the decoded vector to the dense embeddings, before | after:" in out
    assert "nearest 5 concepts among the stored codes (Hamming distance), before | after:" in out
    assert len(re.findall(r"^  (gained|lost) \(\d+\): ", out, flags=re.M)) == 4


def test_query_and_contrast_commands_print_counts_and_bits(run, capsys):
    codes = run["codes"]
    bit = int(np.argmax(codes.sum(axis=0) < len(codes)))  # a bit that is not always on
    assert main(["query", run["run_id"], f"{bit} | ~{bit}", "--limit", "3"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == f"'{bit} | ~{bit}', read as ({bit} | ~{bit}): {len(codes)} of {len(codes)} concepts"
    assert out.splitlines()[-1] == f"  ... and {len(codes) - 3} more (see --limit)"
    assert main(["contrast", run["run_id"], "C10", "C11"]) == 0
    out = capsys.readouterr().out
    shared = int((codes[10] & codes[11]).sum())
    assert out.splitlines()[0] == f"{shared} bits both share:"
    assert "bits only concept 10 (C10) has:" in out


def test_commands_say_in_one_sentence_what_is_wrong(run, capsys):
    assert main(["query", run["run_id"], "3 & (4"]) == 2
    assert capsys.readouterr().err == "error: the bracket opened at position 5 of the bit expression is not closed.\n"
    assert main(["edit", run["run_id"], "C10", "--on", "32"]) == 2
    assert capsys.readouterr().err == "error: bit 32 to switch on does not exist: this run's bits are 0..31.\n"
