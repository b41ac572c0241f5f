r"""LSTM cells: ``nn.LSTM`` (fused, with or without ``proj_size``) and ``nn.LSTMCell``.

Equations (PyTorch's; gate rows of ``weight_ih`` / ``weight_hh`` in the order i, f, g, o;
Hochreiter & Schmidhuber 1997, with the forget gate of Gers et al. 2000)::

    a_t = W_ih x_t + b_ih + W_hh h_{t-1} + b_hh          (4H,) = [a_i; a_f; a_g; a_o]
    i = σ(a_i)   f = σ(a_f)   g = tanh(a_g)   o = σ(a_o)
    c_t = f ⊙ c_{t-1} + i ⊙ g
    m_t = o ⊙ tanh(c_t)
    h_t = m_t                 (no projection, P = H)
    h_t = W_hr m_t            (proj_size = P > 0; W_hr is (P, H), W_hh is (4H, P))

The state is the joint vector ``s = (h, c)`` of size ``D = P + H``. Its Jacobian
``∂s_t/∂s_{t-1}`` has four blocks. With ``u = 1 - tanh(c_t)²`` and the gate blocks
``W_i, W_f, W_g, W_o`` of ``W_hh`` (each ``(H, P)``)::

    ∂c_t/∂h_{t-1} = diag(c_{t-1} f(1-f)) W_f + diag(g i(1-i)) W_i + diag(i (1-g²)) W_g
    ∂c_t/∂c_{t-1} = diag(f)
    ∂m_t/∂h_{t-1} = diag(tanh(c_t) o(1-o)) W_o + diag(o u) ∂c_t/∂h_{t-1}
    ∂m_t/∂c_{t-1} = diag(o u f)
    ∂h_t/∂·       = W_hr ∂m_t/∂·   with a projection, ∂m_t/∂· otherwise

and ``∂s_t/∂x_t`` is the same with the gate blocks of ``W_ih`` and no ``c`` column. The
``diag(f)`` path is the "constant error carousel": when ``f ≈ 1`` the cell state carries the
gradient back unchanged, which is why LSTMs avoid the vanishing gradient of vanilla RNNs.

Products with ``k`` columns never form the ``(P+H, P+H)`` matrix. With the local factors
``α = (g i(1-i), c_{t-1} f(1-f), i(1-g²))``, ``β_o = tanh(c_t) o(1-o)``, ``ou = o u``
(one GEMM with the weights for all ``N · k`` columns, ``O(N k H (P + I))``)::

    jvp:  δa = W_hh δh    δc = α_i δa_i + α_f δa_f + α_g δa_g + f δc_prev
          δm = ou δc + β_o δa_o    δh_t = W_hr δm (δm without projection)
    vjp:  u_m = W_hrᵀ u_h (u_h)    g_c = u_c + ou u_m
          u_h,prev = W_hhᵀ [α_i g_c; α_f g_c; α_g g_c; β_o u_m]    u_c,prev = f g_c

and for ``∂s_t/∂x_t`` the same with ``W_ih`` and no ``c_{t-1}`` term.

Every ``diag(v) W`` product is a broadcast multiply-add written in place into a
preallocated ``(N, D, D)`` output (five multiply-adds per element of the dense blocks, using
``∂m = diag(o u) ∂c + diag(tanh(c_t) o(1-o)) W_o``); no diagonal matrix is ever built. On the
CPU the sequences are processed in cache-sized blocks (:func:`cache_block_size`), which makes
the closed form about as fast as copying its result (``benchmarks/jacobians.py``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as nnf
from torch import Tensor, nn

from gradscope.cells.base import BLOCK, Forced, Params
from gradscope.cells.blocks import cache_block_size, new_output
from gradscope.cells.gated import GatedCell, GatedFactors, GatedForm
from gradscope.cells.gates import Gates, gate_rows, preacts


def _project(params: Params, x: Tensor) -> Tensor:
    """``W_ih x + b_ih + b_hh`` ``(N, 4H)``: the gate pre-activations' input part."""
    b_ih, b_hh = params.get("bias_ih"), params.get("bias_hh")
    if b_ih is None and b_hh is None:
        return x @ params["weight_ih"].T
    bias = b_hh if b_ih is None else b_ih if b_hh is None else b_ih + b_hh
    return torch.addmm(bias, x, params["weight_ih"].T)


