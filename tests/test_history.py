"""History: a training record's storage, aggregation over ranks, and its file format.

A :class:`gradscope.history.History` is built here by hand, without a Monitor; the round trip
of a history recorded by a Monitor is in ``test_monitor.py``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from gradscope.errors import ArgumentTypeError, TraceFormatError
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


# --------------------------------------------------------------------------- the file format
K = len(SUMMARY_KEYS)


def _built() -> History:
    """Two ranks, two layers (one absent at the second step), a note."""
    hist = History(world_size=2, meta={"model_class": "Net"})
    for step, (t_len, rate) in enumerate([(2, -0.5), (3, -0.25)]):
        sc = np.full((2, K), np.nan)
        sc[:, SUMMARY_KEYS.index("T")] = t_len
        sc[:, SUMMARY_KEYS.index("B")] = [2, 1]
        sc[:, SUMMARY_KEYS.index("rate")] = rate
        gn = np.arange(2.0 * (t_len + 1)).reshape(2, t_len + 1)
        entries = {"a": (gn, sc)} if step else {"a": (gn, sc), "b": (gn + 1, sc)}
        hist.append(10 * step, entries)
    hist.note(10, "no loss gradients")
    return hist


def _rewrite(src, dst, edit_meta=None, **arrays):
    with np.load(src, allow_pickle=False) as npz:
        data = {k: npz[k] for k in npz.files}
    meta = json.loads(data.pop("__meta__").tobytes())
    if edit_meta is not None:
        edit_meta(meta)
    data.update(arrays)
    np.savez(dst, **data, __meta__=np.frombuffer(json.dumps(meta).encode(), np.uint8))
    return dst


def test_a_saved_history_loads_back(tmp_path):
    back = History.load(_built().save(tmp_path / "h.npz"))
    assert back.names == ["a", "b"] and back.world_size == 2 and back.steps.tolist() == [0, 10]
    assert back.meta == {"model_class": "Net"}
    assert back.notes == {"no loss gradients": {"first_step": 10, "count": 1}}
    # the numbers put in: rank 0 grad norms 0..T, rank 1 T+1..2T+1, weights B = 2 and 1
    np.testing.assert_array_equal(back.grad_norms("a", rank=1)[1], [4.0, 5.0, 6.0, 7.0])
    np.testing.assert_array_equal(back.grad_norms("b", rank=0), [[1.0, 2.0, 3.0], [np.nan] * 3])
    assert back.scalar("a", "rate").tolist() == [-0.5, -0.25]
    assert np.isnan(back.scalar("b", "rate")[1])  # absent at step 10


def test_a_history_saved_before_a_key_existed_loads_without_it(tmp_path):
    src = _built().save(tmp_path / "h.npz")
    keep = [i for i, k in enumerate(SUMMARY_KEYS) if k != "lyapunov"]
    with np.load(src) as npz:
        cut = {f"l{i}/summaries": npz[f"l{i}/summaries"][:, :, keep] for i in (0, 1)}
    old = _rewrite(
        src, tmp_path / "old.npz", lambda m: m.update(keys=[SUMMARY_KEYS[i] for i in keep]), **cut
    )
    back = History.load(old)
    assert "lyapunov" not in back.keys and back.scalar("a", "rate").tolist() == [-0.5, -0.25]


@pytest.mark.parametrize(
    ("edit", "arrays", "match"),
    [  # the first three were raw ValueError, ValueError and AttributeError (#28 case 3)
        (
            None,
            {"l0/summaries": lambda a: a[:, :, :5]},
            rf"summaries are float64 \(2, 2, 5\); .*\(2, 2, {K}\)",
        ),
        (
            lambda m: m.update(world_size=-1),
            {},
            r"'world_size' must be a positive integer \(the number of ranks\), got -1",
        ),
        (lambda m: m.update(notes=["a", "b"]), {}, r"'notes' must be an object .*got \['a', 'b'\]"),
        (
            lambda m: m.update(world_size=1),
            {},
            r"grad_norms are float64 \(2, 2, 4\); .*\(2, 1, Tmax\+1\)",
        ),
        (lambda m: m.update(world_size="2"), {}, "'world_size' must be"),
        (lambda m: m.update(notes={"x": 3}), {}, "'notes' must be"),
        (lambda m: m.update(keys=[*SUMMARY_KEYS[1:], "x"]), {}, "among them 'T' and 'B'"),
        (lambda m: m.update(layers="ab"), {}, "'layers' must be a list of distinct"),
        (lambda m: m.update(layers=["a", "a"]), {}, "'layers' must be a list of distinct"),
        (lambda m: m.update(meta=[1]), {}, "'meta' must be an object"),
        (lambda m: m.update(version=0), {}, "history format version 0"),
        (lambda m: m.update(version=True), {}, "history format version True"),
        (None, {"steps": lambda a: a.astype(float)}, "steps are float64"),
        (None, {"l0/present": lambda a: a.astype(np.int64)}, "present is int64"),
        (None, {"l0/summaries": lambda a: a.astype(complex)}, "summaries are complex128"),
        (
            None,
            {"l0/summaries": lambda a: np.where(a == 3, 9.0, a)},
            r"T is \[9\.0, 9\.0\]; .*0\.\.3",
        ),
        (None, {"l0/summaries": lambda a: np.where(a == 2, np.nan, a)}, r"T is \[nan, nan\]"),
        (None, {"l0/summaries": lambda a: np.where(a == 2, 1.5, a)}, r"T is \[1\.5, 1\.5\]"),
    ],
)
def test_hostile_history_files(tmp_path, edit, arrays, match):
    src = _built().save(tmp_path / "h.npz")
    with np.load(src) as npz:
        changed = {k: f(npz[k]) for k, f in arrays.items()}
    bad = _rewrite(src, tmp_path / "bad.npz", edit, **changed)
    with pytest.raises(TraceFormatError, match=match):
        History.load(bad)


def test_big_endian_history_reads_like_the_native_one(tmp_path):
    src = _built().save(tmp_path / "h.npz")
    with np.load(src) as npz:
        swapped = {
            k: npz[k].astype(npz[k].dtype.newbyteorder(">")) for k in npz.files if k != "__meta__"
        }
    big = History.load(_rewrite(src, tmp_path / "big.npz", **swapped))
    np.testing.assert_array_equal(big.grad_norms("a"), History.load(src).grad_norms("a"))


@pytest.mark.parametrize("given", [123, None])
def test_history_paths_must_be_paths(given):
    with pytest.raises(ArgumentTypeError, match=rf"History\.load: .* got {type(given).__name__}"):
        History.load(given)
    with pytest.raises(ArgumentTypeError, match=r"History\.save: .* got"):
        History().save(given)


def test_the_history_text_shows_the_latest_analysed_regime_with_its_step_and_grade():
    from gradscope.history import REGIME_CODES
    from gradscope.history_text import history_summary, history_table, regime_cell

    hist = History()
    for step, regime, rate in [(0, "vanishing", -0.1), (10, "vanishing", -0.5), (20, None, 0)]:
        sc = np.full((1, K), np.nan)
        sc[0, SUMMARY_KEYS.index("T")], sc[0, SUMMARY_KEYS.index("B")] = 100, 2
        if regime:  # analysed: e^(rate·T) = e^-10 = 4.5e-5 (strong), e^-50 = 2e-22 (severe)
            sc[0, SUMMARY_KEYS.index("regime")] = REGIME_CODES[regime]
            sc[0, SUMMARY_KEYS.index("rate")] = rate
        hist.append(step, {"a": (np.ones((1, 101)), sc)})
    assert regime_cell(hist, "a", 0) == "vanishing (strong)"
    assert regime_cell(hist, "a", 1) == "vanishing (severe)"
    assert regime_cell(hist, "a") == "vanishing (severe; step 10)"
    table = history_table(hist)
    assert "vanishing (severe; step 10)" in table and "not analysed  " not in table
    assert "a: step 20 was not analysed" in table and "that of step 10, the latest" in table
    s = history_summary(hist)["layers"][0]
    assert s["regime"] == "not analysed" and s["latest_analysed_regime"] == "vanishing"
    assert s["latest_analysed_step"] == 10 and s["severity"] == "severe"
    empty = History()
    empty.append(0, {"a": (np.ones((1, 3)), np.full((1, K), np.nan))})
    assert regime_cell(empty, "a") == "not analysed"


def test_update_replaces_one_ranks_summaries_and_keeps_the_grad_norms():
    from gradscope.errors import ShapeError, UnknownNameError

    hist = History(world_size=2)
    gn = np.array([[1.0, 2.0], [3.0, 4.0]])
    hist.append(0, {"a": (gn, np.zeros((2, K)))})
    hist.update(-1, "a", np.full(K, 7.0), rank=1)
    assert hist.scalar("a", "rate", rank=0).tolist() == [0.0]
    assert hist.scalar("a", "rate", rank=1).tolist() == [7.0]
    np.testing.assert_array_equal(hist.grad_norms("a", rank=1), [[3.0, 4.0]])
    with pytest.raises(ShapeError, match=f"need \\({K},\\)"):
        hist.update(0, "a", np.zeros(K + 1))
    with pytest.raises(UnknownNameError, match="no layer 'b'"):
        hist.update(0, "b", np.zeros(K))
