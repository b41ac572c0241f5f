r"""A user's own recurrent cell, differentiated with ``torch.func``.

Any module whose forward follows the convention

    forward(x_t, state) -> state

with ``x_t`` of shape ``(B, I)`` and ``state`` a Tensor ``(B, D)`` or a tuple of Tensors
``(B, D_1), (B, D_2), ...`` (the same structure and shapes in and out) can be recorded by
naming it in ``gs.record(model, cells=[...])``. Its state parts are concatenated into the flat
state ``s = (s_1, s_2, ...)`` of size ``D = Σ D_k`` like every other cell.

There is no closed form, so the Jacobians come from reverse-mode autodiff. The cell is
always called the way the model calls it, *batched*: sequences do not interact inside a
cell step, so for a batch of ``N`` pairs

    ∂/∂s_m [Σ_n f(x_n, s_n)]_i = ∂f(x_m, s_m)_i/∂s_m,

and one ``torch.func.jacrev`` of ``s ↦ Σ_n f(x_n, s_n)`` (``D`` vector-Jacobian products,
vectorised with ``vmap``) yields all ``N`` Jacobians at once as ``(D, N, D)``, rearranged to
``(N, D, D)``. The cell never has to accept unbatched inputs. The identity needs the
sequences of a batch to be independent inside the cell (no batch statistics such as
``BatchNorm`` in training mode); a cell that mixes sequences gets the Jacobian of the batch
sum, which is not a per-sequence Jacobian. Likewise the cell must be deterministic: a cell
with active dropout (training mode) is differentiated at whatever mask the call draws, and
that draw advances the global RNG.

Jacobian products (``jvp_state``, ``vjp_state``, ``jvp_input``, ``vjp_input``) rest on the same
identity: :meth:`CellAdapter.product`'s default lays the ``k`` columns of a block along the
batch (``N · k`` rows, ``x`` and ``s`` repeated) and makes one ``torch.func.jvp`` (forward
mode) or ``torch.func.vjp`` (reverse mode) call through the batched module, never ``jacrev``
and never ``vmap`` over the module: ``O(k)`` evaluations of the cell per pair, no ``D × D``
matrix.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, jacrev

from gradscope.cells.base import CellAdapter, Params
from gradscope.errors import CellConventionError, GradscopeError, GradscopeWarning

_CONVENTION = (
    "forward(x_t, state) -> state, with x_t a Tensor (B, I) and state a Tensor (B, D) or a "
    "tuple of Tensors (B, D_k), returned with the same structure and shapes it was given"
)


def describe(obj: Any) -> str:
    """A short description of ``obj``'s type and shapes for error messages."""
    if isinstance(obj, Tensor):
        return f"Tensor{tuple(obj.shape)}"
    if isinstance(obj, (tuple, list)):
        inner = ", ".join(describe(o) for o in obj)
        return f"{type(obj).__name__}({inner})"
    return type(obj).__name__


#: The way out for a module that runs whole sequences per call, named in cells=[...].
WHOLE_SEQUENCE = (
    "A module that runs a whole sequence per call is recorded through its own step function, "
    "gs.register_step(Module, step=Module.step, state=...) (examples/step.py), or its "
    "recurrence, gs.register_sequence(Module, MyAdapter()) (examples/mingru.py, "
    "examples/lru.py), not by naming it in cells=[...]"
)


def seen(args: Sequence[Any]) -> str:
    """The shapes a cell was called with, named as the convention names them.

    ``"x_t (B, I) = (2, 8), state (B, D) = (2, 16)"``; a 3-D input reads
    ``"x (B, T, I) = (2, 10, 8)"`` (a whole sequence), a tuple state
    ``"state (B, D_k) = (2, 16), (2, 16)"``, anything else by :func:`describe`.
    """
    out = []
    for k, a in enumerate(args):
        if k == 0 and isinstance(a, Tensor) and a.ndim in (2, 3):
            dims = "(B, I)" if a.ndim == 2 else "(B, T, I)"
            out.append(f"{'x_t' if a.ndim == 2 else 'x'} {dims} = {tuple(a.shape)}")
        elif k == 1 and isinstance(a, Tensor) and a.ndim == 2:
            out.append(f"state (B, D) = {tuple(a.shape)}")
        elif (
            k == 1 and isinstance(a, (tuple, list)) and a and all(isinstance(p, Tensor) for p in a)
        ):
            out.append(f"state (B, D_k) = {', '.join(str(tuple(p.shape)) for p in a)}")
        else:
            what = "None" if a is None else describe(a)
            out.append(("x_t " if k == 0 else "state " if k == 1 else "") + what)
    return ", ".join(out)


