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

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from gradscope.errors import ArgumentError, ArgumentTypeError, ShapeError

Params = dict[str, Tensor]

#: Structure tags of a state Jacobian (:attr:`CellAdapter.structure`), for the analysis.
DENSE = "dense"  #: no structure to exploit
BLOCK = "block"  #: blocks per state part, some of them diagonal (LSTM: ``∂c/∂c = diag(f)``)
DIAGONAL = "diagonal"  #: ``J_t`` is diagonal (Mamba, minGRU, LRU, RG-LRU)
SCALAR_IDENTITY = "scalar_identity"  #: a scalar per head times the identity (mLSTM, GLA)
STRUCTURES = (DENSE, BLOCK, DIAGONAL, SCALAR_IDENTITY)


#: Ranges of configuration numbers (:attr:`CellAdapter.config`), and their words.
CONFIG_RULES = {
    "count": lambda x: x >= 1 and float(x).is_integer(),
    "positive": lambda x: math.isfinite(x) and x > 0,
    "nonnegative": lambda x: math.isfinite(x) and x >= 0,
    "limit": lambda x: not math.isnan(x) and x >= 0,  # may be +inf (no limit)
    "flag": lambda x: x in (0.0, 1.0),
    "finite": math.isfinite,
}
CONFIG_TEXT = {
    "count": "a whole number >= 1",
    "positive": "a finite number > 0",
    "nonnegative": "a finite number >= 0",
    "limit": "a number >= 0 (or inf)",
    "flag": "0 or 1",
    "finite": "finite",
}


class Forced(NamedTuple):
    """What :meth:`CellAdapter.forced_states` returns."""

    states: Tensor  # s_0 … s_T, (T+1, B, D)
    factors: Any  # the linear factors of every step (T · B rows), or None
    #: The carried gate's pre-activations ``(T, B, H)`` (LSTM ``a_f``, GRU ``a_z``, vanilla
    #: ``a``) from the same product as the states, or None: gate read-outs then recompute
    #: them from the weights.
    carried: Tensor | None = None


class CellAdapter(ABC):
    """One family of recurrent cell: its step, its state layout and its Jacobians.

    Subclasses set :attr:`kind` (a unique string, used to find the adapter again when a trace
    is loaded) and :attr:`state_names`, and implement the abstract methods. Register an
    adapter for a module type with :func:`gradscope.register_cell`.
    """

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

    # ------------------------------------------------------------------ layout
    def check_params(self, params: Params) -> None:
        """Raise :class:`~gradscope.errors.ArgumentError` if ``params`` are not this family's.

        The default checks :attr:`config` (each number present, 0-d and in its range);
        adapters add constraints between numbers (e.g. heads dividing a width). Called for
        traces built by hand or loaded from a file, never on the recording's hot path.
        """
        for key, rule in self.config.items():
            name = key.rstrip("?")
            if name not in params:
                if key.endswith("?"):
                    continue
                raise ArgumentError(f"{self.kind}: params lack the configuration number {name!r}")
            v = params[name]
            if not isinstance(v, Tensor) or v.ndim != 0:
                got = tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__
                raise ArgumentError(
                    f"{self.kind}: params[{name!r}] must be a 0-d tensor, got {got}"
                )
            x = float(v)
            if not CONFIG_RULES[rule](x):
                raise ArgumentError(
                    f"{self.kind}: params[{name!r}] = {x:g} is not {CONFIG_TEXT[rule]}; this is "
                    "not a configuration the family has (a trace made or edited by hand?)"
                )

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

    @abstractmethod
    def jacobian_state(self, params: Params, x: Tensor, s: Tensor) -> Tensor:
        """State Jacobians ``∂s_t/∂s_{t-1}``, shape ``(N, D, D)``; row = output component."""

    @abstractmethod
    def jacobian_input(self, params: Params, x: Tensor, s: Tensor) -> Tensor:
        """Input Jacobians ``∂s_t/∂x_t``, shape ``(N, D, I)``."""

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
    ) -> Forced | tuple[Tensor, Any] | None:
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
            None, carried)`` (a plain ``(states, factors)`` pair from an override is read
            as ``carried=None``), or None when the state is not determined by the outputs.
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


