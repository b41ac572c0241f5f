r"""Cells whose Jacobian is row-scaled weight blocks plus diagonal couplings: one description.

Vanilla RNNs, GRUs, LSTMs and sLSTMs all linearise to the same shape. With ``W`` the
recurrent weight (gate blocks ``W_b`` of ``H`` rows each, multiplying the state part it
*reads*, ``h``) the parts of the new state are computed in a fixed *order*, each as

.. math:: \delta p = \sum_{(p, b)} C_{p,b} \odot (W_b\, \delta h_{t-1})
          + \sum_{q} d_{p\leftarrow q} \odot \delta q_{t-1}
          + \sum_{r\ \mathrm{before}\ p} e_{p\leftarrow r} \odot \delta r_t

optionally followed by an output projection of the part (an LSTM's ``proj_size``).
:class:`GatedForm` declares the *terms* ``(p, b)`` (which gate block feeds which part), the
couplings ``d`` with the previous state (the *additive paths*: LSTM ``c ← c`` by ``f``, GRU
``h ← h`` by ``z``) and ``e`` with parts computed earlier in the same step (LSTM
``h ← c`` by ``o (1 − tanh² c)``); the adapter's ``linear_factors`` give the per-pair
numbers ``C`` (``scale``, one row per term), ``d`` (``diag``) and ``e`` (``chain``) as
:class:`GatedFactors`.

From this one description :class:`GatedCell` derives every product the analyses and the
Monitor use; no family writes them by hand:

* :meth:`~GatedCell.product`: ``J v``, ``Jᵀ u``, ``K v``, ``Kᵀ u`` on ``k`` columns per pair;
* :meth:`~GatedCell.state_sweep`: the Monitor's loss-gradient sweep, row layout ``(B, D)``;
* :meth:`~GatedCell.state_jvp_run` / :meth:`~GatedCell.state_vjp_run`: runs of products in
  the columns layout ``(D, n, k)`` (the Lyapunov QR blocks, the decay walks);

the loops of many steps live in :mod:`gradscope.cells.gated_loops`.

Each step is one GEMM with ``W`` (``O(N k · mH · P)``) plus ``O(N k · D)`` fused
elementwise calls into buffers made once per run. Where every block feeds exactly one term,
in block order (vanilla, GRU, LSTM), the gate rows are scaled in place by one call and each
part sums its consecutive blocks: for an LSTM a scaling, a sum and two multiply-adds per
step, the order of the model's own backward step. The transposed products walk the
description backwards: a part's cotangent gathers its ``e`` contributions from the parts
computed after it, then feeds its terms' blocks and its ``d`` couplings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from gradscope.cells import gated_loops
from gradscope.cells.base import CellAdapter, Params
from gradscope.cells.blocks import weight_t_times, weight_times
from gradscope.cells.gates import Gates
from gradscope.errors import AdapterContractError


@dataclass(frozen=True)
class GatedForm:
    """The shape of a gated cell's linearisation (see the module docstring).

    Attributes:
        parts: The state's parts, in the state's order (the adapter's ``state_names``).
        blocks: The gate blocks of ``W``'s rows, in row order (``("i", "f", "g", "o")``).
        terms: ``(part, block)`` pairs, in the order of :attr:`GatedFactors.scale`'s rows
            (``(("c", "i"), ("c", "f"), ("c", "g"), ("h", "o"))``).
        order: The parts in the order they are computed within a step (``("c", "h")``).
        diagonal: Couplings ``(to, from)`` with a part of the previous state, in the order
            of :attr:`GatedFactors.diag`; ``(p, p)`` is the part's additive path.
        chained: Couplings ``(to, from)`` with a part computed earlier in the same step, in
            the order of :attr:`GatedFactors.chain`.
        projected: ``(part, parameter)`` output projections applied where the parameter is
            present (an LSTM's ``weight_hr``); the loops of many steps then do not apply.
        reads: The part ``W`` multiplies.
        recurrent: The parameter holding ``W`` (``(len(blocks)·H, P)``).
        inputs: The parameter holding the input weight (the same gate blocks), or None when
            the cell's input already is the gates' input part (an sLSTM cell reads ``W x``).
    """

    parts: tuple[str, ...]
    blocks: tuple[str, ...]
    terms: tuple[tuple[str, str], ...]
    order: tuple[str, ...]
    diagonal: tuple[tuple[str, str], ...] = ()
    chained: tuple[tuple[str, str], ...] = ()
    projected: tuple[tuple[str, str], ...] = ()
    reads: str = "h"
    recurrent: str = "weight_hh"
    inputs: str | None = "weight_ih"

    def __post_init__(self) -> None:
        parts = set(self.parts)
        if set(self.order) != parts or self.reads not in parts:
            raise AdapterContractError(f"GatedForm: order/reads do not match the parts: {self}")
        for to, b in self.terms:
            if to not in parts or b not in self.blocks:
                raise AdapterContractError(f"GatedForm: term ({to!r}, {b!r}) is not a part/block")
        for to, frm in (*self.diagonal, *self.chained):
            if to not in parts or frm not in parts:
                raise AdapterContractError(f"GatedForm: coupling {to!r} <- {frm!r}: no such part")
        for to, frm in self.chained:
            if self.order.index(frm) >= self.order.index(to):
                raise AdapterContractError(
                    f"GatedForm: chained coupling {to!r} <- {frm!r} needs {frm!r} computed first"
                )
        object.__setattr__(self, "plan", gated_loops.make_plan(self))  # not a field

    @property
    def one_to_one(self) -> bool:
        """Every block feeds one term, in block order, each part's terms adjacent."""
        if [b for _, b in self.terms] != list(self.blocks):
            return False
        runs = [to for i, (to, _) in enumerate(self.terms) if i == 0 or self.terms[i - 1][0] != to]
        return len(runs) == len(set(runs))

    def span(self, part: str) -> tuple[int, int]:
        """``[lo, hi)`` of ``part``'s terms (adjacent when :attr:`one_to_one`; empty: none)."""
        idx = [i for i, (to, _) in enumerate(self.terms) if to == part]
        return (idx[0], idx[-1] + 1) if idx else (0, 0)

    def block_of(self, term: int) -> int:
        """The row block (index into :attr:`blocks`) of term ``term``."""
        return self.blocks.index(self.terms[term][1])

    def additive(self) -> tuple[str, ...]:
        """The parts with an additive path (a coupling with their own previous value)."""
        return tuple(to for to, frm in self.diagonal if to == frm)


class GatedFactors(NamedTuple):
    """Per-pair numbers of a :class:`GatedForm` (``N`` pairs, ``H`` units per gate block).

    Attributes:
        scale: ``(N, len(terms), H)`` the row scalings ``C_{p,b}`` of the state products.
        diag: One ``(N, H)`` tensor per coupling of ``form.diagonal`` (``d``).
        chain: One ``(N, H)`` tensor per coupling of ``form.chained`` (``e``).
        input_scale: ``(N, len(terms), H)`` the scalings of the input products where they
            differ from :attr:`scale` (GRU: the reset gate does not scale ``W_in x``), or None.
    """

    scale: Tensor
    diag: tuple[Tensor, ...] = ()
    chain: tuple[Tensor, ...] = ()
    input_scale: Tensor | None = None


def part_slices(adapter: CellAdapter, params: Params, form: GatedForm) -> dict[str, slice]:
    """Where each part of ``form`` sits in the state vector, from the adapter's sizes."""
    out, at = {}, 0
    for p, n in zip(form.parts, adapter.state_sizes(params)):
        out[p] = slice(at, at + int(n))
        at += int(n)
    return out


class GatedCell(CellAdapter):
    """A :class:`~gradscope.cells.base.CellAdapter` whose products come from its :attr:`form`.

    Subclasses set :attr:`form` and implement :meth:`step`, :meth:`state_sizes` and
    :meth:`linear_factors` (a :class:`GatedFactors`, the same numbers :meth:`step_factors`
    returns beside the state). A subclass that changes the maths (overrides ``step``,
    ``step_factors`` or ``linear_factors``) without declaring a form of its own is a
    ``torch.func`` cell again (:meth:`CellAdapter.__init_subclass__`).
    """

    _contract = True
    form: GatedForm | None = None
    #: The family's gates (:class:`~gradscope.cells.gates.Gates`), or None: no gate views.
    gates: Gates | None = None

    # ------------------------------------------------------------------ the gates
    def gate_values(self, params: Params, x: Tensor, s: Tensor) -> tuple[dict, Tensor | None]:
        """Every shown gate ``(N, H)`` and ``ln`` of the carried gate (or None).

        From the weights at the pairs, ``O(N · w)`` (:attr:`gates` ``.shown``).
        """
        raise NotImplementedError(f"{type(self).__name__} declares no gate read-outs")

    def carried_logits(self, params: Params, x: Tensor, s: Tensor) -> Tensor:
        """The carried gate's pre-activations ``(N, H)``, from its own weight rows only.

        A vanilla cell: its whole pre-activation, whose ``φ'`` is its gate.
        """
        raise NotImplementedError(f"{type(self).__name__} declares no gate read-outs")

    def carried_from_logits(self, a: Tensor) -> tuple[Tensor, Tensor | None]:
        """The carried gate and its ``ln`` (None when it has none) from its pre-activations."""
        raise NotImplementedError(f"{type(self).__name__} declares no gate read-outs")

    def additive(self, params: Params, factors: GatedFactors) -> list[tuple[slice, Tensor]]:
        """The additive path ``A_t``: ``(state slice, (N, size) diagonal)`` per part.

        The parts of :meth:`GatedForm.additive`, from the linear factors alone.
        """
        form = self.form
        sl = part_slices(self, params, form)
        return [(sl[to], factors.diag[j]) for j, (to, frm) in enumerate(form.diagonal) if to == frm]

    def runs(self, params: Params) -> bool:
        """The sweep and run loops apply: a form, and no output projection present."""
        return self.form is not None and not any(w in params for _, w in self.form.projected)

    def product(self, params, x, s, factors, m, wrt, rev):
        """``J m``, ``Jᵀ m``, ``K m`` or ``Kᵀ m`` from :attr:`form`.

        ``O(N k · mH · P)`` for the GEMM with the weight plus ``O(N k · D)`` elementwise.
        """
        if self.form is None:  # a subclass that changed the maths: torch.func of its step
            return super().product(params, x, s, factors, m, wrt, rev)
        form, f = self.form, factors
        state = wrt == "state"
        name = form.recurrent if state else form.inputs
        w = None if name is None else params[name]  # None: the input is the gates' own
        scale = f.scale if state or f.input_scale is None else f.input_scale
        sl = part_slices(self, params, form)
        H = scale.shape[-1]
        proj = {p: params[name] for p, name in form.projected if name in params}
        if rev:
            return _vjp(form, f, scale, w, sl, H, proj, m, state)
        a = m.clone() if w is None else weight_times(w, m[:, sl[form.reads]] if state else m)
        a = a.unflatten(1, (len(form.blocks), H))  # (N, blocks, H, k)
        new: dict[str, Tensor] = {}
        for p in form.order:
            t = None
            for i, (to, _) in enumerate(form.terms):
                if to == p:
                    term = scale[:, i].unsqueeze(-1) * a[:, form.block_of(i)]
                    t = term if t is None else t + term
            couplings = [(f.chain[j], new[r]) for j, (to, r) in enumerate(form.chained) if to == p]
            if state:
                couplings += [
                    (f.diag[j], m[:, sl[q]]) for j, (to, q) in enumerate(form.diagonal) if to == p
                ]
            for c, v in couplings:
                t = c.unsqueeze(-1) * v if t is None else t.addcmul(c.unsqueeze(-1), v)
            if t is None:
                t = m.new_zeros((m.shape[0], sl[p].stop - sl[p].start, m.shape[-1]))
            new[p] = weight_times(proj[p], t) if p in proj else t
        return torch.cat([new[p] for p in form.parts], dim=1)

    def state_sweep(self, params, factors, g_last, out_cot, valid):
        """``∂L/∂s_t`` of every step from :attr:`form` (:func:`gated_loops.sweep`).

        One ``(B, mH) × (mH, P)`` GEMM and the couplings' fused calls per step,
        ``O(B · mH · P)``. None with an output projection (the generic loop applies
        :meth:`product`).
        """
        if not self.runs(params) or not factors:
            return None
        sl = part_slices(self, params, self.form)
        return gated_loops.sweep(self.form, sl, params, factors, g_last, out_cot, valid)

    def run_factors(self, factors: GatedFactors, per_step: int) -> tuple[Tensor, ...]:
        """The factors in the columns layout (:func:`gated_loops.run_layout`)."""
        return gated_loops.run_layout(factors, per_step)

    def state_jvp_run(self, params, factors, steps, batch, v):
        """``J_{m-1} ⋯ J_0 v`` in the columns layout ``(D, n, k)`` (:func:`gated_loops.jvp_run`).

        One ``(mH, P) × (P, n k)`` GEMM and the parts' fused calls per step,
        ``O(n k · mH · P)``; None with an output projection.
        """
        if not self.runs(params):
            return None
        sl = part_slices(self, params, self.form)
        return gated_loops.jvp_run(self.form, sl, params, factors, steps, batch, v)

    def state_vjp_run(self, params, factors, steps, batch, u):
        """``J_{s_{m-1}}ᵀ ⋯ J_{s_0}ᵀ u`` in the columns layout (:func:`gated_loops.vjp_run`).

        One ``(P, mH) × (mH, n p)`` GEMM and the couplings' fused calls per step,
        ``O(n p · mH · P)``; None with an output projection.
        """
        if not self.runs(params):
            return None
        sl = part_slices(self, params, self.form)
        return gated_loops.vjp_run(self.form, sl, params, factors, steps, batch, u)


def _vjp(form, f, scale, w, sl, H, proj, u, state: bool) -> Tensor:
    """``Jᵀ u`` (``state``) or ``Kᵀ u`` on ``k`` columns per pair: the form walked back."""
    n, k = u.shape[0], u.shape[-1]
    cot = {p: u[:, sl[p]] for p in form.parts}  # cotangents of the new parts
    ga = u.new_zeros((n, len(form.blocks), H, k))
    back: dict[str, Tensor] = {}  # cotangents of the previous parts via the d couplings
    for p in reversed(form.order):
        g = weight_t_times(proj[p], cot[p]) if p in proj else cot[p]
        for j, (to, frm) in enumerate(form.chained):
            if to == p:
                cot[frm] = cot[frm].addcmul(f.chain[j].unsqueeze(-1), g)
        for i, (to, _) in enumerate(form.terms):
            if to == p:
                ga[:, form.block_of(i)].addcmul_(scale[:, i].unsqueeze(-1), g)
        if state:
            for j, (to, frm) in enumerate(form.diagonal):
                if to == p:
                    term = f.diag[j].unsqueeze(-1) * g
                    back[frm] = term if frm not in back else back[frm] + term
    out = ga.flatten(1, 2) if w is None else weight_t_times(w, ga.flatten(1, 2))
    if not state:
        return out
    parts = []
    for p in form.parts:
        got = out if p == form.reads else None
        if p in back:
            got = back[p] if got is None else got + back[p]
        if got is None:
            got = u.new_zeros((n, sl[p].stop - sl[p].start, k))
        parts.append(got)
    return torch.cat(parts, dim=1)


__all__ = ["GatedCell", "GatedFactors", "GatedForm", "part_slices"]