def held_elsewhere(module: nn.Module, limit: int = 4) -> list[str]:
    """Where ``module`` keeps its own parameters outside the attributes ``functional_call`` swaps.

    ``torch.func.functional_call`` replaces a module's parameters by their names in
    ``named_parameters()``; a module that also keeps them in a plain ``dict``, ``list`` or
    ``tuple`` attribute (``ncps``' ``LTCCell`` reads ``self._params["gleak"]``) computes with
    its live parameters instead. Returns up to ``limit`` such places
    (``"cell._params['gleak']"``), found by one walk over the submodules' ``__dict__``.
    """
    own = {id(p) for p in module.parameters()}
    found: list[str] = []
    for path, sub in module.named_modules():
        for attr, value in vars(sub).items():
            if attr in ("_parameters", "_buffers", "_modules"):
                continue
            items = (
                value.items()
                if isinstance(value, dict)
                else enumerate(value)
                if isinstance(value, (list, tuple))
                else ()
            )
            for key, item in items:
                if isinstance(item, nn.Parameter) and id(item) in own:
                    found.append(f"{path + '.' if path else ''}{attr}[{key!r}]")
                    if len(found) >= limit:
                        return found
    return found


def warn_held_elsewhere(module: nn.Module, what: str) -> None:
    """Warn that ``module``'s Jacobians will read its live weights (:func:`held_elsewhere`)."""
    places = held_elsewhere(module)
    if places:
        warnings.warn(
            f"{what} {_class_name(module)} keeps parameters outside its attributes "
            f"(e.g. {', '.join(places)}), which torch.func.functional_call cannot replace: "
            "its Jacobians are computed with the module's live weights, not the recorded "
            "ones. Analyse the trace before the weights change (e.g. before optimizer.step()), "
            "or register an adapter for it.",
            GradscopeWarning,
            stacklevel=3,
        )


def _class_name(module: nn.Module) -> str:
    cls = type(module)
    return f"{cls.__module__}.{cls.__qualname__}"


