r"""A module recorded through its package's own step function: :func:`register_step`.

Most packages that run a recurrence over whole sequences (a parallel scan, a fused kernel)
also ship the step that generation uses: ``MambaBlock.step(x, cache)``, ``ssm_step``,
``forward_rnn``, a call with ``T = 1`` and a previous state. That step *is* the recurrence,

.. math:: (y_t,\ s_t) = \mathrm{step}(x_t,\ s_{t-1}),

so a user who names it gets an adapter without writing any maths::

    gs.register_step(
        MambaBlock,
        step=MambaBlock.step,  # step(module, x_t, state) -> (y_t, next_state)
        state=lambda b: {"h": (b.config.d_inner, b.config.d_state),
                         "conv": (b.config.d_inner, b.config.d_conv - 1)},
    )

What the user gives: ``step`` (called as ``step(module, x_t, state)`` on a batch: ``x_t``
``(N, I)``, ``state`` a Tensor ``(N, *shape)`` or a tuple of them in the order of ``state``,
returning ``(y_t, next_state)`` in the same layout), the state's layout ``state(module)``
(the shape of each part without the batch dimension, a dict of names to shapes or one shape),
and optionally how to read the per-step inputs from the forward's arguments (``inputs``;
default: its first positional argument, ``(B, T, I)``, or ``(T, B, I)`` with
``batch_first=False``) and the initial state (``initial``; default: zeros).

What gradscope derives: the state vector (the parts flattened and concatenated, ``D``), the
drive (the per-step inputs, time-major), the replay (the step from ``s_0``) and its check
(the ``y_t`` of every step, stacked, against what the module's forward returned: a step
that is not the forward's recurrence fails loudly, never silently), the Jacobian products
(``torch.func.jvp`` / ``vjp`` of the step with the ``k`` columns laid along the batch: ``k``
evaluations of the step per product, no ``D × D`` matrix) and a guard that refuses calls of
``step`` while recording (a generation loop continues a state no hook sees). The transition
is analysed as dense (no ``diagonal``): for the exact diagonal analysis, write the adapter
(:func:`gradscope.register_sequence`).

Like a custom cell (:mod:`gradscope.cells.generic`), the adapter holds its module (the
step is the package's code), so a saved trace of it is analysed with the live module, and
the step runs under ``torch.func.functional_call`` with the recorded weights.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from copy import copy
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from gradscope.cells import register_cell
from gradscope.cells.base import DENSE, Params
from gradscope.cells.generic import describe, warn_held_elsewhere
from gradscope.errors import AdapterContractError, ArgumentTypeError, GradscopeError
from gradscope.sequences.base import Drive, SequenceAdapter

#: Prefix of the configuration entries among the parameters (never a parameter's name).
_CONFIG = "@"


class _Bound(nn.Module):
    """``step(module, x, state)`` as a module's forward, so ``functional_call`` can swap weights."""

    def __init__(self, module: nn.Module, step: Callable[..., Any]) -> None:
        super().__init__()
        self.inner = module
        self._step = step

    def forward(self, x: Tensor, state: Any) -> Any:
        return self._step(self.inner, x, state)


