"""Bucket selection (:mod:`gradscope._select`) against ``np.quantile``, bitwise."""

from __future__ import annotations

import numpy as np
import pytest

from gradscope._select import MIN_SIZE, quantiles


def _cases(rng: np.random.Generator):
    n = MIN_SIZE + 12_345
    yield "uniform", rng.random(n)
    yield "heavy tails", rng.standard_normal(n) ** 3
    yield "few distinct values (ties across buckets)", rng.integers(0, 5, n).astype(float)
    yield "80 decades", np.exp(rng.standard_normal(n) * 20)
    yield "almost constant", np.concatenate([np.zeros(n - 3), [1e-30, 5.0, 2.0]])
    yield "constant", np.full(n, 0.25)
    yield "with -inf", np.concatenate([rng.random(n), [-np.inf]])
    yield "gates", 1 / (1 + np.exp(-rng.standard_normal(n) * 3))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_equals_numpy_bitwise(dtype) -> None:
    rng = np.random.default_rng(0)
    qs = (0.0, 0.1, 0.5, 0.9, 1.0, 0.123456, 0.999)
    for name, v in _cases(rng):
        v = v.astype(dtype)
        expected = np.asarray(np.quantile(v, qs), dtype=np.float64)
        got = quantiles(v, qs)
        assert np.array_equal(got, expected, equal_nan=True), name


def test_small_arrays_and_single_quantile() -> None:
    v = np.array([3.0, 1.0, 2.0])
    assert np.array_equal(quantiles(v, [0.5]), [2.0])
    big = np.random.default_rng(1).random(MIN_SIZE * 3).astype(np.float32)
    assert np.array_equal(quantiles(big, [0.5]), np.asarray([np.quantile(big, 0.5)], float))
