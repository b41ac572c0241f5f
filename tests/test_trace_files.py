"""Saved traces: every family round-trips; hostile files get a clear TraceFormatError.

Every file is built here from a real saved trace (never a committed binary); the reference
is the live trace the file was saved from (round trips), or the valid trace the file was
derived from (hostile files).
"""

from __future__ import annotations

import io
import json
import sys
import zipfile
from pathlib import Path

import native_xlstm
import numpy as np
import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import gradscope as gs
from gradscope import _npz
from gradscope.errors import ArgumentTypeError, ShapeError, TraceFormatError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import lru as lru_example
import mingru as mingru_example


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    """An LSTM trace with lengths [6, 4, 2] (T = 6), saved."""
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(2, 3)
    x = pack_padded_sequence(torch.randn(6, 3, 2), torch.tensor([6, 4, 2]))
    return gs.trace(lstm, x).save(tmp_path_factory.mktemp("t") / "run.npz")


def rewrite(src: Path, dst: Path, edit_meta=None, **arrays) -> Path:
    """``src`` with its metadata edited by ``edit_meta(meta)`` and members replaced."""
    with np.load(src, allow_pickle=False) as npz:
        data = {k: npz[k] for k in npz.files}
    meta = json.loads(data.pop("__meta__").tobytes())
    if edit_meta is not None:
        edit_meta(meta)
    data.update(arrays)
    data["__meta__"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    np.savez(dst, **data)
    return dst


def test_valid_file_loads(saved: Path) -> None:
    tr = gs.load(saved)
    np.testing.assert_array_equal(tr[0].lengths, [6, 4, 2])


def test_lengths_outside_1_to_T_are_refused(saved: Path, tmp_path: Path) -> None:  # case 2
    bad = rewrite(saved, tmp_path / "len.npz", **{"l0/lengths": np.array([100, -3, 0])})
    with pytest.raises(TraceFormatError, match=r"lengths must be in 1\.\.T = 1\.\.6"):
        gs.load(bad)


def test_unknown_cell_kind_is_refused(saved: Path, tmp_path: Path) -> None:  # case 3
    for kind, match in (("transformer", "unknown cell kind 'transformer'"), (7, "'kind' must")):
        bad = rewrite(saved, tmp_path / "kind.npz", lambda m, k=kind: m["layers"][0].update(kind=k))
        with pytest.raises(TraceFormatError, match=match):
            gs.load(bad)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"l0/states": lambda a: np.nan_to_num(a).astype(np.int32)}, "holds int32 numbers"),
        ({"l0/states": lambda a: a.astype(np.complex64)}, "holds complex64 numbers"),
        ({"l0/states": lambda a: a[..., :5]}, r"expected \(T\+1, B, 6\)"),
        ({"l0/inputs": lambda a: a[:3]}, r"expected \(6, 3, I\)"),
        ({"l0/param/weight_hh": lambda a: a[:, :2]}, r"weight_hh has shape \(12, 2\)"),
        (
            {"l0/param/weight_ih": lambda a: np.zeros((12, 5), a.dtype)},
            r"needs weight_ih of shape \(12, 2\)",
        ),
        ({"l0/lengths": lambda a: a.astype(np.float64)}, "expected 3 integers"),
    ],
)
def test_arrays_of_the_wrong_dtype_or_shape(saved: Path, tmp_path: Path, change, match) -> None:
    with np.load(saved) as npz:  # case 5
        arrays = {k: f(npz[k]) for k, f in change.items()}
    bad = rewrite(saved, tmp_path / "bad.npz", **arrays)
    with pytest.raises(TraceFormatError, match=match):
        gs.load(bad)


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda m: m["layers"][0].update(state_sizes=["x"]), "'state_sizes' must be"),
        (lambda m: m["layers"][0].update(meta="abc"), "'meta' must be an object"),
        (lambda m: m.update(trace=[1]), "'trace' must be an object"),
        (lambda m: m.update(version="1"), "version '1'"),
        (lambda m: m.update(version=True), "version True"),
        (lambda m: m.update(layers={"a": 1}), "'layers' must be a list"),
        (lambda m: m["layers"][0].update(params="weight_hh"), "'params' must be"),
        (lambda m: m["layers"][0].update(state_names=["h"]), "'state_names' must be"),
        (lambda m: m["layers"][0].update(has_grads=True), "no array 'l0/grads'"),
    ],
)
def test_metadata_of_the_wrong_type(saved: Path, tmp_path: Path, edit, match) -> None:
    bad = rewrite(saved, tmp_path / "meta.npz", edit)  # case 5
    with pytest.raises(TraceFormatError, match=match):
        gs.load(bad)


