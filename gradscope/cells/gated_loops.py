r"""The loops of many steps of a gated cell, from its :class:`~gradscope.cells.gated.GatedForm`.

* :func:`sweep`: ``∂L/∂s_t`` for every step from the output cotangents, row layout
  ``(B, D)`` per step (the Monitor's and :func:`gradscope.record`'s loss gradients);
* :func:`jvp_run` / :func:`vjp_run`: ``J_{m-1} ⋯ J_0 v`` and its transpose on columns
  ``(D, n, k)`` (the Lyapunov QR blocks and the decay walks), with the factors in the layout
  of :func:`run_layout`.

Every step is one GEMM with the recurrent weight and a few fused elementwise calls into
buffers made once per call: the form's bookkeeping (which term feeds which part, which
couplings go where) is resolved once per form (:func:`make_plan`) and every view of a
buffer once per call, so a step only indexes factors and calls kernels (for an LSTM five
calls, as its hand-written loops did). The transposed walk: a part's cotangent gathers
its ``e`` contributions from the parts computed after it, then feeds its terms' blocks
(one scaling per part where every block has one term) and its ``d`` couplings.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor

from gradscope.cells.blocks import run_steps

# The form (gradscope.cells.gated.GatedForm) is read through its fields only: gated imports
# this module.
Form = Any


class Plan(NamedTuple):
    """A form's bookkeeping resolved once (part names, term and coupling indices)."""

    back: tuple  # reverse order: (part, ((chain j, to), ...), (lo, hi) of its terms or None)
    scatter: tuple  # not one_to_one: (block index, term index, part) per term
    couple: tuple  # (diag j, to, from, first write of `from`)
    zero: tuple  # parts of the previous state that no coupling and no GEMM write
    fwd: tuple  # order: (part, (lo, hi) or None, ((term i, block b), ...), diags, chains)


def make_plan(form: Form) -> Plan:
    """Resolve ``form``'s bookkeeping for the step loops (done once, by the form)."""
    fast = form.one_to_one
    back = []
    for p in reversed(form.order):
        chains = tuple((j, to) for j, (to, frm) in enumerate(form.chained) if frm == p)
        lo, hi = form.span(p)
        back.append((p, chains, (lo, hi) if fast and hi > lo else None))
    scatter = ()
    if not fast:
        scatter = tuple((form.block_of(i), i, to) for i, (to, _) in enumerate(form.terms))
    written, couple = {form.reads}, []
    for j, (to, frm) in enumerate(form.diagonal):
        couple.append((j, to, frm, frm not in written))
        written.add(frm)
    fwd = []
    for p in form.order:
        lo, hi = form.span(p)
        terms = ()
        if not fast:
            terms = tuple((i, form.block_of(i)) for i, (to, _) in enumerate(form.terms) if to == p)
        diags = tuple((j, q) for j, (to, q) in enumerate(form.diagonal) if to == p)
        chains = tuple((j, r) for j, (to, r) in enumerate(form.chained) if to == p)
        fwd.append((p, (lo, hi) if fast and hi > lo else None, terms, diags, chains))
    zero = tuple(p for p in form.parts if p not in written)
    return Plan(tuple(back), scatter, tuple(couple), zero, tuple(fwd))


def _sizes(sl: dict[str, slice], p: str) -> int:
    return sl[p].stop - sl[p].start


