"""Product quantization against a numpy oracle, without Spark."""

import numpy as np
import pytest

from knnspark import pq
from knnspark.generate import synthetic_embeddings


def _unit(x):
    x = np.asarray(x, dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def data():
    x = _unit(synthetic_embeddings(3000, 36, n_topics=20, seed=3))
    return x, pq.train_codebooks(x[:2000], 6, n_iter=8, seed=5)


def test_codes_are_each_subspaces_nearest_centroid(data):
    x, books = data
    assert books.centroids.shape == (6, 256, 6) and books.bytes_per_vector == 6
    codes = pq.encode(books, x)
    assert codes.shape == (3000, 6) and codes.dtype == np.uint8
    for j in range(6):  # brute force: every centroid's squared distance, float64
        sub = x[:, j * 6 : (j + 1) * 6].astype(np.float64)
        dist = ((sub[:, None, :] - books.centroids[j][None].astype(np.float64)) ** 2).sum(-1)
        best = dist.min(axis=1)
        got = dist[np.arange(3000), codes[:, j]]
        np.testing.assert_allclose(got, best, rtol=1e-5, atol=1e-6)  # ties may go either way
    decoded = pq.decode(books, codes)
    want = np.concatenate([books.centroids[j][codes[:, j]] for j in range(6)], axis=1)
    np.testing.assert_array_equal(decoded, want)
    # The centroids are codes of themselves.
    assert np.array_equal(pq.encode(books, decoded), codes)


def test_lookup_table_scores_are_products_with_the_decoded_vectors(data):
    x, books = data
    codes = pq.encode(books, x)
    q = x[:40]
    scores = pq.lut_scores(pq.lookup_tables(books, q), codes)
    oracle = q.astype(np.float64) @ pq.decode(books, codes).astype(np.float64).T
    np.testing.assert_allclose(scores, oracle, atol=1e-5)
    # ... and close to the true cosines on clustered data (the quantization error is small).
    true = q.astype(np.float64) @ x.astype(np.float64).T
    assert np.abs(scores - true).mean() < 0.05


def test_a_dimension_not_divisible_by_the_subspaces_is_zero_padded():
    x = _unit(np.random.default_rng(0).standard_normal((300, 10)))
    books = pq.train_codebooks(x, 3, n_iter=4, seed=1)  # 3 sub-spaces of 4: two padded zeros
    assert books.dsub == 4 and books.dim == 10
    codes = pq.encode(books, x)
    assert pq.decode(books, codes).shape == (300, 10)
    scores = pq.lut_scores(pq.lookup_tables(books, x[:5]), codes)
    np.testing.assert_allclose(scores, x[:5] @ pq.decode(books, codes).T, atol=1e-5)


def test_training_is_seeded_and_more_subspaces_quantize_finer(data):
    x, books = data
    again = pq.train_codebooks(x[:2000], 6, n_iter=8, seed=5)
    assert np.array_equal(again.centroids, books.centroids)
    other = pq.train_codebooks(x[:2000], 6, n_iter=8, seed=6)
    assert not np.array_equal(other.centroids, books.centroids)
    errors = []
    for m in (3, 6, 12):
        b = pq.train_codebooks(x[:2000], m, n_iter=8, seed=5)
        errors.append(float(((pq.decode(b, pq.encode(b, x)) - x) ** 2).sum(axis=1).mean()))
    assert errors[0] > errors[1] > errors[2]


def test_fewer_training_rows_than_codes_and_bad_arguments():
    x = _unit(np.random.default_rng(1).standard_normal((40, 8)))
    books = pq.train_codebooks(x, 2, n_iter=3, seed=0)
    assert books.centroids.shape[1] == 40  # a code per training row
    assert np.array_equal(pq.decode(books, pq.encode(books, x)), x)  # each row its own code
    with pytest.raises(ValueError, match="between 1 and the dimension 8"):
        pq.train_codebooks(x, 9)
    assert pq.default_n_subspaces(384) == 192 and pq.default_n_subspaces(5) == 3


def test_codes_of_any_leading_shape_decode_row_by_row(data):
    x, books = data
    codes = pq.encode(books, x[:60]).reshape(6, 10, 6)  # e.g. each item's k neighbours
    decoded = pq.decode(books, codes)
    assert decoded.shape == (6, 10, 36)
    assert np.array_equal(decoded.reshape(60, 36), pq.decode(books, codes.reshape(60, 6)))