def _take_rows(factors: Any, idx: Tensor | slice) -> Any:
    """Rows ``idx`` of every tensor in ``factors`` (a tensor, a (named) tuple of them, None).

    A slice gives views (no copy), an index tensor copies.
    """
    if factors is None:
        return None
    if isinstance(factors, Tensor):
        return factors[idx]
    if isinstance(factors, tuple):
        parts = [_take_rows(f, idx) for f in factors]
        return type(factors)(*parts) if hasattr(factors, "_fields") else tuple(parts)
    raise ArgumentTypeError(f"cannot slice linear factors of type {type(factors).__name__}")


def split_steps(factors: Any, steps: int) -> list[Any]:
    """Factors of ``steps · B`` step-major rows as one view of ``B`` rows per step.

    The same views as :func:`_take_rows` with ``slice(t · B, (t + 1) · B)`` for every
    ``t``, from one ``unbind`` per tensor instead of a recursive slice per step and field
    (a Monitor's sampled step: 50 steps of an LSTM's five factors, 1.2 ms → 0.1 ms).
    """
    if factors is None or steps == 0:
        return [None] * steps
    if isinstance(factors, Tensor):
        return list(factors.unflatten(0, (steps, -1)).unbind(0))
    if isinstance(factors, tuple):
        parts = [split_steps(f, steps) for f in factors]
        named = hasattr(factors, "_fields")
        return [type(factors)(*row) if named else tuple(row) for row in zip(*parts)]
    raise ArgumentTypeError(f"cannot slice linear factors of type {type(factors).__name__}")


class Linearization:
    """An adapter's Jacobian products at fixed pairs ``(x, s)`` (``N`` of them).

    The per-pair factors (gates and their derivatives) are computed once, so applying the
    same step's Jacobian many times (an Arnoldi iteration, a state and an input product at
    one lag) costs one weight product each. Every method takes a block of ``k`` columns per
    pair and returns one, in the pairs' dtype, without tracking gradients:

    * :meth:`jvp_state` ``(N, D, k) -> (N, D, k)``: ``J_t v``;
    * :meth:`vjp_state` ``(N, D, k) -> (N, D, k)``: ``J_tᵀ u``;
    * :meth:`jvp_input` ``(N, I, k) -> (N, D, k)``: ``K_t v``;
    * :meth:`vjp_input` ``(N, D, k) -> (N, I, k)``: ``K_tᵀ u``.

    Raises:
        ShapeError: a block of the wrong shape (the message names the cell kind).
    """

    def __init__(self, adapter: CellAdapter, params: Params, x: Tensor, s: Tensor, factors: Any):
        self.adapter, self.params, self.x, self.s, self.factors = adapter, params, x, s, factors

    def rows(self, idx: Tensor | slice) -> Linearization:
        """The linearisation at a subset of the pairs (factors sliced, not recomputed)."""
        return Linearization(
            self.adapter, self.params, self.x[idx], self.s[idx], _take_rows(self.factors, idx)
        )

    def _apply(self, name: str, m: Tensor, rows: int, wrt: str, rev: bool) -> Tensor:
        self.adapter.check_block(name, m, self.x.shape[0], rows)
        if self.adapter.closed_form:
            with torch.no_grad():
                return self.adapter.product(
                    self.params, self.x, self.s, self.factors, m.to(self.x.dtype), wrt, rev
                )
        return self.adapter.product(self.params, self.x, self.s, self.factors, m, wrt, rev)

    def apply(self, wrt: str, transpose: bool, m: Tensor) -> Tensor:
        """The product chosen by ``wrt`` (``"state"``/``"input"``) and ``transpose``."""
        if wrt == "state":
            return self.vjp_state(m) if transpose else self.jvp_state(m)
        return self.vjp_input(m) if transpose else self.jvp_input(m)

    def jvp_state(self, v: Tensor) -> Tensor:
        """``J_t v``."""
        return self._apply("jvp_state", v, self.s.shape[-1], "state", False)

    def vjp_state(self, u: Tensor) -> Tensor:
        """``J_tᵀ u``."""
        return self._apply("vjp_state", u, self.s.shape[-1], "state", True)

    def jvp_input(self, v: Tensor) -> Tensor:
        """``K_t v``."""
        return self._apply("jvp_input", v, self.x.shape[-1], "input", False)

    def vjp_input(self, u: Tensor) -> Tensor:
        """``K_tᵀ u``."""
        return self._apply("vjp_input", u, self.s.shape[-1], "input", True)