# --------------------------------------------------------------------------- the sweep
@torch.no_grad()
def sweep(
    form: Form,
    sl: dict[str, slice],
    params: dict[str, Tensor],
    factors: Sequence[Any],
    g_last: Tensor,
    out_cot: Tensor | None,
    valid: Tensor | None,
) -> Tensor:
    """``G_k = ∂L/∂s_k`` ``(T+1, B, D)`` back from ``G_T = g_last`` over ``T`` steps.

    ``G_k = ō_k + J_{k+1}ᵀ G_{k+1}`` (``ō_k`` the output cotangent on the state's first
    part; a padded step passes ``G`` on unchanged). Per step: the chained cotangents and
    the block cotangents (one scaling per part where every block has one term) into one
    ``(B, mH)`` buffer, one ``(B, mH) × (mH, P)`` GEMM into the read part (``addmm`` with
    ``ō_k`` where that part is the first), the ``d`` couplings by fused multiply-adds:
    ``O(B · mH · P)``, the order of the model's own backward step.

    Args:
        form: The cell's form.
        sl: Where each part sits in the state.
        params: The weights.
        factors: Per step ``k`` the :class:`~gradscope.cells.gated.GatedFactors` of the
            pairs ``(x_k, s_k)`` (``B`` rows each).
        g_last: ``(B, D)`` cotangent of the last state.
        out_cot: ``(T, B, P)`` cotangents of the outputs ``h_1 … h_T``, or None.
        valid: ``(T, B)`` bool, True at real steps, or None.
    """
    plan: Plan = form.plan
    T = len(factors)
    B, D = g_last.shape
    w = params[form.recurrent].to(g_last.dtype)
    first = slice(0, _sizes(sl, form.parts[0]))
    H = factors[0].scale.shape[-1]
    nb = len(form.blocks)
    G = g_last.new_empty((T + 1, B, D))
    G[T] = g_last
    if out_cot is not None:
        G[T, :, first] += out_cot[T - 1]
    ga = g_last.new_empty((B, nb, H))
    ga2 = ga.view(B, nb * H)
    Gp = {p: G[:, :, sl[p]] for p in form.parts}  # (T+1, B, ·) views, made once
    Gu = {p: v.unsqueeze(2) for p, v in Gp.items()}
    back = []
    for p, chains, span in plan.back:
        tmp = g_last.new_empty((B, _sizes(sl, p))) if chains else None
        gas = None if span is None else ga[:, span[0] : span[1]]
        back.append((p, chains, span, tmp, None if tmp is None else tmp.unsqueeze(1), gas))
    new = None if valid is None else torch.empty_like(g_last)
    newp = None if new is None else {p: new[:, sl[p]] for p in form.parts}
    read, Gf = sl[form.reads], G[:, :, first]
    fused = valid is None and out_cot is not None and read == first  # ō_k in the GEMM
    for k in range(T - 1, -1, -1):
        f = factors[k]
        sc, ch, dg = f.scale, f.chain, f.diag
        cot: dict[str, Tensor] = {}
        for p, chains, span, tmp, tmpu, gas in back:
            if chains:
                j, to = chains[0]
                g = torch.addcmul(Gp[p][k + 1], ch[j], cot[to], out=tmp)
                for j, to in chains[1:]:
                    g.addcmul_(ch[j], cot[to])
                gu = tmpu
            else:
                g, gu = Gp[p][k + 1], Gu[p][k + 1]
            cot[p] = g
            if span is not None:
                torch.mul(sc[:, span[0] : span[1]], gu, out=gas)
        if plan.scatter:
            ga.zero_()
            for b, i, to in plan.scatter:
                ga[:, b].addcmul_(sc[:, i], cot[to])
        if valid is None:
            dst = {p: v[k] for p, v in Gp.items()}
            if fused and k > 0:
                torch.addmm(out_cot[k - 1], ga2, w, out=dst[form.reads])
            else:
                torch.mm(ga2, w, out=dst[form.reads])
        else:
            dst = newp
            torch.mm(ga2, w, out=dst[form.reads])
        for j, to, frm, once in plan.couple:
            if once:
                torch.mul(dg[j], cot[to], out=dst[frm])
            else:
                dst[frm].addcmul_(dg[j], cot[to])
        for p in plan.zero:
            dst[p].zero_()
        if valid is not None:
            torch.where(valid[k].unsqueeze(-1), new, G[k + 1], out=G[k])
        if out_cot is not None and k > 0 and not fused:
            Gf[k] += out_cot[k - 1]
    return G


