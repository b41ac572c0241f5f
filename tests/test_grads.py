"""Loss gradients ``∂L/∂s_t`` recorded with ``grads=True``, against hand-unrolled autograd.

The reference re-implements each network as an explicit Python loop over ``nn.LSTMCell`` /
``nn.GRUCell`` copies carrying the fused module's weights (one copy per layer and
direction, each sequence unrolled over its own valid steps, the reverse direction over the
flipped sequence), keeps every per-step state with ``retain_grad()``, computes the same loss
and back-propagates it.

The state is ``s_t = (h_t, c_t)`` as one explicit tensor ``torch.cat([h_t, c_t])`` that the
next step and the loss read by slicing, so ``s_t.grad`` is ``∂L/∂s_t`` with ``h_t`` and
``c_t`` as independent coordinates (the definition that makes ``g_{t-1} = J_tᵀ g_t +
direct`` hold). Retaining ``c_t.grad`` of the cell's own output instead would be wrong on
CPU: ``nn.LSTMCell`` computes ``h_t = o ⊙ tanh(c_t)`` from ``c_t``, so that tensor gradient
also counts the path ``c_t → h_t`` inside step ``t``.

Tolerance ``rtol = 1e-8`` (atol ``1e-12`` for entries that are zero up to rounding): both
sides are float64 evaluations of the same chain rule in different orders, which agree to a
few ulps (~1e-15) per step over these short (<= 6 step) sequences.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from gradscope.recording import record
from gradscope.traces import load

RTOL, ATOL = 1e-8, 1e-12
F64 = torch.float64


def _cell_copy(m: nn.Module, layer: int, reverse: bool) -> nn.Module:
    """An nn.LSTMCell / nn.GRUCell with the weights of one layer and direction of ``m``."""
    suffix = f"_l{layer}" + ("_reverse" if reverse else "")
    w_ih = getattr(m, "weight_ih" + suffix)
    cell_cls = nn.LSTMCell if isinstance(m, nn.LSTM) else nn.GRUCell
    cell = cell_cls(w_ih.shape[1], m.hidden_size, bias=m.bias).to(F64)
    with torch.no_grad():
        for name, p in cell.named_parameters():
            p.copy_(getattr(m, name + suffix))
    return cell


def _loss_terms(out, h_n, c_n, w):
    """The loss both sides compute: nonlinear in the outputs, so direct gradients vary."""
    loss = (torch.tanh(out) * w["out"]).sum() if w.get("out") is not None else 0.0
    if w.get("h_n") is not None:
        loss = loss + (h_n**2 * w["h_n"]).sum()
    if w.get("c_n") is not None and c_n is not None:
        loss = loss + (c_n * w["c_n"]).sum()
    return loss


def unrolled_reference(m, x, lengths, h0, c0, w):
    """{(layer, dir): (B list of (L_b+1, D) gradients)} from the hand-unrolled network.

    ``x`` is time-major ``(T, B, I)`` in original batch order; ``h0``/``c0`` are
    ``(layers·dirs, B, ·)``; ``w`` holds the loss weights for the padded output ``(T, B, F)``
    and for ``h_n`` / ``c_n``.
    """
    lstm = isinstance(m, nn.LSTM)
    dirs = 2 if m.bidirectional else 1
    B = x.shape[1]
    cells = {(k, d): _cell_copy(m, k, d == 1) for k in range(m.num_layers) for d in range(dirs)}
    kept: dict = {}
    loss = 0.0
    for b in range(B):
        L = int(lengths[b])
        layer_in = x[:L, b : b + 1]  # (L, 1, I)
        finals_h, finals_c = [], []
        for k in range(m.num_layers):
            outs = []
            for d in range(dirs):
                idx = k * dirs + d
                H = h0.shape[-1]
                parts = [h0[idx, b : b + 1]] + ([c0[idx, b : b + 1]] if lstm else [])
                s = torch.cat(parts, dim=-1).requires_grad_(True)  # s_0, a leaf
                seq = layer_in if d == 0 else layer_in.flip(0)
                steps = [s]
                for t in range(L):
                    if lstm:
                        s = torch.cat(cells[(k, d)](seq[t], (s[:, :H], s[:, H:])), dim=-1)
                    else:
                        s = cells[(k, d)](seq[t], s)
                    s.retain_grad()
                    steps.append(s)
                kept[(k, d, b)] = steps
                hseq = torch.stack([st[:, :H] for st in steps[1:]])  # (L, 1, H)
                outs.append(hseq if d == 0 else hseq.flip(0))
                finals_h.append(s[:, :H])
                finals_c.append(s[:, H:] if lstm else None)
            layer_in = torch.cat(outs, dim=-1)
        out_b = layer_in[:, 0]  # (L, F)
        h_n = torch.cat(finals_h)  # (layers·dirs, H)
        c_n = torch.cat(finals_c) if lstm else None
        wb = {
            "out": None if w.get("out") is None else w["out"][:L, b],
            "h_n": None if w.get("h_n") is None else w["h_n"][:, b],
            "c_n": None if w.get("c_n") is None else w["c_n"][:, b],
        }
        loss = loss + _loss_terms(out_b, h_n, c_n, wb)
    loss.backward()
    result = {}
    for k in range(m.num_layers):
        for d in range(dirs):
            result[(k, d)] = [torch.stack([st.grad[0] for st in kept[(k, d, b)]]) for b in range(B)]
    return result


def _run(cls, *, packed, batch_first=False, terms=("out", "h_n", "c_n"), h0=True, seed=0):
    torch.manual_seed(seed)
    T, B, I, H = 5, 3, 3, 4
    m = cls(I, H, num_layers=2, bidirectional=True, batch_first=batch_first).to(F64)
    lengths = [3, 5, 2] if packed else [T] * B
    x = torch.randn(T, B, I, dtype=F64)
    h = torch.randn(4, B, H, dtype=F64) * 0.5 if h0 else torch.zeros(4, B, H, dtype=F64)
    c = torch.randn(4, B, H, dtype=F64) * 0.5 if h0 else torch.zeros(4, B, H, dtype=F64)
    w = {
        "out": torch.randn(T, B, 2 * H, dtype=F64) if "out" in terms else None,
        "h_n": torch.randn(4, B, H, dtype=F64) if "h_n" in terms else None,
        "c_n": torch.randn(4, B, H, dtype=F64) if "c_n" in terms and cls is nn.LSTM else None,
    }
    xx = x.transpose(0, 1) if batch_first else x
    inp = (
        pack_padded_sequence(
            xx, torch.tensor(lengths), batch_first=batch_first, enforce_sorted=False
        )
        if packed
        else xx
    )
    hx = ((h, c) if cls is nn.LSTM else h) if h0 else None
    with record(m, grads=True) as rec:
        out, hidden = m(inp, hx)
    if isinstance(out, PackedSequence):
        out, _ = pad_packed_sequence(out, batch_first=batch_first)
    out = out.transpose(0, 1) if batch_first else out
    h_n, c_n = hidden if cls is nn.LSTM else (hidden, None)
    _loss_terms(out, h_n, c_n, w).backward()
    ref = unrolled_reference(m, x, lengths, h, c, w)
    return rec.trace, ref, lengths


@pytest.mark.parametrize("cls", [nn.LSTM, nn.GRU])
@pytest.mark.parametrize(
    ("packed", "batch_first", "terms", "h0"),
    [
        (False, False, ("out", "h_n", "c_n"), True),
        (False, True, ("out",), False),
        (True, False, ("out", "h_n", "c_n"), True),
        (True, True, ("h_n",), False),  # the output is unused: its cotangent never arrives
    ],
)
def test_fused_grads_match_unrolled_autograd(cls, packed, batch_first, terms, h0) -> None:
    tr, ref, lengths = _run(cls, packed=packed, batch_first=batch_first, terms=terms, h0=h0)
    prefix = cls.__name__.lower()
    for (k, d), per_b in ref.items():
        layer = tr[f"{prefix}.l{k}{'_reverse' if d else ''}"]
        assert layer.grads is not None and layer.grads.shape == layer.states.shape
        for b, g in enumerate(per_b):
            L = lengths[b]
            torch.testing.assert_close(layer.grads[: L + 1, b], g, rtol=RTOL, atol=ATOL)
            assert torch.isnan(layer.grads[L + 1 :, b]).all()  # padded steps are marked
    assert tr.meta["grads"].startswith("exact")


class CellNet(nn.Module):
    """An LSTMCell or GRUCell loop."""

    def __init__(self, cell: nn.Module) -> None:
        super().__init__()
        self.cell = cell

    def forward(self, x, state=None):
        for t in range(x.shape[0]):
            state = self.cell(x[t], state)
        return state


def explicit_state_loop(cell: nn.Module, x, s0, w):
    """The reference: the same cell unrolled on an explicit state tensor ``s_t``."""
    lstm = isinstance(cell, nn.LSTMCell)
    H = cell.hidden_size
    s = s0.clone().requires_grad_(True)
    kept = [s]
    for t in range(x.shape[0]):
        s = torch.cat(cell(x[t], (s[:, :H], s[:, H:])), dim=-1) if lstm else cell(x[t], s)
        s.retain_grad()
        kept.append(s)
    (torch.tanh(s[:, :H]) * w).sum().backward()
    return torch.stack([k.grad for k in kept])


@pytest.mark.parametrize("cell_cls", [nn.LSTMCell, nn.GRUCell])
@pytest.mark.parametrize("given", [False, True])
def test_cell_loop_grads(cell_cls, given) -> None:
    torch.manual_seed(1)
    net = CellNet(cell_cls(3, 4)).to(F64)
    x = torch.randn(6, 2, 3, dtype=F64)
    w = torch.randn(2, 4, dtype=F64)
    lstm = cell_cls is nn.LSTMCell
    D = 8 if lstm else 4
    s0 = torch.randn(2, D, dtype=F64) if given else torch.zeros(2, D, dtype=F64)
    state = None
    if given:  # the model is given a native initial state that requires grad
        h0 = s0.clone().requires_grad_(True)
        state = (h0[:, :4], h0[:, 4:]) if lstm else h0
    with record(net, grads=True) as rec:
        out = net(x, state)
    h_T = out[0] if lstm else out
    (torch.tanh(h_T) * w).sum().backward()
    layer = rec.trace["cell"]
    ref = explicit_state_loop(copy.deepcopy(net.cell), x, s0, w)
    torch.testing.assert_close(layer.grads, ref, rtol=RTOL, atol=ATOL)


class TupleCell(nn.Module):
    """A user's cell whose second state part is computed from its first within the step."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(3, 2)
        self.rec = nn.Linear(2, 2)

    def forward(self, x, state):
        a, b = state
        a2 = torch.tanh(self.inp(x) + self.rec(b) + 0.3 * a)
        return a2, 0.5 * b + a2 * a2


