r"""Why gates keep gradients alive: gate views of LSTM, GRU and vanilla RNN layers.

A vanilla RNN multiplies the same kind of factor into the gradient at every step back,
``J_t = diag(φ'(a_t)) W_hh``; over ``k`` steps the product shrinks like
``∏ ‖diag(φ'_u) W_hh‖₂`` at most, and a saturated ``tanh`` (``φ' → 0``) shrinks it further.
A gated cell adds a second, *additive* path to its one-step Jacobian,

.. math:: J_t = A_t + R_t, \qquad
          A_t = \begin{cases} \mathrm{diag}(f_t) \text{ on the } c \to c \text{ block, 0 elsewhere}
                 & \text{LSTM (the cell path)} \\
                 \mathrm{diag}(z_t) & \text{GRU } (h_t = (1-z_t) n_t + z_t h_{t-1})
                 \end{cases}

and ``R_t = J_t − A_t`` is everything else (the gate derivatives times the recurrent weights,
and for the LSTM every block that reads or writes ``h``). ``A_t`` carries no weight matrix: a
gradient that stays on it for ``k`` steps is scaled, per unit ``j``, by the **carry**
``C_k[j] = ∏_{u=T−k+1..T} f_u[j]`` (GRU: ``z_u[j]``), which is 1 when the gates are 1,
whatever the weights.

What :func:`gate_view` measures on a recorded layer:

* **gate distributions**: per timestep, quantiles (:data:`QUANTILES`) over units and
  sequences of every gate (LSTM ``i, f, o``; GRU ``r, z``; vanilla ``φ'(a_t)``);
* **carry** against lag ``k`` in log space, ``ln C_k[j] = Σ ln f_u[j]`` with
  ``ln f = −softplus(−a_f)`` (no underflow at any ``T``): quantiles over units and sequences,
  and ``ln ‖Π^A_k‖₂ = max_j ln C_k[j]``, the norm of the pure-path product
  ``Π^A_k = A_T ⋯ A_{T−k+1}``;
* **how the long-run gradient travels**: expanding ``P_k = ∂s_T/∂s_{T−k} = ∏ (A_u + R_u)``
  into paths, ``P_k = Π^A_k + E_k`` where ``E_k`` sums every path that leaves the additive path
  at least once. The **share of the additive path** at lag ``k`` is

  .. math:: \mathrm{share}_k = \frac{\lVert U^\top Π^A_k\rVert_2}
                                    {\lVert U^\top Π^A_k\rVert_2 + \lVert U^\top E_k\rVert_2}
            \in [0, 1]

  (``U = I``, exact, for ``D ≤`` :data:`EXACT_MAX_D`; otherwise ``p`` random orthonormal
  probe columns, a probe estimate, named in the notes), per sequence, then the median over
  sequences. ``E_k`` is walked backwards with ``E_{k+1} = E_k J + Π^A_k R`` (vector-Jacobian
  products in float64, ``Rᵀ y = Jᵀ y − A y``), both terms kept on one common log scale, so
  nothing underflows. Share 1: the gradient ``k`` steps back is what the gates let through;
  share 0: it travels through the weights;
* **vanilla**: the repeated factor's norm ``‖diag(φ'(a_t)) W_hh‖₂`` per step (quantiles over
  sequences) against ``‖W_hh‖₂``: their ratio is how much ``tanh'`` saturation shrinks it.

Cost: gates ``O(T·B·H·(H+I))``; the walk ``O(K·n·p·D·(4H))`` for ``n ≤`` :data:`WALK_SEQS`
sequences; the vanilla norms one ``H × H`` SVD per sampled (step, sequence).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as nnf

from gradscope._json import jsonable
from gradscope._progress import analysis, compute_threads
from gradscope.errors import MissingDataError
from gradscope.traces import LayerTrace

#: Quantiles of every per-timestep distribution (over units and sequences).
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
#: States up to this size get exact norms in the path walk (``U = I``).
EXACT_MAX_D = 128
#: Probe columns for larger states.
PROBES = 16
#: Sequences the path walk and the vanilla factor norms use (the first ones).
WALK_SEQS = 8
#: Lags at which the walk measures its norms (evenly spaced, the last one included).
WALK_LAGS = 64
#: Steps sampled for the vanilla factor norms.
FACTOR_STEPS = 256
#: Lag of the plain-language sentence (or the longest lag, if shorter).
SENTENCE_LAG = 100
GATED = {"lstm": "cell", "gru": "update"}


@dataclass
class GateView:
    """Gate statistics of one LSTM, GRU or vanilla RNN layer (see the module docstring).

    Attributes:
        name: The layer's name.
        kind: ``"lstm"``, ``"gru"``, ``"rnn_tanh"`` or ``"rnn_relu"``.
        T: Median sequence length.
        path: ``"cell"`` (LSTM ``diag(f)`` on ``c → c``), ``"update"`` (GRU ``diag(z)``) or
            ``"none"`` (vanilla: no additive path).
        gates: Gate name -> ``(T, 5)`` quantiles per timestep over units and sequences.
        medians: Gate name -> median over every unit, step and sequence.
        lags: ``(K,)`` lags ``0 .. K-1`` of :attr:`carry` (empty for vanilla).
        carry: ``(K, 5)`` quantiles over units and sequences of ``ln C_k`` (natural log).
        carry_max: ``(K,)`` median over sequences of ``max_j ln C_k[j] = ln ‖Π^A_k‖₂``.
        walk_lags: ``(L,)`` lags where the walk measured its norms.
        path_log: ``(L,)`` median over sequences of ``ln ‖Uᵀ Π^A_k‖₂``.
        rest_log: ``(L,)`` median over sequences of ``ln ‖Uᵀ E_k‖₂``.
        share: ``(L,)`` median over sequences of the share of the additive path.
        total_log: ``(L,)`` median over sequences of ``ln ‖Uᵀ P_k‖₂`` (``P_k = Π^A_k + E_k``;
            with ``U = I`` the state decay ``‖∂s_T/∂s_{T−k}‖₂`` of :func:`gradscope.decay`).
        probes: Probe columns of the walk (``D``: exact).
        factor: ``(S, 5)`` vanilla only: quantiles over sequences of
            ``‖diag(φ'(a_t)) W_hh‖₂`` at the steps :attr:`factor_steps`.
        factor_steps: ``(S,)`` those steps (0-based).
        weight_norm: ``‖W_hh‖₂`` (vanilla; NaN otherwise).
        notes: What was sampled or left out.
    """

    name: str
    kind: str
    T: float
    path: str
    gates: dict[str, np.ndarray]
    medians: dict[str, float]
    lags: np.ndarray
    carry: np.ndarray
    carry_max: np.ndarray
    walk_lags: np.ndarray
    path_log: np.ndarray
    rest_log: np.ndarray
    share: np.ndarray
    total_log: np.ndarray = field(default_factory=lambda: np.zeros(0))
    probes: int = 0
    factor: np.ndarray = field(default_factory=lambda: np.zeros((0, len(QUANTILES))))
    factor_steps: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    weight_norm: float = math.nan
    notes: list[str] = field(default_factory=list)

    def share_at(self, lag: int) -> tuple[int, float]:
        """``(lag actually used, share)``: the measured lag closest to ``lag``."""
        if self.walk_lags.size == 0:
            return lag, math.nan
        i = int(np.argmin(np.abs(self.walk_lags - lag)))
        return int(self.walk_lags[i]), float(self.share[i])

    def sentence(self) -> str:
        """One plain-language line: which path carries the gradient, how far, the gates."""
        if self.path == "none":
            ratio = float(np.nanmedian(self.factor[:, 2])) / self.weight_norm
            med = float(np.nanmedian(self.factor[:, 2]))
            d = self.medians.get("φ'", math.nan)
            return (
                f"No additive path: every step back multiplies by diag(φ′) W_hh, median norm "
                f"{med:.2f} per step (‖W_hh‖₂ = {self.weight_norm:.2f}, φ′ median {d:.2f}, so "
                f"saturation shrinks it ×{ratio:.2f})."
            )
        gate = "forget" if self.kind == "lstm" else "update"
        g = "f" if self.kind == "lstm" else "z"
        want = min(SENTENCE_LAG, int(self.lags[-1]) if self.lags.size else 0)
        lag, share = self.share_at(want)
        what = "cell path (diag f on c)" if self.kind == "lstm" else "update-gate path (diag z)"
        i = int(np.argmin(np.abs(self.walk_lags - lag))) if self.walk_lags.size else 0
        total = math.exp(self.total_log[i]) if self.total_log.size else math.nan
        best = math.exp(self.carry_max[lag]) if lag < len(self.carry_max) else math.nan
        return (
            f"{lag} steps back ‖∂s_T/∂s_T−{lag}‖ = {total:.2g} and the {what} carries "
            f"{100 * share:.0f}% of it (its best unit keeps ∏{g} = {best:.2g}); {gate} gates "
            f"median {self.medians.get(g, math.nan):.2f}."
        )

    def short(self) -> str:
        """A few words for a table cell: the path's share and the median carried gate."""
        if self.path == "none":
            med = float(np.nanmedian(self.factor[:, 2])) if self.factor.size else math.nan
            return f"no gate path; ‖diag(φ′)W_hh‖₂ ≈ {med:.2f} per step"
        g = "f" if self.kind == "lstm" else "z"
        want = min(SENTENCE_LAG, int(self.lags[-1]) if self.lags.size else 0)
        lag, share = self.share_at(want)
        what = "cell path" if self.kind == "lstm" else "z path"
        return (
            f"{what} carries {100 * share:.0f}% at lag {lag}; {g} median "
            f"{self.medians.get(g, math.nan):.2f}"
        )

    def to_dict(self, arrays: bool = True) -> dict[str, Any]:
        """JSON-serialisable form (summaries; per-step arrays when ``arrays``)."""
        out: dict[str, Any] = dict(
            name=self.name,
            kind=self.kind,
            T=self.T,
            path=self.path,
            medians=self.medians,
            probes=self.probes,
            weight_norm=self.weight_norm,
            sentence=self.sentence(),
            notes=list(self.notes),
        )
        if arrays:
            out.update(
                quantiles=list(QUANTILES),
                gates=self.gates,
                carry=self.carry,
                carry_max=self.carry_max,
                walk_lags=self.walk_lags,
                path_log=self.path_log,
                rest_log=self.rest_log,
                total_log=self.total_log,
                share=self.share,
                factor=self.factor,
                factor_steps=self.factor_steps,
            )
        return jsonable(out)


# --------------------------------------------------------------------------- gates
def _f64(layer: LayerTrace) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    params = {k: v.detach().to("cpu", torch.float64) for k, v in layer.params.items()}
    x = layer.inputs.detach().to("cpu", torch.float64)
    s = layer.states.detach().to("cpu", torch.float64)
    return params, x, s


def _preacts(params: dict[str, torch.Tensor], x: torch.Tensor, h: torch.Tensor):
    gi = x @ params["weight_ih"].T
    gh = h @ params["weight_hh"].T
    if "bias_ih" in params:
        gi = gi + params["bias_ih"]
    if "bias_hh" in params:
        gh = gh + params["bias_hh"]
    return gi, gh


def gate_values(layer: LayerTrace) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Every gate ``(T, B, H)`` in float64 and the log of the carried gate ``(T, B, H)``.

    LSTM ``{"i", "f", "o"}`` and ``ln f``; GRU ``{"r", "z"}`` and ``ln z``; vanilla
    ``{"φ'"}`` and an empty tensor. Padded steps are NaN (their inputs are).
    """
    params, x, s = _f64(layer)
    h = s[:-1, :, : layer.state_sizes[0]]
    gi, gh = _preacts(params, x, h)
    if layer.kind == "lstm":
        a_i, a_f, _, a_o = (gi + gh).chunk(4, dim=-1)
        gates = {"i": torch.sigmoid(a_i), "f": torch.sigmoid(a_f), "o": torch.sigmoid(a_o)}
        return gates, nnf.logsigmoid(a_f)
    if layer.kind == "gru":
        a_r = gi.chunk(3, dim=-1)[0] + gh.chunk(3, dim=-1)[0]
        a_z = gi.chunk(3, dim=-1)[1] + gh.chunk(3, dim=-1)[1]
        return {"r": torch.sigmoid(a_r), "z": torch.sigmoid(a_z)}, nnf.logsigmoid(a_z)
    a = gi + gh
    if layer.kind == "rnn_tanh":
        d = 1.0 - torch.tanh(a) ** 2
    else:
        d = torch.where(torch.isnan(a), a, (a > 0).to(a.dtype))
    return {"φ'": d}, x.new_zeros(0)


def _step_quantiles(v: np.ndarray) -> np.ndarray:
    """``(T, B, H)`` -> ``(T, 5)`` quantiles over sequences and units (NaN-aware)."""
    flat = v.reshape(v.shape[0], -1)
    if not np.isnan(flat).any():
        return np.quantile(flat, QUANTILES, axis=1).T
    out = np.full((flat.shape[0], len(QUANTILES)), np.nan)
    ok = ~np.isnan(flat).all(axis=1)
    out[ok] = np.nanquantile(flat[ok], QUANTILES, axis=1).T
    return out


def _carries(log_g: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """``ln C_k`` ``(K, B, H)``: sums of the last ``k`` log gates of each sequence (NaN past it)."""
    _, b, hid = log_g.shape
    out = np.full((int(lengths.max(initial=0)) + 1, b, hid), np.nan)
    for j in range(b):
        n = int(lengths[j])
        out[0, j] = 0.0
        out[1 : n + 1, j] = np.cumsum(log_g[:n, j][::-1], axis=0)
    return out


# --------------------------------------------------------------------------- the walk
def _walk(layer: LayerTrace, seed: int, max_lag: int | None) -> tuple:
    """Lags; ``ln ‖Uᵀ Π^A_k‖₂``, ``ln ‖Uᵀ E_k‖₂``, ``ln ‖Uᵀ P_k‖₂`` ``(L, n)``; p; notes."""
    params, x, s = _f64(layer)
    adapter = layer.cell_adapter()
    n = min(layer.B, WALK_SEQS)
    lengths = layer.seq_lengths[:n]
    D = layer.D
    notes = []
    p = D if D <= EXACT_MAX_D else min(D, PROBES)
    rng = np.random.default_rng(seed)
    if p == D:
        u = torch.eye(D, dtype=torch.float64).expand(n, D, D).clone()
    else:
        q = np.linalg.qr(rng.standard_normal((n, D, p)))[0]
        u = torch.from_numpy(np.ascontiguousarray(q))
        notes.append(f"path shares on {p} random probe directions of D = {D} (an estimate)")
    if n < layer.B:
        notes.append(f"path shares on the first {n} of {layer.B} sequences")
    k_max = int(lengths.max(initial=0))
    if max_lag is not None and max_lag < k_max:
        k_max = max(int(max_lag), 0)
        notes.append(f"path shares up to lag {k_max}")
    keep = np.unique(np.linspace(0, k_max, min(WALK_LAGS, k_max + 1)).round().astype(int))
    lag_rows = {int(k): i for i, k in enumerate(keep)}
    path = np.full((len(keep), n), np.nan)
    rest = np.full((len(keep), n), np.nan)
    total = np.full((len(keep), n), np.nan)
    c = layer.part("c") if layer.kind == "lstm" else slice(0, D)
    y = u.clone()  # (Π^A_k)ᵀ U with Π^A_0 = I, on the common scale
    e = torch.zeros_like(u)  # E_kᵀ U, E_0 = 0
    scale = np.zeros(n)
    for k in range(k_max + 1):
        if k in lag_rows:
            live = lengths >= k
            ny, ne, nt = _norm2(y), _norm2(e), _norm2(y + e)
            with np.errstate(divide="ignore"):
                path[lag_rows[k], live] = (np.log(ny) + scale)[live]
                rest[lag_rows[k], live] = (np.log(ne) + scale)[live]
                total[lag_rows[k], live] = (np.log(nt) + scale)[live]
        if k == k_max:
            break
        live = np.nonzero(lengths > k)[0]
        idx = torch.from_numpy(lengths[live] - 1 - k)
        bl = torch.from_numpy(live)
        lin = adapter.linearize(params, x[idx, bl], s[idx, bl])
        gate = _carried_gate(layer, params, x[idx, bl], s[idx, bl])  # (m, H)
        yl, el = y[bl], e[bl]
        jy = lin.vjp_state(yl)
        ay = torch.zeros_like(yl)
        ay[:, c] = gate.unsqueeze(-1) * yl[:, c]
        e_new = lin.vjp_state(el) + (jy - ay)
        big = torch.maximum(
            torch.linalg.matrix_norm(ay), torch.linalg.matrix_norm(e_new)
        ).clamp_min(1e-300)
        y[bl] = ay / big[:, None, None]
        e[bl] = e_new / big[:, None, None]
        scale[live] += np.log(big.numpy())
    return keep, path, rest, total, p, notes


def _norm2(m: torch.Tensor) -> np.ndarray:
    """Spectral norms of a batch of matrices, by NumPy's LAPACK.

    torch's threaded batched SVD of small matrices was measured 100× slower on a busy
    2-core machine.
    """
    return np.linalg.svd(m.numpy(), compute_uv=False)[..., 0]


def _carried_gate(layer, params, x, s) -> torch.Tensor:
    h = s[:, : layer.state_sizes[0]]
    gi, gh = _preacts(params, x, h)
    if layer.kind == "lstm":
        return torch.sigmoid((gi + gh).chunk(4, dim=-1)[1])
    return torch.sigmoid(gi.chunk(3, dim=-1)[1] + gh.chunk(3, dim=-1)[1])


def _factor_norms(layer: LayerTrace, dphi: torch.Tensor) -> tuple[np.ndarray, np.ndarray, float]:
    w = layer.params["weight_hh"].detach().to("cpu", torch.float64)
    n = min(layer.B, WALK_SEQS)
    steps = np.unique(np.linspace(0, layer.T - 1, min(FACTOR_STEPS, layer.T)).astype(int))
    d = dphi[torch.from_numpy(steps), :n]  # (S, n, H)
    norms = _norm2(d.unsqueeze(-1) * w)  # (S, n)
    norms = np.where(layer.mask[steps, :n], norms, np.nan)
    q = np.full((len(steps), len(QUANTILES)), np.nan)
    ok = ~np.isnan(norms).all(axis=1)
    q[ok] = np.nanquantile(norms[ok], QUANTILES, axis=1).T
    return q, steps, float(_norm2(w))


# --------------------------------------------------------------------------- entry
def split_jacobian(layer: LayerTrace, steps=None, batch=None) -> tuple[torch.Tensor, torch.Tensor]:
    """The one-step Jacobians split as ``J = A + R`` (dense, float64, ``(T', B', D, D)``).

    ``A``: the additive path (LSTM ``diag(f_t)`` on the ``c → c`` block, GRU ``diag(z_t)``,
    vanilla 0); ``R = J − A``: the rest, with ``J`` the adapter's closed form.
    """
    if layer.kind not in GATED and not layer.kind.startswith("rnn_"):
        raise MissingDataError(f"{layer.name} ({layer.kind}) has no gates to split by")
    j = layer.to(torch.float64).jacobians(steps=steps, batch=batch).to("cpu")
    a = torch.zeros_like(j)
    if layer.kind in GATED:
        gates, _ = gate_values(layer)
        g = gates["f" if layer.kind == "lstm" else "z"]
        t_idx = torch.arange(layer.T) if steps is None else torch.as_tensor(steps).reshape(-1)
        b_idx = torch.arange(layer.B) if batch is None else torch.as_tensor(batch).reshape(-1)
        g = g[t_idx][:, b_idx]
        c = layer.part("c") if layer.kind == "lstm" else slice(0, layer.D)
        a[..., c, c] = torch.diag_embed(g)
    return a, j - a


@analysis
def gate_view(layer: LayerTrace, *, max_lag: int | None = None, seed: int = 0) -> GateView | None:
    """The gate view of an LSTM, GRU or vanilla RNN layer; None for every other cell.

    Args:
        layer: The recorded layer.
        max_lag: Largest lag of the path walk (default: whole sequences); the carries and
            gate distributions always cover every step.
        seed: Seed of the probe directions (states over :data:`EXACT_MAX_D`).
    """
    kind = layer.kind
    if kind not in GATED and kind not in ("rnn_tanh", "rnn_relu"):
        return None
    gates_t, log_g = gate_values(layer)
    gates = {name: _step_quantiles(v.numpy()) for name, v in gates_t.items()}
    medians = {name: float(np.nanmedian(v.numpy())) for name, v in gates_t.items()}
    T = float(np.median(layer.seq_lengths)) if layer.B else 0.0
    empty = np.zeros(0)
    view = GateView(
        name=layer.name,
        kind=kind,
        T=T,
        path=GATED.get(kind, "none"),
        gates=gates,
        medians=medians,
        lags=empty.astype(np.int64),
        carry=np.zeros((0, len(QUANTILES))),
        carry_max=empty,
        walk_lags=empty.astype(np.int64),
        path_log=empty,
        rest_log=empty,
        share=empty,
    )
    if kind not in GATED:
        view.factor, view.factor_steps, view.weight_norm = _factor_norms(layer, gates_t["φ'"])
        return view
    carry = _carries(log_g.numpy(), layer.seq_lengths)
    view.lags = np.arange(carry.shape[0])
    view.carry = _step_quantiles(carry)
    with np.errstate(all="ignore"):
        view.carry_max = np.nanmedian(np.nanmax(carry, axis=2), axis=1)
    with compute_threads(1):  # many small per-step products: one thread (see _progress)
        keep, path, rest, total, p, notes = _walk(layer, seed, max_lag)
    view.walk_lags, view.probes, view.notes = keep, p, notes
    with np.errstate(all="ignore"):
        # share = 1 / (1 + ‖E‖/‖Π‖), from the logs (no underflow)
        share = 1.0 / (1.0 + np.exp(np.clip(rest - path, -700, 700)))
        share = np.where(np.isnan(rest) | np.isnan(path), np.nan, share)
        view.path_log = np.nanmedian(path, axis=1)
        view.rest_log = np.nanmedian(rest, axis=1)
        view.total_log = np.nanmedian(total, axis=1)
        view.share = np.nanmedian(share, axis=1)
    return view


__all__ = ["QUANTILES", "GateView", "gate_values", "gate_view", "split_jacobian"]