# --------------------------------------------------------------------------- runs
def run_layout(factors: Any, per_step: int) -> tuple[Tensor, ...]:
    """``(scale, *diag, *chain)`` as ``(S, rows, B)``: the layout of the run loops' columns.

    Over ``S`` steps of ``per_step`` pairs (``B = per_step`` sequences side by side), one
    copy per block of steps, after which every step's factors are contiguous views.
    """
    n = factors.scale.shape[0]

    def lay(t: Tensor) -> Tensor:
        return t.reshape(n // per_step, per_step, -1).transpose(1, 2).contiguous()

    return (lay(factors.scale), *map(lay, factors.diag), *map(lay, factors.chain))


def _setup(form: Form, sl: dict[str, slice], v: Tensor, H: int):
    """Two alternating ``(D, n, k)`` buffers, their parts' views, the read part's 2-D view."""
    _, n, k = v.shape
    bufs = [v.contiguous(), v.new_empty(v.shape)]
    views = [{p: b[sl[p]] for p in form.parts} for b in bufs]
    reads = [vw[form.reads].view(_sizes(sl, form.reads), n * k) for vw in views]
    return bufs, views, reads


def _unpack(form: Form, step: tuple, H: int, n: int):
    """One step's ``(scale (terms, H, n, 1), diag tuple, chain tuple)`` from :func:`run_steps`."""
    nd = len(form.diagonal)
    return step[0], step[1 : 1 + nd], step[1 + nd :]


@torch.no_grad()
def jvp_run(form: Form, sl, params, factors, steps, batch: Tensor | None, v: Tensor) -> Tensor:
    """``J_{m-1} ⋯ J_0 v`` for columns ``v`` ``(D, n, k)``, factors from :func:`run_layout`.

    Per step one ``(mH, P) × (P, n k)`` GEMM with a contiguous output (the columns of every
    sequence side by side), the rows scaled in place where every block has one term, then
    per part in the form's order the sum of its blocks and its couplings as fused calls
    into the other of two alternating buffers: ``O(n · k · mH · P)``. Nothing is allocated
    per step.
    """
    plan: Plan = form.plan
    w = params[form.recurrent]
    nb, nt = len(form.blocks), len(form.terms)
    H = w.shape[0] // nb
    _, n, k = v.shape
    bufs, views, reads = _setup(form, sl, v, H)
    da = v.new_empty((nb * H, n, k))
    da2, dab = da.view(nb * H, n * k), da.view(nb, H, n, k)
    fast = form.one_to_one
    for j, step in enumerate(run_steps(factors, steps, batch)):
        sc, dg, ch = _unpack(form, step, H, n)
        cur, new = views[j % 2], views[(j + 1) % 2]
        torch.mm(w, reads[j % 2], out=da2)
        if fast:
            da.mul_(sc)
        else:
            sc = sc.view(nt, H, n, 1)
        for p, span, terms, diags, chains in plan.fwd:
            out = new[p]
            scaled = [(sc[i], dab[b]) for i, b in terms]
            scaled += [(dg[i], cur[q]) for i, q in diags]
            scaled += [(ch[i], new[r]) for i, r in chains]
            if span is not None and span[1] - span[0] > 1:
                torch.sum(dab[span[0] : span[1]], 0, out=out)
            elif span is not None and scaled:
                c, x = scaled.pop(0)
                torch.addcmul(dab[span[0]], c, x, out=out)
            elif span is not None:
                out.copy_(dab[span[0]])
            elif scaled:
                c, x = scaled.pop(0)
                torch.mul(c, x, out=out)
            else:
                out.zero_()
            for c, x in scaled:
                out.addcmul_(c, x)
    return bufs[len(steps) % 2]


@torch.no_grad()
def vjp_run(form: Form, sl, params, factors, steps, batch: Tensor | None, u: Tensor) -> Tensor:
    """``J_{s_{m-1}}ᵀ ⋯ J_{s_0}ᵀ u`` for columns ``u`` ``(D, n, p)`` (the steps as given).

    Per step the form walked backwards (chained cotangents, the block cotangents into one
    ``(mH, n, p)`` buffer), one ``(P, mH) × (mH, n p)`` GEMM and the ``d`` couplings:
    ``O(n · p · mH · P)``; nothing allocated per step.
    """
    plan: Plan = form.plan
    wt = params[form.recurrent].T
    nb, nt = len(form.blocks), len(form.terms)
    H = wt.shape[1] // nb
    _, n, q = u.shape
    bufs, views, reads = _setup(form, sl, u, H)
    ga = u.new_empty((nb, H, n, q))
    ga2 = ga.view(nb * H, n * q)
    back = []
    for p, chains, span in plan.back:
        tmp = u.new_empty((_sizes(sl, p), n, q)) if chains else None
        back.append((p, chains, span, tmp, None if span is None else ga[span[0] : span[1]]))
    for j, step in enumerate(run_steps(factors, steps, batch)):
        sc, dg, ch = _unpack(form, step, H, n)
        sc = sc.view(nt, H, n, 1)
        cur, new = views[j % 2], views[(j + 1) % 2]
        cot: dict[str, Tensor] = {}
        for p, chains, span, tmp, gas in back:
            g = cur[p]
            if chains:
                i, to = chains[0]
                g = torch.addcmul(g, ch[i], cot[to], out=tmp)
                for i, to in chains[1:]:
                    g.addcmul_(ch[i], cot[to])
            cot[p] = g
            if span is not None:
                torch.mul(sc[span[0] : span[1]], g, out=gas)
        if plan.scatter:
            ga.zero_()
            for b, i, to in plan.scatter:
                ga[b].addcmul_(sc[i], cot[to])
        torch.mm(wt, ga2, out=reads[(j + 1) % 2])
        for i, to, frm, once in plan.couple:
            if once:
                torch.mul(dg[i], cot[to], out=new[frm])
            else:
                new[frm].addcmul_(dg[i], cot[to])
        for p in plan.zero:
            new[p].zero_()
    return bufs[len(steps) % 2]


__all__ = ["Plan", "jvp_run", "make_plan", "run_layout", "sweep", "vjp_run"]
