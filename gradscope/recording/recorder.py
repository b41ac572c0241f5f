"""The :class:`Recorder`: owns a recording's hooks, from registration to removal.

It registers forward hooks on the recorded modules, hands what they see to the concept
modules (:mod:`~gradscope.recording.fused` captures fused calls,
:mod:`~gradscope.recording.chains` cell calls), keeps the tensor hooks that collect loss
gradients during the backward (:mod:`~gradscope.recording.grads`), removes every module
hook when the block exits, and builds the trace then (:mod:`~gradscope.recording.build`).
:func:`~gradscope.recording.api.record` and :func:`~gradscope.recording.api.trace`
(:mod:`gradscope.recording.api`) are the public ways to use it. See
:mod:`gradscope.recording` for what is recorded and how.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.utils.hooks import RemovableHandle

from gradscope.cells import adapter_for, is_fused, is_registered, is_sequence
from gradscope.errors import ArgumentError, GradscopeError, MissingDataError
from gradscope.recording.arguments import argument_summary, autocast_off, bind
from gradscope.recording.build import build_trace, keep_reached
from gradscope.recording.calls import ForwardSeen, ParentWatch, inside_whole, unseen_cells
from gradscope.recording.chains import CellCapture, CellChain, internal_edges
from gradscope.recording.dropout import draws_masks
from gradscope.recording.fused import capture_fused
from gradscope.recording.fused_chain import FusedChain, weight_versions
from gradscope.recording.grads import (
    assign_grads,
    edge_hook,
    fused_cotangent_tensors,
    grad_hook,
)
from gradscope.recording.sequences import SequenceCall, capture_sequence, guard_methods
from gradscope.traces import Trace


def _refuse_meta(path: str, module: nn.Module) -> None:
    """A module whose weights live on the ``meta`` device has no numbers to record."""
    if any(p.is_meta for p in module.parameters(recurse=True)):
        raise ArgumentError(
            f"{path or 'the model'} ({type(module).__name__}) has its parameters on "
            "the meta device, which holds shapes but no values: gradscope records real "
            "numbers. Materialise the model first (model.to_empty(device='cpu'), then load "
            "its weights)."
        )


class Recorder:
    """Hooks a model's recurrent modules for the duration of a ``with`` block.

    Use :func:`record` to make one. After the block, :attr:`trace` holds the
    :class:`~gradscope.traces.Trace`; with ``grads=True`` it also holds the loss gradients of
    the backward passes that went through the recorded modules (accumulated over several
    passes, like ``.grad``; computed lazily when :attr:`trace` is read after a new pass).

    ``with rec:`` is ``rec.start()`` ... ``rec.stop()``; :meth:`close` removes the tensor
    hooks that wait for the backward pass (they return None and change nothing, but keep
    the recorder alive as long as the autograd graph).

    Hooks never outlive their recorder: they hold it weakly, and when it is garbage
    collected (e.g. a :class:`~gradscope.Monitor` deleted without ``close()`` after an
    exception) every hook it registered is removed.

    Args:
        model: Any ``nn.Module``; every submodule (the model included) whose type has a
            cell adapter is recorded.
        cells: Further modules of ``model`` to record call by call; a type without an
            adapter gets a :class:`~gradscope.cells.generic.GenericAdapter` (Jacobians
            through ``torch.func``), so its forward must be ``forward(x_t, state) -> state``.
        grads: Capture exact loss gradients ``∂L/∂s_t`` (see the module docstring).
        check: Verify that the replay reproduces every recorded module output.
        reached_only: Keep only what a backward pass reached (the Monitor's mode): calls
            made while gradients are disabled (``torch.no_grad``, ``inference_mode``) or
            whose outputs do not require grad are not recorded at all, and calls that no
            gradient reached by :meth:`stop` are dropped then (their layer names are kept
            in :attr:`unreached` unless another call of theirs was reached); call numbers
            (``@1``, ...) count the calls kept.
        loss_scale: With ``grads``: a function returning the factor by which the loss was
            multiplied before its backward (e.g. ``torch.amp.GradScaler.get_scale``); it is
            read when the first gradient arrives, and the loss gradients are divided by it.

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
        reached_only: bool = False,
        loss_scale: Callable[[], Any] | None = None,
        forced_replay: bool = False,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise GradscopeError(
                f"record() needs an nn.Module, got {type(model).__name__}; pass the model "
                "itself, not its output or a function"
            )
        self.model = model
        self.grads = bool(grads)
        self.check = bool(check)
        self.reached_only = bool(reached_only and grads)
        #: Base names of the layers dropped by ``reached_only`` (no gradient reached them).
        self.unreached: list[str] = []
        self.loss_scale = loss_scale if grads else None
        #: Replay single-layer fused calls teacher-forced (their states from the module's
        #: outputs, all steps in one batched call): the Monitor's setting.
        self.forced_replay = bool(forced_replay)
        #: The loss scale read at the first gradient (None without ``loss_scale``).
        self.scale: Any = None
        self._paths = {id(m): p for p, m in model.named_modules()}
        self._cells = self._validate_cells(cells)
        if (why := inside_whole(model, self._cells)) is not None:
            raise GradscopeError(why)
        self._handles: list[Any] = []  # hook handles and ForwardSeen / MethodGuard (remove())
        self._watch = ParentWatch(model, self._cells)
        self._ran: set[int] = set()
        self._tensor_handles: list[RemovableHandle] = []
        self._entries: list[FusedChain | CellChain | SequenceCall] = []
        self._starts: dict[int, list[Any]] = {}
        self._fused_calls: dict[int, int] = {}
        self._fused_chains: dict[int, FusedChain] = {}
        self._cell_calls = CellCapture()
        self._rng: dict[int, list[Tensor | None]] = {}
        self._arguments: Any = None
        self._state = "new"  # new -> running -> done | failed
        self._trace: Trace | None = None
        self._grad_version = 0
        self._grads_done = -1
        # removes every hook when the recorder is garbage collected (hooks hold it weakly)
        self._finalizer = weakref.finalize(
            self, _remove_handles, self._handles, self._tensor_handles
        )

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
                self.model.register_forward_pre_hook(self._root_pre_hook(), with_kwargs=True)
            )
            self._handles.extend(self._watch.hooks())
            for path, module in self.model.named_modules():
                if id(module) in self._cells:
                    fused = is_registered(module) and is_fused(module)
                elif is_registered(module):
                    fused = is_fused(module)
                else:
                    continue
                _refuse_meta(path, module)
                self._handles.append(ForwardSeen(module))  # module.forward(...) is seen too
                if is_sequence(module):
                    self._handles.append(
                        module.register_forward_pre_hook(
                            self._sequence_pre_hook(), with_kwargs=True
                        )
                    )
                    self._handles.append(
                        module.register_forward_hook(
                            self._forward_hook("_capture_sequence", path),
                            with_kwargs=True,
                            prepend=True,
                        )
                    )
                    self._handles.extend(guard_methods(module, adapter_for(module)))
                    continue
                # A fused module's own output is recorded before any user forward hook
                # can replace it (what a hook returns is downstream of the recurrence);
                # a cell's is recorded after them: its next call reads what they return.
                if fused:
                    self._handles.append(
                        module.register_forward_pre_hook(self._fused_pre_hook(module))
                    )
                    hook = self._forward_hook("_capture_fused", path)
                else:
                    hook = self._forward_hook("_capture_cell", path)
                self._handles.append(
                    module.register_forward_hook(hook, with_kwargs=True, prepend=fused)
                )
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
            self._starts.clear()
            if failed:
                self._state = "failed"
        if failed:
            return
        try:
            unseen = unseen_cells(self.model, self._cells, self._ran, self._watch)
            if self.reached_only:
                self._keep_reached()
            with autocast_off():  # the replay runs in the weights' dtype
                self._trace = build_trace(
                    self._entries,
                    self.model,
                    self._cells,
                    arguments=self._arguments,
                    grads=self.grads,
                    check=self.check,
                    unseen=unseen,
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
        _remove_handles(self._handles)

    def close(self) -> None:
        """Remove the gradient hooks still attached to recorded output tensors."""
        _remove_handles(self._tensor_handles)

    def _keep_reached(self) -> None:
        """Drop the calls no gradient reached (:func:`keep_reached`)."""
        self._entries, self.unreached = keep_reached(self._entries)
        if self.unreached and not self._entries:
            raise MissingDataError(
                f"the loss did not reach {', '.join(self.unreached)}: no gradient reached the "
                "outputs of any call recorded since the recording began"
            )

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
            with autocast_off():
                self._fill_grads()
        return self._trace

    # ------------------------------------------------------------------ hooks
    def _root_pre_hook(self) -> Callable[..., None]:
        ref = weakref.ref(self)

        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            rec = ref()
            if rec is not None and rec._arguments is None:
                rec._arguments = {
                    "args": argument_summary(args),
                    "kwargs": argument_summary(kwargs),
                }

        return hook

    # Every hook holds the recorder weakly (see the class docstring) and does nothing
    # once it is gone.
    def _fused_pre_hook(self, target: nn.Module) -> Callable[..., None]:
        """Copy the CPU generator's state when the module is about to draw dropout masks."""
        ref = weakref.ref(self)

        def hook(module: nn.Module, args: tuple) -> None:
            rec = ref()
            if rec is not None:
                state = torch.get_rng_state() if draws_masks(module) else None
                rec._rng.setdefault(id(module), []).append(state)

        return hook

    def _skip(self, outputs: Iterable[Any]) -> bool:
        """With ``reached_only``: no backward can reach a call with these outputs."""
        if not self.reached_only:
            return False
        if not torch.is_grad_enabled():
            return True
        return not any(isinstance(t, Tensor) and t.requires_grad for t in outputs)

    def _forward_hook(self, capture: str, path: str) -> Callable[..., None]:
        """A forward hook that hands each call to the method ``capture`` of the recorder."""
        ref = weakref.ref(self)

        def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            rec = ref()
            if rec is not None:
                rec._ran.add(id(module))
                getattr(rec, capture)(path, module, args, kwargs, output)

        return hook

    def _capture_fused(
        self, path: str, module: nn.Module, args: tuple, kwargs: dict, output: Any
    ) -> None:
        stack = self._rng.get(id(module))
        rng = stack.pop() if stack else None
        tensors = fused_cotangent_tensors(output)
        if self._skip(t for _, t in tensors):
            return
        name = self._name(path, module)
        chain = self._fused_chains.get(id(module))
        count = self._fused_calls.get(id(module), 0)
        weights = weight_versions(module)
        with torch.no_grad():
            call = capture_fused(path, name, count, module, args, kwargs, output, rng)
            call.forced = self.forced_replay
            hx = bind(module, args, kwargs)[1:2]
            if chain is not None and chain.continued_by(call, hx[0] if hx else None, weights):
                chain.append(call)
            else:
                self._fused_calls[id(module)] = count + 1
                chain = FusedChain([call], weights=weights)
                self._fused_chains[id(module)] = chain
                self._entries.append(chain)
            chain.remember(output)
        if self.grads and torch.is_grad_enabled():
            for key, t in tensors:
                self._hook_tensor(t, call.cot, key, chain)

    def _sequence_pre_hook(self) -> Callable[..., None]:
        """Ask the adapter for the state a sequence call starts from, before it runs."""
        ref = weakref.ref(self)

        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            rec = ref()
            if rec is not None:
                s0 = adapter_for(module).initial_state(module, args, kwargs)
                rec._starts.setdefault(id(module), []).append(s0)

        return hook

    def _capture_sequence(
        self, path: str, module: nn.Module, args: tuple, kwargs: dict, output: Any
    ) -> None:
        stack = self._starts.get(id(module))
        s0 = stack.pop() if stack else None
        adapter = adapter_for(module)
        out = adapter.module_output(output)
        if self._skip((out,)):
            return
        count = self._fused_calls.get(id(module), 0)
        name = self._name(path, module)
        call = capture_sequence(path, name, count, module, adapter, args, kwargs, output, s0)
        self._fused_calls[id(module)] = count + 1
        self._entries.append(call)
        if self.grads and torch.is_grad_enabled():
            self._hook_tensor(out, call.cot, "output", call)

    def _capture_cell(
        self, path: str, module: nn.Module, args: tuple, kwargs: dict, output: Any
    ) -> None:
        if self._skip(output if isinstance(output, (tuple, list)) else (output,)):
            return
        name = self._name(path, module)
        cell = self._cell_calls.capture(path, name, module, args, kwargs, output)
        chain = cell.chain
        if cell.new:
            self._entries.append(chain)
        if self.grads and torch.is_grad_enabled():
            for j, part in enumerate(cell.outputs):
                self._hook_tensor(part, chain.grads_out, (cell.step, j), chain)
            for node, i, j in internal_edges(cell.outputs, cell.inputs):
                self._tensor_handles.append(
                    node.register_hook(edge_hook(chain.internal, (cell.step, j), i))
                )

    # ------------------------------------------------------------------ gradient hooks
    def _hook_tensor(self, t: Tensor, store: dict, key: Any, entry: Any) -> None:
        if isinstance(t, Tensor) and t.requires_grad:
            self._tensor_handles.append(
                t.register_hook(grad_hook(weakref.ref(self), store, key, entry))
            )

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
        if self.loss_scale is not None and self.scale is not None:
            scale = float(self.scale)
            for layer in trace.layers:
                if layer.grads is not None:
                    layer.grads = layer.grads / scale
            trace.meta["loss_scale"] = scale
            trace.meta["grads"] += f", divided by the loss scale {scale:g} of the backward"
        self._grads_done = self._grad_version


def _remove_handles(*lists: list[Any]) -> None:
    """Remove hooks by their handles (also what a collected recorder's finalizer runs)."""
    for handles in lists:
        try:
            for handle in handles:
                handle.remove()
        finally:
            handles.clear()


__all__ = ["Recorder"]
