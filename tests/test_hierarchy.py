"""Question 7 and across terminologies on planted codes: links against chance, and cross-source neighbours."""

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import TINY, make_dataset

from sparsebin.cli import main
from sparsebin.datasets.store import write_concepts
from sparsebin.errors import DataError
from sparsebin.interpret.crossing import CrossIndex, describe_across
from sparsebin.interpret.hierarchy import HIERARCHY_FILE, code_hierarchy, run_hierarchy
from sparsebin.interpret.questions import answer_hierarchy
from sparsebin.jobs.queue import Store
from sparsebin.jobs.worker import run_worker
from sparsebin.search.codes import pack_bits

N_BITS = 64


def planted_tree(roots=10, children=8, grandchildren=4):
    """A three-level ontology: (concept table, parent row of each row or -1)."""
    ids, depth, parent = [], [], []
    for r in range(roots):
        ids.append(f"R{r}")
        depth.append(0)
        parent.append(-1)
        root = len(ids) - 1
        for c in range(children):
            ids.append(f"R{r}.{c}")
            depth.append(1)
            parent.append(root)
            child = len(ids) - 1
            for g in range(grandchildren):
                ids.append(f"R{r}.{c}.{g}")
                depth.append(2)
                parent.append(child)
    concepts = pd.DataFrame(
        {
            "id": ids,
            "name": [f"concept {i}" for i in ids],
            "source": "test",
            "category": "c",
            "depth": depth,
            "parents": [[] if p < 0 else [ids[p]] for p in parent],
        }
    )
    return concepts, np.array(parent)


def extending_codes(parent, seed=0):
    """Each root fires 4 random bits; each child its parent's bits and 2 more."""
    rng = np.random.default_rng(seed)
    bits = np.zeros((len(parent), N_BITS), np.uint8)
    for row, up in enumerate(parent):
        if up >= 0:
            bits[row] = bits[up]
        free = np.flatnonzero(bits[row] == 0)
        bits[row, rng.choice(free, 4 if up < 0 else 2, replace=False)] = 1
    return pack_bits(bits)


def independent_codes(n_rows, seed=0):
    """6 random bits per row, whatever the ontology."""
    rng = np.random.default_rng(seed)
    bits = np.zeros((n_rows, N_BITS), np.uint8)
    for row in range(n_rows):
        bits[row, rng.choice(N_BITS, 6, replace=False)] = 1
    return pack_bits(bits)


def test_codes_independent_of_the_ontology_score_at_chance():
    concepts, parent = planted_tree()
    (summary,) = code_hierarchy(independent_codes(len(concepts)), concepts)
    assert summary.links == 10 * 8 + 10 * 8 * 4
    assert summary.kept.links == summary.links
    assert abs(summary.kept.difference) < 0.03 and summary.kept.low <= 0 <= summary.kept.high
    assert abs(summary.kept.real - 6 / 64) < 0.03  # the share two random 6-bit codes share
    assert summary.more.real == 0 and summary.more.chance == 0 and summary.same == 1  # every code fires 6
    assert not summary.kept.beyond_chance


def test_codes_built_to_extend_their_parents_score_far_above_chance():
    concepts, parent = planted_tree()
    (summary,) = code_hierarchy(extending_codes(parent), concepts)
    assert summary.kept.real == 1.0 and summary.kept.chance < 0.25
    assert summary.kept.low > 0.7 and summary.kept.beyond_chance
    # Here a code's size is set by its depth alone, so random pairs at the same depths fire more bits too: the
    # "fires more" figure is at chance, as depth matching should make it.
    assert summary.more.real == 1.0 and summary.more.chance == 1.0 and summary.more.difference == 0


def test_links_need_both_concepts_and_the_figures_repeat_by_seed():
    concepts, parent = planted_tree(roots=4)
    concepts.loc[5, "parents"] = ["NOT-IN-TABLE"]  # a link to an absent parent is no link
    codes = independent_codes(len(concepts))
    first, again = code_hierarchy(codes, concepts, seed=3), code_hierarchy(codes, concepts, seed=3)
    assert first == again
    assert first[0].links == 4 * 8 + 4 * 8 * 4 - 1
    with pytest.raises(DataError, match="the codes have 3 rows but the concept table"):
        code_hierarchy(codes[:3], concepts)