def _with_member(src: Path, dst: Path, name: str, payload: bytes) -> Path:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            if info.filename != name:
                zout.writestr(info, zin.read(info))
        zout.writestr(name, payload)
    return dst


def test_declared_sizes_are_checked_before_reading(saved: Path, tmp_path: Path) -> None:
    huge = (10**6, 10**6, 6)  # 24 TB declared, 0 bytes held (case 6)
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": "<f4", "fortran_order": False, "shape": huge}
    )
    lying = _with_member(saved, tmp_path / "lying.npz", "l0/states.npy", buf.getvalue())
    with pytest.raises(TraceFormatError, match=r"declares shape .* but holds 0 bytes"):
        gs.load(lying)
    # a member the metadata does not name is never read, whatever it declares
    extra = _with_member(saved, tmp_path / "extra.npz", "junk.npy", buf.getvalue())
    assert gs.load(extra).names == gs.load(saved).names


def test_arrays_larger_than_memory_are_refused(saved: Path, monkeypatch) -> None:
    monkeypatch.setattr(_npz, "available_memory", lambda: 100)  # case 6
    with pytest.raises(TraceFormatError, match=r"more than the .* memory available"):
        gs.load(saved)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"<!DOCTYPE html><html></html>", "an HTML file"),
        (b"\x80\x04K\x01.", "a Python pickle"),
        (None, "a directory"),
    ],
)
def test_not_a_trace_file_says_what_it_is(tmp_path: Path, content, match) -> None:
    path = tmp_path / "x.npz"
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
    with pytest.raises(TraceFormatError, match=match) as info:
        gs.load(path)
    assert "pickled data" not in str(info.value)


class _Cell(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(3 + 8, 8)

    def forward(self, x, h):
        return torch.tanh(self.lin(torch.cat([x, h], -1)))


def test_custom_cell_jacobians_are_saved_only_when_small(tmp_path: Path, monkeypatch) -> None:
    torch.manual_seed(0)  # resources: a custom cell's dense Jacobians are D times its states
    cell = _Cell()

    def loop(x):
        h = torch.zeros(x.shape[1], 8)
        for t in range(x.shape[0]):
            h = cell(x[t], h)
        return h

    with gs.record(cell, cells=[cell]) as rec:
        loop(torch.randn(5, 2, 3))
    tr = rec.trace
    data = tr[0].states.numel() * 4 + tr[0].inputs.numel() * 4
    monkeypatch.setattr(gs.traces, "JACOBIAN_SAVE_BYTES", 0)  # 5·2·8·(8+3) > 4 × data
    with pytest.warns(UserWarning, match=r"dense Jacobians .* are not stored"):
        small = tr.save(tmp_path / "small.npz")
    assert small.stat().st_size < 4 * data + 8192
    d = gs.diagnose(gs.load(small), progress=False)[0]
    assert d.regime == "unknown" and "jacobians=True" in d.reason
    full = gs.load(tr.save(tmp_path / "full.npz", jacobians=True))[0]
    ref = torch.func.jacrev(lambda h: cell(tr[0].inputs[2, 1], h))(tr[0].states[2, 1])
    torch.testing.assert_close(full.jacobians(steps=[2], batch=[1])[0, 0], ref)


# =========================================================================== round trips
def _ids() -> torch.Tensor:
    return torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(1))


