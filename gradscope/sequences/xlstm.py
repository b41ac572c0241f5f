r"""xLSTM-7B's mLSTM layer: ``transformers``' ``xLSTMLayer`` and ``xlstm.xlstm_large``'s.

``transformers`` 5.x ships only the mLSTM ("matrix memory") half of xLSTM (Beck et al.
2024): the architecture of NX-AI's xLSTM-7B, ``xlstm/xlstm_large/model.py``'s ``mLSTMLayer``
(package ``xlstm`` 2.0.6). When the ``xlstm`` package is installed ``transformers`` builds
its blocks from that very class (``xLSTMBlock`` subclasses ``xlstm_large``'s ``mLSTMBlock``),
otherwise from its own copy ``xLSTMLayer``; both have the same attributes and compute the
same function, and this adapter records either (kind ``mlstm``). There is no sLSTM in it,
so there is no sLSTM adapter here. (The original xLSTM paper's ``mLSTMLayer`` of
``xlstm.blocks`` is another layer: :mod:`gradscope.sequences.xlstm_pkg`.)

The layer. For the input ``x_t`` of the layer (the block's RMS-normed residual stream) and
``H`` heads with key size ``d_k`` and value size ``d_v``::

    q_t, k_t, v_t, o_t = W_q x_t, W_k x_t, W_v x_t, W_o x_t        (+ biases if use_bias)
    ĩ_t = cap(W_i x_t + b_i)    f̃_t = cap(W_f x_t + b_f)           (H,) each
    cap(a) = c · tanh(a / c)     (c = gate_soft_cap; none when it is None)

and per head (the mathematical mLSTM, with exponential input gate and sigmoid forget gate)::

    C̃_t = f_t C̃_{t-1} + i_t k_t v_tᵀ       (d_k × d_v)      f_t = σ(f̃_t),  i_t = exp(ĩ_t)
    ñ_t = f_t ñ_{t-1} + i_t k_t             (d_k)

The module never holds ``C̃``: its kernels (chunkwise, or step by step) carry the
*stabilised* state ``C_t = e^{-m_t} C̃_t``, ``n_t = e^{-m_t} ñ_t`` with the log-stabiliser
``m_t = max(ln f_t + m_{t-1}, ĩ_t)`` (``m_0 = 0`` or the cached one), and output::

    h_t = (q_tᵀ C_t / √d_k) / (max(|q_tᵀ n_t| / √d_k, e^{-m_t}) + ε)
    y_t = W_out (σ(o_t) ⊙ MultiHeadLayerNorm(h_t)) + b_out

State representation. In ``(C, n, m)`` the Jacobian is not a scalar times the identity:
``∂C_t/∂C_{t-1} = e^{ln f_t + m_{t-1} - m_t} I``, which is exactly ``I`` whenever the
forget branch of the max wins, plus a column ``∂C_t/∂m_{t-1} ≠ 0``, and
``∂m_t/∂m_{t-1} ∈ {0, 1}`` with a kink where the branches meet. The eigenvalues of that
block-triangular Jacobian are 1 (or 0) for ``m`` and the rescale factors for ``C``: the
finite-time exponents would say the memory does not decay while the forget branch wins (the
decay has moved into ``m``, which reaches ``C`` only through a nonlinear rescale). We
therefore record the unstabilised memory, rescaled by one constant per sequence and head::

    C̄_t = e^{-r} C̃_t = e^{m_t - r} C_t,     n̄_t = e^{-r} ñ_t = e^{m_t - r} n_t,
    r = max(m_0, max_t ĩ_t)                 (one number per sequence and head)

which obeys ``C̄_t = f_t C̄_{t-1} + e^{ĩ_t - r} k_t v_tᵀ`` exactly: the state Jacobian is
``f_t · I`` on each head's ``d_k d_v + d_k`` numbers (structure ``SCALAR_IDENTITY``,
:meth:`~MLSTMAdapter.diagonal` is ``f_t`` repeated), with no kink and no dependence on the
state. A constant rescale per sequence and head commutes with ``f_t · I``, so it changes no
state-Jacobian product, exponent or decay rate (states and input Jacobians scale together
by ``e^{-r}``); it only keeps the numbers safe: every
exponential the replay takes is ``e^{ĩ_t - r} ≤ 1``, ``e^{m_t - r} ≤ 1`` or ``e^{-r}``,
so nothing overflows whatever the gate pre-activations (``C̃`` itself reaches
``e^{ĩ}`` ~ 3e6 at the default soft cap of 15 and overflows float32 without a cap). The
output in this representation is (dividing numerator and denominator by ``e^{r - m_t}``)::

    h_t = (q_tᵀ C̄_t / √d_k) / (max(|q_tᵀ n̄_t| / √d_k, e^{-r}) + ε e^{m_t - r})

so the stabiliser still reaches the output, through ``ε`` only (the module adds ``ε`` after
stabilising); it is a function of the gates and ``m_0`` alone, computed in parallel in the
drive (``m_t = B_t + max(m_0, cummax_{s≤t}(ĩ_s - B_s))`` with ``B_t = Σ_{s≤t} ln f_s``, in
float64), never part of the state. When the initial ``m_0 = 0`` (no cache) and all
``ĩ_t ≤ 0`` then ``r = 0`` and ``C̄ = C̃`` is the paper's state. The rescale is not causal
(``r`` looks at the whole call); an underflow of ``e^{ĩ_t - r}`` needs gate pre-activations
spread by more than ~700 (float64) or ~87 (float32), impossible with the soft cap.

State layout (``D = H d_k d_v + H d_k``, ``state_names = ("C", "n")``)::

    s = [C̄ (H, d_k, d_v) row-major, flattened | n̄ (H, d_k)]

Drive layout (``I = 2 H d_k + 2 H d_v + 4 H``), time-major ``(T, B, I)``::

    u_t = [q_t (H d_k) | k_t (H d_k) | v_t (H d_v) | ĩ_t - r (H) | f̃_t (H) |
           o_t (H d_v) | m_t - r (H) | r (H)]

``q``, ``o``, ``m - r`` and ``r`` only reach the output: their input-Jacobian columns are
zero. ``ĩ - r`` is the log input gate relative to the sequence's reference.

Products per step and sequence, ``k`` columns: state ``O(D k)`` (a scale per head), input
``O(H d_k d_v k)`` (the outer products ``k vᵀ`` and contractions with ``C̄_{t-1}``); one
step costs ``O(H d_k d_v)``; no ``D × D`` matrix is formed.

Backends. On the CPU ``xLSTMBackend`` runs the native PyTorch kernels: ``mode="train"``
chunkwise over chunks of ``chunk_size`` (``T`` must be a multiple), ``mode="inference"``
(the default) chunkwise over whole chunks then step by step for the rest (``T = 1``: one
step), with states stored in ``inference_state_dtype`` (float32 only: the config rejects
"float64") between steps; ``transformers``' own copy ignores the config's
``chunkwise_kernel``, ``sequence_kernel`` and ``step_kernel`` (always the native ones).
The ``xlstm`` package's layer hands them to ``mlstm_kernels``' ``mLSTMBackend``, which runs
what they name: the native ones (``chunkwise--native_autograd`` / ``--native_custbw``,
``native_sequence__native``, ``native``) are replayed, any other that the mode uses is
refused (``_xlstm_backend.check_backend``): the Triton kernels run on the GPU only, in
their own precision and tiling, which the replay is not checked against; the parallel
kernels cannot run inside this layer (no state in training mode, no initial state in
inference), and the ``siging`` ones have a sigmoid input gate, another recurrence. All
native ones compute the same function; the replay reproduces each. In a float64 model the
inference mode and ``norm_reduction_force_float32=True`` (the default, the head norm
computed in float32) round to float32 inside the module, so only ``mode="train"`` with
``norm_reduction_force_float32=False`` is reproducible to float64 rounding; otherwise the
replay agrees to float32 rounding (measured up to 6e-8), see
:meth:`MLSTMAdapter.replay_tolerance`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gradscope.cells.base import SCALAR_IDENTITY, Params
from gradscope.errors import ArgumentError, ShapeError, UnsupportedModuleError
from gradscope.sequences import advice
from gradscope.sequences._xlstm_backend import check_backend
from gradscope.sequences.base import Drive, SequenceAdapter, count, scalar


class _Factors(NamedTuple):
    """Per-pair factors of the linearisation (``N`` pairs)."""

    f: Tensor  # (N, H) forget gate σ(f̃)
    g: Tensor  # (N, H) σ'(f̃) = f (1 - f)
    a: Tensor  # (N, H) relative input gate exp(ĩ - r)
    k: Tensor  # (N, H, dk)
    v: Tensor  # (N, H, dv)
    C: Tensor  # (N, H, dk, dv) previous C̄
    n: Tensor  # (N, H, dk) previous n̄


def _soft_cap(x: Tensor, params: Params) -> Tensor:
    """``c · tanh(x / c)`` as the module's ``soft_cap`` (identity without a cap)."""
    if "gate_soft_cap" not in params:
        return x
    cap = scalar(params, "gate_soft_cap")
    return cap * torch.tanh(x / cap)


