"""Recording a sequence mixer: one module call that runs a whole sequence (a parallel scan).

The hook keeps the call's arguments and output (detached); when the recording ends,
:func:`build_sequence` asks the module's :class:`~gradscope.sequences.base.SequenceAdapter`
for the drive (all per-step inputs of the recurrence, computed in parallel from the module's
own parameters), replays the recurrence step by step from the initial state, checks that
the adapter's readout of the replayed states reproduces what the module returned, and makes
one :class:`~gradscope.layer_trace.LayerTrace` whose inputs are the drive.

Loss gradients (:func:`sequence_grads`): the cotangent that reached the module's output in
the real backward is pulled back through the readout (one parallel autograd call, no graph
over the recurrence) to the direct share ``∂L/∂s_t|direct`` of every state; then one sweep
back in time with the adapter's closed-form ``J_tᵀ`` products accumulates
``∂L/∂s_t = ∂L/∂s_t|direct + J_{t+1}ᵀ ∂L/∂s_{t+1}``. Cost ``O(T · B · D)`` for a diagonal
recurrence, memory that of the states.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from gradscope.cells.base import Params
from gradscope.errors import ReplayMismatchError, UnsupportedModuleError
from gradscope.layer_trace import LayerTrace
from gradscope.recording.check import mismatch
from gradscope.recording.contract import (
    called,
    check_diagonal,
    check_first_step,
    checked_drive,
    checked_params,
)
from gradscope.recording.dropout import NO_DROPOUT
from gradscope.sequences.base import SequenceAdapter

#: Replay tolerances relative to ``max(1, max|output|)``. The adapters compute the parallel
#: parts (projections, convolutions, readout contractions) with other summation orders than
#: the module's kernels; measured on CPU at toy sizes, T <= 64: float64 below 1e-13, float32
#: below 2e-6 (Mamba, minGRU, LRU). A wrong equation gives errors of order 1.
_TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-4}
_TOLERANCE_OTHER = 1e-2


def _detached(obj: Any) -> Any:
    """``obj`` with every tensor (also in tuples, lists, dicts) copied; other objects kept.

    Copied, not only detached: a model may overwrite a state tensor it passed in (xLSTM's
    cache is updated in place after every block), and the replay needs what the call saw.
    """
    if isinstance(obj, Tensor):
        return obj.detach().clone()
    if isinstance(obj, tuple):
        return tuple(_detached(o) for o in obj)
    if isinstance(obj, list):
        return [_detached(o) for o in obj]
    if isinstance(obj, dict):
        return {k: _detached(v) for k, v in obj.items()}
    return obj


@dataclass
class SequenceCall:
    """One call of a sequence mixer, as the hooks saw it."""

    path: str
    name: str
    call: int
    module: nn.Module
    adapter: SequenceAdapter
    params: Params
    args: tuple
    kwargs: dict[str, Any]
    output: Tensor
    s0: Tensor | None = None
    cot: dict[str, Tensor] = field(default_factory=dict)
    layer: LayerTrace | None = None
    #: A backward pass reached the output (set by the recorder's gradient hook).
    reached: bool = False


class MethodGuard:
    """A method of one module shadowed, while recording, by a function that refuses the call.

    See :meth:`~gradscope.sequences.base.SequenceAdapter.refused_methods`. ``remove()`` (a
    hook handle's interface, so the recorder removes it with its hooks) restores the method.
    """

    def __init__(self, module: nn.Module, name: str, message: str) -> None:
        self.module, self.name = module, name
        self._had = name in module.__dict__
        self._old = module.__dict__.get(name)

        def refuse(*args: Any, **kwargs: Any) -> Any:
            raise UnsupportedModuleError(message)

        module.__dict__[name] = refuse

    def remove(self) -> None:
        """Put the module's own method back."""
        if self._had:
            self.module.__dict__[self.name] = self._old
        else:
            self.module.__dict__.pop(self.name, None)


def guard_methods(module: nn.Module, adapter: SequenceAdapter) -> list[MethodGuard]:
    """Shadow the methods the adapter refuses (:class:`MethodGuard`), one guard each.

    A dotted name (``"seq.forward_rnn"``) is a method of a submodule.
    """
    where = f"{type(module).__name__}"
    refused = called(adapter, "refused_methods", lambda: adapter.refused_methods(module), where)
    guards = []
    for name, text in dict(refused).items():
        owner, _, method = name.rpartition(".")
        guards.append(MethodGuard(module.get_submodule(owner), method, text))
    return guards


def capture_sequence(
    path: str,
    name: str,
    call: int,
    module: nn.Module,
    adapter: SequenceAdapter,
    args: tuple,
    kwargs: dict[str, Any],
    output: Any,
    s0: Tensor | None,
) -> SequenceCall:
    """What a forward hook keeps of one call (everything detached, nothing computed)."""
    where = f"{name} ({type(module).__name__})"
    params = called(adapter, "module_params", lambda: adapter.module_params(module), where)
    return SequenceCall(
        path=path,
        name=name,
        call=call,
        module=module,
        adapter=adapter,
        params=checked_params(adapter, params, where),
        args=_detached(args),
        kwargs=_detached(kwargs),
        output=adapter.module_output(output).detach(),
        s0=None if s0 is None else s0.detach().clone(),
    )


def build_sequence(call: SequenceCall, *, check: bool, layer_name: str) -> LayerTrace:
    """Replay one call and make its layer (checked against the module's output if ``check``).

    Raises:
        ReplayMismatchError: the readout of the replay does not reproduce the output.
    """
    adapter, params = call.adapter, call.params
    where = f"{call.name} ({type(call.module).__name__})"
    with torch.no_grad():
        drive = called(
            adapter, "drive", lambda: adapter.drive(params, call.args, call.kwargs), where
        )
        drive = checked_drive(adapter, params, drive, where)
        u = drive.u
        D = adapter.state_size(params)
        s0 = call.s0 if call.s0 is not None else drive.s0
        if s0 is None:
            s0 = u.new_zeros((u.shape[1], D))
        s0 = s0.to(u.dtype)
        check_first_step(adapter, params, u, s0, where)
        states = called(adapter, "scan", lambda: adapter.scan(params, u, s0), where)
        check_diagonal(adapter, params, u, states, where)
        error = None
        if check:
            out = called(adapter, "readout", lambda: adapter.readout(params, u, states), where)
            error = _check(call, out, u)
    lengths = None
    if drive.lengths is not None:
        lengths = drive.lengths.detach().cpu().numpy().astype("int64")
        valid = torch.arange(u.shape[0])[:, None] < drive.lengths.cpu()[None, :]
        states = states.clone()
        states[1:][~valid] = float("nan")
        u = u.clone()
        u[~valid] = float("nan")
    call.layer = LayerTrace(
        name=layer_name,
        kind=adapter.kind,
        states=states,
        inputs=u,
        lengths=lengths,
        state_names=tuple(adapter.state_names),
        state_sizes=tuple(int(s) for s in adapter.state_sizes(params)),
        params=params,
        meta={
            "module": call.path,
            "module_type": type(call.module).__name__,
            "layer": 0,
            "direction": "forward",
            "call": call.call,
            "source": "sequence",
            "structure": adapter.structure,
            "batch_first": True,
            "packed": False,
            "unbatched": False,
            "dropout": NO_DROPOUT,
            "replay_error": error,
        },
        adapter=adapter,
    )
    return call.layer


def _finite_drive_error(out: Tensor, want: Tensor, u: Tensor) -> float:
    """The replay's error where a non-finite drive leaves both outputs meaningful.

    A chunked scan spreads a NaN/inf input over its whole chunk (masked products of
    ``exp(segsum)``), earlier positions included, while the replay only carries it forward.
    So the outputs are compared where both are finite, and before each sequence's first
    non-finite drive step the replay must be finite wherever the module is (the
    ``(B, T, ...)`` layout of a sequence mixer's output; other layouts: both finite only).
    """
    a, b = out.detach(), want.detach()
    fin_a, fin_b = torch.isfinite(a), torch.isfinite(b)
    T, B = u.shape[:2]
    if a.ndim >= 2 and tuple(a.shape[:2]) == (B, T):
        bad = ~torch.isfinite(u).all(dim=-1)  # (T, B)
        first = torch.where(bad.any(0), bad.float().argmax(0), torch.full((B,), T))
        before = torch.arange(T)[None, :] < first.cpu()[:, None]  # (B, T)
        before = before.reshape(B, T, *([1] * (a.ndim - 2))).to(a.device)
        if bool((before & fin_b & ~fin_a).any()):
            return float("inf")
    both = fin_a & fin_b
    return mismatch(a[both], b[both]) if bool(both.any()) else 0.0


def _check(call: SequenceCall, out: Tensor, u: Tensor) -> float:
    want = call.output
    if tuple(out.shape) != tuple(want.shape):
        raise ReplayMismatchError(
            f"{call.name} ({type(call.module).__name__}, adapter {call.adapter.kind!r}): the "
            f"replay's output has shape {tuple(out.shape)}, the module returned "
            f"{tuple(want.shape)}; the adapter does not match this module's forward"
        )
    if bool(torch.isfinite(u).all()):
        error = mismatch(out, want)
    else:  # the input holds NaN/inf: the diagnosis reports it; compare what it leaves
        error = _finite_drive_error(out, want, u)
    tol = call.adapter.replay_tolerance(call.params, want.dtype)
    if tol is None:
        tol = _TOLERANCE.get(want.dtype, _TOLERANCE_OTHER)
    if not error <= tol:
        raise ReplayMismatchError(
            f"{call.name} ({type(call.module).__name__}): replaying its recurrence with the "
            f"{call.adapter.kind!r} adapter gives outputs off by {error:.3g} (relative), more "
            f"than the {tol:g} allowed for {str(want.dtype).removeprefix('torch.')}. The "
            "module's forward differs from what the adapter implements (a subclass, a patched "
            "forward, a forward hook that changes the output, or a configuration the adapter "
            "does not handle); register a matching adapter with gradscope.register_sequence."
        )
    return error


def sequence_grads(call: SequenceCall) -> Tensor | None:
    """``∂L/∂s_t`` ``(T+1, B, D)`` from the cotangent captured at the module's output.

    Zeros when the backward never reached the call; None when the call was not built.
    """
    layer = call.layer
    if layer is None:
        return None
    states = layer.states
    if "output" not in call.cot:
        return torch.zeros_like(states)
    cot = call.cot["output"]
    adapter, params = call.adapter, layer.params
    u = torch.nan_to_num(layer.inputs)
    s = torch.nan_to_num(states).detach().requires_grad_(True)
    with torch.enable_grad():
        out = adapter.readout(params, u, s)
        (direct,) = torch.autograd.grad(out, s, cot.to(out.dtype))
    T, B = layer.T, layer.B
    lin = adapter.linearize(params, u.flatten(0, 1), s.detach()[:-1].flatten(0, 1))
    valid = None if layer.lengths is None else torch.as_tensor(layer.mask)
    G = torch.empty_like(direct)
    g = direct[T]
    G[T] = g
    for t in range(T - 1, -1, -1):
        back = lin.rows(slice(t * B, (t + 1) * B)).vjp_state(g.unsqueeze(-1)).squeeze(-1)
        if valid is not None:  # past a sequence's end the state is padding: nothing flows
            back = torch.where(valid[t].unsqueeze(-1), back, torch.zeros_like(back))
        g = direct[t] + back
        G[t] = g
    if valid is not None:
        G[1:][~valid] = float("nan")
    return G.detach()


__all__ = [
    "MethodGuard",
    "SequenceCall",
    "build_sequence",
    "capture_sequence",
    "guard_methods",
    "sequence_grads",
]