def test_custom_tuple_cell_grads() -> None:
    """Within-step dependence between parts (b_t from a_t) must not leak into ∂L/∂a_t."""
    torch.manual_seed(6)
    cell = TupleCell().to(F64)
    net = CellNet(cell)
    x = torch.randn(5, 2, 3, dtype=F64)
    w = torch.randn(2, 2, dtype=F64)
    s0 = torch.randn(2, 4, dtype=F64)
    with record(net, cells=[net.cell], grads=True) as rec:
        a, b = net(x, (s0[:, :2], s0[:, 2:]))
    ((a * w).sum() + b.square().sum()).backward()
    ref_cell = copy.deepcopy(cell)
    s = s0.clone().requires_grad_(True)
    kept = [s]
    for t in range(5):
        s = torch.cat(ref_cell(x[t], (s[:, :2], s[:, 2:])), dim=-1)
        s.retain_grad()
        kept.append(s)
    ((s[:, :2] * w).sum() + s[:, 2:].square().sum()).backward()
    ref = torch.stack([k.grad for k in kept])
    torch.testing.assert_close(rec.trace["cell"].grads, ref, rtol=RTOL, atol=ATOL)


def test_backward_recursion_identity_top_layer() -> None:
    """g_{t-1} = J_tᵀ g_t + ∂ℓ/∂s_{t-1} with known direct gradients (closed-form J_t).

    Loss L = Σ_t w_t · h_t on a one-layer LSTM: the direct gradient at s_t is (w_t, 0) for
    t >= 1 and 0 at t = 0; at the last step nothing comes from later steps, so g_T = (w_T, 0).
    """
    torch.manual_seed(2)
    m = nn.LSTM(3, 4).to(F64)
    x = torch.randn(7, 2, 3, dtype=F64)
    w = torch.randn(7, 2, 4, dtype=F64)
    with record(m, grads=True) as rec:
        out, _ = m(x)
    (out * w).sum().backward()
    layer = rec.trace["lstm.l0"]
    g = layer.grads
    direct = torch.zeros_like(g)
    direct[1:, :, :4] = w
    jac = layer.jacobians()  # (T, B, D, D), [k] = ∂s_{k+1}/∂s_k
    torch.testing.assert_close(g[-1], direct[-1], rtol=RTOL, atol=ATOL)
    for t in range(1, layer.T + 1):
        back = torch.einsum("bij,bi->bj", jac[t - 1], g[t]) + direct[t - 1]
        torch.testing.assert_close(g[t - 1], back, rtol=1e-10, atol=ATOL)


