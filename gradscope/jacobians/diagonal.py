r"""Exact analysis of diagonal transitions: eigenvalues, exponents and decay without QR.

A sequence adapter whose state Jacobian is ``J_t = P diag(λ_t) P⁻¹`` with one unitary ``P``
for all steps (Mamba, Mamba-2, minGRU, RG-LRU, RWKV, the LRU; see
:meth:`~gradscope.sequences.base.SequenceAdapter.diagonal`) gives products over time that
stay diagonal in the same basis:

.. math:: \partial s_T/\partial s_{T-k} = P \,\mathrm{diag}\Big(\prod_{u=T-k+1}^{T} λ_u\Big) P^{-1},

so every quantity the analysis needs is a sum of ``ln|λ_t|`` per coordinate, exact and in
``O(T · B · D)``:

* the eigenvalues of ``J_t`` are ``λ_t``, its singular values ``|λ_t|``;
* the finite-time Lyapunov exponents of a sequence are the per-coordinate means
  :math:`\frac1n\sum_t \ln|λ_{t,d}|` over its steps, sorted;
* :math:`\ln\lVert\partial s_T/\partial s_{T-k}\rVert_2 = \max_d \sum_{u} \ln|λ_{u,d}|`.

No QR iteration, no power iteration, no probe directions: these are exact, where the
general operator path is iterative (and slow to converge when many channels decay at
nearly the same rate, as they do in a selective SSM).
"""

from __future__ import annotations

import numpy as np
import torch

from gradscope.layer_trace import LayerTrace

#: Steps whose eigenvalues are computed per adapter call (bounds the adapter's temporaries).
CHUNK_STEPS = 64
#: ``ln|λ|`` of an exactly zero eigenvalue (a reset that erases the state, e.g. RG-LRU at a
#: document start): the log of the smallest normal float64, as the QR path uses for an
#: exactly singular step, so sums stay finite ("−∞ for practical purposes").
LOG_ZERO = float(np.log(np.finfo(np.float64).tiny))


def has_diagonal(layer: LayerTrace) -> bool:
    """Whether the layer's adapter gives the eigenvalues of a diagonal transition."""
    adapter = layer.computing_adapter()
    if adapter is None:
        return False
    if layer.T == 0 or layer.B == 0:
        return False
    params = {k: v.to(layer.inputs.device) for k, v in layer.params.items()}
    return adapter.diagonal(params, torch.nan_to_num(layer.inputs[:1, 0])) is not None


def _chunks(layer: LayerTrace, fn_name: str, steps: np.ndarray, batch: np.ndarray):
    adapter = layer.cell_adapter()
    fn = adapter.diagonal if fn_name == "diagonal" else adapter.log_decay
    params = {k: v.to(layer.inputs.device) for k, v in layer.params.items()}
    b = torch.from_numpy(batch)
    for lo in range(0, len(steps), CHUNK_STEPS):
        sel = torch.from_numpy(steps[lo : lo + CHUNK_STEPS])
        u = layer.inputs[sel][:, b]
        t, n = u.shape[:2]
        with torch.no_grad():
            out = fn(params, u.reshape(t * n, -1))
        yield lo, out.reshape(t, n, -1)


def eigenvalues(layer: LayerTrace, steps: np.ndarray, batch: np.ndarray) -> np.ndarray:
    """``(T', B', D)`` eigenvalues ``λ_t`` (complex128), NaN at padded steps."""
    out = np.full((len(steps), len(batch), layer.D), np.nan, dtype=np.complex128)
    for lo, lam in _chunks(layer, "diagonal", steps, batch):
        out[lo : lo + lam.shape[0]] = lam.detach().cpu().numpy()
    mask = layer.mask[np.ix_(steps, batch)] if len(steps) and len(batch) else None
    if mask is not None:
        out[~mask] = np.nan
    return out


def phases(layer: LayerTrace) -> np.ndarray | None:
    r"""``(T, B, D)`` float64 rotation angles :math:`\arg λ_t \in (−π, π]` of every step.

    For a complex diagonal held as 2 × 2 scaled rotations (an LRU, S5, Mamba-3's
    data-dependent rotation) coordinate ``d`` of a pair turns by ``arg λ_{t,d}`` per step,
    its partner by the opposite angle. NaN at padded steps and where ``λ_t`` is not finite.
    None when the adapter's eigenvalues are real (no rotation; a negative real ``λ`` is a
    sign flip, read from :func:`eigenvalues`). Cost: one pass of the adapter's
    :meth:`diagonal`, ``O(T · B · D)``.
    """
    if layer.T == 0 or layer.B == 0:
        return None
    adapter = layer.cell_adapter()
    params = {k: v.to(layer.inputs.device) for k, v in layer.params.items()}
    with torch.no_grad():
        first = adapter.diagonal(params, torch.nan_to_num(layer.inputs[:1, 0]))
    if first is None or not first.is_complex():
        return None
    lam = eigenvalues(layer, np.arange(layer.T), np.arange(layer.B))
    with np.errstate(invalid="ignore"):
        out = np.angle(lam)
    out[~np.isfinite(lam)] = np.nan
    return out