class GenericAdapter(CellAdapter):
    """Adapter for one instance of a user-defined cell, Jacobians via ``torch.func``.

    Unlike the built-in adapters it holds its module (the step *is* the module's forward),
    so Jacobians of a trace recorded with it need the live module or Jacobians stored in the
    saved file. Build it with :meth:`from_call`, which infers and validates the state layout
    from one real call.

    Args:
        module: The cell module; its forward follows ``forward(x_t, state) -> state``.
        state_sizes: Sizes ``D_k`` of the state's parts, in order.
        tuple_state: Whether the module's native state is a tuple of Tensors (True) or one
            Tensor (False; then ``state_sizes`` has one entry).
        input_size: Size ``I`` of ``x_t`` (needed by :meth:`input_size`), if known.
        state_names: Names of the parts. Defaults to ``("h",)`` for a Tensor state and
            ``("s0", "s1", ...)`` for a tuple: gradscope cannot know what a custom cell's
            parts mean, so it names them by position rather than guess.

    Raises:
        GradscopeError: Inconsistent ``state_sizes`` / ``tuple_state`` / ``state_names``.
    """

    closed_form = False

    def __init__(
        self,
        module: nn.Module,
        state_sizes: Sequence[int],
        tuple_state: bool,
        input_size: int | None = None,
        state_names: Sequence[str] | None = None,
    ) -> None:
        if not isinstance(module, nn.Module):
            raise GradscopeError(f"GenericAdapter needs an nn.Module, got {type(module).__name__}")
        sizes = tuple(int(d) for d in state_sizes)
        name = _class_name(module)
        if not sizes or any(d < 1 for d in sizes):
            raise GradscopeError(f"custom cell {name}: state sizes must be >= 1, got {sizes}")
        if not tuple_state and len(sizes) != 1:
            raise GradscopeError(
                f"custom cell {name}: a Tensor state has one part, got sizes {sizes}"
            )
        if state_names is None:
            state_names = ("h",) if not tuple_state else tuple(f"s{k}" for k in range(len(sizes)))
        if len(state_names) != len(sizes):
            raise GradscopeError(
                f"custom cell {name}: {len(state_names)} state names {tuple(state_names)} "
                f"for {len(sizes)} parts {sizes}"
            )
        self.module = module
        self.tuple_state = bool(tuple_state)
        self.kind = "custom:" + name
        self.state_names = tuple(state_names)
        self._sizes = sizes
        self._input_size = None if input_size is None else int(input_size)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_call(cls, module: nn.Module, x: Any, state: Any, output: Any) -> GenericAdapter:
        """Infer the state layout from one call ``output = module(x, state)`` and validate it.

        Args:
            module: The cell that was called.
            x: Its first argument, the input ``(B, I)``.
            state: Its second argument, the previous state (Tensor or tuple of Tensors).
            output: What the forward returned.

        Returns:
            An adapter for ``module``.

        Raises:
            CellConventionError: The call does not follow ``forward(x_t, state) -> state``:
                the message names the module class, what was passed and returned, and the
                convention.
        """
        name = _class_name(module)

        def fail(problem: str, way_out: str = "") -> CellConventionError:
            return CellConventionError(
                f"custom cell {name}: {problem}. Called with {seen((x, state))}; returned "
                f"{describe(output)}. gradscope records cells whose forward is {_CONVENTION}. "
                + (
                    way_out
                    or "Wrap the cell in a module with that signature, or register closed "
                    "forms with gradscope.register_cell"
                )
                + "."
            )

        if isinstance(x, Tensor) and x.ndim == 3:
            raise fail("the input x_t must be one step, a 2-D Tensor (B, I)", WHOLE_SEQUENCE)
        if not isinstance(x, Tensor) or x.ndim != 2:
            raise fail("the input x_t must be a 2-D Tensor (B, I)")
        if not x.is_floating_point():
            raise fail(f"the input x_t must be floating point to be differentiated, not {x.dtype}")
        if isinstance(state, Tensor):
            parts_in: tuple[Any, ...] = (state,)
            tuple_state = False
        elif isinstance(state, (tuple, list)) and len(state) > 0:
            parts_in = tuple(state)
            tuple_state = True
        elif state is None:
            raise fail(
                "the state was None; pass the initial state explicitly (e.g. zeros) so "
                "that it can be recorded"
            )
        else:
            raise fail("the state must be a Tensor or a non-empty tuple of Tensors")
        batch = x.shape[0]
        for k, part in enumerate(parts_in):
            if not isinstance(part, Tensor) or part.ndim != 2 or part.shape[0] != batch:
                raise fail(f"state part {k} must be a 2-D Tensor (B={batch}, D_{k})")
            if not part.is_floating_point():
                raise fail(f"state part {k} must be floating point, not {part.dtype}")
        adapter = cls(
            module,
            [p.shape[1] for p in parts_in],
            tuple_state,
            input_size=x.shape[1],
        )
        adapter.pack_output(output, batch=batch, given=state)
        warn_held_elsewhere(module, "custom cell")
        return adapter

    # ------------------------------------------------------------------ layout
    def state_sizes(self, params: Params) -> tuple[int, ...]:
        """The sizes fixed at construction (``params`` is not needed)."""
        return self._sizes

    def input_size(self, params: Params) -> int:
        """``I`` as seen in the call the adapter was built from.

        Raises:
            GradscopeError: The adapter was constructed without ``input_size``.
        """
        if self._input_size is None:
            raise GradscopeError(
                f"{self.kind}: input size unknown; build the adapter with "
                "GenericAdapter.from_call or pass input_size"
            )
        return self._input_size

    def unpack_state(self, s: Tensor, params: Params | None = None) -> Tensor | tuple[Tensor, ...]:
        """Split ``(..., D)`` into the module's native state (a 1-tuple stays a tuple)."""
        parts = torch.split(s, list(self._sizes), dim=-1)
        return tuple(parts) if self.tuple_state else parts[0]

    def pack_output(self, output: Any, batch: int, given: Any = None) -> Tensor:
        """Validate a forward's return value and concatenate it into ``(B, D)``.

        Args:
            output: What the module returned.
            batch: The batch size ``B`` it was called with.
            given: The state it was called with (only for the error message).

        Raises:
            CellConventionError: ``output`` is not a state of this cell's layout.
        """
        expected = (
            f"tuple({', '.join(f'Tensor({batch}, {d})' for d in self._sizes)})"
            if self.tuple_state
            else f"Tensor({batch}, {self._sizes[0]})"
        )
        if self.tuple_state:
            ok = isinstance(output, (tuple, list)) and len(output) == len(self._sizes)
            parts = tuple(output) if ok else ()
        else:
            ok = isinstance(output, Tensor)
            parts = (output,) if ok else ()
        ok = ok and all(
            isinstance(p, Tensor) and tuple(p.shape) == (batch, d)
            for p, d in zip(parts, self._sizes)
        )
        if not ok:
            given_txt = "" if given is None else f" It was given state={describe(given)}."
            raise CellConventionError(
                f"custom cell {self.kind[len('custom:') :]}: forward returned "
                f"{describe(output)}, expected the next state {expected}.{given_txt} "
                f"gradscope records cells whose forward is {_CONVENTION}. Wrap the cell so "
                "that it returns only the next state (e.g. return the state and compute "
                "outputs outside the cell)."
            )
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)

    # ------------------------------------------------------------------ maths
    def cell_params(self, module: nn.Module) -> Params:
        """All parameters *and buffers* of ``module`` (recursively), detached.

        ``functional_call`` replaces exactly these tensors, so the step uses the recorded
        weights even if the live module is trained further afterwards.
        """
        out: Params = {n: p.detach() for n, p in module.named_parameters()}
        out.update({n: b.detach() for n, b in module.named_buffers()})
        return out

    def fused_params(self, module: nn.Module, layer: int, reverse: bool) -> Params:
        """Not applicable: custom cells are called one step at a time.

        Raises:
            GradscopeError: Always.
        """
        raise GradscopeError(
            f"{self.kind} is a one-step cell; fused (whole-sequence) custom modules are not "
            "supported"
        )

    def step(self, params: Params, x: Tensor, s: Tensor) -> Tensor:
        """``s_t = module(x_t, s_{t-1})`` with the weights in ``params`` (batched call).

        Raises:
            CellConventionError: The module returned something other than a state of the
                layout this adapter was built for.
        """
        native = self.unpack_state(s)
        out = functional_call(self.module, params, (x, native), strict=False)
        return self.pack_output(out, batch=x.shape[0], given=native)

    def jacobian_state(self, params: Params, x: Tensor, s: Tensor) -> Tensor:
        """``∂s_t/∂s_{t-1}`` ``(N, D, D)`` from ``jacrev`` of the batch-summed step.

        Always a plain tensor, detached: a cell that reads weights ``functional_call``
        cannot replace (see :func:`unreplaced_parameters`) would otherwise hand back a
        tensor attached to its live parameters' autograd graph.
        """
        jac = jacrev(lambda s_: self.step(params, x, s_).sum(0))(s)  # (D, N, D)
        return jac.permute(1, 0, 2).detach().contiguous()

    def jacobian_input(self, params: Params, x: Tensor, s: Tensor) -> Tensor:
        """``∂s_t/∂x_t`` ``(N, D, I)`` from ``jacrev`` of the batch-summed step (detached).

        Raises:
            GradscopeError: The inputs are not floating point (e.g. token indices).
        """
        if not x.is_floating_point():
            raise GradscopeError(
                f"{self.kind}: inputs of dtype {x.dtype} cannot be differentiated; "
                "∂s_t/∂x_t needs floating-point inputs"
            )
        jac = jacrev(lambda x_: self.step(params, x_, s).sum(0))(x)  # (D, N, I)
        return jac.permute(1, 0, 2).detach().contiguous()

    def __repr__(self) -> str:
        return f"GenericAdapter(kind={self.kind!r}, state_sizes={self._sizes})"
