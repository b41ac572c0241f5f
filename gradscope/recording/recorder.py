"""The :class:`Recorder`: owns a recording's hooks, from registration to removal.

It registers forward hooks on the recorded modules, hands what they see to the concept
modules (:mod:`~gradscope.recording.fused` captures fused calls,
:mod:`~gradscope.recording.chains` cell calls), keeps the tensor hooks that collect loss
gradients during the backward (:mod:`~gradscope.recording.grads`), removes every module
hook when the block exits, and builds the trace then (:mod:`~gradscope.recording.build`).
:func:`record` and :func:`trace` are the public ways to use it. See
:mod:`gradscope.recording` for what is recorded and how.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.utils.hooks import RemovableHandle

from gradscope.cells import is_fused, is_registered
from gradscope.errors import GradscopeError
from gradscope.recording.arguments import argument_summary
from gradscope.recording.build import build_trace
from gradscope.recording.chains import CellCapture, CellChain, internal_edges
from gradscope.recording.dropout import draws_masks
from gradscope.recording.fused import FusedCall, capture_fused
from gradscope.recording.grads import assign_grads, fused_cotangent_tensors
from gradscope.traces import Trace


class Recorder:
    """Hooks a model's recurrent modules for the duration of a ``with`` block.

    Use :func:`record` to make one. After the block, :attr:`trace` holds the
    :class:`~gradscope.traces.Trace`; with ``grads=True`` it also holds the loss gradients of
    the backward passes that went through the recorded modules (accumulated over several
    passes, like ``.grad``; computed lazily when :attr:`trace` is read after a new pass).

    ``with rec:`` is ``rec.start()`` ... ``rec.stop()``; :meth:`close` removes the tensor
    hooks that wait for the backward pass (they return None and change nothing, but keep
    the recorder alive as long as the autograd graph).

    Args:
        model: Any ``nn.Module``; every submodule (the model included) whose type has a
            cell adapter is recorded.
        cells: Further modules of ``model`` to record call by call; a type without an
            adapter gets a :class:`~gradscope.cells.generic.GenericAdapter` (Jacobians
            through ``torch.func``), so its forward must be ``forward(x_t, state) -> state``.
        grads: Capture exact loss gradients ``∂L/∂s_t`` (see the module docstring).
        check: Verify that the replay reproduces every recorded module output.

    Raises:
        GradscopeError: ``cells`` holds something that is not a module of ``model``.
    """

    def __init__(
        self,
        model: nn.Module,
        cells: Iterable[nn.Module] | nn.Module | None = None,
        *,
        grads: bool = False,
        check: bool = True,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise GradscopeError(
                f"record() needs an nn.Module, got {type(model).__name__}; pass the model "
                "itself, not its output or a function"
            )
        self.model = model
        self.grads = bool(grads)
        self.check = bool(check)
        self._paths = {id(m): p for p, m in model.named_modules()}
        self._cells = self._validate_cells(cells)
        self._handles: list[RemovableHandle] = []
        self._tensor_handles: list[RemovableHandle] = []
        self._entries: list[FusedCall | CellChain] = []
        self._fused_calls: dict[int, int] = {}
        self._cell_calls = CellCapture()
        self._rng: dict[int, list[Tensor | None]] = {}
        self._arguments: Any = None
        self._state = "new"  # new -> running -> done | failed
        self._trace: Trace | None = None
        self._grad_version = 0
        self._grads_done = -1

    # ------------------------------------------------------------------ setup
    def _validate_cells(self, cells: Any) -> dict[int, nn.Module]:
        if cells is None:
            return {}
        if isinstance(cells, nn.ModuleList):
            cells = list(cells)
        elif isinstance(cells, nn.Module):
            cells = [cells]
        out: dict[int, nn.Module] = {}
        for cell in cells:
            if not isinstance(cell, nn.Module):
                raise GradscopeError(
                    f"cells=[...] must hold nn.Module instances of the model, got "
                    f"{type(cell).__name__}; pass the module object (e.g. cells=[model.cell])"
                )
            if id(cell) not in self._paths:
                raise GradscopeError(
                    f"cells=[...] holds a {type(cell).__name__} that is not a submodule of "
                    f"the recorded {type(self.model).__name__}; pass the module the model "
                    "actually calls (e.g. cells=[model.cell]), not a copy of it"
                )
            out[id(cell)] = cell
        return out

    def _name(self, path: str, module: nn.Module) -> str:
        """The user's own module path for a layer name.

        ``torch.compile``'s ``_orig_mod`` wrapper is left out, and a parametrised root module
        is named by its own class (not ``Parametrized...``).
        """
        parts = [p for p in path.split(".") if p and p != "_orig_mod"]
        if parts:
            return ".".join(parts)
        cls = type(module)
        if parametrize.is_parametrized(module) and cls.__bases__:
            cls = cls.__bases__[0]
        return cls.__name__.lower()

    def start(self) -> Recorder:
        """Register the hooks (what ``with`` does on entry)."""
        if self._state != "new":
            raise GradscopeError("a Recorder records one forward block; make a new one")
        self._state = "running"
        try:
            self._handles.append(
                self.model.register_forward_pre_hook(self._root_pre_hook, with_kwargs=True)
            )
            for path, module in self.model.named_modules():
                if id(module) in self._cells:
                    fused = is_registered(module) and is_fused(module)
                elif is_registered(module):
                    fused = is_fused(module)
                else:
                    continue
                if fused:
                    self._handles.append(module.register_forward_pre_hook(self._fused_pre_hook))
                    hook = self._fused_hook(path)
                else:
                    hook = self._cell_hook(path)
                self._handles.append(module.register_forward_hook(hook, with_kwargs=True))
        except BaseException:
            self._remove_hooks()
            self._state = "failed"
            raise
        return self

    def stop(self, failed: bool = False) -> None:
        """Remove the hooks and build the trace (what ``with`` does on exit).

        Args:
            failed: The forward raised; remove the hooks and build nothing.

        Raises:
            NoRecurrentModuleError: No recorded module ran.
            ReplayMismatchError: ``check`` is on and a replay did not reproduce its module.
        """
        if self._state != "running":  # already stopped (or never started): nothing to do
            return
        try:
            self._remove_hooks()
        finally:
            self._rng.clear()
            if failed:
                self._state = "failed"
        if failed:
            return
        try:
            self._trace = build_trace(
                self._entries,
                self.model,
                self._cells,
                arguments=self._arguments,
                grads=self.grads,
                check=self.check,
            )
        except BaseException:
            self._state = "failed"
            raise
        self._state = "done"

    def __enter__(self) -> Recorder:
        return self.start()

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.stop(failed=exc_type is not None)

    def _remove_hooks(self) -> None:
        try:
            for handle in self._handles:
                handle.remove()
        finally:
            self._handles.clear()

    def close(self) -> None:
        """Remove the gradient hooks still attached to recorded output tensors."""
        for handle in self._tensor_handles:
            handle.remove()
        self._tensor_handles.clear()

    # ------------------------------------------------------------------ results
    @property
    def trace(self) -> Trace:
        """The recording; with ``grads=True``, loss gradients of the backward passes so far.

        Raises:
            GradscopeError: The block has not finished, or the forward raised.
        """
        if self._state != "done" or self._trace is None:
            why = {
                "new": "recording has not started",
                "running": "the with-block has not exited yet",
                "failed": "the recorded forward raised an exception",
            }[self._state]
            raise GradscopeError(f"no trace: {why}")
        if self.grads and self._grads_done != self._grad_version:
            self._fill_grads()
        return self._trace

    # ------------------------------------------------------------------ hooks
    def _root_pre_hook(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if self._arguments is None:
            self._arguments = {"args": argument_summary(args), "kwargs": argument_summary(kwargs)}

    def _fused_pre_hook(self, module: nn.Module, args: tuple) -> None:
        """Copy the CPU generator's state when the module is about to draw dropout masks."""
        state = torch.get_rng_state() if draws_masks(module) else None
        self._rng.setdefault(id(module), []).append(state)

    def _fused_hook(self, path: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            stack = self._rng.get(id(module))
            rng = stack.pop() if stack else None
            count = self._fused_calls.get(id(module), 0)
            name = self._name(path, module)
            with torch.no_grad():
                call = capture_fused(path, name, count, module, args, kwargs, output, rng)
            self._fused_calls[id(module)] = count + 1
            self._entries.append(call)
            if self.grads and torch.is_grad_enabled():
                for key, t in fused_cotangent_tensors(output):
                    self._hook_tensor(t, call.cot, key)

        return hook

    def _cell_hook(self, path: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            name = self._name(path, module)
            cell = self._cell_calls.capture(path, name, module, args, kwargs, output)
            chain = cell.chain
            if cell.new:
                self._entries.append(chain)
            if self.grads and torch.is_grad_enabled():
                for j, part in enumerate(cell.outputs):
                    self._hook_tensor(part, chain.grads_out, (cell.step, j))
                for node, i, j in internal_edges(cell.outputs, cell.inputs):
                    self._tensor_handles.append(
                        node.register_hook(self._edge_hook(chain.internal, (cell.step, j), i))
                    )

        return hook

    # ------------------------------------------------------------------ gradient hooks
    def _grad_hook(self, store: dict, key: Any) -> Callable[[Tensor], None]:
        def hook(grad: Tensor | None) -> None:
            self._grad_version += 1
            if grad is None:  # cuDNN's backward passes None for an output without gradient
                return
            g = grad.detach().clone()
            store[key] = store[key] + g if key in store else g

        return hook

    def _edge_hook(self, store: dict, key: Any, index: int) -> Callable[..., None]:
        def hook(grad_inputs: tuple, grad_outputs: tuple) -> None:
            g = grad_inputs[index]
            if g is not None:
                g = g.detach().clone()
                store[key] = store[key] + g if key in store else g

        return hook

    def _hook_tensor(self, t: Tensor, store: dict, key: Any) -> None:
        if isinstance(t, Tensor) and t.requires_grad:
            self._tensor_handles.append(t.register_hook(self._grad_hook(store, key)))

    # ------------------------------------------------------------------ gradients
    def _fill_grads(self) -> None:
        """Turn the captured cotangents / gradients into ``LayerTrace.grads``."""
        trace = self._trace
        assert trace is not None  # guarded by the trace property
        if self._grad_version == 0:
            self._grads_done = self._grad_version
            return
        assign_grads(self._entries)
        trace.meta["grads"] = "exact loss gradients from the backward pass(es)"
        self._grads_done = self._grad_version


# =========================================================================== API
def record(
    model: nn.Module,
    cells: Iterable[nn.Module] | nn.Module | None = None,
    *,
    grads: bool = False,
    check: bool = True,
) -> Recorder:
    """Record the recurrent modules of ``model`` during a ``with`` block.

    Example::

        with gs.record(model, cells=[model.cell], grads=True) as rec:
            loss = criterion(model(x), y)
        loss.backward()
        rec.trace["cell"].grads        # (T+1, B, D) ∂L/∂s_t

    Args:
        model: The model; every submodule with a registered cell adapter is recorded.
        cells: Extra modules of ``model`` to record call by call (``forward(x_t, state) ->
            state``, state a Tensor or tuple of Tensors); unregistered types use
            :class:`~gradscope.cells.generic.GenericAdapter`.
        grads: Capture exact loss gradients ``∂L/∂s_t`` from the next backward pass(es).
        check: Raise :class:`~gradscope.errors.ReplayMismatchError` if a replay does not
            reproduce its module's outputs (float64: 1e-12, float32: 1e-5 relative, per step;
            in a chaotic network amplified along the trajectory, see the module docstring).

    Returns:
        A :class:`Recorder`; its :attr:`~Recorder.trace` is ready after the block.

    Raises:
        GradscopeError: A module in ``cells`` is not part of ``model``.
        NoRecurrentModuleError: (on exit) no recorded module ran.
        ReplayMismatchError: (on exit) a replay did not match.
        CellConventionError: A cell's call does not follow ``forward(x_t, state) -> state``.

    Warns:
        ChaoticReplayWarning: (on exit) a fused module's replay was accepted as a shadow
            trajectory of chaotic dynamics (see the module docstring).
    """
    return Recorder(model, cells, grads=grads, check=check)


def trace(
    model: nn.Module,
    *args: Any,
    cells: Iterable[nn.Module] | nn.Module | None = None,
    grads: bool = False,
    check: bool = True,
    **kwargs: Any,
) -> Trace:
    """Run ``model(*args, **kwargs)`` under :func:`record` and return the :class:`Trace`.

    Args:
        model: The model.
        *args: Positional arguments of the forward.
        cells: As in :func:`record`.
        grads: Must be False: ``trace`` runs no backward pass, so it cannot see loss
            gradients; use ``record(model, grads=True)`` around a forward and backward.
        check: As in :func:`record`.
        **kwargs: Keyword arguments of the forward.

    Returns:
        The recorded trace.

    Raises:
        GradscopeError: ``grads=True`` (see above), or any error of :func:`record`.
    """
    if grads:
        raise GradscopeError(
            "gs.trace() runs only the forward pass, so it cannot capture loss gradients. Use "
            "`with gs.record(model, grads=True) as rec: loss = loss_fn(model(x))`, then "
            "`loss.backward()`; rec.trace then holds LayerTrace.grads."
        )
    with record(model, cells, grads=False, check=check) as rec:
        model(*args, **kwargs)
    return rec.trace


__all__ = ["Recorder", "record", "trace"]
