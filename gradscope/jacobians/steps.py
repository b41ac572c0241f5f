"""One step's Jacobian products for a set of sequences, with the setup paid once per layer.

:meth:`LayerTrace.jvp` / :meth:`LayerTrace.vjp` validate and index on every call, which is
right for a user and too slow inside a loop over 10,000 steps. :class:`StepOps` prepares a
layer once (adapter, weights on the right device) and then applies ``J_t``, ``J_tᵀ``,
``K_t`` or ``K_tᵀ`` (``K = ∂s_t/∂x_t``) of step ``t`` to a batch of column blocks with one
adapter call. Traces that carry stored Jacobians (custom cells loaded from disk) are served
by a batched matrix product from the stored matrices.
"""

from __future__ import annotations

import torch
from torch import Tensor

from gradscope.cells.base import Linearization
from gradscope.errors import ArgumentError, MissingDataError
from gradscope.jacobians.diagonal import has_diagonal
from gradscope.layer_trace import LayerTrace

#: Rows (steps × sequences) whose gates are computed in one call.
CHUNK_ROWS = 512


#: How an analysis may reach the Jacobians: chosen automatically, dense matrices, operators,
#: or the exact eigenvalues of a diagonal transition (:mod:`gradscope.jacobians.diagonal`).
METHODS = ("auto", "dense", "operator", "diagonal")


def check_method(layer: LayerTrace, method: str) -> None:
    """Raise :class:`~gradscope.errors.ArgumentError` unless ``method`` is in :data:`METHODS`.

    ``"diagonal"`` also needs an adapter that gives the eigenvalues of its transition.
    """
    if method not in METHODS:
        raise ArgumentError(
            f"{layer.name}: method must be 'auto', 'dense', 'operator' or 'diagonal', got "
            f"{method!r}"
        )
    if method == "diagonal" and not has_diagonal(layer):
        raise ArgumentError(
            f"{layer.name} ({layer.kind}): method='diagonal' needs a diagonal transition "
            "(a sequence adapter whose diagonal() gives the eigenvalues); use 'auto'"
        )


def use_diagonal(layer: LayerTrace, method: str) -> bool:
    """Whether an analysis takes the exact diagonal path (``"auto"`` does when it can).

    Raises:
        ArgumentError: an unknown ``method``, or ``"diagonal"`` for a non-diagonal cell.
    """
    check_method(layer, method)
    if method == "diagonal":
        return True
    if method != "auto":
        return False
    return has_diagonal(layer)


def product_dtype(layer: LayerTrace) -> torch.dtype:
    """The dtype of the weight products: the dtype the model was recorded in.

    The analysis casts float32 traces to float64 (:func:`gradscope._progress.as_float64`,
    which notes ``recorded_dtype`` in the layer's meta) so that dense Jacobians and every
    factorisation are float64. The products themselves run in the model's own precision:
    a float32 model's Jacobian products carry relative rounding of ~1e-7, the precision of
    the recorded states themselves and far below the statistical error of any exponent or
    rate, at a third of the time of float64 GEMMs.
    """
    recorded = layer.meta.get("recorded_dtype") if isinstance(layer.meta, dict) else None
    return torch.float32 if recorded == "float32" else layer.dtype