def _hf(name: str, model: str, **cfg):
    """``gs.trace`` of a tiny random ``transformers`` model (configs as in test_seq_*.py)."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = getattr(transformers, name)(vocab_size=64, **cfg)
    if name == "Qwen3NextConfig":
        config._experts_implementation = "eager"
    home = native_xlstm.modeling() if model == "xLSTMModel" else transformers  # its own mLSTM
    return gs.trace(getattr(home, model)(config).eval(), _ids(), use_cache=False)


def _cells() -> gs.Trace:
    torch.manual_seed(0)
    cells = torch.nn.ModuleList(
        [torch.nn.LSTMCell(3, 4), torch.nn.GRUCell(3, 4), torch.nn.RNNCell(3, 4, "relu")]
    )
    x = torch.randn(6, 2, 3)
    with gs.record(cells, cells=list(cells)) as rec:
        s = [(torch.zeros(2, 4), torch.zeros(2, 4)), torch.zeros(2, 4), torch.zeros(2, 4)]
        for t in range(6):
            s = [cell(x[t], state) for cell, state in zip(cells, s)]
    return rec.trace


def _fused(module: torch.nn.Module, x) -> gs.Trace:
    return gs.trace(module, x)


FAMILIES = {
    "rnn-2-layer-bidirectional": lambda: _fused(
        torch.nn.RNN(3, 4, num_layers=2, bidirectional=True), torch.randn(6, 2, 3)
    ),
    "lstm-proj-packed": lambda: _fused(
        torch.nn.LSTM(3, 4, proj_size=2),
        pack_padded_sequence(torch.randn(6, 3, 3), torch.tensor([6, 4, 2])),
    ),
    "gru-batch-first": lambda: _fused(torch.nn.GRU(3, 4, batch_first=True), torch.randn(2, 6, 3)),
    "cells": _cells,
    "mamba": lambda: _hf(
        "MambaConfig",
        "MambaModel",
        hidden_size=16,
        state_size=4,
        num_hidden_layers=1,
        intermediate_size=32,
    ),
    "mamba2": lambda: _hf(
        "Mamba2Config",
        "Mamba2Model",
        hidden_size=32,
        expand=1,
        num_heads=4,
        head_dim=8,
        n_groups=1,
        state_size=8,
        num_hidden_layers=1,
        chunk_size=8,
        use_cache=False,
    ),
    "rwkv": lambda: _hf(
        "RwkvConfig", "RwkvModel", context_length=32, hidden_size=16, num_hidden_layers=2
    ),
    "xlstm": lambda: _hf(
        "xLSTMConfig",
        "xLSTMModel",
        hidden_size=32,
        num_heads=2,
        num_blocks=1,
        qk_dim_factor=1.0,
        ffn_round_up_to_multiple_of=16,
    ),
    "recurrent-gemma": lambda: _hf(
        "RecurrentGemmaConfig",
        "RecurrentGemmaModel",
        hidden_size=32,
        intermediate_size=64,
        num_attention_heads=2,
        num_key_value_heads=1,
        num_hidden_layers=1,
        attention_window_size=16,
    ),
    "gated-deltanet": lambda: _hf(
        "Qwen3NextConfig",
        "Qwen3NextModel",
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        layer_types=["linear_attention"],
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        linear_conv_kernel_dim=4,
        linear_key_head_dim=8,
        linear_value_head_dim=8,
        linear_num_key_heads=2,
        linear_num_value_heads=4,
        num_experts=2,
        num_experts_per_tok=1,
        moe_intermediate_size=16,
        shared_expert_intermediate_size=16,
        use_cache=False,
    ),
    "mingru": lambda: _fused(mingru_example.MinGRU(3, 4), torch.randn(2, 7, 3)),
    "lru": lambda: _fused(lru_example.LRU(3, 4, 2), torch.randn(2, 7, 3)),
}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_family_round_trips(family: str, tmp_path: Path) -> None:
    """Save -> load -> diagnose gives the live trace's diagnosis, bitwise (#28 case 1: the
    0-d int64 configuration numbers of Mamba-2, xLSTM and gated DeltaNet were refused)."""
    torch.manual_seed(0)
    live = FAMILIES[family]()
    back = gs.load(live.save(tmp_path / "run.npz"))
    assert back.names == live.names and back.meta == live.meta
    for a, b in zip(live, back, strict=True):
        assert (b.kind, b.state_names, b.state_sizes) == (a.kind, a.state_names, a.state_sizes)
        for got, want in ((b.states, a.states), (b.inputs, a.inputs)):
            torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True)
        assert b.lengths is None if a.lengths is None else b.lengths.tolist() == a.lengths.tolist()
        assert sorted(b.params) == sorted(a.params)
        for name, want in a.params.items():  # integers stay integers, float64 stays float64
            assert b.params[name].dtype == want.dtype, name
            torch.testing.assert_close(b.params[name], want, rtol=0, atol=0, equal_nan=True)
    d_live, d_back = gs.diagnose(live, progress=False), gs.diagnose(back, progress=False)
    for x, y in zip(d_live, d_back, strict=True):
        assert y.regime == x.regime and y.verdict == x.verdict
        assert y.lambda1 == x.lambda1 or (np.isnan(y.lambda1) and np.isnan(x.lambda1))
        assert y.decay["state"].rate == x.decay["state"].rate
    assert d_back.to_dict() == d_live.to_dict()


def test_bfloat16_trace_round_trips(tmp_path: Path) -> None:
    torch.manual_seed(0)  # NumPy has no bfloat16: saving raised a raw TypeError
    live = gs.trace(torch.nn.GRU(3, 4).bfloat16(), torch.randn(5, 2, 3).bfloat16())
    back = gs.load(live.save(tmp_path / "bf16.npz"))
    for got, want in (
        (back[0].states, live[0].states),
        *((back[0].params[k], v) for k, v in live[0].params.items()),
    ):
        assert got.dtype == torch.bfloat16
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert (
        gs.diagnose(back, progress=False).to_dict() == gs.diagnose(live, progress=False).to_dict()
    )


def test_sequence_kind_params_keep_their_dtype(tmp_path: Path) -> None:
    """Integer, boolean and complex parameters of a sequence mixer load as saved."""
    src = FAMILIES["mingru"]().save(tmp_path / "m.npz")
    extra = {
        "l0/param/steps": np.int64(7),
        "l0/param/flag": np.bool_(True),
        "l0/param/diag": np.array([0.5 + 0.5j, -0.25j], np.complex64),
    }
    bad = rewrite(
        src,
        tmp_path / "x.npz",
        lambda m: m["layers"][0]["params"].extend(["steps", "flag", "diag"]),
        **extra,
    )
    p = gs.load(bad)[0].params
    assert (p["steps"].dtype, p["flag"].dtype, p["diag"].dtype) == (
        torch.int64,
        torch.bool,
        torch.complex64,
    )
    assert p["steps"].item() == 7 and p["diag"].tolist() == [0.5 + 0.5j, -0.25j]


# =========================================================================== hand-written files
@pytest.mark.parametrize("cls", [torch.nn.LSTM, torch.nn.GRU, torch.nn.RNN])
def test_a_0d_bias_of_a_builtin_cell_is_refused(cls, tmp_path: Path) -> None:
    torch.manual_seed(0)  # it broadcast in the step, then crashed in the gates (IndexError)
    src = gs.trace(cls(2, 3), torch.randn(5, 2, 2)).save(tmp_path / "t.npz")
    bad = rewrite(src, tmp_path / "bad.npz", **{"l0/param/bias_hh": np.float32(0.5)})
    rows = {torch.nn.LSTM: 12, torch.nn.GRU: 9, torch.nn.RNN: 3}[cls]
    with pytest.raises(
        TraceFormatError, match=rf"layer 0 .*bias_hh has shape \(\); .* \({rows},\)"
    ):
        gs.load(bad)


def test_a_builtin_cell_without_a_bias_it_needs_is_refused(tmp_path: Path) -> None:
    torch.manual_seed(0)  # the one-step trial of check_cell: bias_ih without bias_hh
    src = gs.trace(torch.nn.RNN(2, 3), torch.randn(5, 2, 2)).save(tmp_path / "t.npz")
    bad = rewrite(src, tmp_path / "bad.npz", lambda m: m["layers"][0]["params"].remove("bias_hh"))
    with pytest.raises(TraceFormatError, match=r"rnn_tanh weights .* do not fit .*KeyError"):
        gs.load(bad)


def test_missing_has_lengths_is_refused(saved: Path, tmp_path: Path) -> None:
    bad = rewrite(saved, tmp_path / "m.npz", lambda m: m["layers"][0].pop("has_lengths"))
    with pytest.raises(TraceFormatError, match=r"'has_lengths' must be true or false, got nothing"):
        gs.load(bad)  # was a raw KeyError


def test_big_endian_arrays_are_read_in_native_order(saved: Path, tmp_path: Path) -> None:
    with np.load(saved) as npz:  # was "byte order different from the native byte order"
        swapped = {
            k: npz[k].astype(npz[k].dtype.newbyteorder(">")) for k in npz.files if k != "__meta__"
        }
    big = rewrite(saved, tmp_path / "big.npz", **swapped)
    ref, got = gs.load(saved)[0], gs.load(big)[0]
    torch.testing.assert_close(got.states, ref.states, rtol=0, atol=0, equal_nan=True)
    assert got.lengths.tolist() == [6, 4, 2]
    assert gs.diagnose(got, progress=False).to_dict() == gs.diagnose(ref, progress=False).to_dict()


@pytest.mark.parametrize(("steps", "batch"), [(0, 3), (6, 0)])
def test_a_trace_needs_one_step_of_one_sequence(saved: Path, tmp_path: Path, steps, batch) -> None:
    with np.load(saved) as npz:  # T = 0 crashed in diagnose ("argmax of an empty sequence")
        arrays = {
            "l0/states": npz["l0/states"][: steps + 1, :batch],
            "l0/inputs": npz["l0/inputs"][:steps, :batch],
        }
    bad = rewrite(
        saved, tmp_path / "e.npz", lambda m: m["layers"][0].update(has_lengths=False), **arrays
    )
    with pytest.raises(
        TraceFormatError, match=rf"T = {steps} steps of B = {batch} .* at least one"
    ):
        gs.load(bad)


def test_an_empty_batch_is_refused_when_saved_and_diagnosed(tmp_path: Path) -> None:
    empty = gs.trace(torch.nn.GRU(3, 4), torch.randn(5, 0, 3))  # diagnose: raw IndexError
    with pytest.raises(ShapeError, match=r"B = 0 sequences"):
        empty.save(tmp_path / "e.npz")
    with pytest.raises(ShapeError, match=r"'gru\.l0' holds T = 5 steps of B = 0"):
        gs.diagnose(empty, progress=False)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("given", [123, None, b"run.npz"])
def test_load_needs_a_path(given) -> None:
    with pytest.raises(
        ArgumentTypeError, match=rf"gs\.load: needs the path .* got {type(given).__name__}"
    ):
        gs.load(given)  # was a raw TypeError from pathlib


# =========================================================================== sweep
def _bytes(dst: Path, data: bytes) -> Path:
    dst.write_bytes(data)
    return dst


def _encrypted(src: Path, dst: Path) -> Path:
    """``src`` with the "encrypted" flag set on every member (zipfile: a raw RuntimeError)."""
    data = bytearray(src.read_bytes())
    for sig, flag_at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):  # local, central headers
        i = data.find(sig)
        while i >= 0:
            data[i + flag_at] |= 0x1
            i = data.find(sig, i + 4)
    return _bytes(dst, bytes(data))


def _meta_bytes(src: Path, dst: Path, meta: bytes) -> Path:
    with np.load(src, allow_pickle=False) as npz:
        data = {k: npz[k] for k in npz.files}
    np.savez(dst, **{**data, "__meta__": np.frombuffer(meta, np.uint8)})
    return dst


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda src, dst: _bytes(dst, src.read_bytes()[:-200]), "not a readable .npz"),
        (lambda src, dst: _bytes(dst, b""), "not a readable .npz"),
        (_encrypted, "'__meta__' is not a readable .npy member .*encrypted"),
        (lambda src, dst: _meta_bytes(src, dst, b"\xff\xfe{}"), "corrupt metadata .*utf-8"),
        (lambda src, dst: rewrite(src, dst, lambda m: m.update(version=2)), "upgrade gradscope"),
        (lambda src, dst: rewrite(src, dst, lambda m: m.update(format="x")), "format 'x' is not"),
        (
            lambda src, dst: rewrite(src, dst, **{"l0/states": np.zeros((7, 3, 6), np.longdouble)}),
            "holds float128 numbers",
        ),
        (
            lambda src, dst: rewrite(
                src, dst, lambda m: m["layers"][0].update(state_names=["h", "h"])
            ),
            "'state_names' must be a list of 2 distinct",
        ),
        (
            lambda src, dst: rewrite(
                src, dst, **{"l0/param/weight_hh": np.zeros((12, 3), np.int64)}
            ),
            "weights of a lstm cell are real floating point",
        ),
        (
            lambda src, dst: rewrite(
                src, dst, lambda m: m["layers"][0].update(dtypes={"states": "int8"})
            ),
            "'dtypes' must be",
        ),
    ],
    ids=[
        "truncated",
        "empty",
        "encrypted",
        "non-utf8-meta",
        "future-version",
        "format-name",
        "float128",
        "state-names",
        "int-weights",
        "dtypes",
    ],
)
def test_sweep_of_broken_files(saved: Path, tmp_path: Path, make, match) -> None:
    with pytest.raises(TraceFormatError, match=match):
        gs.load(make(saved, tmp_path / "bad.npz"))


def test_a_path_that_is_not_a_regular_file(tmp_path: Path) -> None:
    import os

    fifo = tmp_path / "pipe.npz"
    os.mkfifo(fifo)  # said "no such file"; opening it would block
    with pytest.raises(TraceFormatError, match="not a regular file"):
        gs.load(fifo)
    with pytest.raises(TraceFormatError, match=r"cannot be read \(File name too long\)"):
        gs.load(tmp_path / ("x" * 300 + ".npz"))  # a raw OSError from pathlib