def log_moduli(layer: LayerTrace) -> np.ndarray:
    """``(T, B, D)`` float64 ``ln|λ_t|`` of every step; NaN at padded steps.

    A step whose eigenvalues are not finite (a non-finite drive) is NaN as a whole; an
    exactly zero eigenvalue gives :data:`LOG_ZERO`.
    """
    steps = np.arange(layer.T)
    batch = np.arange(layer.B)
    out = np.full((layer.T, layer.B, layer.D), np.nan)
    for lo, logs in _chunks(layer, "log_decay", steps, batch):
        out[lo : lo + logs.shape[0]] = logs.detach().to(torch.float64).cpu().numpy()
    out[~layer.mask] = np.nan
    out[(np.isnan(out) | np.isposinf(out)).any(axis=-1)] = np.nan
    np.maximum(out, LOG_ZERO, out=out, where=~np.isnan(out))
    return out


def resets(logs: np.ndarray) -> np.ndarray:
    """``(T, B)`` the steps of ``logs`` (from :func:`log_moduli`) that erase the state.

    A *reset* is a valid step whose eigenvalues are all zero (every ``ln|λ|`` at
    :data:`LOG_ZERO`), e.g. RG-LRU at a document start: no gradient crosses it. When such
    steps are most of the valid steps (more than half), they are not boundaries between
    documents but the layer's dynamics (a decay or gate of exactly 0 everywhere: the state
    keeps nothing of its past), and none is counted as a reset: they are steps whose factor
    is 0, so the gradient vanishes in one step instead of the curve stopping.
    """
    valid = ~np.isnan(logs).any(axis=-1)
    if logs.shape[-1] == 0:
        return np.zeros(valid.shape, dtype=bool)
    zero = valid & (logs <= LOG_ZERO).all(axis=-1)
    if 2 * int(zero.sum()) > int(valid.sum()):
        return np.zeros(valid.shape, dtype=bool)
    return zero


def state_log_norms(logs: np.ndarray, lengths: np.ndarray, cap: int) -> tuple[np.ndarray, int]:
    r"""``(K, B)`` :math:`\ln\lVert\partial s_{T_b}/\partial s_{T_b-k}\rVert_2` for ``k = 0..``.

    ``logs`` ``(T, B, D)`` from :func:`log_moduli`; NaN beyond a sequence's length or
    ``cap``, from the first non-finite step met walking back, and from a *reset* on
    (:func:`resets`: a step whose eigenvalues are all zero erases the state, e.g. RG-LRU at a
    document start, so no gradient reaches the states before it; its exact 0 would otherwise
    read as an instant collapse of the curve). Returns the curves and the number of
    sequences whose curve a reset cut short.
    """
    B, D = logs.shape[1:]
    erased = resets(logs)
    k_max = int(np.minimum(lengths, cap).max(initial=0))
    out = np.full((k_max + 1, B), np.nan)
    cut = 0
    for b in range(B):
        tb = int(lengths[b])
        n = min(tb, cap)
        out[0, b] = 0.0
        if n == 0 or D == 0:
            continue
        back = logs[tb - n : tb, b][::-1]  # lag 1 first
        reset = np.nonzero(erased[tb - n : tb, b][::-1])[0]
        if reset.size:
            back = back[: reset[0]]
            cut += 1
        run = np.cumsum(back, axis=0)  # NaN propagates from a bad step on
        out[1 : back.shape[0] + 1, b] = run.max(axis=-1)
    return out, cut


#: Subspace iterations at most, their relative tolerance on σ, and the block width, for the
#: input curve (a block with Rayleigh–Ritz converges like (σ_{m+1}/σ_1)^{2n}, fast even where
#: the leading singular values are nearly equal, as in a minGRU).
POWER_ITERATIONS = 300
#: ... and at most this many above ``D = 512``, where each iteration costs more.
POWER_ITERATIONS_LARGE = 100
POWER_TOL = 1e-11
BLOCK_COLUMNS = 4
#: Rows (lags × sequences) per block of the input curve (bounds memory to ~rows · D).
INPUT_BLOCK = 4096