class StepOps:
    """``J_t M``, ``J_tᵀ M``, ``K_t M``, ``K_tᵀ M`` for one step and some sequences.

    Every method takes the step ``t`` (an index into ``range(T)``), the sequences ``batch``
    (a LongTensor of indices, ``(n,)``) and a block ``M`` of shape ``(n, rows, k)``, and
    returns ``(n, rows', k)`` in the trace's dtype. Cost: one adapter call, ``O(n · k · w)``
    with ``w`` the recurrent (or input) weights touched; no ``D × D`` matrix is formed
    unless the trace only has stored Jacobians.
    """

    def __init__(self, layer: LayerTrace) -> None:
        self.layer = layer
        self.dtype = product_dtype(layer)
        stored = layer.stored_jacobians or {}
        self._stored = stored
        self._adapter = None
        if not {"state", "input"} <= set(stored):
            if layer.lacks_module:
                if not stored:
                    raise MissingDataError(
                        f"{layer.name}: a custom cell's Jacobian products need the cell module "
                        "or stored Jacobians; this trace has neither (save it from a live "
                        "recording)"
                    )
            else:
                self._adapter = layer.cell_adapter()
        device = layer.states.device
        cast = {} if self.dtype == layer.dtype else {"dtype": self.dtype}
        self._params = {k: v.to(device=device, **cast) for k, v in layer.params.items()}
        self._states = layer.states.to(**cast) if cast else layer.states
        self._inputs = layer.inputs.to(**cast) if cast else layer.inputs
        self._key: tuple[int, Tensor | None] | None = None  # (t, batch; None: every one)
        self._lin = None
        self._chunk: tuple[int, int, Linearization] | None = None
        self._last_t: int | None = None
        self._run: tuple[Linearization, object] | None = None  # a chunk, its run_factors
        self.steps_per_chunk = max(1, min(64, CHUNK_ROWS // max(1, layer.B)))

    def _chunk_for(self, t: int) -> tuple[int, Linearization]:
        """The linearisation of a block of steps around ``t`` for every sequence."""
        if self._chunk is not None and self._chunk[0] <= t < self._chunk[1]:
            return self._chunk[0], self._chunk[2]
        n, T = self.steps_per_chunk, self.layer.T
        backwards = self._last_t is not None and t < self._last_t
        lo = max(0, t - n + 1) if backwards else t
        hi = min(T, lo + n)
        B = self.layer.B
        x = self._inputs[lo:hi].reshape((hi - lo) * B, -1)
        s = self._states[lo:hi].reshape((hi - lo) * B, -1)
        self._chunk = (lo, hi, self._adapter.linearize(self._params, x, s))
        return lo, self._chunk[2]

    def linearization(self, t: int, batch: Tensor) -> Linearization:
        """The adapter's :class:`~gradscope.cells.base.Linearization` at step ``t``.

        Gates are computed for a block of steps and all sequences in one call (walking
        forwards or backwards), then sliced per step; the last slice is kept, so repeated
        products at one step (Arnoldi, a state and an input product at one lag) reuse it.
        """
        full = len(batch) == self.layer.B  # live sequences are distinct indices
        if not self._same(t, None if full else batch):
            lo, chunk = self._chunk_for(t)
            B = self.layer.B
            # every sequence: a slice, so the factors are views rather than copies
            rows = slice((t - lo) * B, (t - lo + 1) * B) if full else (t - lo) * B + batch
            self._lin = chunk.rows(rows)
            self._key = (t, None if full else batch.clone())
            self._last_t = t
        return self._lin

    def _same(self, t: int, batch: Tensor | None) -> bool:
        """Whether the kept linearisation is at step ``t`` for ``batch`` (None: every one)."""
        if self._key is None or self._key[0] != t:
            return False
        kept = self._key[1]
        if batch is None or kept is None:
            return batch is None and kept is None
        return torch.equal(batch, kept)

    def _call(self, wrt: str, transpose: bool, t: int, batch: Tensor, m: Tensor) -> Tensor:
        m = m.to(self.dtype)
        if wrt in self._stored:
            jac = self._stored[wrt][t][batch].to(self.dtype)
            return torch.matmul(jac.transpose(-1, -2) if transpose else jac, m)
        if self._adapter is None:
            raise MissingDataError(
                f"{self.layer.name}: no stored {wrt} Jacobians and no cell module to compute "
                "their products"
            )
        return self.linearization(t, batch).apply(wrt, transpose, m)

    @property
    def _closed_form(self) -> bool:
        """Whether state products come from the adapter's closed form.

        False for stored Jacobians and ``torch.func`` adapters.
        """
        adapter = self._adapter
        return "state" not in self._stored and adapter is not None and adapter.closed_form

    def step_linearization(self, t: int, batch: Tensor) -> Linearization | None:
        """The closed-form linearisation at step ``t``, for repeated products (Arnoldi).

        None when the products go another way (stored Jacobians, ``torch.func`` adapters).
        Its ``jvp_state`` / ``vjp_state`` are :meth:`jvp` / :meth:`vjp` at that step
        without the per-call lookup; the caller passes blocks in :attr:`dtype`.
        """
        return self.linearization(t, batch) if self._closed_form else None

    def _run_factors(self, chunk: Linearization):
        """The adapter's ``run_factors`` of a chunk of linearised steps, kept for the chunk."""
        if self._run is None or self._run[0] is not chunk:
            self._run = (chunk, self._adapter.run_factors(chunk.factors, self.layer.B))
        return self._run[1]

    @property
    def runs(self) -> bool:
        """Whether the adapter has a loop of its own for runs of ``jvp`` (columns layout)."""
        return self._closed_form and self._adapter.runs(self._params)

    @property
    def vjp_runs(self) -> bool:
        """Whether the adapter has a loop of its own for ``vjp`` steps (columns layout)."""
        return self._closed_form and self._adapter.runs(self._params)

    def vjp_columns(self, t: int, batch: Tensor, u: Tensor) -> Tensor:
        """``J_tᵀ u`` per sequence in the columns layout: ``u`` ``(D, n, p)`` -> same.

        One call of the adapter's ``state_vjp_run`` (a backward walk's step), with the
        factors laid out once per chunk of linearised steps; :meth:`vjp` where it has none
        (or it declines, e.g. an LSTM with a projection).
        """
        u = u.to(self.dtype)
        out = None
        if self.vjp_runs:
            self._adapter.check_block("vjp_state", u.transpose(0, 1), len(batch), u.shape[0])
            out, _ = self._run_in_chunk("state_vjp_run", t, t + 1, batch, u)
        if out is None:
            out = self.vjp(t, batch, u.permute(1, 0, 2)).permute(1, 0, 2)
        return out

    def jvp_run(self, t: int, m: int, batch: Tensor, v: Tensor, columns: bool = False) -> Tensor:
        """``J_{t+m-1} ⋯ J_t v`` per sequence, ``m`` products in a row (a QR block).

        The same products as ``m`` calls of :meth:`jvp`, with the per-call work (the
        linearisation lookup, the block's shape check, the autograd switch) paid once per
        run, which matters when one product takes a fraction of a millisecond (10,000
        steps of an LSTM with hidden 256): the steps inside one chunk of linearised steps
        go to the adapter's :meth:`~gradscope.cells.base.CellAdapter.state_jvp_run` in one
        call (its factors laid out once per chunk by ``run_factors``), or, where it has
        none, to :meth:`~gradscope.cells.base.CellAdapter.product` step by step. Stored
        Jacobians and ``torch.func`` adapters go through :meth:`jvp`.

        Args:
            t: The first step.
            m: How many steps.
            batch: The sequences, ``(n,)``.
            v: ``(n, D, k)``, or ``(D, n, k)`` with ``columns``.
            columns: ``v`` and the result in the layout of ``state_jvp_run`` (a caller
                that keeps its blocks that way, see :attr:`runs`, saves two
                transpositions per run).
        """
        v = v.to(self.dtype)
        adapter = self._adapter
        if not self.runs:
            v = v.permute(1, 0, 2) if columns else v
            if not self._closed_form:
                for tt in range(t, t + m):
                    v = self.jvp(tt, batch, v)
            else:
                v = self._product_run(t, t + m, batch, v)
            return v.permute(1, 0, 2) if columns else v
        D = self._states.shape[-1]
        if columns:
            adapter.check_block("jvp_state", v.transpose(0, 1), len(batch), D)
        else:
            adapter.check_block("jvp_state", v, len(batch), D)
            v = v.permute(1, 0, 2)
        with torch.no_grad():
            tt = t
            while tt < t + m:
                # the steps of the run inside one chunk of linearised steps: one adapter call
                out, hi = self._run_in_chunk("state_jvp_run", tt, t + m, batch, v)
                if out is None:  # e.g. an LSTM with a projection: products step by step
                    out = self._product_run(tt, hi, batch, v.permute(1, 0, 2)).permute(1, 0, 2)
                v = out
                tt = hi
        return v if columns else v.permute(1, 0, 2).contiguous()

    def _run_in_chunk(
        self, name: str, t0: int, t1: int, batch: Tensor, v: Tensor
    ) -> tuple[Tensor | None, int]:
        """One call of the adapter's run loop ``name`` (columns layout) from step ``t0``.

        It covers the steps up to ``t1`` or to the end of the chunk of linearised steps
        that holds ``t0``, whichever comes first.

        Returns:
            The loop's result (None where the adapter declines) and the step after the
            last one it covered.
        """
        lo, chunk = self._chunk_for(t0)
        hi = min(t1, self._chunk[1])
        out = getattr(self._adapter, name)(
            self._params,
            self._run_factors(chunk),
            range(t0 - lo, hi - lo),
            None if len(batch) == self.layer.B else batch,
            v,
        )
        self._last_t = hi - 1
        return out, hi

    def _product_run(self, t0: int, t1: int, batch: Tensor, v: Tensor) -> Tensor:
        """Steps ``t0 … t1-1`` by the adapter's :meth:`product`, ``v`` ``(n, D, k)``."""
        adapter = self._adapter
        with torch.no_grad():
            for u in range(t0, t1):
                lin = self.linearization(u, batch)
                v = adapter.product(lin.params, lin.x, lin.s, lin.factors, v, "state", False)
        return v

    def jvp(self, t: int, batch: Tensor, v: Tensor) -> Tensor:
        """``J_t v`` per sequence: ``v`` ``(n, D, k)`` -> ``(n, D, k)``."""
        return self._call("state", False, t, batch, v)

    def vjp(self, t: int, batch: Tensor, u: Tensor) -> Tensor:
        """``J_tᵀ u`` per sequence: ``u`` ``(n, D, k)`` -> ``(n, D, k)``."""
        return self._call("state", True, t, batch, u)

    def vjp_input(self, t: int, batch: Tensor, u: Tensor) -> Tensor:
        """``K_tᵀ u`` per sequence: ``u`` ``(n, D, k)`` -> ``(n, I, k)``."""
        return self._call("input", True, t, batch, u)

    def jvp_input(self, t: int, batch: Tensor, v: Tensor) -> Tensor:
        """``K_t v`` per sequence: ``v`` ``(n, I, k)`` -> ``(n, D, k)``."""
        return self._call("input", False, t, batch, v)
