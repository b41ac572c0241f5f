"""The shadow-trajectory error budget: how far a chaotic replay may drift from the kernel.

When a replayed quantity of a fused module misses the fixed tolerance, :class:`ErrorBudget`
measures how much the dynamics amplify per-step rounding along the replayed trajectory
(random tangents propagated with ``torch.func.jvp``) and turns the tolerance per step into a
budget per step; :mod:`gradscope.recording.check` compares the errors against it. See
"Chaotic networks: shadow trajectories" in :mod:`gradscope.recording`.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from gradscope._rng import rng_preserved
from gradscope.recording.dropout import MASK_REPRODUCED
from gradscope.recording.fused import FusedCall, Replay

#: Independent random tangents per sequence for the error budget. A single tangent aligns
#: with the most expanding direction only at the rate e^{-(λ₁-λ₂)t}; with nearly degenerate
#: top exponents a badly started one under-estimates the growth for tens of steps (measured on
#: chaotic float32 RNN/LSTMs, H = 32, T = 60: errors up to 0.5x the one-tangent budget; with
#: the largest of 4 budgets at most 0.04x, the growth rate of the budget rising by < 0.02).
_TANGENTS = 4

#: Exceptions that mean "this adapter cannot be differentiated forward" when the error budget
#: is measured (an adapter written with in-place updates or non-differentiable operations).
_JVP_FAILURES = (RuntimeError, NotImplementedError, TypeError, ValueError)


class BudgetUnavailable(Exception):
    """The amplification of a layer could not be measured (the reason is the message)."""


class ErrorBudget:
    r"""How far the kernel's trajectory may legitimately drift from the replay.

    PyTorch's kernel and the replay evaluate the same map in different summation orders, so
    at every step they differ by a local rounding error ``δ_t`` with ``‖δ_t‖ ≤ tol·σ``
    (``tol`` the fixed per-step tolerance, thousands of units in the last place, and
    ``σ = max(1, max|s|)`` over the layer's replayed states). To first order the difference of
    the two trajectories obeys

        e_t = J_t e_{t-1} + K_t ε_t + δ_t,      J_t = ∂f/∂s_{t-1},   K_t = ∂f/∂x_t,

    with ``ε_t`` the difference of the layer's *inputs* (zero for layer 0, whose input is
    the module's own; for layer ``k > 0`` the error of layer ``k - 1``'s outputs, times the
    dropout mask). Hence ``e_t = Σ_{u≤t} Φ_{t,u} (δ_u + K_u ε_u)`` with ``Φ_{t,u} = J_t ⋯
    J_{u+1}``, and the budget is the recursion

        β_t = g_t β_{t-1} + tol·σ + ‖K_t‖_F · β^{below}_t,      β_0 = 0,

    i.e. ``β_t = Σ_{u≤t} G_{u→t} (tol·σ + ‖K_u‖_F β^{below}_u)`` with ``G_{u→t} = g_{u+1} ⋯
    g_t``. ``g_t = ‖J_t v_{t-1}‖`` is the growth of a unit tangent vector ``v`` propagated
    along the *replayed* trajectory with forward-mode AD (``torch.func.jvp`` of the adapter's
    step) and renormalised every step: ``v`` aligns with the most expanding direction, so
    ``G_{u→t}`` measures how much the dynamics amplify a perturbation from step ``u`` to ``t``
    (``~e^{λ₁(t-u)}``, ``λ₁`` the largest Lyapunov exponent). Alignment takes a while when
    the top exponents are close, so :data:`_TANGENTS` independent tangents per sequence are
    propagated (one batched call) and the largest of their budgets counts. The
    input term uses the Frobenius norm of the adapter's input Jacobian, an upper bound of its
    operator norm, and ``β^{below}_t`` is the budget of the layer below at the position read
    at step ``t`` (both directions: ``sqrt(β_fwd² + β_rev²)``, times the largest dropout
    multiplier there), so amplification inherited from lower layers is accounted for layer by
    layer, in the replay's order, which also covers bidirectional stacks. All budgets are
    absolute 2-norm bounds (≥ the max-abs errors compared against them) kept as natural logs in
    float64, so they neither overflow nor underflow. Padded steps inject nothing and do not
    move the tangent.

    For a contracting layer ``G_{u→t} ≈ e^{λ(t-u)}`` with ``λ < 0`` and ``β_t ≈ tol·σ /
    (1 - e^{λ})``: the check stays tight. Budgets are computed per layer on first use (only
    when a replayed quantity misses the fixed tolerance) and cached.
    """

    def __init__(self, call: FusedCall, rep: Replay, tol: float) -> None:
        self.call = call
        self.rep = rep
        self.tol = tol
        self._log: dict[tuple[int, int], Tensor] = {}  # (T+1, B) ln β, max over tangents
        self._growth: dict[tuple[int, int], Tensor] = {}  # (T, tangents, B) log growth a_t
        self._sigma: dict[tuple[int, int], float] = {}

    # ------------------------------------------------------------------ public
    def log_budget(self, layer: int, d: int) -> Tensor:
        """``(T+1, B)`` float64 ``ln β_t``: bound of ‖replayed s_t − kernel's s_t‖."""
        if (layer, d) not in self._log:
            self._compute(layer, d)
        return self._log[(layer, d)]

    def at_positions(self, layer: int, d: int) -> Tensor:
        """``(T, B)`` ``ln β`` of the state whose ``h`` is the output at position ``p``."""
        log_b = self.log_budget(layer, d)
        if d == 0:
            return log_b[1:]
        return log_b.gather(0, self._reverse_index())

    def growth_rate(self, layer: int, d: int) -> float:
        """``λ̂``: mean log growth per valid step of the tangents (nat-log per step)."""
        a = self._growth[(layer, d)]
        ok = torch.isfinite(a)
        if self.call.valid is not None:
            ok &= self.call.valid.cpu().unsqueeze(1)
        return float(a[ok].mean()) if bool(ok.any()) else float("nan")

    def log_amplification(self, layer: int, d: int) -> float:
        """``ln max G_{u→t}`` over windows, sequences and tangents (≥ 0)."""
        a = torch.nan_to_num(self._growth[(layer, d)], nan=0.0, neginf=-1e300, posinf=1e300)
        if not a.numel():
            return 0.0
        # max over windows (u, t] of Σ a = max_t (A_t - min_{u≤t} A_u), A the cumulative sum
        cum = torch.cat([torch.zeros_like(a[:1]), torch.cumsum(a, 0)])
        low = torch.cummin(cum, dim=0).values
        return max(0.0, float((cum - low).max()))

    def horizon(self, layer: int, d: int) -> int | None:
        """The first step whose budget reaches the states' size ``σ`` (None: never)."""
        log_b = self.log_budget(layer, d)
        reached = (log_b >= np.log(self._sigma[(layer, d)])).any(dim=1)
        if not bool(reached.any()):
            return None
        return int(reached.to(torch.int8).argmax())

    # ------------------------------------------------------------------ internals
    def _reverse_index(self) -> Tensor:
        """``(T, B)`` state index ``L_b - p`` of a reverse direction at position ``p``."""
        call = self.call
        steps, batch = call.layout.T, call.layout.B
        if call.layout.lengths is None:
            lengths = torch.full((batch,), steps, dtype=torch.long)
        else:
            lengths = call.layout.lengths
        p = torch.arange(steps).unsqueeze(1)
        return torch.clamp(lengths.unsqueeze(0) - p, min=0, max=steps)

    def _input_log_error(self, layer: int, d: int) -> Tensor:
        """``(T, B)`` ``ln`` bound of layer ``layer``'s input error, processing order of ``d``."""
        call = self.call
        parts = torch.stack([self.at_positions(layer - 1, dd) for dd in range(call.dirs)])
        log_eps = 0.5 * torch.logsumexp(2.0 * parts, dim=0)  # ‖(e_fwd, e_rev)‖₂
        if call.dropout == MASK_REPRODUCED and call.masks is not None:
            scale = call.masks[layer - 1].amax(dim=-1).to(torch.float64).cpu()
            log_eps = log_eps + torch.log(scale)
        pos = call.positions(reverse=d == 1).cpu()
        return log_eps.gather(0, pos)

    def _compute(self, layer: int, d: int) -> None:
        call = self.call
        adapter = call.adapter
        params = call.params[(layer, d)]
        seq = self.rep.states[layer][d]
        x = self.rep.inputs[layer][d]
        steps, batch = call.layout.T, call.layout.B
        m = _TANGENTS
        valid = None if call.valid is None else call.valid.cpu()
        states = torch.stack(seq).detach().to(torch.float64)
        if valid is not None:
            states = states[torch.cat([torch.ones(1, batch, dtype=torch.bool), valid])]
        finite = states[torch.isfinite(states)]
        sigma = max(1.0, float(finite.abs().max())) if finite.numel() else 1.0
        log_inject = float(np.log(self.tol * sigma))
        log_in = None if layer == 0 else self._input_log_error(layer, d)
        # m independent random unit tangents per sequence, rows ordered (tangent, sequence);
        # a private generator: the global RNG is not touched
        gen = torch.Generator(device="cpu").manual_seed(20 + 2 * layer + d)
        v = torch.randn((m * batch, seq[0].shape[-1]), generator=gen, dtype=torch.float64)
        v = (v / v.norm(dim=1, keepdim=True)).to(dtype=seq[0].dtype, device=seq[0].device)
        growth = torch.zeros((steps, m, batch), dtype=torch.float64)
        log_b = torch.full((steps + 1, m, batch), -float("inf"), dtype=torch.float64)
        with torch.no_grad(), rng_preserved():
            for t in range(steps):
                x_t, s_t = x[t], seq[t]
                x_m, s_m = x_t.repeat(m, 1), s_t.repeat(m, 1)
                try:
                    _, jv = torch.func.jvp(
                        lambda s, x_m=x_m: adapter.step(params, x_m, s), (s_m,), (v,)
                    )
                    if log_in is not None:
                        k_norm = adapter.jacobian_input(params, x_t, s_t).flatten(1).norm(dim=1)
                except _JVP_FAILURES as exc:
                    raise BudgetUnavailable(
                        f"torch.func.jvp / jacobian_input of the adapter's step failed ({exc})"
                    ) from exc
                norm = jv.norm(dim=1)
                a_t = torch.log(norm.detach().to(torch.float64).cpu()).reshape(m, batch)
                moved = (norm > 0) & torch.isfinite(norm)
                if valid is not None:
                    moved &= valid[t].to(moved.device).repeat(m)
                v = torch.where(moved.unsqueeze(-1), jv / norm.clamp_min(1e-300).unsqueeze(-1), v)
                inject = torch.full((batch,), log_inject, dtype=torch.float64)
                if log_in is not None:
                    log_k = torch.log(k_norm.detach().to(torch.float64).cpu())
                    inject = torch.logaddexp(inject, log_k + log_in[t])
                new = torch.logaddexp(a_t + log_b[t], inject)
                if valid is not None:
                    new = torch.where(valid[t], new, log_b[t])
                    a_t = torch.where(valid[t], a_t, torch.zeros_like(a_t))
                log_b[t + 1] = new
                growth[t] = a_t
        self._log[(layer, d)] = log_b.amax(dim=1)
        self._growth[(layer, d)] = growth
        self._sigma[(layer, d)] = sigma