@pytest.mark.parametrize("cls", [nn.LSTM, nn.GRU])
def test_grads_with_reproduced_dropout_masks(cls) -> None:
    """Training-mode dropout: ∂L/∂x from the real backward = Σ K_tᵀ g_t over layer 0.

    x_t enters layer 0 forward at step t and layer 0 reverse at step T-1-t, so
    ∂L/∂x_t = K^fwd_tᵀ g^fwd_{t+1} + K^rev_{T-1-t}ᵀ g^rev_{T-t}, with K = ∂s/∂x from the
    closed forms and g from the recorded gradients; the real backward used PyTorch's own
    masks, so this holds only if the replay used the same masks.
    """
    torch.manual_seed(3)
    m = cls(3, 4, num_layers=3, dropout=0.5, bidirectional=True).to(F64).train()
    x = torch.randn(5, 2, 3, dtype=F64, requires_grad=True)
    w = torch.randn(5, 2, 8, dtype=F64)
    with record(m, grads=True) as rec:
        out, _ = m(x)
    (torch.tanh(out) * w).sum().backward()
    tr = rec.trace
    fwd, rev = tr[f"{cls.__name__.lower()}.l0"], tr[f"{cls.__name__.lower()}.l0_reverse"]
    assert tr[f"{cls.__name__.lower()}.l1"].meta["dropout"] == "mask reproduced"
    kf, kr = fwd.jacobians(wrt="input"), rev.jacobians(wrt="input")
    T = x.shape[0]
    for t in range(T):
        want = torch.einsum("bij,bi->bj", kf[t], fwd.grads[t + 1]) + torch.einsum(
            "bij,bi->bj", kr[T - 1 - t], rev.grads[T - t]
        )
        torch.testing.assert_close(x.grad[t], want, rtol=1e-10, atol=ATOL)


