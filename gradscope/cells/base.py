"""The cell adapter contract: one cell family's step function, state layout and Jacobians.

A recurrent cell maps an input and the previous state to the next state,

    s_t = f(x_t, s_{t-1}),

where the state ``s`` is one flat vector per sequence that concatenates the cell's named
parts in order (LSTM: ``h`` then ``c``; GRU and vanilla: ``h``). An adapter implements ``f``
and its two Jacobians

    J_t = ∂s_t/∂s_{t-1}   of shape (D, D),        K_t = ∂s_t/∂x_t   of shape (D, I),

for a whole batch of (x, s) pairs at once. Batching is over an arbitrary leading dimension
``N``: since ``J_t`` depends only on ``x_t`` and ``s_{t-1}``, all timesteps of all sequences can
be stacked into one ``N = T·B`` batch.

Adapters are stateless and pure: the weights come in as a ``params`` dict of tensors (names
follow PyTorch's parameter names without the ``_l{k}`` / ``_reverse`` suffixes:
``weight_ih``, ``weight_hh``, ``bias_ih``, ``bias_hh``, ``weight_hr``). Biases are absent for
``bias=False``. Everything an adapter needs must be derivable from ``params`` and the adapter
instance, so that a trace saved to disk (states, inputs, params, kind) can be analysed later
without the model.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from gradscope.cells.config import check_config
from gradscope.cells.linearization import Linearization, split_steps, take_rows
from gradscope.errors import ShapeError

Params = dict[str, Tensor]

#: Structure tags of a state Jacobian (:attr:`CellAdapter.structure`), for the analysis.
DENSE = "dense"  #: no structure to exploit
BLOCK = "block"  #: blocks per state part, some of them diagonal (LSTM: ``∂c/∂c = diag(f)``)
DIAGONAL = "diagonal"  #: ``J_t`` is diagonal (Mamba, minGRU, LRU, RG-LRU)
SCALAR_IDENTITY = "scalar_identity"  #: a scalar per head times the identity (mLSTM, GLA)
STRUCTURES = (DENSE, BLOCK, DIAGONAL, SCALAR_IDENTITY)


class Forced(NamedTuple):
    """What :meth:`CellAdapter.forced_states` returns."""

    states: Tensor  # s_0 … s_T, (T+1, B, D)
    factors: Any  # the linear factors of every step (T · B rows), or None
    #: The carried gate's pre-activations ``(T, B, H)`` (LSTM ``a_f``, GRU ``a_z``, vanilla
    #: ``a``) from the same product as the states, or None: gate read-outs then recompute
    #: them from the weights.
    carried: Tensor | None = None


#: The methods that define a family's maths (see :meth:`CellAdapter.__init_subclass__`).
MATHS = ("step", "step_factors", "linear_factors", "product")
#: What a family derives from its maths: reset to the contract's generic version in a
#: subclass that changes the maths without redefining them.
DERIVED = (
    "step_factors",
    "step_carried",
    "forced_states",
    "linear_factors",
    "product",
    "takes_xp",
    "form",
    "jacobian_state",
    "jacobian_input",
)


class CellAdapter(ABC):
    """One family of recurrent cell: its step, its state layout and its Jacobians.

    Required: :attr:`kind` (a unique string, used to find the adapter again when a trace is
    loaded), :attr:`state_names`, :meth:`state_sizes` and :meth:`step`. Everything else is
    optional and declared, never looked up by introspection: closed-form
    :meth:`linear_factors` + :meth:`product` (otherwise ``torch.func`` differentiates
    :meth:`step`), :meth:`project_input` with :attr:`takes_xp`, :meth:`for_module`,
    :attr:`config`, and the loops of many steps (:meth:`runs` says whether they apply).
    The dense Jacobians default to products with the identity. Register an adapter for a
    module type with :func:`gradscope.register_cell`.

    A subclass that changes the maths (defines one of :data:`MATHS`) loses what its parent
    derived from the parent's maths (:data:`DERIVED`: fast replays, factors, closed-form
    products, a :class:`~gradscope.cells.gated.GatedForm`) unless it defines them itself:
    they fall back to the contract's generic versions, so that a subclass whose ``step``
    adds a bias is replayed and differentiated as what it computes.
    """

    #: Set in a contract class's own body (CellAdapter, GatedCell, SequenceAdapter): its
    #: members are generic, never reset.
    _contract = True

    #: Unique identifier of the cell family, e.g. ``"lstm"``; stored in saved traces.
    kind: str = ""
    #: Names of the state's parts, in the order they are concatenated.
    state_names: tuple[str, ...] = ("h",)
    #: Whether the Jacobians are closed forms (False: computed with ``torch.func``).
    closed_form: bool = True
    #: Structure of the state Jacobian: one of :data:`STRUCTURES`.
    structure: str = DENSE
    #: The configuration numbers among ``params`` (0-d tensors) and what each must be, one
    #: of :data:`CONFIG_RULES` (a name ending in ``?`` may be absent); checked by
    #: :meth:`check_params` before a trace that did not come from a module is analysed.
    config: dict[str, str] = {}  # noqa: RUF012 (read-only class data)
    #: Whether :meth:`step` and :meth:`step_factors` accept ``xp``, the precomputed
    #: :meth:`project_input` of their input (a replay computes it for all steps at once).
    takes_xp: bool = False
    #: Whether a module of this family runs whole sequences per call (a sequence mixer).
    runs_sequences: bool = False
    #: The family's gates (:class:`~gradscope.cells.gates.Gates`, declared by gated cells,
    #: :class:`~gradscope.cells.gated.GatedCell`), or None: no gate views.
    gates: Any = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Reset what the parent derived from its maths when a subclass changes the maths."""
        super().__init_subclass__(**kwargs)
        own = cls.__dict__
        if "_contract" in own or not any(name in own for name in MATHS):
            return
        for name in DERIVED:
            if name in own:
                continue
            owner = next((k for k in cls.__mro__ if name in k.__dict__), None)
            if owner is None or owner.__dict__.get("_contract"):
                continue  # generic already
            generic = next(
                k for k in cls.__mro__ if k.__dict__.get("_contract") and name in k.__dict__
            )
            setattr(cls, name, generic.__dict__[name])

    def for_module(self, module: nn.Module) -> CellAdapter:
        """The adapter for one module of a registered type (e.g. by its nonlinearity)."""
        return self

    def runs(self, params: Params) -> bool:
        """Whether :meth:`state_sweep` and the run loops apply to these weights."""
        return False

    def vanishing_advice(self, params: Params, facts: dict[str, str]) -> list[str] | None:
        """What to try against vanishing gradients in this family, or None (general advice).

        ``facts``: this layer's numbers as text, ``horizon`` (the memory horizon in steps),
        ``smax`` and ``radius`` (the one-step spectral norm and radius medians), ``T`` (the
        median sequence length), ``rate`` and ``lambda1`` (per step), ``severity`` and
        ``factor`` (the grade and ``e^{rate·T}``, :mod:`gradscope.analysis.severity`), and
        for a diagonal recurrence ``tau`` and ``frac_long`` (median memory timescale, share
        of coordinates reaching ``T``). The levers come cheapest first and the structural
        one (another architecture) last: a mild grade shows only the first, a severe one
        all of them; the analysis adds the memory horizon itself.
        """
        return None

    def diagonal(self, params: Params, u: Tensor) -> Tensor | None:
        """Eigenvalues ``(N, D)`` of a transition diagonal in the state's own coordinates.

        None (the default): not such a transition. See
        :meth:`gradscope.sequences.base.SequenceAdapter.diagonal` for the contract.
        """
        return None

    def log_decay(self, params: Params, u: Tensor) -> Tensor | None:
        """``ln|λ_t|`` per pair and coordinate ``(N, D)``, or None (see :meth:`diagonal`)."""
        lam = self.diagonal(params, u)
        return None if lam is None else torch.log(lam.abs())

    # ------------------------------------------------------------------ layout
    def check_params(self, params: Params) -> None:
        """Raise :class:`~gradscope.errors.ArgumentError` if ``params`` are not this family's.

        The default checks :attr:`config` (:func:`~gradscope.cells.config.check_config`:
        each number present, 0-d and in its range); adapters add constraints between
        numbers (e.g. heads dividing a width). Called for traces built by hand or loaded from
        a file, never on the recording's hot path.
        """
        check_config(self.kind, self.config, params)

    @abstractmethod
    def state_sizes(self, params: Params) -> tuple[int, ...]:
        """Sizes of the state's parts, in the order of :attr:`state_names`."""

    def input_size(self, params: Params) -> int:
        """Size ``I`` of one input vector ``x_t``."""
        return int(params["weight_ih"].shape[1])

    def state_size(self, params: Params) -> int:
        """Total state size ``D`` (the sum of :meth:`state_sizes`)."""
        return int(sum(self.state_sizes(params)))

    def pack_state(self, native: Tensor | Sequence[Tensor]) -> Tensor:
        """Concatenate the module's native state (a Tensor or tuple) into ``(..., D)``."""
        if isinstance(native, Tensor):
            return native
        return torch.cat(list(native), dim=-1)

    def unpack_state(self, s: Tensor, params: Params) -> Tensor | tuple[Tensor, ...]:
        """Split ``(..., D)`` back into the module's native state (Tensor or tuple)."""
        parts = torch.split(s, list(self.state_sizes(params)), dim=-1)
        return parts[0] if len(parts) == 1 else tuple(parts)

    # ------------------------------------------------------------------ maths
    @abstractmethod
    def step(self, params: Params, x: Tensor, s: Tensor) -> Tensor:
        """One step ``s_t = f(x_t, s_{t-1})``.

        Args:
            params: The cell's weights.
            x: Inputs ``(N, I)``.
            s: Previous states ``(N, D)``.

        Returns:
            Next states ``(N, D)``.
        """

    def jacobian_state(self, params: Params, x: Tensor, s: Tensor) -> Tensor:
        """State Jacobians ``∂s_t/∂s_{t-1}``, ``(N, D, D)`` (row = output component).

        The default: ``D`` products with the identity (``O(D)`` products; families with
        a faster dense form override it).
        """
        eye = torch.eye(s.shape[-1], dtype=s.dtype, device=s.device)
        return self.linearize(params, x, s).jvp_state(eye.expand(s.shape[0], -1, -1))

    def jacobian_input(self, params: Params, x: Tensor, s: Tensor) -> Tensor:
        """Input Jacobians ``∂s_t/∂x_t``, ``(N, D, I)``; the default from ``I`` products."""
        eye = torch.eye(x.shape[-1], dtype=x.dtype, device=x.device)
        return self.linearize(params, x, s).jvp_input(eye.expand(x.shape[0], -1, -1))

    # ------------------------------------------------------------------ products
    # Matrix-free Jacobian products: closed-form adapters override linear_factors and
    # product; everything else goes through them (see Linearization).
    def check_block(self, name: str, m: Any, n: int, rows: int) -> None:
        """Raise :class:`ShapeError` unless ``m`` is ``(n, rows, k)``."""
        if not isinstance(m, Tensor) or m.ndim != 3 or m.shape[0] != n or m.shape[1] != rows:
            got = tuple(m.shape) if isinstance(m, Tensor) else type(m).__name__
            raise ShapeError(
                f"{self.kind}: {name} takes a block of columns (N, {rows}, k) = ({n}, {rows}, k)"
                f" for N = {n} (x, s) pairs, got {got}"
            )

    def linear_factors(self, params: Params, x: Tensor, s: Tensor) -> Any:
        """Per-pair factors of the linearisation at ``(x, s)`` (gates, derivatives), or None.

        Computed once by :meth:`linearize` and reused by every product at those pairs;
        closed-form adapters override it together with :meth:`product`.
        """
        return None

    def product(
        self, params: Params, x: Tensor, s: Tensor, factors: Any, m: Tensor, wrt: str, rev: bool
    ) -> Tensor:
        """One product with the Jacobian ``wrt`` ``"state"`` or ``"input"`` at ``(x, s)``.

        ``rev=False``: ``J m`` (jvp), ``rev=True``: ``Jᵀ m`` (vjp); ``m`` is ``(N, ·, k)``.
        The default differentiates :meth:`step` with ``torch.func`` (forward mode for jvp,
        reverse mode for vjp) with the ``k`` columns laid along the batch (``N · k`` rows,
        ``x`` and ``s`` repeated): a cell step treats the rows of a batch independently, so
        one call differentiates all columns at once and no ``vmap`` over the user's module
        is needed. Cost: ``k`` evaluations of the step (forward or backward).
        """
        n, k = x.shape[0], m.shape[-1]
        rows = x.shape[-1] if rev and wrt == "input" else s.shape[-1]
        if n * k == 0:  # nothing to differentiate: never call the user's cell on 0 rows
            return x.new_zeros((n, rows, k))
        xr = x.repeat_interleave(k, dim=0)
        sr = s.repeat_interleave(k, dim=0)
        cols = m.transpose(1, 2).reshape(n * k, m.shape[1]).to(x.dtype)
        with torch.enable_grad():
            if wrt == "state":
                fn, primal = (lambda st: self.step(params, xr, st)), sr
            else:
                fn, primal = (lambda xt: self.step(params, xt, sr)), xr
            if rev:
                _, pullback = torch.func.vjp(fn, primal)
                out = pullback(cols)[0]
            else:
                out = torch.func.jvp(fn, (primal,), (cols,))[1]
        return out.detach().reshape(n, k, rows).transpose(1, 2)

    def project_input(self, params: Params, x: Tensor) -> Tensor | None:
        """The part of a step that depends on the input alone, for many steps at once.

        A replay computes it for all ``T · B`` inputs of a layer in one GEMM and passes each
        step's rows to :meth:`step` and :meth:`step_factors` as ``xp``, which then skip their
        own input product. None (the default): the cell has no such part, and ``step`` is
        called without ``xp``.
        """
        return None

    def state_sweep(
        self,
        params: Params,
        factors: Sequence[Any],
        g_last: Tensor,
        out_cot: Tensor | None,
        valid: Tensor | None,
    ) -> Tensor | None:
        """``∂L/∂s_t`` for ``t = 0 … T`` by one backward sweep, or None (the generic loop).

        ``G_T = g_last + ō_T``, ``G_k = ō_k + J_{k+1}ᵀ G_{k+1}`` (``ō_k`` the output
        cotangent on the state's first part; a padded step passes ``G`` on unchanged), as
        :func:`gradscope.jacobians.bptt.stack_state_grads` computes with one
        :class:`Linearization` per step. An adapter may override it with a loop that
        skips the per-step objects (preallocated buffers, one GEMM and a few fused
        multiply-adds per step); the result must equal the generic loop's to rounding.

        Args:
            params: The layer's weights.
            factors: The linear factors of each of the ``T`` steps, kept by the replay.
            g_last: ``(B, D)`` cotangent of the final state.
            out_cot: ``(T, B, P)`` cotangent of the outputs ``h_1 … h_T`` (zeros at
                padding), or None.
            valid: ``(T, B)`` bool, True at real steps; None: all are.

        Returns:
            ``(T+1, B, D)`` in ``g_last``'s dtype, or None.
        """
        return None

    def run_factors(self, factors: Any, per_step: int) -> Any:
        """The linear factors of a block of steps, laid out for :meth:`state_jvp_run`.

        ``factors`` are :meth:`linear_factors` of the pairs of ``S`` consecutive steps,
        step-major, ``per_step`` pairs (sequences) per step. Called once per block; the
        default keeps them as they are.
        """
        return factors

    def state_jvp_run(
        self, params: Params, factors: Any, steps: Sequence[int], batch: Tensor | None, v: Tensor
    ) -> Tensor | None:
        """``J_{m-1} ⋯ J_0 v`` over ``m`` consecutive steps, or None (one product per step).

        :class:`~gradscope.jacobians.steps.StepOps` calls it inside QR iterations, where
        one product takes a fraction of a millisecond and the per-step objects of
        :meth:`product` would cost as much as the product. An adapter may override it with
        a loop over preallocated buffers; the result must equal ``m`` calls of
        :meth:`product` to rounding.

        Args:
            params: The layer's weights, in ``v``'s dtype.
            factors: :meth:`run_factors` of a block of steps.
            steps: The steps to apply, in order, as indices into that block (a ``range``
                in :class:`~gradscope.jacobians.steps.StepOps`).
            batch: The sequences (pairs of each step) that ``v``'s column blocks belong
                to, in order; None: every one.
            v: ``(D, n, k)``: the ``k`` columns of each of the ``n`` sequences side by
                side (so that a weight product is one GEMM over ``n · k`` columns).

        Returns:
            ``(D, n, k)`` in ``v``'s dtype, or None.
        """
        return None

    def state_vjp_run(
        self, params: Params, factors: Any, steps: Sequence[int], batch: Tensor | None, u: Tensor
    ) -> Tensor | None:
        """``J_{s_{m-1}}ᵀ ⋯ J_{s_0}ᵀ u`` (the steps in the order given), or None.

        The transposed products of :meth:`state_jvp_run`, for the backward walks of the
        decay curves, in the same columns layout ``(D, n, p)`` and with the same factors
        (:meth:`run_factors` of a block of steps, ``steps`` indexing into it). The result
        must equal :meth:`product` with ``rev=True`` to rounding.
        """
        return None

    def forced_states(
        self, params: Params, x: Tensor, h_prev: Tensor, s0: Tensor, keep_factors: bool
    ) -> Forced | None:
        """All ``T`` steps of a sequence whose outputs are known, in one batched call.

        Args:
            params: The cell's weights.
            x: Inputs ``(T, B, I)``.
            h_prev: The module's outputs one step back, ``(T, B, P)``: ``h_0`` (from
                ``s0``), ``h_1 … h_{T-1}``.
            s0: The initial states ``(B, D)``.
            keep_factors: Also return the linear factors of every step.

        Returns:
            :class:`Forced` ``(states s_0 … s_T (T+1, B, D), factors with T · B rows or
            None, carried)``, or None when the state is not determined by the outputs.
            The default covers cells whose state is their output (``D == P``):
            :meth:`step` (or :meth:`step_carried`) once on all ``T · B`` pairs
            ``(x_t, h_{t-1})``. Cost: the step's, over ``T · B`` rows.
        """
        T, B = x.shape[:2]
        if h_prev.shape[-1] != s0.shape[-1]:
            return None
        xs, ss = x.flatten(0, 1), h_prev.flatten(0, 1)
        carried = None
        if keep_factors:
            new, factors, carried = self.step_carried(params, xs, ss)
        else:
            new, factors = self.step(params, xs, ss), None
        return Forced(
            torch.cat([s0[None], new.unflatten(0, (T, B))]),
            factors,
            None if carried is None else carried.unflatten(0, (T, B)),
        )

    def step_carried(self, params: Params, x: Tensor, s: Tensor) -> tuple[Tensor, Any, Any]:
        """:meth:`step_factors` and the carried gate's pre-activations ``(N, H)``, or None.

        From the same gate evaluation, for the teacher-forced replay (:meth:`forced_states`),
        whose gate read-outs then multiply no weights of their own. The default:
        :meth:`step_factors` and None.
        """
        new, factors = self.step_factors(params, x, s)
        return new, factors, None

    def step_factors(self, params: Params, x: Tensor, s: Tensor) -> tuple[Tensor, Any]:
        """``(s_t, linear factors at (x, s))`` from one evaluation of the gates.

        A replay that will be back-propagated keeps the factors, so the sweep does not
        compute the gates a second time. Closed-form adapters override it (the state must be
        bitwise what :meth:`step` returns); the default is :meth:`step` and no factors.
        """
        return self.step(params, x, s), None

    def linearize(self, params: Params, x: Tensor, s: Tensor) -> Linearization:
        """The four Jacobian products at the pairs ``(x, s)``, factors computed once."""
        with torch.no_grad():
            factors = self.linear_factors(params, x, s)
        return Linearization(self, params, x, s, factors)

    def jvp_state(self, params: Params, x: Tensor, s: Tensor, v: Tensor) -> Tensor:
        """``J_t @ v`` per pair: ``v`` ``(N, D, k)`` -> ``(N, D, k)``; never forms ``J_t``."""
        return self.linearize(params, x, s).jvp_state(v)

    def vjp_state(self, params: Params, x: Tensor, s: Tensor, u: Tensor) -> Tensor:
        """``J_tᵀ @ u`` per pair: ``u`` ``(N, D, k)`` -> ``(N, D, k)``."""
        return self.linearize(params, x, s).vjp_state(u)

    def jvp_input(self, params: Params, x: Tensor, s: Tensor, v: Tensor) -> Tensor:
        """``K_t @ v`` per pair (``K = ∂s_t/∂x_t``): ``v`` ``(N, I, k)`` -> ``(N, D, k)``."""
        return self.linearize(params, x, s).jvp_input(v)

    def vjp_input(self, params: Params, x: Tensor, s: Tensor, u: Tensor) -> Tensor:
        """``K_tᵀ @ u`` per pair: ``u`` ``(N, D, k)`` -> ``(N, I, k)``."""
        return self.linearize(params, x, s).vjp_input(u)

    # ------------------------------------------------------------------ recording
    def cell_params(self, module: nn.Module) -> Params:
        """The weights of a single-step cell module (``nn.RNNCell`` etc.), detached."""
        return {
            name: p.detach() for name, p in module.named_parameters(recurse=False) if p is not None
        }

    def fused_params(self, module: nn.Module, layer: int, reverse: bool) -> Params:
        """The weights of one layer and direction of a fused module (``nn.LSTM`` etc.)."""
        suffix = f"_l{layer}" + ("_reverse" if reverse else "")
        out: Params = {}
        for base in ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr"):
            p = getattr(module, base + suffix, None)
            if p is not None:
                out[base] = p.detach()
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}(kind={self.kind!r})"


#: The old private name of :func:`take_rows`.
_take_rows = take_rows

__all__ = [
    "BLOCK",
    "DENSE",
    "DERIVED",
    "DIAGONAL",
    "MATHS",
    "SCALAR_IDENTITY",
    "STRUCTURES",
    "CellAdapter",
    "Forced",
    "Linearization",
    "Params",
    "split_steps",
    "take_rows",
]