def _gates(
    params: Params, x: Tensor, h: Tensor, xp: Tensor | None = None, keep_f: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The activated gates ``i, f, g, o``, each ``(N, H)`` (``xp``: :func:`_project` of x).

    ``keep_f``: an ``(N, H)`` buffer that receives the forget gate's pre-activations.

    Outside autograd, one buffer for the pre-activations, activated in place: over
    ``T · B`` rows (a teacher-forced replay) no other ``(N, 4H)`` tensor is allocated, and
    the recurrent product is accumulated into the input part in place (``addmm_``: the same
    numbers as ``addmm``, without its copy of the ``(N, 4H)`` input part).
    """
    w_hh = params["weight_hh"].T
    if xp is None and not torch.is_grad_enabled():
        a = _project(params, x).addmm_(h, w_hh)  # a fresh buffer: accumulate in place
    else:
        a = torch.addmm(_project(params, x) if xp is None else xp, h, w_hh)
    hidden = a.shape[-1] // 4
    if keep_f is not None:
        keep_f.copy_(a[:, hidden : 2 * hidden])
    if a.requires_grad:  # differentiated (torch.func, the generic products): no in-place
        a_i, a_f, a_g, a_o = a.chunk(4, dim=-1)
        return torch.sigmoid(a_i), torch.sigmoid(a_f), torch.tanh(a_g), torch.sigmoid(a_o)
    a[:, : 2 * hidden].sigmoid_()
    a[:, 2 * hidden : 3 * hidden].tanh_()
    a[:, 3 * hidden :].sigmoid_()
    i, f, g, o = a.chunk(4, dim=-1)
    return i, f, g, o


def _factors(i: Tensor, f: Tensor, g: Tensor, o: Tensor, c_prev: Tensor, tc: Tensor):
    """The linear factors from the gates, the previous cell state and ``tanh(c_t)``.

    A :class:`~gradscope.cells.gated.GatedFactors` of the LSTM's form: ``scale`` the row
    scalings ``[α_i, α_f, α_g, β_o]`` ``(N, 4, H)``, ``diag`` ``(f,)`` and ``chain``
    ``(o (1 − tanh² c_t),)`` (each ``(N, H)``).
    """
    scale = i.new_empty((i.shape[0], 4, i.shape[1]))
    a_i, a_f, a_g, beta_o = scale.unbind(1)
    torch.addcmul(i, i, i, value=-1.0, out=a_i).mul_(g)  # i - i² = σ'(a_i)
    torch.addcmul(f, f, f, value=-1.0, out=a_f).mul_(c_prev)
    torch.addcmul(i, i, torch.mul(g, g, out=a_g), value=-1.0, out=a_g)  # i (1 - g²)
    torch.addcmul(o, o, o, value=-1.0, out=beta_o).mul_(tc)
    ou = torch.mul(tc, tc)
    torch.addcmul(o, o, ou, value=-1.0, out=ou)  # o (1 - tanh²(c_t))
    return GatedFactors(scale, (f,), (ou,))


def _forget_bias(params: Params) -> float | None:
    """The mean forget-gate bias ``b_ih + b_hh`` over units, or None without biases."""
    if "bias_ih" not in params and "bias_hh" not in params:
        return None
    rows = gate_rows(params, 4, 1)
    b = sum(params[k].detach().double().cpu()[rows] for k in ("bias_ih", "bias_hh") if k in params)
    return float(b.mean())


def _output(params: Params, m: Tensor) -> Tensor:
    """``h_t``: ``m = o ⊙ tanh(c_t)``, through the projection ``W_hr`` when there is one."""
    return m @ params["weight_hr"].T if "weight_hr" in params else m


class LSTMAdapter(GatedCell):
    """Adapter for ``nn.LSTM`` (any ``proj_size``) and ``nn.LSTMCell``; state ``(h, c)``.

    Its :class:`~gradscope.cells.gated.GatedForm`: the i, f, g blocks of ``W_hh`` feed
    ``c``, the o block ``h``; the additive path ``c ← c`` by ``f`` (the constant error
    carousel); ``h ← c`` within the step by ``o (1 − tanh² c_t)``; ``h`` projected by
    ``weight_hr`` when the module has ``proj_size``.
    """

    kind = "lstm"
    state_names = ("h", "c")
    structure = BLOCK
    takes_xp = True
    form = GatedForm(
        parts=("h", "c"),
        blocks=("i", "f", "g", "o"),
        terms=(("c", "i"), ("c", "f"), ("c", "g"), ("h", "o")),
        order=("c", "h"),
        diagonal=(("c", "c"),),
        chained=(("h", "c"),),
        projected=(("h", "weight_hr"),),
    )
    gates = Gates(
        shown=("i", "f", "o"),
        carried="f",
        word="forget",
        path="cell",
        path_text="cell path (diag f on c)",
        short_text="cell path",
    )

    def state_sizes(self, params: Params) -> tuple[int, ...]:
        """``(P, H)`` with a projection ``weight_hr`` of shape ``(P, H)``, else ``(H, H)``."""
        hidden = int(params["weight_hh"].shape[0]) // 4
        if "weight_hr" in params:
            return (int(params["weight_hr"].shape[0]), hidden)
        return (hidden, hidden)

    def _split(self, params: Params, s: Tensor) -> tuple[Tensor, Tensor]:
        p = int(params["weight_hh"].shape[1])
        return s[..., :p], s[..., p:]

    def project_input(self, params: Params, x: Tensor) -> Tensor:
        """``W_ih x + b_ih + b_hh`` (see :meth:`CellAdapter.project_input`)."""
        return _project(params, x)

    def step(self, params: Params, x: Tensor, s: Tensor, xp: Tensor | None = None) -> Tensor:
        """``s_t = (h_t, c_t)`` from ``x_t`` and ``s_{t-1} = (h_{t-1}, c_{t-1})``."""
        h, c = self._split(params, s)
        i, f, g, o = _gates(params, x, h, xp)
        c_new = f * c + i * g
        return torch.cat([_output(params, o * torch.tanh(c_new)), c_new], dim=-1)

    def _local(self, params: Params, x: Tensor, s: Tensor) -> GatedFactors:
        """The per-unit factors of both Jacobians (see the module docstring)."""
        h, c = self._split(params, s)
        i, f, g, o = _gates(params, x, h)
        return _factors(i, f, g, o, c, torch.tanh(f * c + i * g))

    @staticmethod
    def _fill_rows(dc: Tensor, dm: Tensor, loc: GatedFactors, sl: slice, w4: Tensor) -> None:
        """Write ``∂c_t/∂·`` into ``dc`` and ``∂m_t/∂·`` into ``dm`` (both ``(n, H, K)``).

        ``w4`` is ``W_hh`` or ``W_ih`` seen as ``(4, H, K)``; ``sl`` selects the rows of
        ``loc`` that this block covers. Uses ``∂m = diag(o u) ∂c + diag(tanh(c) o(1-o)) W_o``
        so that every element costs five multiply-adds.
        """
        scale = loc.scale[sl].unsqueeze(-1)
        torch.mul(scale[:, 0], w4[0], out=dc)
        dc.addcmul_(scale[:, 1], w4[1])
        dc.addcmul_(scale[:, 2], w4[2])
        torch.mul(dc, loc.chain[0][sl].unsqueeze(-1), out=dm)
        dm.addcmul_(scale[:, 3], w4[3])

    @torch.no_grad()
    def jacobian_state(self, params: Params, x: Tensor, s: Tensor) -> Tensor:
        """``∂(h_t, c_t)/∂(h_{t-1}, c_{t-1})``, shape ``(N, P+H, P+H)``; blocks as above.

        Computed in place, block by block, without building any diagonal matrix; the
        result does not track gradients (differentiate :meth:`step` with ``torch.func`` for
        second-order quantities).
        """
        loc = self._local(params, x, s)
        w_hh, w_hr = params["weight_hh"], params.get("weight_hr")
        n, hidden = loc.diag[0].shape
        p = int(w_hh.shape[1])
        d = p + hidden
        w4 = w_hh.reshape(4, hidden, p)
        rows = cache_block_size(n, d * d * x.element_size(), x.device)
        single = rows >= n
        # One block: write straight into the zeroed output. Several: fill a cache-sized
        # zeroed buffer (its structural zeros are never overwritten) and copy it out.
        out = new_output((n, d, d), x)
        if single:
            out.zero_()
        buf = out if single else x.new_zeros((rows, d, d))
        dm_tmp = None if w_hr is None else x.new_empty((min(rows, n), hidden, p))
        for start in range(0, n, rows):
            sl = slice(start, min(n, start + rows))
            blk = buf[: sl.stop - start]
            dm = blk[:, :p, :p] if w_hr is None else dm_tmp[: sl.stop - start]
            self._fill_rows(blk[:, p:, :p], dm, loc, sl, w4)
            f = loc.diag[0][sl]
            blk[:, p:, p:].diagonal(dim1=-2, dim2=-1).copy_(f)
            ouf = loc.chain[0][sl] * f
            if w_hr is None:
                blk[:, :p, p:].diagonal(dim1=-2, dim2=-1).copy_(ouf)
            else:
                blk[:, :p, :p] = torch.matmul(w_hr, dm)
                torch.mul(w_hr, ouf.unsqueeze(1), out=blk[:, :p, p:])
            if not single:
                out[sl] = blk
        return out

    @torch.no_grad()
    def jacobian_input(self, params: Params, x: Tensor, s: Tensor) -> Tensor:
        """``∂(h_t, c_t)/∂x_t``, shape ``(N, P+H, I)`` (not tracking gradients)."""
        loc = self._local(params, x, s)
        w_ih, w_hr = params["weight_ih"], params.get("weight_hr")
        n, hidden = loc.diag[0].shape
        p = hidden if w_hr is None else int(w_hr.shape[0])
        w4 = w_ih.reshape(4, hidden, -1)
        out = new_output((n, p + hidden, w4.shape[-1]), x)
        every = slice(0, n)
        if w_hr is None:
            self._fill_rows(out[:, p:], out[:, :p], loc, every, w4)
        else:
            dm = x.new_empty((n, hidden, w4.shape[-1]))
            self._fill_rows(out[:, p:], dm, loc, every, w4)
            out[:, :p] = torch.matmul(w_hr, dm)
        return out

    def step_factors(
        self, params: Params, x: Tensor, s: Tensor, xp: Tensor | None = None
    ) -> tuple[Tensor, GatedFactors]:
        """:meth:`step` and the local factors of its linearisation from one gate evaluation."""
        h, c = self._split(params, s)
        i, f, g, o = _gates(params, x, h, xp)
        c_new = f * c + i * g
        tc = torch.tanh(c_new)
        state = torch.cat([_output(params, o * tc), c_new], dim=-1)
        return state, _factors(i, f, g, o, c, tc)

    def forced_states(
        self, params: Params, x: Tensor, h_prev: Tensor, s0: Tensor, keep_factors: bool
    ) -> Forced | None:
        """All steps from the module's outputs (see :meth:`CellAdapter.forced_states`).

        The gates of every step come from one GEMM over ``T · B`` rows (``h_{t-1}`` is
        known); the cell state from ``c_t = f_t c_{t-1} + i_t g_t``, ``T`` elementwise
        steps computed exactly as :meth:`step` does. With ``keep_factors`` the forget
        gate's pre-activations are kept too (``carried``, one ``(T, B, H)`` copy), so that
        the gate read-outs do not multiply a quarter of the weights again. A subclass that
        changes the maths gets the generic version (:class:`~gradscope.cells.base.CellAdapter`).
        """
        T, B = x.shape[:2]
        hid = int(params["weight_hh"].shape[0]) // 4
        a_f = h_prev.new_empty((T * B, hid)) if keep_factors else None
        i, f, g, o = _gates(params, x.flatten(0, 1), h_prev.flatten(0, 1), keep_f=a_f)
        p = int(params["weight_hh"].shape[1])
        # s_0 … s_T in one buffer, step-major like the gates: the cell states are written
        # in place and c_{t-1} of every step is a view (no concatenation).
        every = f.new_empty(((T + 1) * B, s0.shape[-1]))
        every[:B] = s0
        c_all = every[:, p:]
        ig = i * g
        for t in range(T):
            prev, new = c_all[t * B : (t + 1) * B], c_all[(t + 1) * B : (t + 2) * B]
            torch.mul(f[t * B : (t + 1) * B], prev, out=new).add_(ig[t * B : (t + 1) * B])
        c = c_all[B:]
        tc = torch.tanh(c)
        if "weight_hr" in params:
            every[B:, :p] = _output(params, o * tc)
        else:
            torch.mul(o, tc, out=every[B:, :p])
        states = every.unflatten(0, (T + 1, B))
        if a_f is None:
            return Forced(states, None)
        return Forced(states, _factors(i, f, g, o, c_all[:-B], tc), a_f.unflatten(0, (T, B)))

    def linear_factors(self, params: Params, x: Tensor, s: Tensor) -> GatedFactors:
        """The factors ``[α; β_o]``, ``f``, ``o u`` (see the module docstring)."""
        return self._local(params, x, s)

    def vanishing_advice(self, params: Params, facts: dict[str, str]) -> list[str]:
        """A higher forget-gate bias (with this layer's), chrono initialisation, structure."""
        fb = _forget_bias(params)
        fb_txt = "" if fb is None else f" (mean forget-gate bias now {fb:+.2f})"
        return [
            "Raise the forget-gate bias (rows H:2H of bias_ih + bias_hh) to 1–3 so that "
            f"f = σ(b) ≈ 0.73–0.95 at initialisation{fb_txt} (Gers et al. 2000; Jozefowicz "
            "et al. 2015).",
            "Or use chrono initialisation (Tallec & Ollivier 2018): b_f ~ log U(1, T_max − "
            "1), b_i = −b_f, for dependencies up to T_max steps.",
            "If the forget gates are already near 1 and the gradient still vanishes, it is "
            "lost where it leaves the cell path (the gate view says which path carries it): "
            "a skip connection or attention over past states reaches the longest "
            "dependencies.",
        ]

    def gate_values(self, params: Params, x: Tensor, s: Tensor) -> tuple[dict, Tensor]:
        """``{"i", "f", "o"}`` and ``ln f = −softplus(−a_f)`` (exact where ``f`` rounds to 0)."""
        gi, gh = preacts(params, x, s[..., : int(params["weight_hh"].shape[1])])
        gi += gh  # in place: one (N, 4H) tensor less at the peak
        del gh
        a_i, a_f, _, a_o = gi.chunk(4, dim=-1)
        gates = {"i": torch.sigmoid(a_i), "f": torch.sigmoid(a_f), "o": torch.sigmoid(a_o)}
        return gates, nnf.logsigmoid(a_f)

    def carried_logits(self, params: Params, x: Tensor, s: Tensor) -> Tensor:
        """``a_f`` from the forget rows of the weights alone (a quarter of the forward)."""
        h = s[..., : int(params["weight_hh"].shape[1])]
        gi, gh = preacts(params, x, h, gate_rows(params, 4, 1))
        return gi + gh

    def carried_from_logits(self, a: Tensor) -> tuple[Tensor, Tensor]:
        """``f = σ(a_f)`` and ``ln f``."""
        return torch.sigmoid(a), nnf.logsigmoid(a)


LSTM_ADAPTER = LSTMAdapter()


def register() -> None:
    """Register :data:`LSTM_ADAPTER` for ``nn.LSTM`` (fused) and ``nn.LSTMCell``."""
    from gradscope.cells import register_cell

    register_cell(nn.LSTM, LSTM_ADAPTER, fused=True, overwrite=True)
    register_cell(nn.LSTMCell, LSTM_ADAPTER, overwrite=True)
