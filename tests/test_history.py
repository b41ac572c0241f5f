"""History: a training record's storage, aggregation over ranks, and its file format.

A :class:`gradscope.history.History` is built here by hand, without a Monitor; the round trip
of a history recorded by a Monitor is in ``test_monitor.py``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from gradscope.errors import TraceFormatError
from gradscope.history import SUMMARY_KEYS, History


def test_history_load_errors(tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(TraceFormatError, match="readable"):
        History.load(bad)
    with pytest.raises(TraceFormatError, match="no such file"):
        History.load(tmp_path / "missing.npz")
    newer = tmp_path / "newer.npz"
    meta = {"format": "gradscope.history", "version": 99}
    np.savez(newer, __meta__=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8))
    with pytest.raises(TraceFormatError, match="version 99"):
        History.load(newer)
    other = tmp_path / "other.npz"
    np.savez(other, x=np.zeros(2))
    with pytest.raises(TraceFormatError):
        History.load(other)


def test_history_aggregates_ranks_by_batch_size():
    hist = History(world_size=2)
    k = len(SUMMARY_KEYS)
    sc = np.full((2, k), np.nan)
    sc[:, SUMMARY_KEYS.index("T")] = [2, 1]
    sc[:, SUMMARY_KEYS.index("B")] = [3, 1]
    sc[:, SUMMARY_KEYS.index("rate")] = [-1.0, np.nan]
    gn = np.array([[1.0, 2.0, 3.0], [5.0, 6.0, np.nan]])
    hist.append(0, {"a": (gn, sc)})
    # t=0, 1: (3·g0 + 1·g1) / 4; t=2: only rank 0 ran that long
    np.testing.assert_allclose(hist.grad_norms("a")[0], [2.0, 3.0, 3.0])
    np.testing.assert_array_equal(hist.grad_norms("a", rank=1)[0, :2], [5.0, 6.0])
    assert hist.scalar("a", "rate").tolist() == [-1.0]
    with pytest.raises(KeyError):
        hist.grad_norms("b")
