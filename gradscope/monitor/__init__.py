r"""Watch the recurrent layers of a model while it trains: exact ``∂L/∂s_t`` over training.

:class:`Monitor` is a thin stateful wrapper around pure functions. It decides *when* to look
(a schedule, ``step -> bool``) and keeps a compact :class:`History`; *what* it computes comes
from the rest of gradscope: :func:`gradscope.record` (hooks, replay, loss gradients) and the
analysis functions (:func:`gradscope.decay`, :func:`gradscope.spectrum`,
:func:`gradscope.lyapunov`, :func:`gradscope.diagnose`).

Usage::

    import gradscope as gs

    with gs.Monitor(model, every=50) as monitor:
        for x, y in loader:
            loss = loss_fn(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            monitor.step()          # after backward (before or after optimizer.step())
            optimizer.step()
    monitor.history.grad_norms("lstm.l0")   # (n_sampled, T+1)
    monitor.report("training.html")

The life cycle of one training step
-----------------------------------
Training steps are counted by calls of :meth:`Monitor.step`; the first step is step 0. Hooks
must be in place *before* a step's forward, so the decision for step ``n`` is taken when step
``n-1`` ends (for step 0: when the Monitor is created): if ``schedule(n)`` is true, a
:func:`gradscope.record` recorder (``grads=True``) is opened; otherwise no hook is attached at
all and the step costs nothing. On a sampled step, ``step()``

1. stops the recorder (module hooks removed) and reads its :class:`~gradscope.traces.Trace`,
   whose layers carry the exact loss gradients ``∂L/∂s_t``: for cells called in a loop from
   tensor hooks in the real backward pass, for fused ``nn.RNN/LSTM/GRU`` by back-propagating
   the cotangents captured in the real backward pass through the step-by-step replay; then
   the tensor hooks on the recorded outputs are removed too;
2. reduces every layer (and direction) to :func:`grad_norms` and, on the sampled steps
   chosen by ``analyze``, to the analyses of :func:`summarize`: the decay fits of the loss
   gradient and of the state-to-state gradient (rate with its confidence interval, regime),
   spectral radius and norm statistics on a subsample, optionally the leading Lyapunov
   exponent. Those cost dense ``D × D`` linear algebra (``O(D³)`` per Jacobian), which for
   large states outweighs many training steps, so by default (``analyze="auto"``) they run
   only as often as keeps the Monitor's total cost within ``budget`` (5%) of the measured
   training time;
3. under ``torch.distributed``, all-gathers those fixed-size float64 rows from every rank
   (tensor collectives only, no pickling) so the history holds every rank's batch;
4. appends one row to :attr:`Monitor.history`, keeps this step's trace as
   :attr:`Monitor.latest` (replacing the previous one) and runs the ``callbacks`` (on rank 0).

**Order: call ``step()`` once per training step, after ``loss.backward()``.** Before or after
``optimizer.step()`` is the same: the replay must use the weights of the forward, and the
recorder copies them (and, for inter-layer dropout, the RNG state) when the forward runs,
so an optimizer updating the parameters in place afterwards cannot alter the result. With
gradient accumulation, call ``step()`` once per optimizer step after the last backward: the
captured cotangents accumulate like ``.grad``; the forwards of the micro-batches are
recorded as separate calls (names ``@1``, ``@2``, ...).

Evaluation between training steps (``torch.no_grad()`` forwards) would be recorded as well;
wrap it in ``with monitor.paused():``. The Lightning callback does this for validation.

Training is never changed: the hooks only read; the global RNG states (torch CPU and the
current CUDA devices, NumPy's and Python's) are restored after every sampled step's analysis;
unsampled steps run without hooks. ``close()`` (or leaving the ``with`` block, also through an
exception) removes every hook; while an exception propagates nothing is analysed.

The grad norms
--------------
For layer ``ℓ`` at sampled training step ``n``, column ``t`` (``t = 0 … T``, aligned with
``LayerTrace.states``: processing order, so a reverse direction's ``t = 0`` is its initial
state at the end of the sequence) is the batch mean of the per-sequence Euclidean norm over
the whole state vector (LSTM: ``h`` and ``c`` together),

.. math:: G_{n,t} = \frac{1}{|V_t|}\sum_{b\in V_t}
          \Bigl\lVert \frac{\partial L}{\partial s_t^{(b)}} \Bigr\rVert_2,
          \qquad V_t = \{b : t \le T_b\},

over the sequences ``V_t`` that are still running at ``t`` (padded steps of shorter
sequences, e.g. from a ``PackedSequence``, are left out, not counted as zero). When ``T``
varies across training steps, :meth:`History.grad_norms` NaN-pads every row to the longest
``T`` seen: a NaN column means "this step's batch was shorter", never "zero gradient".
A non-finite gradient of a real step makes its entry NaN or inf (reported, not hidden).

The report protocol
-------------------
:func:`gradscope.reporting.report` accepts a Monitor (duck-typed; reports never import it) and
reads only:

* ``monitor.history``: a :class:`History` with ``steps`` ``(n,)`` int, ``names`` (layer
  names), ``grad_norms(name)`` ``(n, T+1)`` (``KeyError`` for an unknown name),
  ``summaries(name)`` (a dict of ``(n,)`` arrays: ``"steps"``, ``"rate"``, ``"rate_ci"``
  ``(n, 2)``, ``"regime"`` (str, ``""`` where not analysed), and every key of
  :data:`SUMMARY_KEYS`) and ``meta`` (a JSON-able dict);
* ``monitor.latest``: ``None`` before the first sampled step, else a :class:`Snapshot` of
  the latest sampled step with ``.trace`` (its :class:`~gradscope.traces.Trace`, loss
  gradients included) and ``.diagnosis`` (:func:`gradscope.diagnose` of that trace, computed
  on first access and cached).

A :class:`History` on its own (e.g. loaded with :func:`load_history`) is report-able too
(training views only).
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from gradscope.errors import (
    GradscopeError,
    MissingDataError,
    NoRecurrentModuleError,
    TraceFormatError,
)
from gradscope.traces import LayerTrace, Trace, read_npz, write_npz

#: A schedule: training step (0-based) -> whether to act on it.
Schedule = Callable[[int], bool]

HISTORY_FORMAT = "gradscope.history"
HISTORY_FORMAT_VERSION = 1

#: The per-step, per-layer scalars a :class:`History` keeps, in storage order. ``T``/``B``:
#: steps and sequences recorded; ``nonfinite``: real states holding NaN/inf; ``grad_t0`` /
#: ``grad_tT``: the grad norm at ``t = 0`` and ``t = T``; ``rate*``, ``r2``, ``half_life``,
#: ``regime`` (coded, see :data:`REGIME_CODES`): the state-gradient decay
#: (:func:`gradscope.decay` ``of="state"``); ``loss_rate*`` and ``loss_regime``: the same fit
#: of the real loss gradient (``of="loss"``); ``radius_*``: spectral radius statistics and
#: ``norm_*``: spectral norm (σ_max) statistics of the one-step Jacobians
#: (:meth:`gradscope.analysis.spectra.Spectrum.summary` on a subsample); ``lyapunov`` and
#: ``lyapunov_stderr``: the leading Lyapunov exponent (NaN unless ``lyapunov=True``).
SUMMARY_KEYS: tuple[str, ...] = (
    "T",
    "B",
    "nonfinite",
    "grad_t0",
    "grad_tT",
    "rate",
    "rate_lo",
    "rate_hi",
    "r2",
    "half_life",
    "regime",
    "loss_rate",
    "loss_rate_lo",
    "loss_rate_hi",
    "loss_regime",
    "radius_median",
    "radius_mean",
    "radius_p05",
    "radius_p95",
    "radius_max",
    "radius_frac_above_1",
    "norm_median",
    "norm_mean",
    "norm_p05",
    "norm_p95",
    "norm_max",
    "norm_frac_above_1",
    "lyapunov",
    "lyapunov_stderr",
)
_STAT_KEYS = ("median", "mean", "p05", "p95", "max", "frac_above_1")

#: How a regime is stored among the float summaries (NaN: not analysed).
REGIME_CODES: dict[str, float] = {"vanishing": -1.0, "neutral": 0.0, "exploding": 1.0}
_REGIME_NAMES = {v: k for k, v in REGIME_CODES.items()}


# --------------------------------------------------------------------------- schedules
@dataclass(frozen=True)
class Every:
    """Every ``n``-th step from ``start`` on: ``start, start + n, start + 2n, ...``.

    Args:
        n: The period (>= 1).
        start: The first step acted on.
    """

    n: int
    start: int = 0

    def __post_init__(self) -> None:
        if int(self.n) != self.n or self.n < 1:
            raise ValueError(f"Every: n must be an integer >= 1, got {self.n!r}")
        if int(self.start) != self.start or self.start < 0:
            raise ValueError(f"Every: start must be an integer >= 0, got {self.start!r}")

    def __call__(self, step: int) -> bool:
        """Whether ``step`` is on the schedule."""
        return step >= self.start and (step - self.start) % self.n == 0


@dataclass(frozen=True)
class At:
    """Exactly the listed steps.

    Args:
        steps: The steps acted on (any iterable of non-negative ints).
    """

    steps: frozenset[int]

    def __init__(self, steps: Iterable[int]) -> None:
        object.__setattr__(self, "steps", frozenset(int(s) for s in steps))

    def __call__(self, step: int) -> bool:
        """Whether ``step`` is one of :attr:`steps`."""
        return step in self.steps


@dataclass(frozen=True)
class Logarithmic:
    """``num`` steps spaced evenly on a log scale between ``start`` and ``stop``.

    Dense early in training (when things change fast), sparse later. Step 0 is included
    when ``start == 0``. Duplicates after rounding are merged, so fewer than ``num`` steps
    may result.

    Args:
        start: First step (>= 0).
        stop: Last step (> start).
        num: Number of steps requested (>= 2).
    """

    start: int
    stop: int
    num: int
    steps: frozenset[int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not (0 <= self.start < self.stop) or self.num < 2:
            raise ValueError(
                f"Logarithmic: need 0 <= start < stop and num >= 2, got start={self.start}, "
                f"stop={self.stop}, num={self.num}"
            )
        pts = np.geomspace(self.start + 1, self.stop + 1, self.num) - 1
        object.__setattr__(self, "steps", frozenset(int(s) for s in np.unique(np.round(pts))))

    def __call__(self, step: int) -> bool:
        """Whether ``step`` is on the schedule."""
        return step in self.steps


def _as_schedule(value: Schedule | bool, what: str) -> Schedule:
    if value is True:
        return Every(1)
    if value is False:
        return At(())
    if not callable(value):
        raise TypeError(
            f"{what} must be a callable step -> bool or a bool (analyze also takes 'auto'), "
            f"got {value!r}"
        )
    return value


# --------------------------------------------------------------------------- pure core
def _valid_states(layer: LayerTrace) -> np.ndarray:
    """``(T+1, B)`` bool: state ``t`` of sequence ``b`` is real (``t <= T_b``)."""
    return np.concatenate([np.ones((1, layer.B), dtype=bool), layer.mask], axis=0)


def grad_norms(layer: LayerTrace) -> np.ndarray:
    r"""Batch mean of the per-sequence norm of the loss gradient at every state.

    .. math:: G_t = \frac{1}{|V_t|}\sum_{b \in V_t} \lVert \partial L/\partial s^{(b)}_t
              \rVert_2, \qquad V_t = \{b : t \le T_b\}, \quad t = 0, \dots, T,

    computed in float64 (no overflow of the squares for any float32 gradient). Padded
    steps are left out of the mean; a non-finite gradient of a real step propagates
    (NaN / inf) so that it is seen.

    Args:
        layer: A recorded layer whose ``grads`` hold ``∂L/∂s_t`` ``(T+1, B, D)``.

    Returns:
        ``(T+1,)`` float64.

    Raises:
        MissingDataError: ``layer.grads`` is None (no loss was back-propagated through it).
    """
    if layer.grads is None:
        raise MissingDataError(
            f"{layer.name} ({layer.kind}): the recording holds no loss gradients ∂L/∂s_t; "
            "call monitor.step() after loss.backward(), and run evaluation forwards (under "
            "torch.no_grad()) inside `with monitor.paused():`"
        )
    per_seq = torch.linalg.vector_norm(layer.grads.detach().to(torch.float64), dim=-1)
    per_seq = per_seq.cpu().numpy()
    valid = _valid_states(layer)
    count = valid.sum(axis=1)
    total = np.where(valid, per_seq, 0.0).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def trace_grad_norms(trace: Trace) -> tuple[dict[str, np.ndarray], list[str]]:
    """:func:`grad_norms` of every layer of a trace recorded around a backward pass.

    A layer whose loss gradients the recorder marks unavailable (``layer.meta["grads"]``
    starting with ``"unavailable"``, e.g. a fused module with inter-layer dropout on CUDA,
    whose mask cannot be replayed; see :mod:`gradscope.recording`) gets all-NaN norms and a
    note, so that training goes on.

    Returns:
        ``({layer name: (T+1,) norms}, notes)``.

    Raises:
        MissingDataError: a layer has no loss gradients for any other reason (no backward
            pass reached the recording).
    """
    norms: dict[str, np.ndarray] = {}
    notes: list[str] = []
    for layer in trace.layers:
        why = str(layer.meta.get("grads", ""))
        if layer.grads is not None:
            norms[layer.name] = grad_norms(layer)
        elif why.startswith("unavailable"):
            norms[layer.name] = np.full(layer.T + 1, np.nan)
            notes.append(f"{layer.name}: no loss gradients ({why}); its grad norms are NaN")
        else:
            raise MissingDataError(
                f"{layer.name} ({layer.kind}): no loss gradients ∂L/∂s_t "
                f"({trace.meta.get('grads', 'none recorded')}); call monitor.step() after "
                "loss.backward(), and run evaluation forwards (under torch.no_grad()) inside "
                "`with monitor.paused():`"
            )
    return norms, notes


def _subsample(n: int, k: int) -> np.ndarray:
    """``min(n, k)`` indices spread evenly over ``range(n)`` (both ends included)."""
    if n <= 0 or k <= 0:
        return np.zeros(0, dtype=np.int64)
    return np.unique(np.round(np.linspace(0, n - 1, min(n, k))).astype(np.int64))


def select_batch(layer: LayerTrace, batch: np.ndarray | None) -> LayerTrace:
    """The same layer restricted to the sequences ``batch`` (None: the layer itself).

    States, inputs, lengths, loss gradients and any stored Jacobians are indexed along the
    batch axis; weights, names and metadata are shared.
    """
    if batch is None or len(batch) == layer.B:
        return layer
    idx = torch.as_tensor(np.asarray(batch, dtype=np.int64))
    stored = layer.stored_jacobians
    return replace(
        layer,
        states=layer.states[:, idx.to(layer.states.device)],
        inputs=layer.inputs[:, idx.to(layer.inputs.device)],
        lengths=None if layer.lengths is None else layer.lengths[idx.numpy()],
        grads=None if layer.grads is None else layer.grads[:, idx.to(layer.grads.device)],
        stored_jacobians=None
        if stored is None
        else {k: v[:, idx.to(v.device)] for k, v in stored.items()},
    )


def summarize(
    layer: LayerTrace,
    *,
    analyze: bool = True,
    spectra_steps: int = 2,
    spectra_batch: int = 1,
    decay_batch: int | None = 2,
    lyapunov: bool = False,
    norms: np.ndarray | None = None,
) -> tuple[dict[str, float], list[str]]:
    """The scalars of :data:`SUMMARY_KEYS` for one recorded layer.

    Always (cheap): ``T``, ``B``, ``nonfinite`` (real states holding NaN/inf) and, when the
    layer holds loss gradients, ``grad_t0`` / ``grad_tT`` (:func:`grad_norms` at ``t = 0``
    and ``t = T``) and ``loss_rate``, ``loss_rate_lo``/``loss_rate_hi``, ``loss_regime``:
    :func:`gradscope.decay` ``(layer, of="loss")``, the fit of the real ``‖∂L/∂s_t‖``.
    With ``analyze`` also:

    * ``rate``, ``rate_lo``/``rate_hi`` (95% CI), ``r2``, ``half_life``, ``regime``:
      :func:`gradscope.decay` ``(layer, of="state")`` on ``decay_batch`` sequences spread
      over the batch;
    * ``radius_*`` / ``norm_*``: :meth:`~gradscope.analysis.spectra.Spectrum.summary` of
      :func:`gradscope.spectrum` ``"eig"`` / ``"svd"`` on ``spectra_steps`` steps spread evenly
      over ``0 … T-1`` and ``spectra_batch`` sequences (each entry is a dense ``D × D``
      decomposition, ``O(D³)``: this is what an analysed step's cost is made of);
    * ``lyapunov``, ``lyapunov_stderr`` (only with ``lyapunov``): :func:`gradscope.lyapunov`
      ``(layer, k=1)`` on the ``decay_batch`` sequences.

    An analysis that cannot be done on this layer (e.g. a trace too short for a fit, or no
    loss gradients) leaves its entries NaN and adds a note instead of stopping training.

    Args:
        layer: The recorded layer.
        analyze: Compute the decay fits and spectra (else only the cheap entries).
        spectra_steps: Jacobian steps used for the spectral statistics.
        spectra_batch: Sequences used for the spectral statistics.
        decay_batch: Sequences used for the state-decay fit and Lyapunov (None: all).
        lyapunov: Also estimate the leading Lyapunov exponent.
        norms: ``grad_norms(layer)`` if already computed.

    Returns:
        ``(values, notes)``: a dict over :data:`SUMMARY_KEYS` (NaN where not computed) and
        plain-language notes about what could not be computed.
    """
    from gradscope.analysis.decay import decay
    from gradscope.analysis.lyapunov import lyapunov as lyapunov_fn
    from gradscope.analysis.spectra import spectrum

    out = dict.fromkeys(SUMMARY_KEYS, math.nan)
    notes: list[str] = []
    out["T"], out["B"] = float(layer.T), float(layer.B)
    out["nonfinite"] = float(layer.nonfinite().sum())
    if layer.grads is not None:
        g = grad_norms(layer) if norms is None else norms
        out["grad_t0"], out["grad_tT"] = float(g[0]), float(g[-1])

    def attempt(what: str, fn: Callable[[], None]) -> None:
        try:
            fn()
        except GradscopeError as exc:
            notes.append(f"{layer.name}: {what} not computed ({exc})")

    def fit(prefix: str, of: str, seqs: np.ndarray | None) -> None:
        d = decay(select_batch(layer, seqs), of=of, progress=False)
        out[f"{prefix}rate"] = float(d.rate)
        out[f"{prefix}rate_lo"], out[f"{prefix}rate_hi"] = (float(v) for v in d.rate_ci)
        out[f"{prefix}regime"] = REGIME_CODES.get(d.regime, math.nan)
        if not prefix:
            out["r2"], out["half_life"] = float(d.r2), float(d.half_life)

    if layer.grads is not None:  # a fit of T + 1 numbers per sequence: cheap, always
        attempt("the loss-gradient decay fit", lambda: fit("loss_", "loss", None))
    if not analyze:
        return out, notes
    seqs = None if decay_batch is None else _subsample(layer.B, decay_batch)
    attempt("the state-gradient decay fit", lambda: fit("", "state", seqs))

    steps, batch = _subsample(layer.T, spectra_steps), _subsample(layer.B, spectra_batch)

    def spectra() -> None:
        for which, prefix in (("eig", "radius_"), ("svd", "norm_")):
            stats = spectrum(layer, which, steps=steps, batch=batch, progress=False).summary()
            for key in _STAT_KEYS:
                out[prefix + key] = float(stats[key])

    attempt("the Jacobian spectra", spectra)

    def lyap() -> None:
        ly = lyapunov_fn(select_batch(layer, seqs), k=1)
        out["lyapunov"], out["lyapunov_stderr"] = float(ly.exponents[0]), float(ly.stderr[0])

    if lyapunov:
        attempt("the leading Lyapunov exponent", lyap)
    return out, notes


@contextlib.contextmanager
def _rng_preserved() -> Iterator[None]:
    """Restore torch's (CPU and initialised CUDA), NumPy's and Python's global RNG on exit."""
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    np_state = np.random.get_state()  # noqa: NPY002 (the user's global RNG, restored)
    py_state = random.getstate()
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        np.random.set_state(np_state)  # noqa: NPY002
        random.setstate(py_state)


# --------------------------------------------------------------------------- history
Entry = tuple[np.ndarray, np.ndarray]  # (grad norms (W, T+1), summaries (W, K))


class History:
    """What a :class:`Monitor` keeps over training: per sampled step and layer, a few numbers.

    For each sampled training step and each recorded layer (and direction) it holds, per
    rank of a distributed run (``world_size`` ranks; 1 otherwise), the ``T+1`` grad norms
    (:func:`grad_norms`) and the scalars of :data:`SUMMARY_KEYS`: ``O(T + K)`` numbers per
    layer and step, no Jacobians and no traces, so memory grows only with the number of
    *sampled* steps.

    Aggregating over ranks (``rank=None``, the default; with one rank it is that rank):
    grad norms are the mean weighted by each rank's batch size (exact for unpadded batches);
    scalars are the mean over ranks (NaN-skipping); a regime is the most frequent one.

    Saved as ``.npz`` + JSON metadata with a format version (:meth:`save`, :meth:`load`,
    :func:`load_history`); no pickle.

    Attributes:
        world_size: Number of ranks whose batches each row holds.
        meta: JSON-able facts about the run (schedule, model class, ...).
        notes: ``{message: {"first_step": int, "count": int}}``: analyses that could not be
            done, counted instead of repeated.
    """

    def __init__(
        self,
        world_size: int = 1,
        meta: Mapping[str, Any] | None = None,
        keys: Sequence[str] = SUMMARY_KEYS,
    ) -> None:
        self.keys: tuple[str, ...] = tuple(keys)
        self._k = {key: i for i, key in enumerate(self.keys)}
        self.world_size = int(world_size)
        self.meta: dict[str, Any] = dict(meta or {})
        self.notes: dict[str, dict[str, int]] = {}
        self._steps: list[int] = []
        self._rows: list[dict[str, Entry]] = []
        self._names: dict[str, None] = {}

    # ----------------------------------------------------------------- building
    def append(self, step: int, entries: Mapping[str, Entry]) -> None:
        """Add one sampled step.

        Args:
            step: The training step.
            entries: ``{layer name: (grad_norms (W, T+1), summaries (W, K))}``, ``W`` =
                :attr:`world_size`, ``K = len(SUMMARY_KEYS)``.

        Raises:
            ShapeError: an entry has the wrong shape.
        """
        from gradscope.errors import ShapeError

        row: dict[str, Entry] = {}
        for name, (gn, sc) in entries.items():
            gn = np.asarray(gn, dtype=np.float64)
            sc = np.asarray(sc, dtype=np.float64)
            if (
                gn.ndim != 2
                or gn.shape[0] != self.world_size
                or sc.shape
                != (
                    self.world_size,
                    len(self.keys),
                )
            ):
                raise ShapeError(
                    f"History.append: {name}: need grad norms (W={self.world_size}, T+1) and "
                    f"summaries ({self.world_size}, {len(self.keys)}), got {gn.shape} and "
                    f"{sc.shape}"
                )
            row[name] = (gn, sc)
            self._names.setdefault(name)
        self._steps.append(int(step))
        self._rows.append(row)

    def note(self, step: int, message: str) -> None:
        """Count a remark (e.g. an analysis that could not be done) once per message."""
        entry = self.notes.setdefault(message, {"first_step": int(step), "count": 0})
        entry["count"] += 1

    # ----------------------------------------------------------------- reading
    @property
    def steps(self) -> np.ndarray:
        """``(n,)`` int64: the sampled training steps."""
        return np.asarray(self._steps, dtype=np.int64)

    @property
    def names(self) -> list[str]:
        """Names of every layer seen, in first-seen order."""
        return list(self._names)

    def __len__(self) -> int:
        return len(self._steps)

    def _check(self, name: str, rank: int | None) -> None:
        if name not in self._names:
            raise KeyError(f"no layer named {name!r} in this history; it has {self.names}")
        if rank is not None and not (0 <= rank < self.world_size):
            raise IndexError(f"rank {rank} out of range for world_size {self.world_size}")

    def _select(self, index: int | None) -> list[dict[str, Entry]]:
        return self._rows if index is None else [self._rows[index]]

    def _stack_grads(self, name: str, index: int | None = None) -> np.ndarray:
        """``(n, W, Tmax+1)`` NaN-padded grad norms of every rank (one row: ``index``)."""
        rows = self._select(index)
        width = max((row[name][0].shape[1] for row in rows if name in row), default=0)
        out = np.full((len(rows), self.world_size, width), np.nan)
        for i, row in enumerate(rows):
            if name in row:
                gn = row[name][0]
                out[i, :, : gn.shape[1]] = gn
        return out

    def _stack_scalars(self, name: str, index: int | None = None) -> np.ndarray:
        """``(n, W, K)`` scalars of every rank (NaN rows where the layer was absent)."""
        rows = self._select(index)
        out = np.full((len(rows), self.world_size, len(self.keys)), np.nan)
        for i, row in enumerate(rows):
            if name in row:
                out[i] = row[name][1]
        return out

    def _grads(self, name: str, rank: int | None, index: int | None) -> np.ndarray:
        gn = self._stack_grads(name, index)
        if rank is not None:
            return gn[:, rank]
        sc = self._stack_scalars(name, index)
        t_len, b = sc[:, :, self._k["T"]], sc[:, :, self._k["B"]]
        cols = np.arange(gn.shape[2])
        valid = cols[None, None, :] <= np.nan_to_num(t_len, nan=-1.0)[:, :, None]
        weight = np.where(valid, np.nan_to_num(b, nan=0.0)[:, :, None], 0.0)
        num = np.where(valid, gn * weight, 0.0).sum(axis=1)
        den = weight.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)

    def _scalar(self, name: str, key: str, rank: int | None, index: int | None) -> np.ndarray:
        if key not in self._k:
            raise KeyError(f"no summary {key!r}; the history keeps {list(self.keys)}")
        vals = self._stack_scalars(name, index)[:, :, self._k[key]]
        if rank is not None:
            return vals[:, rank]
        finite = ~np.isnan(vals)
        cnt = finite.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(cnt > 0, np.where(finite, vals, 0.0).sum(axis=1) / cnt, np.nan)

    def _regime(self, name: str, key: str, rank: int | None, index: int | None) -> list[str]:
        codes = self._stack_scalars(name, index)[:, :, self._k[key]]
        out = []
        for row in codes if rank is None else codes[:, [rank]]:
            names = [_REGIME_NAMES.get(float(c), "") for c in row if not math.isnan(c)]
            out.append(max(names, key=names.count) if names else "")
        return out

    def grad_norms(self, name: str, rank: int | None = None) -> np.ndarray:
        """``(n, Tmax+1)`` batch-mean ``‖∂L/∂s_t‖`` per sampled step (rows), ``t = 0 … T``.

        Rows of shorter batches are NaN-padded on the right to the longest ``T`` seen for
        this layer; a row is all-NaN where the layer did not run at that step.

        Args:
            name: The layer's name (``history.names``).
            rank: One rank's batch, or None for the batch-size-weighted mean over ranks.

        Raises:
            KeyError: unknown layer name.
        """
        self._check(name, rank)
        return self._grads(name, rank, None)

    def scalar(self, name: str, key: str, rank: int | None = None) -> np.ndarray:
        """``(n,)`` one summary (a key of :data:`SUMMARY_KEYS`) per sampled step.

        Args:
            name: The layer's name.
            key: Which summary, e.g. ``"rate"`` or ``"radius_median"``.
            rank: One rank, or None for the mean over ranks (NaN-skipping).
        """
        self._check(name, rank)
        return self._scalar(name, key, rank, None)

    def entry(self, name: str, index: int = -1, rank: int | None = None) -> dict[str, Any]:
        """One sampled step of one layer, without stacking the whole history.

        Args:
            name: The layer's name.
            index: Which sampled step (row), e.g. -1 for the latest.
            rank: One rank, or None to aggregate over ranks (as in :meth:`grad_norms`).

        Returns:
            ``{"step": int, "grad_norms": (T+1,), "regime": str, "loss_regime": str,
            key: float for every other key of SUMMARY_KEYS}``; the layer's values are NaN
            (and the regimes ``""``) if it did not run at that step.

        Raises:
            KeyError: unknown layer name.
            IndexError: ``index`` out of range.
        """
        self._check(name, rank)
        row = self._rows[index]
        out: dict[str, Any] = {"step": self._steps[index]}
        gn = self._grads(name, rank, index)[0]
        width = int(row[name][0].shape[1]) if name in row else 0
        out["grad_norms"] = gn[:width]
        for key in self.keys:
            if key in ("regime", "loss_regime"):
                out[key] = self._regime(name, key, rank, index)[0]
            else:
                out[key] = float(self._scalar(name, key, rank, index)[0])
        return out

    def regime(self, name: str, key: str = "regime", rank: int | None = None) -> list[str]:
        """Regime per sampled step (``""`` where it was not analysed).

        Args:
            name: The layer's name.
            key: ``"regime"`` (state-gradient decay) or ``"loss_regime"``.
            rank: One rank, or None for the most frequent regime over ranks (ties: the
                lowest rank's).
        """
        self._check(name, rank)
        return self._regime(name, key, rank, None)

    def summaries(self, name: str, rank: int | None = None) -> dict[str, Any]:
        """Every summary of one layer as ``(n,)`` arrays, plus the report's fields.

        Returns:
            ``{"steps": (n,), "rate_ci": (n, 2), "regime": list[str], "loss_regime":
            list[str], key: (n,) for every other key of SUMMARY_KEYS}``.
        """
        self._check(name, rank)
        out: dict[str, Any] = {"steps": self.steps}
        for key in self.keys:
            if key not in ("regime", "loss_regime"):
                out[key] = self.scalar(name, key, rank)
        out["regime"] = self.regime(name, "regime", rank)
        out["loss_regime"] = self.regime(name, "loss_regime", rank)
        out["rate_ci"] = np.stack([out["rate_lo"], out["rate_hi"]], axis=1)
        return out

    @property
    def nbytes(self) -> int:
        """Bytes held by the stored numbers."""
        return sum(gn.nbytes + sc.nbytes for row in self._rows for gn, sc in row.values())

    def __repr__(self) -> str:
        return (
            f"History({len(self)} sampled steps, layers={self.names}, world_size={self.world_size})"
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (NaN/inf as strings, see :func:`gradscope._json.jsonable`)."""
        from gradscope._json import jsonable

        return jsonable(
            {
                "steps": self.steps,
                "world_size": self.world_size,
                "meta": self.meta,
                "notes": self.notes,
                "layers": {
                    name: {
                        "grad_norms": self.grad_norms(name),
                        "summaries": {
                            k: v for k, v in self.summaries(name).items() if k != "steps"
                        },
                    }
                    for name in self.names
                },
            }
        )

    # ----------------------------------------------------------------- I/O
    def save(self, path: str | os.PathLike) -> Path:
        """Write the history as ``.npz`` + JSON metadata (atomically); returns the path.

        Per layer ``i``: ``l{i}/grad_norms`` ``(n, W, Tmax+1)``, ``l{i}/summaries``
        ``(n, W, K)``, ``l{i}/present`` ``(n,)`` bool; plus ``steps`` and ``__meta__``.
        """
        path = Path(path)
        if path.suffix != ".npz":
            path = path.with_name(path.name + ".npz")
        arrays: dict[str, np.ndarray] = {"steps": self.steps}
        for i, name in enumerate(self.names):
            arrays[f"l{i}/grad_norms"] = self._stack_grads(name)
            arrays[f"l{i}/summaries"] = self._stack_scalars(name)
            arrays[f"l{i}/present"] = np.array([name in row for row in self._rows], dtype=bool)
        meta = {
            "format": HISTORY_FORMAT,
            "version": HISTORY_FORMAT_VERSION,
            "keys": list(self.keys),
            "layers": self.names,
            "world_size": self.world_size,
            "meta": self.meta,
            "notes": self.notes,
        }
        return write_npz(path, arrays, meta)

    @classmethod
    def load(cls, path: str | os.PathLike) -> History:
        """Read a history written by :meth:`save`. Never unpickles anything.

        Raises:
            TraceFormatError: missing or unreadable file, not a gradscope history, a newer
                format version, or inconsistent contents.
        """
        path = Path(path)
        data, meta = read_npz(path, "a gradscope training history", "History.save")
        if meta.get("format") != HISTORY_FORMAT:
            raise TraceFormatError(
                f"{path}: not a gradscope training history (format {meta.get('format')!r}); "
                "traces load with gs.load"
            )
        version = meta.get("version")
        if not isinstance(version, int) or version > HISTORY_FORMAT_VERSION:
            raise TraceFormatError(
                f"{path}: history format version {version!r}; this gradscope reads versions "
                f"<= {HISTORY_FORMAT_VERSION} (upgrade gradscope)"
            )
        try:
            keys = tuple(str(k) for k in meta["keys"])
            hist = cls(int(meta["world_size"]), meta.get("meta", {}), keys)
            hist.notes = {str(k): dict(v) for k, v in meta.get("notes", {}).items()}
            steps = data["steps"]
            per_layer = [
                (
                    str(name),
                    data[f"l{i}/grad_norms"],
                    data[f"l{i}/summaries"],
                    data[f"l{i}/present"],
                )
                for i, name in enumerate(meta["layers"])
            ]
            t_col = keys.index("T")
            for j, step in enumerate(steps):
                row: dict[str, Entry] = {}
                for name, gn, sc, present in per_layer:
                    if present[j]:
                        width = int(np.nanmax(sc[j, :, t_col])) + 1
                        row[name] = (gn[j, :, :width], sc[j])
                hist._steps.append(int(step))
                hist._rows.append(row)
            for name, *_ in per_layer:
                hist._names.setdefault(name)
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise TraceFormatError(f"{path}: incomplete or inconsistent history ({exc})") from None
        return hist


def load_history(path: str | os.PathLike) -> History:
    """Load a training history saved with :meth:`History.save` (see :meth:`History.load`)."""
    return History.load(path)


# --------------------------------------------------------------------------- snapshot
@dataclass
class Snapshot:
    """The latest sampled step: its trace, and its full diagnosis on demand.

    Attributes:
        step: The training step.
        trace: Its recording, with the loss gradients. The weights in it are copies taken at
            that step, so later optimizer steps do not alter it.
    """

    step: int
    trace: Trace
    _diagnosis: Any = field(default=None, repr=False)

    @property
    def diagnosis(self) -> Any:
        """:func:`gradscope.diagnose` of :attr:`trace`, computed on first access (cached)."""
        if self._diagnosis is None:
            from gradscope.analysis.diagnosis import diagnose

            with _rng_preserved(), torch.no_grad():
                self._diagnosis = diagnose(self.trace, progress=False)
        return self._diagnosis

    def report(self, path: str | os.PathLike) -> Path:
        """Write this step's full report (see :func:`gradscope.reporting.report`)."""
        from gradscope.reporting import report

        return report(self, path)


# --------------------------------------------------------------------------- distributed
def _collective_device(group: Any) -> torch.device:
    import torch.distributed as dist

    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _all_gather(entries: Mapping[str, Entry], group: Any) -> dict[str, Entry]:
    """Gather every rank's ``{name: (grad norms (T+1,), summaries (K,))}`` with tensors only.

    Two ``all_gather`` calls of fixed-size tensors: an int64 header ``[crc32(names),
    n_layers, max T+1]`` (checks that every rank recorded the same layers and agrees on a
    width), then one float64 ``(L, 1 + K + width)`` block per rank (NaN-padded).

    Returns:
        ``{name: (grad norms (W, width), summaries (W, K))}``.

    Raises:
        GradscopeError: the ranks recorded different layers.
    """
    import torch.distributed as dist

    world = dist.get_world_size(group)
    device = _collective_device(group)
    names = list(entries)
    k = len(SUMMARY_KEYS)
    crc = zlib.crc32("\x1f".join(names).encode("utf-8"))
    width = max((gn.shape[-1] for gn, _ in entries.values()), default=0)
    header = torch.tensor([crc, len(names), width], dtype=torch.int64, device=device)
    headers = [torch.empty_like(header) for _ in range(world)]
    dist.all_gather(headers, header, group=group)
    h = torch.stack(headers).cpu().numpy()
    if (h[:, 0] != crc).any() or (h[:, 1] != len(names)).any():
        raise GradscopeError(
            f"Monitor (distributed): the ranks recorded different recurrent layers at the same "
            f"step (layer counts per rank {h[:, 1].tolist()}; this rank: {names}); every rank "
            "must run the same model with the same Monitor settings"
        )
    width = int(h[:, 2].max())
    local = torch.full((len(names), k + width), math.nan, dtype=torch.float64)
    for i, (gn, sc) in enumerate(entries.values()):
        local[i, :k] = torch.from_numpy(np.asarray(sc, dtype=np.float64).reshape(-1))
        gn = np.asarray(gn, dtype=np.float64).reshape(-1)
        local[i, k : k + gn.shape[0]] = torch.from_numpy(gn)
    local = local.to(device)
    blocks = [torch.empty_like(local) for _ in range(world)]
    if names:
        dist.all_gather(blocks, local, group=group)
    stacked = torch.stack(blocks).cpu().numpy() if names else np.zeros((world, 0, k + width))
    return {name: (stacked[:, i, k:], stacked[:, i, :k]) for i, name in enumerate(names)}


# --------------------------------------------------------------------------- monitor
class Monitor:
    """Records exact per-timestep loss gradients of every recurrent layer during training.

    See the module docstring for the life cycle, the required call order and the report
    protocol.

    Args:
        model: The model being trained (its recurrent submodules are found by
            :func:`gradscope.record`).
        every: Sample every ``every``-th training step (0, every, 2·every, ...); ignored
            when ``schedule`` is given.
        schedule: When to sample: a callable ``step -> bool`` (e.g. :class:`Every`,
            :class:`At`, :class:`Logarithmic`).
        cells: Extra modules to record call by call (cells called in a Python loop), as in
            :func:`gradscope.record`.
        lyapunov: Also estimate the leading Lyapunov exponent on analysed steps.
        analyze: On which sampled steps to compute the analyses of :func:`summarize` (decay
            fits, spectra, Lyapunov: dense ``D × D`` linear algebra, whose cost does not
            shrink with ``every``). ``"auto"``: whenever the Monitor's total time (the
            recording of every sampled step plus the analyses so far, plus the last
            analysis's cost again) stays within ``budget`` of the training time measured
            between ``step()`` calls; the first sampled step is analysed, paused blocks do
            not count, and which later steps get analysed depends on timing (under
            ``torch.distributed`` each rank decides on its own clock; a rank's summaries are
            NaN where it did not analyse). Or a schedule
            ``n -> bool`` over the index ``n = 0, 1, ...`` of the sampled step (e.g.
            ``Every(10)``: every 10th sampled step), or True (all) / False (none). Grad
            norms are recorded on every sampled step regardless.
        budget: With ``analyze="auto"``, the Monitor's target cost as a fraction of the
            training time (0.05: 5%). The recording of sampled steps is never skipped, so
            a schedule whose recording alone costs more (e.g. ``every=1``) gets no analysis
            after the first.
        spectra_steps: Jacobian steps (spread over the sequence) per spectral statistic.
        spectra_batch: Sequences per spectral statistic.
        decay_batch: Sequences used for the state-decay fit and Lyapunov (None: all).
        check: Let the recorder verify that each replay reproduces the module's output.
        callbacks: Called as ``callback(monitor)`` after every sampled step (on rank 0 only
            in a distributed run), e.g. a
            :class:`gradscope.integrations.tensorboard.TensorBoardCallback`.
        distributed: Gather every rank's summaries with ``torch.distributed`` collectives;
            None: when ``torch.distributed`` is initialised with more than one rank.
        process_group: The process group for gathering (None: the default group).

    Attributes:
        history: The compact :class:`History`.
        latest: The latest sampled step (:class:`Snapshot`), or None before the first one.
    """

    def __init__(
        self,
        model: nn.Module,
        every: int = 50,
        *,
        schedule: Schedule | None = None,
        cells: Sequence[nn.Module] | None = None,
        lyapunov: bool = False,
        analyze: Schedule | bool | str = "auto",
        budget: float = 0.05,
        spectra_steps: int = 2,
        spectra_batch: int = 1,
        decay_batch: int | None = 2,
        check: bool = False,
        callbacks: Sequence[Callable[[Monitor], Any]] = (),
        distributed: bool | None = None,
        process_group: Any = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"Monitor needs an nn.Module, got {type(model).__name__}")
        self.model = model
        self.schedule: Schedule = _as_schedule(
            schedule if schedule is not None else Every(every), "schedule"
        )
        if analyze == "auto":
            if not budget > 0:
                raise ValueError(f"Monitor: budget must be > 0, got {budget!r}")
            self.analyze: Schedule | None = None
        else:
            self.analyze = _as_schedule(analyze, "analyze")
        self.budget = float(budget)
        self.cells = list(cells) if cells is not None else None
        self.options = dict(
            lyapunov=bool(lyapunov),
            spectra_steps=int(spectra_steps),
            spectra_batch=int(spectra_batch),
            decay_batch=None if decay_batch is None else int(decay_batch),
        )
        self.check = bool(check)
        self.callbacks = list(callbacks)
        self.process_group = process_group
        self._distributed = self._detect_distributed(distributed)
        world = self._world_size() if self._distributed else 1
        self.history = History(
            world,
            {
                "model_class": type(model).__name__,
                "schedule": repr(self.schedule),
                "analyze": f"auto (budget {self.budget:g} of training time)"
                if self.analyze is None
                else repr(self.analyze),
                **{k: v for k, v in self.options.items()},
            },
        )
        self.latest: Snapshot | None = None
        self.global_step = 0
        self._closed = False
        self._paused = 0
        self._recorder: Any = None
        # time accounting for analyze="auto" (perf_counter seconds)
        self._clock = time.perf_counter()  # when the previous step() returned
        self._excluded = 0.0  # paused time since then
        self._train_s = 0.0  # training time between step() calls
        self._monitor_s = 0.0  # time spent inside step(): recording and analyses
        self._analysis_last = 0.0  # cost of the latest analysis
        self._analysed = 0  # sampled steps analysed so far
        self._arm()

    # ----------------------------------------------------------------- context
    def __enter__(self) -> Monitor:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.close()

    def close(self) -> None:
        """Remove every hook; the history and the latest snapshot stay readable."""
        self._disarm()
        self._closed = True

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    @property
    def armed(self) -> bool:
        """Whether hooks are attached for the current step (it is a sampled step)."""
        return self._recorder is not None

    @property
    def rank(self) -> int:
        """This process's rank (0 when not distributed)."""
        if not self._distributed:
            return 0
        import torch.distributed as dist

        return dist.get_rank(self.process_group)

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Detach the hooks for the block (e.g. an evaluation loop between training steps).

        A recording already holding this step's forward is discarded, and re-opened on
        leaving the block if the current step is sampled, so run evaluation *between*
        ``step()`` and the next training forward.
        """
        self._paused += 1
        self._disarm()
        start = time.perf_counter()
        try:
            yield
        finally:
            self._paused -= 1
            if not self._paused:  # the outermost block: its time is not training time
                self._excluded += time.perf_counter() - start
        if not self._paused:
            self._arm()

    # ----------------------------------------------------------------- hooks
    def _arm(self) -> None:
        """Attach a recorder if the current step is sampled (and nothing prevents it)."""
        if self._closed or self._paused or self._recorder is not None:
            return
        if not self.schedule(self.global_step):
            return
        from gradscope.recording import record

        recorder = record(self.model, self.cells, grads=True, check=self.check)
        recorder.start()  # removes what it registered itself if registering fails
        self._recorder = recorder

    def _disarm(self, harvest: bool = False) -> Trace | None:
        """Remove every hook; with ``harvest``, return the step's trace (loss gradients in)."""
        recorder, self._recorder = self._recorder, None
        if recorder is None:
            return None
        try:
            if harvest:
                recorder.stop()  # removes the module hooks, then builds the trace
                return recorder.trace  # back-propagates the captured cotangents
            recorder.stop(failed=True)  # removes the module hooks, builds nothing
            return None
        finally:
            recorder.close()  # removes the tensor hooks on recorded outputs

    # ----------------------------------------------------------------- stepping
    def step(self) -> bool:
        """End the current training step; call it once per step after ``loss.backward()``.

        On a sampled step this reads the recording, appends to :attr:`history` and updates
        :attr:`latest`; then it decides whether the next step is sampled and attaches the
        hooks only if it is. Before or after ``optimizer.step()`` gives the same result (the
        recorder copies the weights when the forward runs).

        Returns:
            Whether this step was sampled.

        Raises:
            GradscopeError: the Monitor is closed, or the ranks recorded different layers.
            MissingDataError: a sampled step without a backward pass through the recurrent
                layers.
            NoRecurrentModuleError: a sampled step on which no recurrent module ran.
        """
        if self._closed:
            raise GradscopeError("Monitor.step() on a closed Monitor; create a new one")
        entered = time.perf_counter()
        self._train_s += max(0.0, entered - self._clock - self._excluded)
        step, sampled = self.global_step, self._recorder is not None
        try:
            if sampled:
                self._harvest(step, entered)
        finally:
            self._disarm()
            self.global_step += 1
            self._arm()
            self._excluded = 0.0
            self._clock = time.perf_counter()
            self._monitor_s += self._clock - entered
        return sampled

    def _should_analyze(self, entered: float) -> bool:
        """Whether this sampled step gets the loss-independent summaries."""
        if self.analyze is not None:
            return bool(self.analyze(len(self.history)))  # the n-th sampled step
        if not self._analysed:  # the first sampled step: the latest full analysis exists
            return True  # from the start, and its cost is known for the budget from then on
        spent = self._monitor_s + (time.perf_counter() - entered)  # this step's recording too
        return spent + self._analysis_last <= self.budget * self._train_s

    def _harvest(self, step: int, entered: float) -> None:
        with _rng_preserved():
            try:
                trace = self._disarm(harvest=True)
            except NoRecurrentModuleError as exc:
                raise NoRecurrentModuleError(
                    f"Monitor.step() at training step {step}: no recurrent module ran since "
                    f"the previous step() ({exc}); call monitor.step() once per training step, "
                    "after the forward and loss.backward()"
                ) from None
            assert trace is not None  # harvest=True always returns the trace
            analyze = self._should_analyze(entered)
            entries: dict[str, Entry] = {}
            start = time.perf_counter()
            with torch.no_grad():
                norms, notes = trace_grad_norms(trace)
                for layer in trace.layers:
                    gn = norms[layer.name]
                    values, msgs = summarize(layer, analyze=analyze, norms=gn, **self.options)
                    entries[layer.name] = (gn, np.array([values[k] for k in SUMMARY_KEYS]))
                    notes.extend(msgs)
            if analyze:
                self._analysis_last = time.perf_counter() - start
                self._analysed += 1
        if self._distributed:
            gathered = _all_gather(entries, self.process_group)
        else:
            gathered = {n: (gn[None, :], sc[None, :]) for n, (gn, sc) in entries.items()}
        self.history.append(step, gathered)
        for msg in notes:
            self.history.note(step, msg)
        self.latest = Snapshot(step, trace)
        if self.rank == 0 and self.callbacks:
            with _rng_preserved():
                for callback in self.callbacks:
                    callback(self)

    # ----------------------------------------------------------------- output
    def report(self, path: str | os.PathLike) -> Path | None:
        """Write the training report (HTML or PDF by suffix) on rank 0.

        Returns:
            The path written, or None on ranks other than 0 (which write nothing).
        """
        if self.rank != 0:
            return None
        from gradscope.reporting import report

        with _rng_preserved():
            return report(self, path)

    def save(self, path: str | os.PathLike) -> Path | None:
        """Save :attr:`history` (:meth:`History.save`) on rank 0; None on other ranks."""
        if self.rank != 0:
            return None
        return self.history.save(path)

    # ----------------------------------------------------------------- helpers
    def _detect_distributed(self, distributed: bool | None) -> bool:
        import torch.distributed as dist

        available = dist.is_available() and dist.is_initialized()
        if distributed is None:
            return bool(available and dist.get_world_size(self.process_group) > 1)
        if distributed and not available:
            raise GradscopeError(
                "Monitor(distributed=True) needs torch.distributed to be initialised "
                "(torch.distributed.init_process_group) before the Monitor is created"
            )
        return bool(distributed)

    def _world_size(self) -> int:
        import torch.distributed as dist

        return int(dist.get_world_size(self.process_group))

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("armed" if self.armed else "idle")
        return (
            f"Monitor({type(self.model).__name__}, schedule={self.schedule!r}, "
            f"step={self.global_step}, sampled={len(self.history)}, {state})"
        )


__all__ = [
    "HISTORY_FORMAT_VERSION",
    "REGIME_CODES",
    "SUMMARY_KEYS",
    "At",
    "Every",
    "History",
    "Logarithmic",
    "Monitor",
    "Schedule",
    "Snapshot",
    "grad_norms",
    "load_history",
    "select_batch",
    "summarize",
    "trace_grad_norms",
]
