"""A sequence adapter that breaks its contract is named where it breaks it.

Each case takes the minGRU example's adapter (``examples/mingru.py``, which records
exactly) and breaks one method the way a user's first adapter might. The reference is the
contract itself (:mod:`gradscope.sequences.base`): every case must raise
:class:`~gradscope.errors.AdapterContractError` naming the method, never an ``IndexError``
or ``RuntimeError`` from inside gradscope.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

import gradscope as gs
from gradscope.errors import AdapterContractError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import mingru as mingru_example


class _Broken(mingru_example.MinGRUAdapter):
    """The example's adapter with one method replaced (``how``)."""

    def __init__(self, how: str) -> None:
        self.how = how
        self.kind = f"mingru_broken_{how}"

    def module_params(self, module):
        p = super().module_params(module)
        if self.how == "params":
            return {**p, "hidden": 16}  # a plain int, not a 0-d tensor
        return p

    def drive(self, params, args, kwargs):
        d = super().drive(params, args, kwargs)
        if self.how == "drive_type":
            return {"u": d.u}
        if self.how == "drive_layout":
            return gs.Drive(d.u.transpose(0, 1)[..., :-1])  # batch-first and one column short
        if self.how == "s0":
            return gs.Drive(d.u, d.u.new_zeros(3, 5))
        if self.how == "lengths":
            return gs.Drive(d.u, None, torch.tensor([0, 99]))
        if self.how == "drive_raises":
            raise KeyError("weight_z")
        return d

    def step(self, params, x, s):
        out = super().step(params, x, s)
        return out[:, :-1] if self.how == "step" else out

    def diagonal(self, params, u):
        lam = super().diagonal(params, u)
        if self.how == "diagonal_shape":
            return lam[:, :1]
        if self.how == "diagonal_values":
            return 0.5 * lam  # contradicts step: J_t v has ‖·‖ of |λ| v, not |λ/2| v
        return lam


CASES = {
    "params": r"module_params must return a dict of names to tensors.*'hidden': int",
    "drive_type": r"drive must return a gradscope Drive\(u, s0, lengths\), got dict",
    "drive_layout": r"drive gives u of shape \(2, 7, 15\), but input_size\(params\) says I = 16",
    "s0": r"drive gives s0 of shape \(3, 5\); the contract is \(B, D\) = \(2, 8\)",
    "lengths": r"drive gives lengths \(2,\); the contract is None or 2 integers in 1..T = 1..7",
    "drive_raises": r"\.drive raised KeyError: 'weight_z'",
    "step": r"\.step\(params, u_t \(2, 16\), s \(2, 8\)\) returned \(2, 7\)",
    "diagonal_shape": r"\.diagonal\(params, u of \(\d+, 16\)\) returned \(\d+, 1\)",
    "diagonal_values": r"\.diagonal contradicts its step",
}


@pytest.mark.parametrize("how", list(CASES))
def test_a_broken_adapter_is_named(how, clean_registry):
    torch.manual_seed(0)
    module = mingru_example.MinGRU(16, 8)
    gs.register_sequence(mingru_example.MinGRU, _Broken(how), overwrite=True)
    with pytest.raises(AdapterContractError, match=CASES[how]) as info:
        gs.trace(module, torch.randn(2, 7, 16))
    assert "_Broken (kind 'mingru_broken_" in str(info.value)


def test_the_examples_adapter_meets_the_contract(clean_registry):
    """The unbroken adapter passes every check (the checks reject only what is wrong)."""
    torch.manual_seed(0)
    gs.register_sequence(mingru_example.MinGRU, _Broken("none"), overwrite=True)
    tr = gs.trace(mingru_example.MinGRU(16, 8), torch.randn(2, 7, 16))
    assert tr[0].states.shape == (8, 2, 8)