def test_no_backward_then_backward_later() -> None:
    torch.manual_seed(4)
    m = nn.GRU(2, 3).to(F64)
    x = torch.randn(4, 1, 2, dtype=F64)
    with record(m, grads=True) as rec:
        out, _ = m(x)
    tr = rec.trace
    assert tr["gru.l0"].grads is None and tr.meta["grads"] == "no backward pass yet"
    out.sum().backward()
    tr = rec.trace  # computed lazily now
    assert tr["gru.l0"].grads is not None
    # g_T = ∂L/∂h_T = 1 (the last output, used only by the loss)
    torch.testing.assert_close(tr["gru.l0"].grads[-1], torch.ones(1, 3, dtype=F64))


def test_grads_not_requested_or_under_no_grad() -> None:
    m = nn.GRU(2, 3)
    with record(m) as rec:
        m(torch.randn(3, 1, 2))[0].sum().backward()
    assert rec.trace["gru.l0"].grads is None and rec.trace.meta["grads"] == "not requested"
    with record(m, grads=True) as rec, torch.no_grad():
        m(torch.randn(3, 1, 2))
    assert rec.trace["gru.l0"].grads is None


def test_grads_saved_and_loaded(tmp_path) -> None:
    tr, _, _ = _run(nn.LSTM, packed=True)
    back = load(tr.save(tmp_path / "g.npz"))
    for a, b in zip(tr, back):
        torch.testing.assert_close(a.grads, b.grads, rtol=0, atol=0, equal_nan=True)


def test_two_modules_only_one_reached_by_the_loss() -> None:
    """A recorded module the loss does not depend on gets zero gradients, not None."""
    torch.manual_seed(5)
    a, b = nn.GRU(2, 3).to(F64), nn.LSTM(2, 3).to(F64)
    net = nn.ModuleDict({"a": a, "b": b})
    x = torch.randn(3, 1, 2, dtype=F64)
    with record(net, grads=True) as rec:
        ya, _ = a(x)
        b(x)
    ya.sum().backward()
    tr = rec.trace
    assert torch.count_nonzero(tr["a.l0"].grads) > 0
    assert torch.equal(tr["b.l0"].grads, torch.zeros_like(tr["b.l0"].states))
