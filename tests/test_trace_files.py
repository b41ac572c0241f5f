"""Hostile and corrupt trace files: ``gs.load`` refuses them with a clear TraceFormatError.

Every file is built here from a real saved trace (never a committed binary); the reference
is the valid trace the file was derived from.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import gradscope as gs
from gradscope import _npz
from gradscope.errors import TraceFormatError


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
        ({"l0/param/weight_hh": lambda a: a[:, :2]}, "weights .* do not fit"),
        ({"l0/param/weight_ih": lambda a: np.zeros((12, 5), a.dtype)}, "do not fit"),
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