def test_question_7_carries_each_runs_numbers_and_a_run_folder_keeps_them(tmp_path):
    concepts, parent = planted_tree()
    folder = tmp_path / "run"
    folder.mkdir()
    np.save(folder / "codes.npy", extending_codes(parent))
    result = run_hierarchy(folder, concepts)
    stored = json.loads((folder / HIERARCHY_FILE).read_text())
    assert stored["codes"][0]["kept"]["real"] == 1.0
    assert run_hierarchy(folder, concepts) == result  # read back from the file
    (summary,) = result.codes
    chance = code_hierarchy(independent_codes(len(concepts)), concepts)
    text = answer_hierarchy({"planted": result, "random": type(result)(chance, None, 0)}, "planted")
    assert text.startswith("Partly: in 1 of 2 run(s)")
    assert "planted: test (400 links): a child keeps 100.0% of its parent's bits against " in text
    assert f"{summary.kept.chance:.1%} by chance" in text
    assert f"random: test (400 links): a child keeps {chance[0].kept.real:.1%}" in text
    assert "100.0% fire exactly as many" in text  # the independent codes all fire 6 bits
    assert "Pick finished runs" in answer_hierarchy(None)


def two_sources():
    """HPO-like and ICD-like rows: each ICD row i shares the planted bits of HPO row i; all fire bit 0."""
    n, rng = 12, np.random.default_rng(1)
    bits = np.zeros((2 * n, N_BITS), np.uint8)
    bits[:, 0] = 1  # a common bit every concept fires
    for row in range(n):
        planted = 1 + 4 * row + np.arange(4)
        bits[row, planted] = 1
        bits[n + row, planted[:3]] = 1  # the partner: three of the four
        bits[n + row, rng.choice(np.arange(50, 64), 1)] = 1
    concepts = pd.DataFrame(
        {
            "id": [f"HP:{i}" for i in range(n)] + [f"X{i}" for i in range(n)],
            "name": [f"phenotype {i}" for i in range(n)] + [f"code {i}" for i in range(n)],
            "source": ["HPO"] * n + ["ICD-10-CM"] * n,
            "category": "c",
        }
    )
    labels = np.array([f"label of {bit}" for bit in range(N_BITS)], dtype=object)
    return pack_bits(bits), concepts, labels


def test_across_terminologies_finds_the_planted_partner_with_its_shared_bits():
    packed, concepts, labels = two_sources()
    view = CrossIndex(packed, N_BITS, concepts, labels).neighbours("HP:4", k=3)
    first = view.neighbours.iloc[0]
    assert (first["id"], first["source"]) == ("X4", "ICD-10-CM")
    assert first["shared_bits"] == (0, 17, 18, 19) and first["specific_bits"] == (17, 18, 19)
    assert set(view.neighbours["source"]) == {"ICD-10-CM"} and view.others == ("ICD-10-CM",)
    text = describe_across(view)
    assert "X4  code 4" in text and "17 (label of 17), 18 (label of 18), 19 (label of 19); and 1 common bit(s)" in text
    back = CrossIndex(packed, N_BITS, concepts).neighbours("X4", k=1)
    assert back.neighbours["id"].tolist() == ["HP:4"]


def test_across_terminologies_on_one_terminology_is_one_sentence():
    packed, concepts, labels = two_sources()
    one = concepts.assign(source="HPO")
    with pytest.raises(DataError, match=r"^this data set holds one terminology \(HPO\); .* such as hpo-icd10cm\.$"):
        CrossIndex(packed, N_BITS, one).neighbours("HP:4")
    with pytest.raises(DataError, match="no concept with id 'nope'"):
        CrossIndex(packed, N_BITS, concepts).neighbours("nope")


def test_across_command_lists_the_other_terminology_or_says_there_is_none(capsys, one_torch_thread):
    two = make_dataset("two", n_rows=120, categories=3)
    one = make_dataset("one", n_rows=60)
    folder = Path(os.environ["SPARSEBIN_DATA"]) / two
    concepts = pd.read_parquet(folder / "concepts.parquet")
    concepts["source"] = ["HPO" if row % 2 else "ICD-10-CM" for row in range(len(concepts))]
    write_concepts(folder, concepts)
    store = Store()
    first = store.submit(two, TINY)
    second = store.submit(one, TINY)
    assert run_worker(once=True, device="cpu") == 2
    assert main(["across", first.run_id, "C1", "--k", "3"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("concept 1 (C1, HPO): ")
    assert "nearest 3 concepts of ICD-10-CM by code (jaccard distance)" in out
    listed = [line.split()[0] for line in out.splitlines() if line.startswith("    ")]
    assert len(listed) == 3 and all(int(name[1:]) % 2 == 0 for name in listed)  # ICD rows are the even ones
    assert main(["across", second.run_id, "C1"]) == 2
    assert "holds one terminology (test)" in capsys.readouterr().err