def input_log_norms(
    layer: LayerTrace, logs: np.ndarray, lengths: np.ndarray, cap: int, seed: int = 0
) -> tuple[np.ndarray, float]:
    r"""``(K', B)`` :math:`\ln\lVert\partial s_{T_b}/\partial x_{T_b-1-k}\rVert_2`, ``k = 0..``.

    With :math:`P = \mathrm{diag}(c)`, :math:`c_d = \prod_{u>t}|λ_{u,d}|` (in log space,
    scaled by its largest entry so that nothing underflows), the norm is the largest singular
    value of :math:`\mathrm{diag}(c) K_t`, ``K_t = ∂s_t/∂u_t`` (for a real diagonal; for
    the rotation blocks of a complex diagonal the moduli are what scale each pair). It is
    found by subspace iteration (4 columns, Rayleigh–Ritz) on
    :math:`K_t^\top \mathrm{diag}(c^2) K_t` with the adapter's closed-form input products,
    all lags of all sequences at once: ``O(iterations · 4 · D)`` per lag, no probes. NaN
    past a reset (see :func:`state_log_norms`) or a non-finite step. Also returns the largest
    relative change of σ in the last iteration (0 when every lag converged to
    :data:`POWER_TOL`; a Rayleigh–Ritz value is a lower bound on σ until then).
    """
    B, D = logs.shape[1:]
    erased = resets(logs)
    k_max = int(np.minimum(lengths - 1, cap).max(initial=-1))
    out = np.full((max(k_max + 1, 1), B), np.nan)
    rows: list[tuple[int, int, int]] = []  # (t, b, lag)
    scale: list[np.ndarray] = []
    for b in range(B):
        tb = int(lengths[b])
        n = min(tb - 1, cap) + 1 if tb > 0 else 0
        later = np.zeros(D)
        for k in range(n):
            t = tb - 1 - k
            if k:
                step = logs[t + 1, b]
                if np.isnan(step).any() or erased[t + 1, b]:
                    break
                later = later + step
            rows.append((t, b, k))
            scale.append(later.copy())
    if not rows or D == 0:
        return out, 0.0
    adapter = layer.cell_adapter()
    params = {k: v.to(layer.inputs.device) for k, v in layer.params.items()}
    gen = torch.Generator().manual_seed(seed)
    dtype = layer.dtype
    worst = 0.0
    for lo in range(0, len(rows), INPUT_BLOCK):
        block = rows[lo : lo + INPUT_BLOCK]
        ts = torch.tensor([r[0] for r in block])
        bs = torch.tensor([r[1] for r in block])
        x, s = layer.inputs[ts, bs], layer.states[ts, bs]
        good = torch.isfinite(x).all(-1) & torch.isfinite(s).all(-1)
        L = np.stack(scale[lo : lo + INPUT_BLOCK])
        top = L.max(axis=1)
        w = torch.from_numpy(np.exp(L - top[:, None])).to(dtype).unsqueeze(-1)
        lin = adapter.linearize(params, torch.nan_to_num(x), torch.nan_to_num(s))
        m = min(BLOCK_COLUMNS, x.shape[-1])
        v = torch.randn(len(block), x.shape[-1], m, generator=gen, dtype=torch.float64)
        v = torch.linalg.qr(v.to(dtype)).Q
        sigma = torch.zeros(len(block), dtype=torch.float64)
        change = torch.ones(len(block), dtype=torch.float64)
        cap_iter = POWER_ITERATIONS if D <= 512 else POWER_ITERATIONS_LARGE
        for _ in range(cap_iter):
            y = w * lin.jvp_input(v)  # (n, D, m)
            gram = (y.transpose(1, 2) @ y).to(torch.float64)
            new = torch.linalg.eigvalsh(gram)[:, -1].clamp_min(0).sqrt()  # Rayleigh–Ritz
            v = torch.linalg.qr(lin.vjp_input(w * y)).Q
            change = (new - sigma).abs() / new.clamp_min(1e-300)
            sigma = new
            if bool((change <= POWER_TOL).all()):
                break
        worst = max(worst, float(change.max()))
        with np.errstate(divide="ignore"):
            vals = top + np.log(sigma.numpy())
        for (_, b, k), val, ok in zip(block, vals, good.tolist()):
            out[k, b] = val if ok else np.nan
    return out, (worst if worst > POWER_TOL else 0.0)


__all__ = [
    "LOG_ZERO",
    "eigenvalues",
    "has_diagonal",
    "log_moduli",
    "phases",
    "resets",
    "state_log_norms",
]