class StepAdapter(SequenceAdapter):
    """A module's recurrence taken from its own step function (see :mod:`.step`).

    Made by :func:`register_step`; :meth:`for_module` binds it to one module.
    """

    structure = DENSE
    closed_form = False

    def __init__(
        self,
        module_type: type[nn.Module],
        step: Callable[..., Any],
        state: Callable[[nn.Module], Any],
        inputs: Callable[..., Tensor] | None,
        initial: Callable[..., Any] | None,
        batch_first: bool,
        kind: str,
    ) -> None:
        self.module_type = module_type
        self._step, self._layout, self._inputs = step, state, inputs
        self._initial, self.batch_first, self.kind = initial, bool(batch_first), kind
        self.module: nn.Module | None = None
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._input_size: int | None = None

    # ------------------------------------------------------------------ binding
    def _name(self) -> str:
        return f"register_step({self.module_type.__name__})"

    def _shapes_of(self, module: nn.Module) -> dict[str, tuple[int, ...]]:
        layout = self._layout(module)
        if isinstance(layout, Mapping):
            items = list(layout.items())
        elif isinstance(layout, Sequence) and all(isinstance(d, int) for d in layout):
            items = [("h", layout)]
        else:
            items = None
        if not items or any(
            not isinstance(shape, Sequence) or not all(isinstance(d, int) and d >= 1 for d in shape)
            for _, shape in items
        ):
            raise AdapterContractError(
                f"{self._name()}: state(module) must give the shape of each state part without "
                f"the batch dimension, e.g. {{'h': (64, 16), 'conv': (64, 3)}} or (64,); got "
                f"{layout!r}"
            )
        return {str(k): tuple(int(d) for d in shape) for k, shape in items}

    def for_module(self, module: nn.Module) -> StepAdapter:
        """This adapter bound to ``module``: its step, state layout and weights."""
        if self.module is module:
            return self
        out = copy(self)
        out.module = module
        out._shapes = self._shapes_of(module)
        out.state_names = tuple(out._shapes)
        out._input_size = None
        return out

    def _live(self) -> nn.Module:
        if self.module is None:
            raise GradscopeError(
                f"{self.kind}: this layer's Jacobians come from the module's own step function, "
                f"so they need the live {self.module_type.__name__}; register it again with "
                "gs.register_step in this process and analyse the trace recorded from it"
            )
        return self.module

    # ------------------------------------------------------------------ layout
    def state_sizes(self, params: Params) -> tuple[int, ...]:
        """The parts' sizes, ``∏ shape`` each."""
        self._live()
        return tuple(math.prod(s) for s in self._shapes.values())

    def input_size(self, params: Params) -> int:
        """``I``, the width of the per-step inputs (known once the module has been called)."""
        if self._input_size is None:
            raise GradscopeError(f"{self.kind}: the input size is known after one recorded call")
        return self._input_size

    def _native(self, s: Tensor) -> Any:
        parts = torch.split(s, list(self.state_sizes({})), dim=-1)
        shaped = [p.reshape(p.shape[0], *shape) for p, shape in zip(parts, self._shapes.values())]
        return shaped[0] if len(shaped) == 1 else tuple(shaped)

    def _flat(self, native: Any, n: int, where: str) -> Tensor:
        parts = (native,) if isinstance(native, Tensor) else native
        want = [(n, *shape) for shape in self._shapes.values()]
        ok = isinstance(parts, (tuple, list)) and len(parts) == len(want)
        ok = ok and all(isinstance(p, Tensor) and tuple(p.shape) == w for p, w in zip(parts, want))
        if not ok:
            raise AdapterContractError(
                f"{self._name()}: {where} gave the state {describe(native)}; state(module) "
                f"declares {', '.join(f'{k} {(n, *s)}' for k, s in self._shapes.items())} "
                f"(a Tensor for one part, a tuple in that order for several)"
            )
        return torch.cat([p.reshape(n, -1) for p in parts], dim=-1)

    # ------------------------------------------------------------------ recording
    def module_params(self, module: nn.Module) -> Params:
        """Every parameter and buffer of the module, detached (what ``functional_call`` swaps)."""
        out: Params = {n: p.detach() for n, p in module.named_parameters()}
        out.update({n: b.detach() for n, b in module.named_buffers()})
        return out

    def refused_methods(self, module: nn.Module) -> dict[str, str]:
        """The step itself, when it is a method of the module's class (generation)."""
        name = getattr(self._step, "__name__", "")
        if name and getattr(type(module), name, None) is self._step:
            return {
                name: (
                    f"gradscope records a {type(module).__name__} (registered with "
                    f"gs.register_step) through its forward; {name}() continues a state no "
                    "hook sees, so it is not recorded. Step outside gs.record / gs.trace "
                    "(inside a gs.Monitor: in `with monitor.paused():`)."
                )
            }
        return {}

    def initial_state(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> Any:
        """``initial(module, *args, **kwargs)`` flattened, before the call; None: zeros."""
        if self._initial is None:
            return None
        native = self._initial(module, *args, **kwargs)
        if native is None:
            return None
        n = (native if isinstance(native, Tensor) else native[0]).shape[0]
        return self._flat(native, n, "initial(module, ...)")

    def drive(self, params: Params, args: tuple, kwargs: dict[str, Any]) -> Drive:
        """The per-step inputs, time-major."""
        module = self._live()
        if self._inputs is not None:
            x = self._inputs(module, *args, **kwargs)
        else:
            x = args[0] if args else next(iter(kwargs.values()), None)
        if not isinstance(x, Tensor) or x.ndim != 3 or not x.is_floating_point():
            raise AdapterContractError(
                f"{self._name()}: the per-step inputs must be a floating (B, T, I) tensor "
                f"({'T, B, I' if not self.batch_first else 'batch first'}), got {describe(x)}; "
                "pass inputs=lambda module, *args, **kwargs: ... to say where they are"
            )
        u = x.transpose(0, 1) if self.batch_first else x
        if self._input_size is not None and self._input_size != u.shape[-1]:
            raise AdapterContractError(
                f"{self._name()}: inputs of width {u.shape[-1]}, earlier calls {self._input_size}"
            )
        self._input_size = int(u.shape[-1])
        warn_held_elsewhere(module, "register_step: module")
        return Drive(u.detach())

    # ------------------------------------------------------------------ maths
    def _call(self, params: Params, x: Tensor, s: Tensor) -> tuple[Any, Tensor]:
        bound = _Bound(self._live(), self._step)
        weights = {"inner." + k: v for k, v in params.items() if not k.startswith(_CONFIG)}
        out = functional_call(bound, weights, (x, self._native(s)), strict=False)
        if not isinstance(out, (tuple, list)) or len(out) != 2:
            raise AdapterContractError(
                f"{self._name()}: step(module, x_t, state) must return (y_t, next_state), got "
                f"{describe(out)}"
            )
        return out[0], self._flat(out[1], x.shape[0], "step(module, x_t, state)")

    def step(self, params: Params, x: Tensor, s: Tensor) -> Tensor:
        """``s_t``: the package's step, its state flattened."""
        return self._call(params, x, s)[1]

    def readout(self, params: Params, u: Tensor, states: Tensor) -> Tensor:
        """The ``y_t`` of every step from one batched call of the step, stacked like the forward."""
        T, B = u.shape[:2]
        y, _ = self._call(params, u.flatten(0, 1), states[:-1].flatten(0, 1))
        if not isinstance(y, Tensor):
            raise AdapterContractError(
                f"{self._name()}: step's y_t must be a Tensor, got {describe(y)}"
            )
        y = y.unflatten(0, (T, B))
        return y.transpose(0, 1) if self.batch_first else y


def register_step(
    module_type: type[nn.Module],
    *,
    step: Callable[..., Any],
    state: Callable[[nn.Module], Any],
    inputs: Callable[..., Tensor] | None = None,
    initial: Callable[..., Any] | None = None,
    batch_first: bool = True,
    kind: str | None = None,
    overwrite: bool = False,
) -> None:
    """Record every ``module_type`` (and subclasses) through its package's own step function.

    Example (mambapy's block; the full example is ``examples/step.py``)::

        gs.register_step(MambaBlock, step=MambaBlock.step, state=lambda b: {
            "h": (b.config.d_inner, b.config.d_state),
            "conv": (b.config.d_inner, b.config.d_conv - 1)})

    Args:
        module_type: The ``nn.Module`` subclass whose forward runs whole sequences.
        step: ``step(module, x_t, state) -> (y_t, next_state)`` on a batch (``x_t``
            ``(N, I)``; ``state`` a Tensor ``(N, *shape)`` or a tuple of them in the order of
            ``state``), e.g. the unbound method ``Module.step``. Its ``y_t`` of every step,
            stacked over time, must be what the forward returns (the replay check).
        state: ``state(module)``: the shape of each state part without the batch dimension,
            ``{"h": (64, 16), "conv": (64, 3)}``, or one shape ``(64,)`` (a part ``"h"``).
        inputs: ``inputs(module, *args, **kwargs)``: the per-step inputs ``(B, T, I)`` from
            the forward's arguments; default: the first positional argument.
        initial: ``initial(module, *args, **kwargs)``: the state before the first step
            (native layout, or None for zeros), called before the forward runs; default: zeros.
        batch_first: The inputs and the forward's output are ``(B, T, ...)`` (False:
            ``(T, B, ...)``).
        kind: The layers' kind (default ``"step:" + module.qualname``).
        overwrite: Replace an existing registration of ``module_type`` (a built-in adapter
            included).

    Raises:
        ArgumentTypeError: ``step``, ``state``, ``inputs`` or ``initial`` is not callable.
        GradscopeError: ``module_type`` is registered already and ``overwrite`` is False.
    """
    if not (isinstance(module_type, type) and issubclass(module_type, nn.Module)):
        raise ArgumentTypeError(
            f"register_step: module_type must be an nn.Module subclass, got {module_type!r}"
        )
    for name, fn in (("step", step), ("state", state), ("inputs", inputs), ("initial", initial)):
        if fn is not None and not callable(fn):
            raise ArgumentTypeError(
                f"register_step: {name} must be a function, got {type(fn).__name__}"
            )
    qual = f"{module_type.__module__}.{module_type.__qualname__}"
    adapter = StepAdapter(
        module_type, step, state, inputs, initial, batch_first, kind or f"step:{qual}"
    )
    register_cell(module_type, adapter, overwrite=overwrite)


__all__ = ["StepAdapter", "register_step"]
