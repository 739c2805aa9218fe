"""The map at scale: UMAP is fitted on a seeded sample, and every other row takes its nearest sampled row's place."""

import numpy as np

from sparsebin import projection


def planted(rows: int, dim: int = 16) -> np.ndarray:
    """Rows around four well-separated directions."""
    rng = np.random.default_rng(0)
    centres = np.eye(dim, dtype=np.float32)[:4] * 5
    return centres[np.arange(rows) % 4] + rng.standard_normal((rows, dim)).astype(np.float32) * 0.3


def test_sample_is_seeded_and_bounded():
    assert np.array_equal(projection.sample_rows(100, limit=200), np.arange(100))
    first, again = projection.sample_rows(1000, limit=200), projection.sample_rows(1000, limit=200)
    assert len(first) == 200 and len(np.unique(first)) == 200 and np.array_equal(first, again)


def test_nearest_sampled_is_the_cosine_nearest_in_blocks():
    rows = planted(300)
    sampled = projection.sample_rows(len(rows), limit=40)
    nearest = projection.nearest_sampled(rows, sampled, block=7)  # blocks that do not divide the rows
    unit = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    expected = (unit @ unit[sampled].T).argmax(axis=1)
    expected[sampled] = np.arange(len(sampled))
    assert np.array_equal(nearest, expected)
    assert (np.arange(300)[sampled[nearest]] % 4 == np.arange(300) % 4).all()  # each lands in its own cluster


def test_unsampled_rows_are_drawn_at_their_nearest_sampled_row(tmp_path):
    rows = planted(400)
    coordinates = projection.compute_projection(rows, tmp_path, limit=100)
    assert coordinates.shape == (400, 2) and np.isfinite(coordinates).all()
    sampled = projection.sample_rows(400, limit=100)
    placed = coordinates[sampled][projection.nearest_sampled(rows, sampled)]
    assert np.array_equal(coordinates, placed)
    assert len(np.unique(coordinates, axis=0)) == 100  # only the sample was laid out
    assert np.array_equal(projection.load_projection(tmp_path), coordinates)
