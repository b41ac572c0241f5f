"""One recorded recurrent layer: its states and inputs, and its Jacobians on request.

:class:`LayerTrace` holds the data (see :mod:`gradscope.traces` for the layout and the file
format) and gives the per-step Jacobians of its cell three ways: dense matrices
(:meth:`~LayerTrace.jacobians`, :meth:`~LayerTrace.iter_jacobians`), and matrix-free
products (:meth:`~LayerTrace.jvp`, :meth:`~LayerTrace.vjp`) from the cell adapter's closed
forms.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from gradscope.cells import adapter_for_kind
from gradscope.cells.base import CellAdapter, Params
from gradscope.errors import ArgumentError, MissingDataError, ShapeError, UnknownNameError

StepSelect = int | slice | Sequence[int] | np.ndarray | Tensor | None


def select_index(sel: StepSelect, n: int, what: str) -> Tensor:
    """Normalise a step/batch selection to a LongTensor of indices in ``range(n)``."""
    if sel is None:
        return torch.arange(n)
    if isinstance(sel, slice):
        return torch.arange(n)[sel]
    idx = torch.as_tensor(sel, dtype=torch.long).reshape(-1)
    if idx.numel() and (idx.min() < -n or idx.max() >= n):
        raise ShapeError(f"{what} index out of range for size {n}: {idx.tolist()[:8]}")
    return torch.where(idx < 0, idx + n, idx)


def check_layer_params(adapter: CellAdapter, layer: LayerTrace) -> None:
    """``layer.params`` describe a layer of ``adapter``'s family with ``layer``'s sizes.

    :meth:`~gradscope.cells.base.CellAdapter.check_params` (the configuration numbers), the
    state and input sizes, and one step from a zero state and input of those sizes (cells
    whose Jacobians come from ``torch.func`` need their module and are left to it).

    Raises:
        ArgumentError: naming the layer, its kind and what does not fit.
    """
    where = f"{layer.name} ({layer.kind})"
    try:
        adapter.check_params(layer.params)
        if not adapter.closed_form:
            return
        D, I = adapter.state_size(layer.params), adapter.input_size(layer.params)
        if (D, I) != (layer.D, layer.I):
            raise ArgumentError(
                f"its params describe a state of {D} and an input of {I} numbers, the trace "
                f"holds {layer.D} and {layer.I}"
            )
        p = {k: v.to(layer.inputs.device) for k, v in layer.params.items()}
        z = layer.inputs.new_zeros((1, I)), layer.states.new_zeros((1, D))
        with torch.no_grad():
            out = adapter.step(p, *z)
        if tuple(out.shape) != (1, D):
            raise ArgumentError(f"one step gives shape {tuple(out.shape)}, not (1, {D})")
    except ArgumentError as exc:
        raise ArgumentError(f"{where}: {exc}") from None
    except (RuntimeError, KeyError, IndexError, ValueError, TypeError, ZeroDivisionError) as exc:
        text = " ".join(str(exc).split())[:200]
        raise ArgumentError(
            f"{where}: its params do not describe a {layer.kind} layer "
            f"({type(exc).__name__}: {text}); a trace made or edited by hand?"
        ) from None


@dataclass
class LayerTrace:
    """One recurrent layer (and direction) of one forward call, step by step.

    Attributes:
        name: ``module.path`` plus ``.l{k}`` and ``_reverse`` for fused modules (PyTorch's
            parameter suffixes), the plain module path for a cell called in a loop, and
            ``@n`` for the n-th (n >= 1) further call of the same module in one recording.
        kind: The cell family (adapter kind), e.g. ``"lstm"``.
        states: ``(T+1, B, D)``, the initial state first; NaN at padded steps.
        inputs: ``(T, B, I)``; NaN at padded steps.
        lengths: ``(B,)`` int64 valid steps per sequence, or None when all are ``T``.
        state_names: Names of the state's parts in order, e.g. ``("h", "c")``.
        state_sizes: Their sizes; ``sum(state_sizes) == D``.
        params: The cell's weights (detached), enough to recompute every Jacobian.
        meta: JSON-serialisable facts: module path, layer, direction, call, source, notes.
        grads: ``(T+1, B, D)`` exact loss gradients ``∂L/∂s_t`` (aligned with ``states``;
            NaN at padded steps), or None when no loss was back-propagated.
        carried_logits: ``(T, B, H)`` pre-activations of the carried gate (LSTM ``a_f``,
            GRU ``a_z``; a vanilla cell's ``a_t``, whose ``φ'`` is its gate) from the
            replay's own product, kept by a teacher-forced replay with loss gradients (a
            Monitor's single-layer LSTM, GRU or vanilla RNN), else None; the gate read-outs
            use them instead of multiplying the weights again. Not saved.
    """

    name: str
    kind: str
    states: Tensor
    inputs: Tensor
    lengths: np.ndarray | None
    state_names: tuple[str, ...]
    state_sizes: tuple[int, ...]
    params: Params
    meta: dict[str, Any] = field(default_factory=dict)
    adapter: CellAdapter | None = field(default=None, repr=False)
    stored_jacobians: dict[str, Tensor] | None = field(default=None, repr=False)
    grads: Tensor | None = field(default=None, repr=False)
    carried_logits: Tensor | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.states.ndim != 3 or self.inputs.ndim != 3:
            raise ShapeError(
                f"{self.name}: states must be (T+1, B, D) and inputs (T, B, I), got "
                f"{tuple(self.states.shape)} and {tuple(self.inputs.shape)}"
            )
        if self.states.shape[0] != self.inputs.shape[0] + 1 or (
            self.states.shape[1] != self.inputs.shape[1]
        ):
            raise ShapeError(
                f"{self.name}: states {tuple(self.states.shape)} and inputs "
                f"{tuple(self.inputs.shape)} disagree (need T+1 states for T inputs, same B)"
            )
        if sum(self.state_sizes) != self.states.shape[2]:
            raise ShapeError(
                f"{self.name}: state parts {dict(zip(self.state_names, self.state_sizes))} "
                f"do not add up to D={self.states.shape[2]}"
            )
        if self.grads is not None and self.grads.shape != self.states.shape:
            raise ShapeError(
                f"{self.name}: grads {tuple(self.grads.shape)} must match states "
                f"{tuple(self.states.shape)}"
            )
        a = self.carried_logits
        if a is not None and (a.ndim != 3 or a.shape[:2] != self.inputs.shape[:2]):
            raise ShapeError(
                f"{self.name}: carried_logits {tuple(a.shape)} must be (T, B, H) with the "
                f"inputs' T and B {tuple(self.inputs.shape[:2])}"
            )
        if self.lengths is not None:
            self.lengths = np.asarray(self.lengths, dtype=np.int64).reshape(-1)
            if self.lengths.shape[0] != self.B:
                raise ShapeError(f"{self.name}: {self.lengths.shape[0]} lengths for B={self.B}")

    # ----------------------------------------------------------------- shape
    @property
    def T(self) -> int:
        """Number of steps."""
        return int(self.inputs.shape[0])

    @property
    def B(self) -> int:
        """Number of sequences."""
        return int(self.states.shape[1])

    @property
    def D(self) -> int:
        """State size (all named parts together)."""
        return int(self.states.shape[2])

    @property
    def I(self) -> int:  # noqa: E743
        """Input size."""
        return int(self.inputs.shape[2])

    @property
    def dtype(self) -> torch.dtype:
        """Floating dtype of the recorded states."""
        return self.states.dtype

    @property
    def seq_lengths(self) -> np.ndarray:
        """``(B,)`` valid steps per sequence (``T`` for all when :attr:`lengths` is None)."""
        if self.lengths is None:
            return np.full(self.B, self.T, dtype=np.int64)
        return self.lengths

    @property
    def mask(self) -> np.ndarray:
        """``(T, B)`` bool: True where step k of sequence b is a real (unpadded) step."""
        return np.arange(self.T)[:, None] < self.seq_lengths[None, :]

    @property
    def state_mask(self) -> np.ndarray:
        """``(T+1, B)`` bool: True where state ``t`` of sequence ``b`` is real (``t <= T_b``)."""
        return np.concatenate([np.ones((1, self.B), bool), self.mask], axis=0)

    def part(self, name: str) -> slice:
        """The slice of the state vector that holds the named part (e.g. ``"c"``)."""
        if name not in self.state_names:
            raise UnknownNameError(f"{self.name} has state parts {self.state_names}, not {name!r}")
        i = self.state_names.index(name)
        start = sum(self.state_sizes[:i])
        return slice(start, start + self.state_sizes[i])

    def nonfinite(self) -> np.ndarray:
        """``(T+1, B)`` bool: real (unpadded) states holding NaN or inf."""
        # A finite sum of everything means every entry is finite (NaN and inf propagate; a
        # sum that overflows only sends us on to look): the common case in one reduction.
        # Otherwise max |s| over the state is NaN or inf exactly when some entry is (amax
        # propagates NaN), ~6x faster than isfinite(...).all() on the CPU.
        if self.states.shape[-1] == 0 or bool(torch.isfinite(self.states.detach().sum())):
            return np.zeros(self.state_mask.shape, bool)
        peak = self.states.detach().abs().amax(dim=-1)
        bad = ~torch.isfinite(peak).cpu().numpy()
        return bad & self.state_mask

    def grad_norms(self) -> np.ndarray:
        """``(T+1, B)`` float64 ``‖∂L/∂s_t‖₂`` of every sequence; NaN at padded states.

        Computed in float64 (no overflow of the squares for any float32 gradient); a
        non-finite gradient of a real step stays non-finite so that it is seen.

        Raises:
            MissingDataError: the trace holds no loss gradients.
        """
        if self.grads is None:
            raise MissingDataError(
                f"{self.name} ({self.kind}): this recording holds no loss gradients ∂L/∂s_t. "
                "Record them with `with gradscope.record(model, grads=True) as rec:` around "
                "the forward and loss.backward(), with gradscope.profile(model, x, "
                "loss_fn=...), or with a gradscope.Monitor (call monitor.step() after "
                "loss.backward(), and run evaluation forwards under torch.no_grad() inside "
                "`with monitor.paused():`)"
            )
        g = self.grads.detach().to(device="cpu", dtype=torch.float64)
        norms = torch.linalg.vector_norm(g, dim=-1).numpy()
        return np.where(self.state_mask, norms, np.nan)

    # ------------------------------------------------------------- jacobians
    @property
    def lacks_module(self) -> bool:
        """A custom cell recorded without its module (a loaded ``custom:`` trace).

        Its Jacobians come from ``torch.func`` on the module, so only stored Jacobians can
        stand in for them.
        """
        return self.adapter is None and self.kind.startswith("custom:")

    def computing_adapter(self) -> CellAdapter | None:
        """The adapter the Jacobians are computed by, or None where stored matrices serve.

        None for a trace holding stored Jacobians or lacking its custom cell's module
        (:attr:`lacks_module`); otherwise :meth:`cell_adapter`.
        """
        if self.stored_jacobians is not None or self.lacks_module:
            return None
        return self.cell_adapter()

    def cell_adapter(self) -> CellAdapter:
        """The cell adapter (the recording's, or the one registered for :attr:`kind`).

        An adapter found by :attr:`kind` (a trace loaded from a file or built by hand) is
        first checked against :attr:`params` (:func:`check_layer_params`).

        Raises:
            ArgumentError: the params do not describe a layer of this kind and these sizes.
        """
        if self.adapter is None:
            adapter = adapter_for_kind(self.kind)
            check_layer_params(adapter, self)
            self.adapter = adapter
        return self.adapter

    def _jac(self, wrt: str, steps: Tensor, batch: Tensor) -> Tensor:
        if self.stored_jacobians is not None and wrt in self.stored_jacobians:
            return self.stored_jacobians[wrt][steps][:, batch]
        if self.lacks_module:
            raise MissingDataError(
                f"{self.name}: a custom cell's Jacobians need the cell module or stored "
                "Jacobians; this trace has neither (analyse the live recording, or save it "
                "with trace.save(path, jacobians=True))"
            )
        adapter = self.cell_adapter()
        x = self.inputs[steps][:, batch]
        s = self.states[steps][:, batch]
        t, b = x.shape[:2]
        fn = adapter.jacobian_state if wrt == "state" else adapter.jacobian_input
        params = {k: v.to(x.device) for k, v in self.params.items()}
        out = fn(params, x.reshape(t * b, -1), s.reshape(t * b, -1))
        return out.reshape(t, b, *out.shape[1:])

    def jacobians(
        self, steps: StepSelect = None, batch: StepSelect = None, wrt: str = "state"
    ) -> Tensor:
        """Per-step Jacobians, ``(T', B', D, D)`` (``wrt="input"``: ``(T', B', D, I)``).

        Entry ``[k, b]`` is ``∂s_{k+1}/∂s_k`` of sequence ``b`` (row = output component).
        Padded steps give NaN. For long sequences prefer :meth:`iter_jacobians`.

        Args:
            steps: Which steps ``k`` in ``range(T)`` (int, slice, index list, or None = all).
            batch: Which sequences (same forms).
            wrt: ``"state"`` for ``∂s_t/∂s_{t-1}`` or ``"input"`` for ``∂s_t/∂x_t``.
        """
        if wrt not in ("state", "input"):
            raise ArgumentError(f"wrt must be 'state' or 'input', got {wrt!r}")
        return self._jac(
            wrt, select_index(steps, self.T, "step"), select_index(batch, self.B, "batch")
        )

    def iter_jacobians(
        self,
        chunk: int = 64,
        steps: StepSelect = None,
        batch: StepSelect = None,
        wrt: str = "state",
        reverse: bool = False,
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """Yield ``(step_indices, jacobians)`` in chunks of at most ``chunk`` steps.

        Memory is bounded by one chunk: ``chunk · B' · D · D`` numbers.

        Args:
            chunk: Steps per chunk.
            steps: Which steps (as in :meth:`jacobians`), yielded in increasing order
                unless ``reverse``.
            batch: Which sequences.
            wrt: ``"state"`` or ``"input"``.
            reverse: Yield chunks from the last step backwards (each chunk's steps are
                still in increasing order).
        """
        if chunk < 1:
            raise ArgumentError(f"chunk must be >= 1, got {chunk}")
        idx = select_index(steps, self.T, "step")
        b = select_index(batch, self.B, "batch")
        starts = range(0, len(idx), chunk)
        for start in reversed(starts) if reverse else starts:
            sel = idx[start : start + chunk]
            yield sel, self._jac(wrt, sel, b)

    # ------------------------------------------------------------- operators
    def _product(self, wrt: str, transpose: bool, M: Tensor, steps: StepSelect, batch: StepSelect):
        if wrt not in ("state", "input"):
            raise ArgumentError(f"{self.name}: wrt must be 'state' or 'input', got {wrt!r}")
        t_idx = select_index(steps, self.T, "step")
        b_idx = select_index(batch, self.B, "batch")
        rows = self.D if (wrt == "state" or transpose) else self.I
        verb = "vjp" if transpose else "jvp"
        want = (len(t_idx), len(b_idx), rows)
        if not isinstance(M, Tensor) or M.ndim != 4 or tuple(M.shape[:3]) != want:
            got = tuple(M.shape) if isinstance(M, Tensor) else type(M).__name__
            raise ShapeError(
                f"{self.name} ({self.kind}): {verb}(wrt={wrt!r}) takes (T', B', {rows}, k) = "
                f"({want[0]}, {want[1]}, {rows}, k) for the selected steps and sequences, "
                f"got {got}"
            )
        t, b, k = want[0], want[1], int(M.shape[-1])
        stored = self.stored_jacobians
        if stored is not None and wrt in stored:
            jac = stored[wrt][t_idx][:, b_idx].to(M.dtype)
            return (jac.transpose(-1, -2) if transpose else jac) @ M
        if self.lacks_module:
            raise MissingDataError(
                f"{self.name}: a custom cell's Jacobian products need the cell module or "
                "stored Jacobians; this trace has neither (analyse the live recording, or "
                "save it with trace.save(path, jacobians=True))"
            )
        adapter = self.cell_adapter()
        x = self.inputs[t_idx][:, b_idx]
        s = self.states[t_idx][:, b_idx]
        params = {key: v.to(x.device) for key, v in self.params.items()}
        lin = adapter.linearize(params, x.reshape(t * b, -1), s.reshape(t * b, -1))
        out = lin.apply(wrt, transpose, M.to(x.dtype).reshape(t * b, rows, k))
        return out.reshape(t, b, *out.shape[1:])

    def jvp(
        self, V: Tensor, steps: StepSelect = None, batch: StepSelect = None, wrt: str = "state"
    ) -> Tensor:
        """Jacobian-vector products ``J_t @ V`` per step, never forming ``J_t``.

        Entry ``[k, b]`` is ``∂s_{k+1}/∂s_k @ V[k, b]`` of sequence ``b`` (``wrt="input"``:
        ``∂s_{k+1}/∂x_k @ V[k, b]``), computed by the cell adapter's closed form
        (:meth:`~gradscope.cells.base.CellAdapter.jvp_state`), or by ``torch.func.jvp``
        for a custom cell. Cost per step and sequence: ``O(k · w)`` with ``w`` the number of
        recurrent weights (``O(k · D)`` for diagonal recurrences), against ``O(D²)`` memory
        and ``O(D² k)`` time for forming the Jacobian and multiplying.

        Args:
            V: ``(T', B', D, k)`` (``wrt="input"``: ``(T', B', I, k)``), in the trace's
                dtype (cast otherwise).
            steps: Which steps ``k`` in ``range(T)`` (int, slice, index list, or None = all).
            batch: Which sequences (same forms).
            wrt: ``"state"`` for ``∂s_t/∂s_{t-1}`` or ``"input"`` for ``∂s_t/∂x_t``.

        Returns:
            ``(T', B', D, k)``; NaN at padded steps.

        Raises:
            ShapeError: ``V`` does not match the selection.
            MissingDataError: a loaded custom-cell trace without its module or Jacobians.
        """
        return self._product(wrt, False, V, steps, batch)

    def vjp(
        self, U: Tensor, steps: StepSelect = None, batch: StepSelect = None, wrt: str = "state"
    ) -> Tensor:
        """Vector-Jacobian products ``J_tᵀ @ U`` per step, never forming ``J_t``.

        The transpose of :meth:`jvp` (same arguments and cost): entry ``[k, b]`` is
        ``(∂s_{k+1}/∂s_k)ᵀ @ U[k, b]``, what back-propagation through one step does to the
        cotangents ``U``.

        Args:
            U: ``(T', B', D, k)``.
            steps: Which steps (as in :meth:`jvp`).
            batch: Which sequences.
            wrt: ``"state"`` or ``"input"`` (then the result is ``(T', B', I, k)``).

        Returns:
            ``(T', B', D, k)`` (``wrt="input"``: ``(T', B', I, k)``).
        """
        return self._product(wrt, True, U, steps, batch)

    # ------------------------------------------------------------------ misc
    def to(self, dtype: torch.dtype | None = None, device: Any = None) -> LayerTrace:
        """A copy with states, inputs and params moved/cast."""

        def mv(t: Tensor) -> Tensor:
            return t.to(device=device, dtype=dtype if t.is_floating_point() else None)

        return LayerTrace(
            self.name,
            self.kind,
            mv(self.states),
            mv(self.inputs),
            self.lengths,
            self.state_names,
            self.state_sizes,
            {k: mv(v) for k, v in self.params.items()},
            dict(self.meta),
            self.adapter,
            None
            if self.stored_jacobians is None
            else {k: mv(v) for k, v in self.stored_jacobians.items()},
            None if self.grads is None else mv(self.grads),
            None if self.carried_logits is None else mv(self.carried_logits),
        )

    def __repr__(self) -> str:
        parts = "+".join(f"{n}{s}" for n, s in zip(self.state_names, self.state_sizes))
        return (
            f"LayerTrace({self.name!r}, kind={self.kind!r}, T={self.T}, B={self.B}, "
            f"D={self.D} [{parts}], I={self.I}, dtype={self.dtype})"
        )