class MLSTMAdapter(SequenceAdapter):
    """``transformers``' ``xLSTMLayer`` (mLSTM): per-head scalar decay of a matrix memory."""

    kind = "mlstm"
    state_names = ("C", "n")
    structure = SCALAR_IDENTITY
    config = {  # noqa: RUF012
        "num_heads": "count",
        "qk_dim": "count",
        "v_dim": "count",
        "gate_soft_cap?": "positive",
        "eps": "nonnegative",
        "norm_eps": "nonnegative",
        "norm_float32": "flag",
        "inference": "flag",
    }

    def check_params(self, params: Params) -> None:
        """:attr:`config`, and the heads dividing both widths."""
        super().check_params(params)
        h, qk, v = (count(params, n) for n in ("num_heads", "qk_dim", "v_dim"))
        if qk % h or v % h:
            raise ArgumentError(f"mlstm: num_heads = {h} must divide qk_dim = {qk} and v_dim = {v}")

    # ------------------------------------------------------------------ layout
    def _dims(self, params: Params) -> tuple[int, int, int]:
        """``(H, d_k, d_v)``."""
        h = count(params, "num_heads")
        return h, count(params, "qk_dim") // h, count(params, "v_dim") // h

    def state_sizes(self, params: Params) -> tuple[int, ...]:
        """``(H d_k d_v, H d_k)``: ``C̄`` then ``n̄``."""
        h, dk, dv = self._dims(params)
        return (h * dk * dv, h * dk)

    def input_size(self, params: Params) -> int:
        """``2 H d_k + 2 H d_v + 4 H`` (the drive layout in the module docstring)."""
        h, dk, dv = self._dims(params)
        return 2 * h * dk + 2 * h * dv + 4 * h

    def _sizes(self, params: Params) -> list[int]:
        h, dk, dv = self._dims(params)
        return [h * dk, h * dk, h * dv, h, h, h * dv, h, h]

    def _split(self, params: Params, u: Tensor, dim: int = -1) -> tuple[Tensor, ...]:
        """``q, k, v, ĩ - r, f̃, o, m - r, r`` of a drive (or of a block of columns)."""
        return torch.split(u, self._sizes(params), dim=dim)

    # ------------------------------------------------------------------ recording
    def module_params(self, module: nn.Module) -> Params:
        """The layer's weights and configuration numbers, detached.

        Weights by their attribute names (``q.weight``, ..., or ``qkv_opreact.weight``
        and ``ifgate_preact.weight`` for ``weight_mode="fused"``), and as 0-d tensors
        ``num_heads``, ``qk_dim``, ``v_dim``, ``gate_soft_cap`` (absent without a cap),
        ``eps``, ``norm_eps``, ``norm_float32`` and ``inference`` (the backend mode, for
        :meth:`replay_tolerance`).

        Raises:
            UnsupportedModuleError: ``mode="train_with_padding"`` (the layer cannot run it),
                a kernel other than the native ones (``_xlstm_backend.check_backend``), or
                head sizes that do not divide.
        """
        cfg = module.config
        mode = check_backend(module)
        h = int(cfg.num_heads)
        qk, v = int(module.qk_dim), int(module.v_dim)
        if qk % h or v % h:
            raise UnsupportedModuleError(
                f"gradscope's mLSTM adapter: qk_dim={qk} and v_dim={v} must be multiples of "
                f"num_heads={h}"
            )
        out: Params = {}
        names = (
            ("q", "k", "v", "ogate_preact", "igate_preact", "fgate_preact")
            if cfg.weight_mode == "single"
            else ("qkv_opreact", "ifgate_preact")
        )
        for name in (*names, "out_proj", "multihead_norm"):
            sub = getattr(module, name)
            for pname in ("weight", "bias"):
                p = getattr(sub, pname, None)
                if p is not None:
                    out[f"{name}.{pname}"] = p.detach()
        dtype = module.out_proj.weight.dtype
        out["num_heads"] = torch.tensor(h)
        out["qk_dim"] = torch.tensor(qk)
        out["v_dim"] = torch.tensor(v)
        if cfg.gate_soft_cap is not None:
            out["gate_soft_cap"] = torch.tensor(float(cfg.gate_soft_cap), dtype=dtype)
        out["eps"] = torch.tensor(float(module.mlstm_backend.config.eps), dtype=dtype)
        out["norm_eps"] = torch.tensor(float(module.multihead_norm.eps), dtype=dtype)
        out["norm_float32"] = torch.tensor(
            int(bool(module.multihead_norm.force_float32_reductions))
        )
        out["inference"] = torch.tensor(int("inference" in str(mode)))
        return out

    def replay_tolerance(self, params: Params, dtype: torch.dtype) -> float | None:
        """The replay tolerance this configuration allows, or None for the recorder's default.

        A float64 module that rounds to float32 inside (inference mode stores the states in
        float32 between steps; the head norm reduces in float32 by default) is reproduced
        to float32 rounding only: 1e-5 (measured up to 6e-8 at toy sizes).
        """
        if dtype == torch.float64 and (count(params, "inference") or count(params, "norm_float32")):
            return 1e-5
        return None

    def _projections(self, params: Params, x: Tensor) -> tuple[Tensor, ...]:
        """``q, k, v, o`` ``(B, T, ·)`` and the capped gates ``ĩ, f̃`` ``(B, T, H)``."""
        h, dk, dv = self._dims(params)
        if "qkv_opreact.weight" in params:
            qkvo = F.linear(x, params["qkv_opreact.weight"], params.get("qkv_opreact.bias"))
            q, k, v, o = torch.tensor_split(qkvo, (h * dk, 2 * h * dk, 2 * h * dk + h * dv), -1)
            gates = F.linear(x, params["ifgate_preact.weight"], params.get("ifgate_preact.bias"))
            i_pre, f_pre = torch.tensor_split(_soft_cap(gates, params), (h,), dim=-1)
            return q, k, v, o, i_pre, f_pre

        def lin(name: str) -> Tensor:
            return F.linear(x, params[f"{name}.weight"], params.get(f"{name}.bias"))

        i_pre = _soft_cap(lin("igate_preact"), params)
        f_pre = _soft_cap(lin("fgate_preact"), params)
        return lin("q"), lin("k"), lin("v"), lin("ogate_preact"), i_pre, f_pre

    def drive(self, params: Params, args: tuple, kwargs: dict[str, Any]) -> Drive:
        """The drive and ``s0`` from ``xLSTMLayer.forward(x, state=None)``.

        ``state`` is the module's ``(C_0, n_0, m_0)`` (a cache), converted to
        ``(e^{m_0 - r} C_0, e^{m_0 - r} n_0)``. Cost: the layer's projections, ``O(B T)``
        for the stabiliser.
        """
        x = kwargs["x"] if "x" in kwargs else args[0]
        state = kwargs.get("state", args[1] if len(args) > 1 else None)
        if x.ndim != 3:
            raise ShapeError(f"mLSTM: the layer's input must be (B, T, hidden), got {x.shape}")
        h, dk, dv = self._dims(params)
        B = x.shape[0]
        q, k, v, o, i_pre, f_pre = self._projections(params, x)
        dtype = q.dtype
        if state is None:
            m0 = i_pre.new_zeros((B, h), dtype=torch.float64)
        else:
            c0, n0, m0 = state
            if tuple(c0.shape) != (B, h, dk, dv) or tuple(n0.shape) != (B, h, dk):
                raise ShapeError(
                    f"mLSTM: the initial state has C {tuple(c0.shape)} and n {tuple(n0.shape)}, "
                    f"the layer needs ({B}, {h}, {dk}, {dv}) and ({B}, {h}, {dk})"
                )
            m0 = m0.to(device=x.device, dtype=torch.float64).reshape(B, h)
        u, r = self.assemble(q, k, v, o, i_pre, f_pre, m0)
        s0 = None
        if state is not None:
            scale = torch.exp(m0 - r).to(dtype)  # (B, H), ≤ 1
            cs = c0.to(dtype) * scale[:, :, None, None]
            ns = n0.to(dtype) * scale[:, :, None]
            s0 = torch.cat([cs.flatten(1), ns.flatten(1)], dim=-1)
        return Drive(u.transpose(0, 1).contiguous(), s0)

    @staticmethod
    def assemble(
        q: Tensor, k: Tensor, v: Tensor, o: Tensor, i_pre: Tensor, f_pre: Tensor, m0: Tensor
    ) -> tuple[Tensor, Tensor]:
        """The drive ``(B, T, I)`` (batch-first) and ``r`` ``(B, H)`` float64 from the gates.

        The stabiliser ``m_t = max(ln f_t + m_{t-1}, ĩ_t)`` in parallel and in float64,
        ``m_t = B_t + max(m_0, cummax_{s≤t}(ĩ_s - B_s))``, and ``r = max(m_0, max_t ĩ_t)``;
        ``m_0`` ``(B, H)`` float64 (``-inf``: no floor, the parallel form without a state).
        """
        B, T, h = i_pre.shape
        dtype = q.dtype
        ip, logf = i_pre.double(), F.logsigmoid(f_pre.double())
        cum = logf.cumsum(dim=1)  # (B, T, H)
        m = cum + torch.maximum(m0[:, None], torch.cummax(ip - cum, dim=1).values)
        r = torch.maximum(m0, ip.amax(dim=1)) if T else m0  # (B, H)
        parts = [q, k, v, (ip - r[:, None]).to(dtype), f_pre, o, (m - r[:, None]).to(dtype)]
        u = torch.cat([*parts, r[:, None].expand(B, T, h).to(dtype)], dim=-1)
        return u, r

    def initial_state(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> Any:
        """``s0`` of the call, taken before it runs; None without a cached state.

        ``xLSTMModel`` overwrites its cache tensors (the ``state`` argument) in place after
        every block, so after the call the arguments hold the *final* state; the drive's
        stabiliser also reads ``m_0`` from them, so the captured arguments must be cloned.
        """
        check_backend(module)
        state = kwargs.get("state", args[1] if len(args) > 1 else None)
        if state is None:
            return None
        with torch.no_grad():
            return self.drive(self.module_params(module), args, kwargs).s0

    def retrieve(self, params: Params, u: Tensor, states: Tensor) -> Tensor:
        """The heads' outputs ``h_t`` ``(B, T, H, d_v)`` before the norm (module docstring).

        ``h_t = (q_tᵀ C̄_t / √d_k) / (max(|q_tᵀ n̄_t| / √d_k, e^{-r}) + ε e^{m_t - r})``;
        differentiable in ``states``. ``O(T B H d_k d_v)``.
        """
        h, dk, dv = self._dims(params)
        q, mu, r = (self._split(params, u)[j] for j in (0, 6, 7))
        C = states[1:, :, : h * dk * dv].unflatten(-1, (h, dk, dv))
        n = states[1:, :, h * dk * dv :].unflatten(-1, (h, dk))
        qs = q.unflatten(-1, (h, dk)) * (dk**-0.5)
        num = torch.einsum("tbhk,tbhkv->tbhv", qs, C)
        qn = (qs * n).sum(-1)
        den = torch.maximum(qn.abs(), torch.exp(-r)) + scalar(params, "eps") * torch.exp(mu)
        return (num / den[..., None]).transpose(0, 1)

    def readout(self, params: Params, u: Tensor, states: Tensor) -> Tensor:
        """``y`` ``(B, T, hidden)`` as ``xLSTMLayer`` returns it (see the module docstring)."""
        h, _, dv = self._dims(params)
        o = self._split(params, u)[5]
        T, B = u.shape[:2]
        hh = self.retrieve(params, u, states)  # (B, T, H, dv)
        # xLSTMMultiHeadLayerNorm, float32 reductions as the module's flag says
        in_dtype = hh.dtype
        if count(params, "norm_float32"):
            hh = hh.float()
        centred = hh - hh.mean(dim=-1, keepdim=True)
        var = hh.var(dim=-1, keepdim=True, unbiased=False)
        y = (centred * torch.rsqrt(var + scalar(params, "norm_eps"))).to(in_dtype)
        y = y.reshape(B, T, h * dv) * params["multihead_norm.weight"]
        if "multihead_norm.bias" in params:
            y = y + params["multihead_norm.bias"]
        y = torch.sigmoid(o.transpose(0, 1)) * y
        return F.linear(y, params["out_proj.weight"], params.get("out_proj.bias"))

    # ------------------------------------------------------------------ maths
    def linear_factors(self, params: Params, x: Tensor, s: Tensor) -> _Factors:
        """Gates, keys, values and the previous state, per pair."""
        h, dk, dv = self._dims(params)
        _, k, v, i_rel, f_pre, _, _, _ = self._split(params, x)
        f = torch.sigmoid(f_pre)
        return _Factors(
            f,
            f * (1.0 - f),
            torch.exp(i_rel),
            k.unflatten(-1, (h, dk)),
            v.unflatten(-1, (h, dv)),
            s[:, : h * dk * dv].unflatten(-1, (h, dk, dv)),
            s[:, h * dk * dv :].unflatten(-1, (h, dk)),
        )

    @staticmethod
    def _next(fac: _Factors) -> Tensor:
        f, a = fac.f[:, :, None], fac.a[:, :, None]
        c = f[..., None] * fac.C + a[..., None] * (fac.k[..., :, None] * fac.v[..., None, :])
        n = f * fac.n + a * fac.k
        return torch.cat([c.flatten(1), n.flatten(1)], dim=-1)

    def step(self, params: Params, x: Tensor, s: Tensor) -> Tensor:
        """``C̄_t = f C̄_{t-1} + e^{ĩ-r} k vᵀ``, ``n̄_t = f n̄_{t-1} + e^{ĩ-r} k`` per head."""
        return self._next(self.linear_factors(params, x, s))

    def step_factors(self, params: Params, x: Tensor, s: Tensor) -> tuple[Tensor, _Factors]:
        """:meth:`step` and its linear factors, from one evaluation of the gates."""
        fac = self.linear_factors(params, x, s)
        return self._next(fac), fac

    def diagonal(self, params: Params, u: Tensor) -> Tensor:
        """``f_t`` of each head repeated over its ``d_k d_v + d_k`` state numbers ``(N, D)``."""
        f_pre = self._split(params, u)[4]
        return self._per_head(params, torch.sigmoid(f_pre))

    def log_decay(self, params: Params, u: Tensor) -> Tensor:
        """``ln f_t = logsigmoid(f̃_t)`` per state number (accurate for ``f`` near 0)."""
        f_pre = self._split(params, u)[4]
        return self._per_head(params, F.logsigmoid(f_pre))

    def _per_head(self, params: Params, g: Tensor) -> Tensor:
        _, dk, dv = self._dims(params)
        return torch.cat([g.repeat_interleave(dk * dv, dim=1), g.repeat_interleave(dk, dim=1)], 1)

    def product(
        self, params: Params, x: Tensor, s: Tensor, f: _Factors, m: Tensor, wrt: str, rev: bool
    ) -> Tensor:
        """One product with ``∂s_t/∂s_{t-1}`` or ``∂s_t/∂u_t``.

        Per head, with ``f = σ(f̃)``, ``g = f (1 - f)``, ``a = e^{ĩ - r}`` and the previous
        ``C̄, n̄``::

            state (both ways):  δC̄ = f δC̄_prev      δn̄ = f δn̄_prev
            input jvp:  δC̄ = g δf̃ C̄_prev + a (δĩ k vᵀ + δk vᵀ + k δvᵀ)
                        δn̄ = g δf̃ n̄_prev + a (δĩ k + δk)
            input vjp (cotangents G of C̄, γ of n̄):
                        ḡ_f̃ = g (⟨G, C̄_prev⟩ + ⟨γ, n̄_prev⟩)    ḡ_ĩ = a kᵀ (G v + γ)
                        ḡ_k = a (G v + γ)    ḡ_v = a Gᵀ k    ḡ_q = ḡ_o = ḡ_{m-r} = ḡ_r = 0

        ``O(H d_k d_v k)`` per pair for ``k`` columns.
        """
        h, dk, dv = self._dims(params)
        N, kk = m.shape[0], m.shape[-1]
        cut = h * dk * dv
        if wrt == "state":  # f_t · I per head: symmetric
            fc = f.f[:, :, None, None]
            mc = m[:, :cut].reshape(N, h, dk * dv, kk) * fc
            mn = m[:, cut:].reshape(N, h, dk, kk) * fc
            return torch.cat([mc.reshape(N, cut, kk), mn.reshape(N, h * dk, kk)], dim=1)
        a, g = f.a[:, :, None], f.g[:, :, None]  # (N, H, 1)
        if not rev:
            _, mk, mv, mi, mf, _, _, _ = self._split(params, m, dim=1)
            dK = mk.reshape(N, h, dk, kk)
            dV = mv.reshape(N, h, dv, kk)
            kv = f.k[..., :, None] * f.v[..., None, :]  # (N, H, dk, dv)
            dC = (g * mf)[:, :, None, None, :] * f.C[..., None] + a[..., None, None] * (
                kv[..., None] * mi[:, :, None, None, :]
                + dK[:, :, :, None, :] * f.v[:, :, None, :, None]
                + f.k[:, :, :, None, None] * dV[:, :, None, :, :]
            )
            dn = (g * mf)[:, :, None, :] * f.n[..., None] + a[..., None] * (
                f.k[..., None] * mi[:, :, None, :] + dK
            )
            return torch.cat([dC.reshape(N, cut, kk), dn.reshape(N, h * dk, kk)], dim=1)
        GC = m[:, :cut].reshape(N, h, dk, dv, kk)
        gn = m[:, cut:].reshape(N, h, dk, kk)
        gf = g * (torch.einsum("nhij,nhijk->nhk", f.C, GC) + torch.einsum("nhi,nhik->nhk", f.n, gn))
        GCv = torch.einsum("nhijk,nhj->nhik", GC, f.v) + gn  # (N, H, dk, k)
        gi = a * torch.einsum("nhi,nhik->nhk", f.k, GCv)
        gK = a[..., None] * GCv
        gV = a[..., None] * torch.einsum("nhijk,nhi->nhjk", GC, f.k)
        zq = m.new_zeros((N, h * dk, kk))
        zo = m.new_zeros((N, h * dv, kk))
        zh = m.new_zeros((N, h, kk))
        return torch.cat(
            [zq, gK.reshape(N, h * dk, kk), gV.reshape(N, h * dv, kk), gi, gf, zo, zh, zh], dim=1
        )

    def vanishing_advice(self, params: Params, facts: dict[str, str]) -> list[str]:
        """The forget-gate bias, with this layer's values."""
        if "ifgate_preact.weight" in params:  # fused: the f rows follow the H rows of ĩ
            b, h = params.get("ifgate_preact.bias"), int(params["num_heads"])
            return advice.mlstm(params, facts, "ifgate_preact.bias[H:]", b if b is None else b[h:])
        return advice.mlstm(params, facts, "fgate_preact.bias", params.get("fgate_preact.bias"))


ADAPTER = MLSTMAdapter()

#: The classes this module serves, by qualified name (``transformers`` is not imported here).
SERVES = {
    "transformers.models.xlstm.modeling_xlstm.xLSTMLayer": ADAPTER,
    # transformers builds its xLSTM from this class when the xlstm package is installed
    "xlstm.xlstm_large.model.mLSTMLayer": ADAPTER,
}

__all__ = ["ADAPTER", "SERVES", "MLSTMAdapter"]
