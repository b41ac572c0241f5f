r"""Recording: forward hooks that capture every recurrent step of an arbitrary model.

``gs.record(model)`` hooks every submodule of ``model`` whose type has a cell adapter
(:func:`gradscope.cells.is_registered`), plus the modules named in ``cells=[...]``, runs
nothing itself, and turns what the hooks saw into a :class:`~gradscope.traces.Trace` when the
block exits::

    with gs.record(model, grads=True) as rec:
        loss = loss_fn(model(x), y)
    loss.backward()
    trace = rec.trace            # states, inputs, weights; and ∂L/∂s_t after the backward

Two kinds of module are recorded differently.

**Fused modules** (``nn.RNN``, ``nn.LSTM``, ``nn.GRU``) run whole sequences and layers in one
call, so their intermediate states never appear in Python. Their forward hook keeps the
input, the initial state and the outputs, and the module is *replayed* step by step from its
own weights with the adapter's step function ``s_t = f(x_t, s_{t-1})`` (the same dtype and
device, under ``torch.no_grad``). For layer ``k`` and direction ``d`` this yields the states
``s_0 ... s_T`` in processing order: a reverse direction's step ``j`` reads position
``L_b - 1 - j`` of sequence ``b`` (``L_b`` its length), so its step 0 is the last valid
position. Layer ``k > 0`` reads the concatenated ``(forward, reverse)`` outputs ``h`` of layer
``k - 1`` (with ``proj_size`` the projected ``h``), after inter-layer dropout if any. The replay
must reproduce the module's own top-layer output at every valid position and ``h_n`` (and
``c_n``) of every layer and direction, to ``1e-12`` in float64 and ``1e-5`` in float32
(errors relative to ``max(1, max|output|)``; float32 on CUDA: ``1e-4``, or ``1e-2`` while
``torch.backends.cudnn.allow_tf32`` lets cuDNN round to TF32, PyTorch's default); otherwise,
with ``check=True``, :class:`~gradscope.errors.ReplayMismatchError` names the module, layer,
direction, error and dtype, unless the dynamics explain the difference (next paragraph). The
measured error is kept in ``meta["replay_error"]``.

**Chaotic networks: shadow trajectories.** The kernel and the replay round differently
(different summation orders), and in a chaotic network (largest Lyapunov exponent
``λ₁ > 0``) those per-step differences grow like ``e^{λ₁ t}``: a legitimate replay can then
miss the fixed tolerance by orders of magnitude (an ``nn.RNN`` with recurrent gain 3 differs
by ``1.8e-9`` in float64 after 60 steps, by ``O(1)`` in float32). The fixed tolerance is
therefore the error allowed *per step*; only when a replayed quantity misses it is the
amplification measured, along the replayed trajectory, to decide. Four random unit tangent
vectors per sequence are propagated through the replay with forward-mode AD
(``torch.func.jvp`` of the adapter's step), renormalised every step; their log growth
``a_t = ln(‖v_t‖/‖v_{t-1}‖)`` gives the amplification ``G_{u→t} = exp(Σ_{u<w≤t} a_w)`` of a
perturbation from step ``u`` to ``t``, and the error budget of the state at step ``t`` is
``β_t = Σ_{u≤t} G_{u→t} (tol·σ + ‖∂f/∂x_u‖_F β^{below}_u)``: the tolerance injected at every
step, plus, for a layer ``k > 0``, the budget of layer ``k - 1``'s outputs that it reads,
so amplification inherited from the layers below is accounted for (``σ = max(1, max|s|)``;
padded steps inject nothing; the largest of the four budgets counts). Every checked entry,
``h_n``/``c_n`` per sequence and the top layer's output per sequence *and position*, must
stay within its own budget, so the early positions, before the trajectories separate, keep
the check strict even where the later ones cannot. For a contracting layer the budget stays
``≈ tol/(1 - e^{λ})``, and a model that meets the fixed tolerance is treated exactly as before
(the budget is never computed). Within the budget the replay is accepted as a *shadow
trajectory*: each step is exact to rounding, but the trajectory differs from the kernel's by
amplified rounding, which leaves spectra, Lyapunov exponents and decay statistics unaffected.
The layer's meta then holds ``"replay": "shadow"``, ``"amplification"`` (the largest
``G_{u→t}``), ``"growth_rate"`` (``λ̂``, the mean of ``a_t`` per step), ``"replay_budget"``
(the largest budget, relative like the error) and ``"replay_horizon"`` (the first step whose
budget reaches the states' own size: from there on the two trajectories are unrelated and
the comparison verifies nothing, None if never), and one
:class:`~gradscope.errors.ChaoticReplayWarning` per module says so. An error beyond the budget
(a wrong adapter, a modified forward: errors far above rounding from the first steps) still
raises :class:`~gradscope.errors.ReplayMismatchError`, with the budget and the amplification
in the message; so does an adapter whose step ``torch.func.jvp`` cannot differentiate. Loss
gradients of a shadow layer are back-propagated along the recorded (shadow) trajectory, with
the cotangents that the kernel's outputs received.

**Inter-layer dropout** (``num_layers > 1``, ``dropout > 0``, training mode). PyTorch's fused
CPU kernels apply ``at::dropout(y, p, train=True)`` to each layer's output ``y`` except the
last (``apply_layer_stack`` in ``aten/src/ATen/native/RNN.cpp``, and the oneDNN LSTM path
likewise); on CPU that is ``noise = empty_like(y).bernoulli_(1 - p); noise /= 1 - p;
y * noise`` (``_dropout_impl`` in ``Dropout.cpp``), drawn from the default CPU generator on
the time-major ``(T, B, F)`` output, or on the packed data ``(ΣL_b, F)`` for a
``PackedSequence``. A forward *pre*-hook copies the CPU generator's state just before the
module runs, and the replay draws the same masks, in the same order and on tensors of the
same shape and dtype, from a private ``torch.Generator`` set to that state; the global RNG is
never touched. The replay check then confirms the masks bit for bit (``meta["dropout"] ==
"mask reproduced"``). On CUDA (cuDNN or ``native_dropout``) the mask comes from a generator
whose stream cannot be replayed this way: gradscope does not fake it. It warns, replays
layers ``> 0`` *without* the mask (their recorded inputs are the undropped outputs of the
layer below), skips the output check for those layers, marks them
``meta["dropout"] == "not reproducible"``, and leaves their loss gradients empty. Call
``model.eval()`` (or record on CPU) for exact traces of such a model.

**Cells called in a Python loop** (``nn.RNNCell``, ``nn.LSTMCell``, ``nn.GRUCell``, cells
registered with :func:`gradscope.register_cell`, and any module named in ``cells=[...]``,
which then uses :class:`~gradscope.cells.generic.GenericAdapter`) are recorded call by call
from the hook's ``(x_t, state)`` and output. Consecutive calls form one sequence while each
call's input state equals the previous call's output (the same, unmodified tensor, or equal
values) with the same shapes; a ``None`` state or any other state starts a new sequence,
recorded as a new :class:`~gradscope.traces.LayerTrace` with the suffix ``@1``, ``@2``, ....
With ``check=True`` the adapter's step must reproduce every recorded output (same
tolerances), which catches a mis-registered adapter.

**Loss gradients** (``grads=True``). ``LayerTrace.grads[t] = ∂L/∂s_t`` for ``t = 0..T``,
the total derivative through everything downstream of ``s_t``, so that

    g_{t-1} = J_tᵀ g_t + ∂ℓ/∂s_{t-1}|_direct,       J_t = ∂s_t/∂s_{t-1}.

The parts of ``s_t`` are independent coordinates: for an LSTM, ``h_t``'s dependence on
``c_t`` belongs to ``J_t``, not to ``∂L/∂c_t``. For cells, tensor hooks on each call's output
state parts receive their total autograd gradient during the user's ``backward()``; where
the cell computes one returned part from another inside the same step (PyTorch's CPU
``nn.LSTMCell`` computes ``h_t = o ⊙ tanh(c_t)`` from the ``c_t`` it returns), node hooks on
those within-step edges of the autograd graph measure that share, and it is subtracted.
``g_0 = J_1ᵀ g_1`` (a vector-Jacobian product of the adapter's step), as for fused modules:
uses of the initial state outside the recorded module are not part of it.
For fused modules, tensor hooks on the module's outputs (``output`` or its packed ``data``,
``h_n``, ``c_n``) capture the cotangents that reach the module in the real backward; when
:attr:`Recorder.trace` is next read, the module is replayed *with* autograd on detached
copies (same weights, same dropout masks) and the captured cotangents are back-propagated
with :func:`torch.autograd.grad` to every state of every layer and direction. A cotangent that
never arrives (an output the loss does not use) counts as zero; if no backward pass reached
any recorded module, ``grads`` stays None and ``trace.meta["grads"]`` says why. All hooks
return None, so no gradient is changed. Repeated backward passes accumulate, like ``.grad``.

Recording never changes the model's outputs, gradients, parameters, its hooks or the global
RNG state (CPU and CUDA): hooks return None, recorded tensors are detached clones, every
module hook is removed when the block exits (also when the forward raises), and the only
code that could consume random numbers (re-running a user's cell through ``torch.func`` in the
check) runs with the RNG state saved and restored.

Recorded tensors stay on the module's device.
"""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence
from torch.utils.hooks import RemovableHandle

from gradscope._version import __version__
from gradscope.cells import adapter_for, is_fused, is_registered
from gradscope.cells.base import CellAdapter, Params
from gradscope.cells.generic import GenericAdapter
from gradscope.errors import (
    CellConventionError,
    ChaoticReplayWarning,
    GradscopeError,
    NoRecurrentModuleError,
    ReplayMismatchError,
    ShapeError,
)
from gradscope.traces import LayerTrace, Trace

#: Replay tolerances, relative to ``max(1, max|reference|)``: thousands of units in the
#: last place of float64 (eps 2.2e-16) and ~80 of float32 (eps 1.2e-7), enough for
#: different summation orders over long sequences (measured on CPU: float32 RNN/LSTM/GRU,
#: T = 1000, H = 64 stay below 1e-5), far below any real discrepancy (a wrong gate order or
#: a modified forward gives errors of order 1).
_TOLERANCE = {torch.float64: 1e-12, torch.float32: 1e-5}
#: float32 on an accelerator: cuDNN's kernels sum in other orders (measured on an H100:
#: up to 1.0e-5 at T = 100), and with ``torch.backends.cudnn.allow_tf32`` (PyTorch's
#: default) their matrix products round inputs to TF32's 10-bit mantissa (unit roundoff
#: 4.9e-4; measured: up to 7.3e-4). Tolerances ~10x above the measurements.
_TOLERANCE_F32_ACCELERATOR = 1e-4
_TOLERANCE_F32_TF32 = 1e-2
_TOLERANCE_OTHER = 1e-2  # half / bfloat16: 8-11 mantissa bits
_REPR_LIMIT = 4000

MASK_REPRODUCED = "mask reproduced"
NOT_REPRODUCIBLE = "not reproducible"
NO_DROPOUT = "none"


# =========================================================================== helpers
def _tolerance(dtype: torch.dtype, device: torch.device, fused: bool) -> float:
    """The replay tolerance for ``dtype`` on ``device`` (see the constants above)."""
    if dtype == torch.float32 and device.type != "cpu":
        cudnn = torch.backends.cudnn
        if fused and device.type == "cuda" and cudnn.enabled and cudnn.allow_tf32:
            return _TOLERANCE_F32_TF32
        return _TOLERANCE_F32_ACCELERATOR
    return _TOLERANCE.get(dtype, _TOLERANCE_OTHER)


def _mismatch(replayed: Tensor, reference: Tensor) -> float:
    """Max error of ``replayed`` against ``reference``, relative to ``max(1, max|ref|)``.

    Non-finite entries must agree exactly (same NaN / ±inf pattern); a disagreement counts
    as an infinite error. Finite entries give ``max|a - b| / max(1, max|b|)``.
    """
    a = replayed.detach().to(torch.float64)
    b = reference.detach().to(torch.float64)
    fin = torch.isfinite(a) & torch.isfinite(b)
    nonfin_ok = torch.where(fin, True, (a == b) | (torch.isnan(a) & torch.isnan(b)))
    if not bool(nonfin_ok.all()):
        return float("inf")
    if not bool(fin.any()):
        return 0.0
    diff = (a - b).abs()[fin].max()
    scale = torch.clamp(b.abs()[fin].max(), min=1.0)
    return float(diff / scale)


def _exp(x: float) -> float:
    """``e^x`` as a float, ``inf`` past float64's range (no overflow warning)."""
    return math.inf if x > 709.0 else math.exp(x)


def _describe(obj: Any) -> Any:
    """JSON-able description of an argument: shapes and dtypes, not values."""
    if isinstance(obj, PackedSequence):
        return {
            "packed": list(obj.data.shape),
            "steps": len(obj.batch_sizes),
            "batch": int(obj.batch_sizes[0]) if len(obj.batch_sizes) else 0,
            "dtype": str(obj.data.dtype).replace("torch.", ""),
        }
    if isinstance(obj, Tensor):
        return {"shape": list(obj.shape), "dtype": str(obj.dtype).replace("torch.", "")}
    if isinstance(obj, (tuple, list)):
        return [_describe(o) for o in obj]
    if isinstance(obj, dict):
        return {str(k): _describe(v) for k, v in obj.items()}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    return type(obj).__name__


def _shape_text(obj: Any) -> str:
    if isinstance(obj, Tensor):
        return f"Tensor{tuple(obj.shape)}"
    if isinstance(obj, (tuple, list)):
        return f"{type(obj).__name__}(" + ", ".join(_shape_text(o) for o in obj) + ")"
    return type(obj).__name__


def _clone(t: Tensor) -> Tensor:
    return t.detach().clone()


@contextmanager
def _rng_preserved(device: torch.device) -> Iterator[None]:
    """Run a block that may consume random numbers, then restore the global RNG state."""
    cpu = torch.get_rng_state()
    cuda = None
    if device.type == "cuda":
        cuda = torch.cuda.get_rng_state(device)
    try:
        yield
    finally:
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state(cuda, device)


def _bind(module: nn.Module, args: tuple, kwargs: dict) -> list[Any]:
    """The forward's arguments in signature order (positional and keyword alike)."""
    if not kwargs:
        return list(args)
    try:
        bound = inspect.signature(module.forward).bind(*args, **kwargs)
    except (TypeError, ValueError):
        return [*args, *kwargs.values()]
    return list(bound.arguments.values())


# =========================================================================== fused modules
@dataclass
class _Layout:
    """How a fused module's native tensors map to time-major ``(T, B, ·)``, original order.

    Attributes:
        T: Steps (the longest sequence).
        B: Sequences.
        batch_first: The module's ``batch_first``.
        unbatched: The input was 2-D ``(T, I)`` (B = 1).
        lengths: ``(B,)`` int64 lengths (original batch order) for packed input, else None.
        packed_t: For packed input, the time index of each row of the packed data.
        packed_b: ... and its sequence index in the original batch order.
    """

    T: int
    B: int
    batch_first: bool
    unbatched: bool
    lengths: Tensor | None = None
    packed_t: Tensor | None = None
    packed_b: Tensor | None = None

    @property
    def packed(self) -> bool:
        return self.lengths is not None

    def to_time_major(self, seq: Tensor | PackedSequence) -> Tensor:
        """A sequence tensor (input-, output- or cotangent-like) as ``(T, B, F)``."""
        if isinstance(seq, PackedSequence):
            seq = seq.data
        if self.packed:
            out = seq.new_zeros((self.T, self.B, seq.shape[-1]))
            out[self.packed_t, self.packed_b] = seq
            return out
        if self.unbatched:
            return seq.unsqueeze(1)
        return seq.transpose(0, 1) if self.batch_first else seq

    def hidden(self, h: Tensor) -> Tensor:
        """A native ``h_0``/``h_n``-like tensor as ``(layers·dirs, B, ·)``."""
        return h.unsqueeze(1) if self.unbatched else h

    @classmethod
    def of(cls, module: nn.Module, seq: Tensor | PackedSequence) -> _Layout:
        batch_first = bool(getattr(module, "batch_first", False))
        if isinstance(seq, PackedSequence):
            bs = seq.batch_sizes.to(torch.long)
            steps = int(bs.numel())
            batch = int(bs[0]) if steps else 0
            device = seq.data.device
            order = (
                seq.sorted_indices
                if seq.sorted_indices is not None
                else torch.arange(batch, device=device)
            )
            packed_t = torch.repeat_interleave(torch.arange(steps), bs)
            offsets = torch.cumsum(bs, 0) - bs
            packed_j = torch.arange(int(bs.sum())) - offsets[packed_t]
            packed_t = packed_t.to(device)
            packed_b = order[packed_j.to(device)]
            sorted_len = (bs.unsqueeze(0) > torch.arange(batch).unsqueeze(1)).sum(1)
            lengths = torch.empty(batch, dtype=torch.long)
            lengths[order.cpu()] = sorted_len
            return cls(steps, batch, batch_first, False, lengths, packed_t, packed_b)
        if seq.ndim == 2:
            return cls(int(seq.shape[0]), 1, batch_first, True)
        if seq.ndim != 3:
            raise ShapeError(f"expected a 2-D or 3-D input, got {tuple(seq.shape)}")
        t, b = (seq.shape[1], seq.shape[0]) if batch_first else (seq.shape[0], seq.shape[1])
        return cls(int(t), int(b), batch_first, False)


@dataclass
class _Replay:
    """What one replay of a fused call produced (per layer, per direction)."""

    states: list[list[list[Tensor]]]  # [layer][dir] -> [s_0, ..., s_T], each (B, D)
    inputs: list[list[Tensor]]  # [layer][dir] -> (T, B, I) processing order
    outputs: list[Tensor]  # [layer] -> (T, B, dirs·P), position order, before dropout


@dataclass
class _FusedCall:
    """One call of a fused module: what the hooks saw, plus the derived trace entries."""

    path: str
    name: str
    call: int
    module: nn.Module
    adapter: CellAdapter
    layout: _Layout
    x: Tensor  # (T, B, I) time-major, original order, zeros at padding
    s0: Tensor  # (layers·dirs, B, D)
    params: dict[tuple[int, int], Params]
    out: Tensor  # (T, B, dirs·P) the module's own output, zeros at padding
    h_n: Tensor  # (layers·dirs, B, P)
    c_n: Tensor | None  # (layers·dirs, B, H) for LSTM
    num_layers: int
    dirs: int
    dropout_p: float
    dropout: str  # MASK_REPRODUCED | NOT_REPRODUCIBLE | NO_DROPOUT
    rng_state: Tensor | None
    masks: list[Tensor] | None = None
    cot: dict[str, Tensor] = field(default_factory=dict)
    layers: list[LayerTrace] = field(default_factory=list)
    #: A tracked replay made when the trace was built after the backward; used once for grads.
    tracked: Any = None

    @property
    def valid(self) -> Tensor | None:
        """``(T, B)`` bool validity of processing step k for sequence b (None: all valid)."""
        if self.layout.lengths is None:
            return None
        lengths = self.layout.lengths.to(self.x.device)
        return torch.arange(self.layout.T, device=self.x.device).unsqueeze(1) < lengths

    def positions(self, reverse: bool) -> Tensor:
        """``(T, B)`` position read at processing step k (reverse: ``L_b - 1 - k``)."""
        steps, batch = self.layout.T, self.layout.B
        k = torch.arange(steps, device=self.x.device).unsqueeze(1).expand(steps, batch)
        if not reverse:
            return k
        if self.layout.lengths is None:
            return steps - 1 - k
        lengths = self.layout.lengths.to(self.x.device)
        return torch.clamp(lengths.unsqueeze(0) - 1 - k, min=0)


def _dropout_masks(call: _FusedCall, widths: list[int]) -> list[Tensor]:
    """The inter-layer dropout multipliers PyTorch's CPU kernel drew, ``(T, B, F)`` each.

    ``noise = empty_like(y).bernoulli_(1 - p, generator=g) / (1 - p)`` on the time-major
    ``(T, B, F)`` output, or on the packed data ``(ΣL_b, F)`` for packed input, with ``g`` a
    private generator in the state the global CPU generator had when the module started.
    """
    p = call.dropout_p
    lay = call.layout
    gen = torch.Generator(device="cpu")
    gen.set_state(call.rng_state)
    masks = []
    for width in widths:
        if p >= 1.0:  # at::dropout multiplies by zero and draws nothing
            masks.append(call.x.new_zeros((lay.T, lay.B, width)))
            continue
        rows = int(lay.packed_t.numel()) if lay.packed else None
        shape = (rows, width) if rows is not None else (lay.T, lay.B, width)
        noise = torch.empty(shape, dtype=call.x.dtype, device=call.x.device)
        noise.bernoulli_(1.0 - p, generator=gen)
        noise.div_(1.0 - p)
        masks.append(lay.to_time_major(noise) if lay.packed else noise)
    return masks


def _replay_fused(call: _FusedCall, *, track: bool) -> _Replay:
    """Run the fused module step by step from its weights.

    Args:
        call: The recorded call.
        track: Build an autograd graph with every initial state a leaf that requires grad
            (for loss gradients); otherwise run under ``torch.no_grad``.
    """
    valid = call.valid
    lay = call.layout
    states: list[list[list[Tensor]]] = []
    inputs: list[list[Tensor]] = []
    outputs: list[Tensor] = []
    layer_in = call.x
    use_masks = call.dropout == MASK_REPRODUCED
    with torch.set_grad_enabled(track):
        for layer in range(call.num_layers):
            layer_states, layer_inputs, outs = [], [], []
            for d in range(call.dirs):
                params = call.params[(layer, d)]
                pos = call.positions(reverse=d == 1)
                x = (
                    layer_in
                    if d == 0
                    else layer_in.gather(0, pos.unsqueeze(-1).expand(-1, -1, layer_in.shape[-1]))
                )
                s = call.s0[layer * call.dirs + d]
                if track:
                    s = s.detach().clone().requires_grad_(True)
                seq = [s]
                for k in range(lay.T):
                    new = call.adapter.step(params, x[k], s)
                    if valid is not None:
                        new = torch.where(valid[k].unsqueeze(-1), new, s)
                    s = new
                    seq.append(s)
                p = call.adapter.state_sizes(params)[0]
                h = torch.stack(seq[1:])[..., :p]
                if d == 1:
                    h = h.gather(0, pos.unsqueeze(-1).expand(-1, -1, p))
                if valid is not None:
                    h = torch.where(valid.unsqueeze(-1), h, torch.zeros_like(h))
                layer_states.append(seq)
                layer_inputs.append(x)
                outs.append(h)
            out = torch.cat(outs, dim=-1)
            states.append(layer_states)
            inputs.append(layer_inputs)
            outputs.append(out)
            if use_masks and layer < call.num_layers - 1:
                if call.masks is None:
                    call.masks = _dropout_masks(call, [out.shape[-1]] * (call.num_layers - 1))
                out = out * call.masks[layer]
            layer_in = out
    return _Replay(states, inputs, outputs)


#: Independent random tangents per sequence for the error budget. A single tangent aligns
#: with the most expanding direction only at the rate e^{-(λ₁-λ₂)t}; with nearly degenerate
#: top exponents a badly started one under-estimates the growth for tens of steps (measured on
#: chaotic float32 RNN/LSTMs, H = 32, T = 60: errors up to 0.5x the one-tangent budget; with
#: the largest of 4 budgets at most 0.04x, the growth rate of the budget rising by < 0.02).
_TANGENTS = 4

#: Exceptions that mean "this adapter cannot be differentiated forward" when the error budget
#: is measured (an adapter written with in-place updates or non-differentiable operations).
_JVP_FAILURES = (RuntimeError, NotImplementedError, TypeError, ValueError)


class _BudgetUnavailable(Exception):
    """The amplification of a layer could not be measured (the reason is the message)."""


class _ErrorBudget:
    r"""How far the kernel's trajectory may legitimately drift from the replay.

    PyTorch's kernel and the replay evaluate the same map in different summation orders, so
    at every step they differ by a local rounding error ``δ_t`` with ``‖δ_t‖ ≤ tol·σ``
    (``tol`` the fixed per-step tolerance, thousands of units in the last place, and
    ``σ = max(1, max|s|)`` over the layer's replayed states). To first order the difference of
    the two trajectories obeys

        e_t = J_t e_{t-1} + K_t ε_t + δ_t,      J_t = ∂f/∂s_{t-1},   K_t = ∂f/∂x_t,

    with ``ε_t`` the difference of the layer's *inputs* (zero for layer 0, whose input is
    the module's own; for layer ``k > 0`` the error of layer ``k - 1``'s outputs, times the
    dropout mask). Hence ``e_t = Σ_{u≤t} Φ_{t,u} (δ_u + K_u ε_u)`` with ``Φ_{t,u} = J_t ⋯
    J_{u+1}``, and the budget is the recursion

        β_t = g_t β_{t-1} + tol·σ + ‖K_t‖_F · β^{below}_t,      β_0 = 0,

    i.e. ``β_t = Σ_{u≤t} G_{u→t} (tol·σ + ‖K_u‖_F β^{below}_u)`` with ``G_{u→t} = g_{u+1} ⋯
    g_t``. ``g_t = ‖J_t v_{t-1}‖`` is the growth of a unit tangent vector ``v`` propagated
    along the *replayed* trajectory with forward-mode AD (``torch.func.jvp`` of the adapter's
    step) and renormalised every step: ``v`` aligns with the most expanding direction, so
    ``G_{u→t}`` measures how much the dynamics amplify a perturbation from step ``u`` to ``t``
    (``~e^{λ₁(t-u)}``, ``λ₁`` the largest Lyapunov exponent). Alignment takes a while when
    the top exponents are close, so :data:`_TANGENTS` independent tangents per sequence are
    propagated (one batched call) and the largest of their budgets counts. The
    input term uses the Frobenius norm of the adapter's input Jacobian, an upper bound of its
    operator norm, and ``β^{below}_t`` is the budget of the layer below at the position read
    at step ``t`` (both directions: ``sqrt(β_fwd² + β_rev²)``, times the largest dropout
    multiplier there), so amplification inherited from lower layers is accounted for layer by
    layer, in the replay's order, which also covers bidirectional stacks. All budgets are
    absolute 2-norm bounds (≥ the max-abs errors compared against them) kept as natural logs in
    float64, so they neither overflow nor underflow. Padded steps inject nothing and do not
    move the tangent.

    For a contracting layer ``G_{u→t} ≈ e^{λ(t-u)}`` with ``λ < 0`` and ``β_t ≈ tol·σ /
    (1 - e^{λ})``: the check stays tight. Budgets are computed per layer on first use (only
    when a replayed quantity misses the fixed tolerance) and cached.
    """

    def __init__(self, call: _FusedCall, rep: _Replay, tol: float) -> None:
        self.call = call
        self.rep = rep
        self.tol = tol
        self._log: dict[tuple[int, int], Tensor] = {}  # (T+1, B) ln β, max over tangents
        self._growth: dict[tuple[int, int], Tensor] = {}  # (T, tangents, B) log growth a_t
        self._sigma: dict[tuple[int, int], float] = {}

    # ------------------------------------------------------------------ public
    def log_budget(self, layer: int, d: int) -> Tensor:
        """``(T+1, B)`` float64 ``ln β_t``: bound of ‖replayed s_t − kernel's s_t‖."""
        if (layer, d) not in self._log:
            self._compute(layer, d)
        return self._log[(layer, d)]

    def at_positions(self, layer: int, d: int) -> Tensor:
        """``(T, B)`` ``ln β`` of the state whose ``h`` is the output at position ``p``."""
        log_b = self.log_budget(layer, d)
        if d == 0:
            return log_b[1:]
        return log_b.gather(0, self._reverse_index())

    def growth_rate(self, layer: int, d: int) -> float:
        """``λ̂``: mean log growth per valid step of the tangents (nat-log per step)."""
        a = self._growth[(layer, d)]
        ok = torch.isfinite(a)
        if self.call.valid is not None:
            ok &= self.call.valid.cpu().unsqueeze(1)
        return float(a[ok].mean()) if bool(ok.any()) else float("nan")

    def log_amplification(self, layer: int, d: int) -> float:
        """``ln max G_{u→t}`` over windows, sequences and tangents (≥ 0)."""
        a = torch.nan_to_num(self._growth[(layer, d)], nan=0.0, neginf=-1e300, posinf=1e300)
        if not a.numel():
            return 0.0
        # max over windows (u, t] of Σ a = max_t (A_t - min_{u≤t} A_u), A the cumulative sum
        cum = torch.cat([torch.zeros_like(a[:1]), torch.cumsum(a, 0)])
        low = torch.cummin(cum, dim=0).values
        return max(0.0, float((cum - low).max()))

    def horizon(self, layer: int, d: int) -> int | None:
        """The first step whose budget reaches the states' size ``σ`` (None: never)."""
        log_b = self.log_budget(layer, d)
        reached = (log_b >= np.log(self._sigma[(layer, d)])).any(dim=1)
        if not bool(reached.any()):
            return None
        return int(reached.to(torch.int8).argmax())

    # ------------------------------------------------------------------ internals
    def _reverse_index(self) -> Tensor:
        """``(T, B)`` state index ``L_b - p`` of a reverse direction at position ``p``."""
        call = self.call
        steps, batch = call.layout.T, call.layout.B
        if call.layout.lengths is None:
            lengths = torch.full((batch,), steps, dtype=torch.long)
        else:
            lengths = call.layout.lengths
        p = torch.arange(steps).unsqueeze(1)
        return torch.clamp(lengths.unsqueeze(0) - p, min=0, max=steps)

    def _input_log_error(self, layer: int, d: int) -> Tensor:
        """``(T, B)`` ``ln`` bound of layer ``layer``'s input error, processing order of ``d``."""
        call = self.call
        parts = torch.stack([self.at_positions(layer - 1, dd) for dd in range(call.dirs)])
        log_eps = 0.5 * torch.logsumexp(2.0 * parts, dim=0)  # ‖(e_fwd, e_rev)‖₂
        if call.dropout == MASK_REPRODUCED and call.masks is not None:
            scale = call.masks[layer - 1].amax(dim=-1).to(torch.float64).cpu()
            log_eps = log_eps + torch.log(scale)
        pos = call.positions(reverse=d == 1).cpu()
        return log_eps.gather(0, pos)

    def _compute(self, layer: int, d: int) -> None:
        call = self.call
        adapter = call.adapter
        params = call.params[(layer, d)]
        seq = self.rep.states[layer][d]
        x = self.rep.inputs[layer][d]
        steps, batch = call.layout.T, call.layout.B
        m = _TANGENTS
        valid = None if call.valid is None else call.valid.cpu()
        states = torch.stack(seq).detach().to(torch.float64)
        if valid is not None:
            states = states[torch.cat([torch.ones(1, batch, dtype=torch.bool), valid])]
        finite = states[torch.isfinite(states)]
        sigma = max(1.0, float(finite.abs().max())) if finite.numel() else 1.0
        log_inject = float(np.log(self.tol * sigma))
        log_in = None if layer == 0 else self._input_log_error(layer, d)
        # m independent random unit tangents per sequence, rows ordered (tangent, sequence);
        # a private generator: the global RNG is not touched
        gen = torch.Generator(device="cpu").manual_seed(20 + 2 * layer + d)
        v = torch.randn((m * batch, seq[0].shape[-1]), generator=gen, dtype=torch.float64)
        v = (v / v.norm(dim=1, keepdim=True)).to(dtype=seq[0].dtype, device=seq[0].device)
        growth = torch.zeros((steps, m, batch), dtype=torch.float64)
        log_b = torch.full((steps + 1, m, batch), -float("inf"), dtype=torch.float64)
        with torch.no_grad(), _rng_preserved(seq[0].device):
            for t in range(steps):
                x_t, s_t = x[t], seq[t]
                x_m, s_m = x_t.repeat(m, 1), s_t.repeat(m, 1)
                try:
                    _, jv = torch.func.jvp(
                        lambda s, x_m=x_m: adapter.step(params, x_m, s), (s_m,), (v,)
                    )
                    if log_in is not None:
                        k_norm = adapter.jacobian_input(params, x_t, s_t).flatten(1).norm(dim=1)
                except _JVP_FAILURES as exc:
                    raise _BudgetUnavailable(
                        f"torch.func.jvp / jacobian_input of the adapter's step failed ({exc})"
                    ) from exc
                norm = jv.norm(dim=1)
                a_t = torch.log(norm.detach().to(torch.float64).cpu()).reshape(m, batch)
                moved = (norm > 0) & torch.isfinite(norm)
                if valid is not None:
                    moved &= valid[t].to(moved.device).repeat(m)
                v = torch.where(moved.unsqueeze(-1), jv / norm.clamp_min(1e-300).unsqueeze(-1), v)
                inject = torch.full((batch,), log_inject, dtype=torch.float64)
                if log_in is not None:
                    log_k = torch.log(k_norm.detach().to(torch.float64).cpu())
                    inject = torch.logaddexp(inject, log_k + log_in[t])
                new = torch.logaddexp(a_t + log_b[t], inject)
                if valid is not None:
                    new = torch.where(valid[t], new, log_b[t])
                    a_t = torch.where(valid[t], a_t, torch.zeros_like(a_t))
                log_b[t + 1] = new
                growth[t] = a_t
        self._log[(layer, d)] = log_b.amax(dim=1)
        self._growth[(layer, d)] = growth
        self._sigma[(layer, d)] = sigma


@dataclass
class _Shadow:
    """A (layer, direction) accepted as a shadow trajectory: the numbers for meta/warning."""

    error: float  # max relative error of the checked quantities
    budget: float  # max relative budget they were compared against
    growth_rate: float  # λ̂, nat-log per step
    amplification: float  # max G
    horizon: int | None  # first step whose budget reaches the states' size
    what: list[str]  # the quantities that needed the budget


@dataclass
class _FusedCheck:
    """What the replay check of one fused call found."""

    errors: dict[tuple[int, int], float] = field(default_factory=dict)
    shadows: dict[tuple[int, int], _Shadow] = field(default_factory=dict)


def _entry_errors(mine: Tensor, ref: Tensor) -> tuple[Tensor, float]:
    """Per-entry max-abs error over the last dim (``inf`` where non-finite values disagree)."""
    a = mine.detach().to(torch.float64).cpu()
    b = ref.detach().to(torch.float64).cpu()
    fin = torch.isfinite(a) & torch.isfinite(b)
    same = (a == b) | (torch.isnan(a) & torch.isnan(b))
    diff = torch.where(fin, (a - b).abs(), torch.where(same, 0.0, float("inf")))
    scale = max(1.0, float(b.abs()[fin].max())) if bool(fin.any()) else 1.0
    return diff.amax(dim=-1), scale


def _check_fused(call: _FusedCall, rep: _Replay) -> _FusedCheck:
    """Raise ReplayMismatchError unless the replay reproduces the module's outputs.

    Every checked quantity (``h_n``/``c_n`` of every layer and direction, the top layer's
    output at every valid position) must match to the fixed tolerance, or else stay within
    the error budget of :class:`_ErrorBudget` at every sequence and position (computed only
    then); the latter marks the layer and direction as a shadow trajectory.

    Returns:
        The largest relative error per checked ``(layer, direction)``, and the shadows.
    """
    tol = _tolerance(call.x.dtype, call.x.device, fused=True)
    result = _FusedCheck()
    budget = _ErrorBudget(call, rep, tol)
    top = call.num_layers - 1
    valid = call.valid
    checked_layers = range(1) if call.dropout == NOT_REPRODUCIBLE else range(call.num_layers)
    for layer in checked_layers:
        for d in range(call.dirs):
            direction = "reverse" if d else "forward"
            params = call.params[(layer, d)]
            sizes = call.adapter.state_sizes(params)
            p = sizes[0]
            final = rep.states[layer][d][-1]
            idx = layer * call.dirs + d
            pairs = [("h_n", final[:, :p], call.h_n[idx])]
            if call.c_n is not None:
                pairs.append(("c_n", final[:, p:], call.c_n[idx]))
            if layer == top:
                mine = rep.outputs[layer][..., d * p : (d + 1) * p]
                ref = call.out[..., d * p : (d + 1) * p]
                pairs.append(("output", mine, ref))
            for what, mine, ref in pairs:
                sel = valid if what == "output" and valid is not None else None
                err = _mismatch(
                    mine[sel] if sel is not None else mine, ref[sel] if sel is not None else ref
                )
                result.errors[(layer, d)] = max(err, result.errors.get((layer, d), 0.0))
                if err <= tol:
                    continue
                where = f"{call.path or call.name} ({type(call.module).__name__})"
                head = (
                    f"{where}: the step-by-step replay does not reproduce the module's {what} "
                    f"at layer {layer}, {direction} direction: max error {err:.3g} relative to "
                    f"max(1, |{what}|) exceeds {tol:g} for {call.x.dtype}"
                )
                advice = (
                    "Does the module (a subclass?) compute something other than PyTorch's "
                    "equations, or is a wrong adapter registered for it? Pass check=False to "
                    "record anyway."
                )
                try:
                    log_b = (
                        budget.at_positions(layer, d)
                        if what == "output"
                        else budget.log_budget(layer, d)[-1]
                    )
                except _BudgetUnavailable as exc:
                    raise ReplayMismatchError(
                        f"{head}, and its amplification along the trajectory could not be "
                        f"measured: {exc}. {advice}"
                    ) from None
                entry_err, scale = _entry_errors(mine, ref)
                rel = entry_err / scale  # (T, B) for the output, (B,) for h_n / c_n
                allowed = torch.fmax(torch.exp(log_b) / scale, torch.tensor(tol).double())
                ok = (rel <= allowed) & torch.isfinite(rel)
                if sel is not None:
                    ok |= ~sel.cpu()
                    allowed = torch.where(sel.cpu(), allowed, 0.0)
                lam = budget.growth_rate(layer, d)
                amp = _exp(budget.log_amplification(layer, d))
                if not bool(ok.all()):
                    ratio = torch.where(ok, 0.0, torch.nan_to_num(rel / allowed, nan=math.inf))
                    worst = int(ratio.argmax())
                    if what == "output":
                        pos, seq = divmod(worst, rel.shape[1])
                        at = f"position {pos} of sequence {seq}"
                        e_w, b_w = float(rel[pos, seq]), float(allowed[pos, seq])
                    else:
                        at = f"sequence {worst}"
                        e_w, b_w = float(rel[worst]), float(allowed[worst])
                    raise ReplayMismatchError(
                        f"{head}, and more than rounding errors amplified by the dynamics can "
                        f"explain: at {at} the error is {e_w:.3g} but the error budget (the "
                        f"tolerance per step, amplified along the replayed trajectory) is only "
                        f"{b_w:.3g}; perturbations grow by λ̂ = {lam:+.3g} per step (up to "
                        f"{amp:.3g}x). {advice}"
                    )
                prev = result.shadows.get((layer, d))
                result.shadows[(layer, d)] = _Shadow(
                    error=max(err, prev.error if prev else 0.0),
                    budget=max(float(allowed.max()), prev.budget if prev else 0.0),
                    growth_rate=lam,
                    amplification=amp,
                    horizon=budget.horizon(layer, d),
                    what=[*(prev.what if prev else []), what],
                )
    return result


def _fused_layer_traces(call: _FusedCall, rep: _Replay, check: _FusedCheck) -> list[LayerTrace]:
    """One LayerTrace per layer and direction, padding marked NaN.

    ``check.errors`` holds the replay check's error per ``(layer, direction)`` (absent:
    unchecked); ``check.shadows`` the ones accepted as shadow trajectories.
    """
    valid = call.valid
    lengths = None if call.layout.lengths is None else call.layout.lengths.numpy().copy()
    out = []
    for layer in range(call.num_layers):
        for d in range(call.dirs):
            params = call.params[(layer, d)]
            states = torch.stack(rep.states[layer][d]).detach().clone()
            inputs = rep.inputs[layer][d].detach().clone()
            if valid is not None:
                states[1:][~valid] = float("nan")
                inputs[~valid] = float("nan")
            # layer 0 reads the module's input; only layers > 0 read dropped-out outputs
            dropout = NO_DROPOUT if layer == 0 else call.dropout
            meta = {
                "module": call.path,
                "module_type": type(call.module).__name__,
                "layer": layer,
                "direction": "reverse" if d else "forward",
                "call": call.call,
                "source": "fused",
                "batch_first": call.layout.batch_first,
                "packed": call.layout.packed,
                "unbatched": call.layout.unbatched,
                "dropout": dropout,
                "dropout_p": call.dropout_p,
                "replay_error": check.errors.get((layer, d)),
            }
            shadow = check.shadows.get((layer, d))
            if shadow is not None:
                meta.update(
                    replay="shadow",
                    amplification=shadow.amplification,
                    growth_rate=shadow.growth_rate,
                    replay_budget=shadow.budget,
                    replay_horizon=shadow.horizon,
                )
            suffix = f".l{layer}" + ("_reverse" if d else "")
            out.append(
                LayerTrace(
                    name=_with_call(call.name + suffix, call.call),
                    kind=call.adapter.kind,
                    states=states,
                    inputs=inputs,
                    lengths=None if lengths is None else lengths.copy(),
                    state_names=tuple(call.adapter.state_names),
                    state_sizes=tuple(int(s) for s in call.adapter.state_sizes(params)),
                    params=params,
                    meta=meta,
                    adapter=call.adapter,
                )
            )
    return out


def _fused_grads(call: _FusedCall) -> list[Tensor]:
    """``∂L/∂s_t`` ``(T+1, B, D)`` per layer and direction from the captured cotangents."""
    lay = call.layout
    valid = call.valid
    if not call.cot:  # the backward never reached this call: every ∂L/∂s_t is zero
        out = []
        for layer in range(call.num_layers):
            for d in range(call.dirs):
                size = sum(call.adapter.state_sizes(call.params[(layer, d)]))
                g = call.x.new_zeros((lay.T + 1, lay.B, size))
                if valid is not None:
                    g[1:][~valid] = float("nan")
                out.append(g)
        return out
    rep, call.tracked = call.tracked or _replay_fused(call, track=True), None
    outs: list[Tensor] = []
    cots: list[Tensor] = []
    if "output" in call.cot:
        outs.append(rep.outputs[-1])
        cots.append(lay.to_time_major(call.cot["output"]))
    finals = [seq[-1] for layer in rep.states for seq in layer]
    p = call.h_n.shape[-1]
    if "h_n" in call.cot:
        outs.append(torch.stack([f[:, :p] for f in finals]))
        cots.append(lay.hidden(call.cot["h_n"]))
    if "c_n" in call.cot:
        outs.append(torch.stack([f[:, p:] for f in finals]))
        cots.append(lay.hidden(call.cot["c_n"]))
    flat = [s for layer in rep.states for seq in layer for s in seq]
    with torch.enable_grad():
        got = torch.autograd.grad(outs, flat, cots, allow_unused=True)
    result = []
    i = 0
    for layer in rep.states:
        for seq in layer:
            g = [
                torch.zeros_like(s) if gi is None else gi
                for s, gi in zip(seq, got[i : i + len(seq)])
            ]
            i += len(seq)
            grads = torch.stack(g).detach()
            if valid is not None:
                grads[1:][~valid] = float("nan")
            result.append(grads)
    return result


# =========================================================================== cells
@dataclass
class _CellChain:
    """Consecutive calls of one cell that form one sequence."""

    path: str
    name: str
    call: int
    module: nn.Module
    adapter: CellAdapter
    params: Params
    unbatched: bool
    xs: list[Tensor] = field(default_factory=list)  # (B, I) per call
    s_in: list[Tensor] = field(default_factory=list)  # (B, D) per call
    s_out: list[Tensor] = field(default_factory=list)  # (B, D) per call
    last_refs: tuple[Tensor, ...] = ()
    last_versions: tuple[int | None, ...] = ()
    #: (step, part) -> total autograd gradient of that output tensor (tensor hook)
    grads_out: dict[tuple[int, int], Tensor] = field(default_factory=dict)
    #: (step, part) -> the share of it that came from the same step's other parts
    internal: dict[tuple[int, int], Tensor] = field(default_factory=dict)
    layer: LayerTrace | None = None

    def continues(self, parts: tuple[Tensor, ...] | None, packed: Tensor | None) -> bool:
        """Whether a call with input state ``parts`` continues this chain."""
        if parts is None or packed is None or not self.s_out:
            return False
        last = self.s_out[-1]
        if packed.shape != last.shape:
            return False
        same = len(parts) == len(self.last_refs) and all(
            a is b and v is not None and _version(a) == v
            for a, b, v in zip(parts, self.last_refs, self.last_versions)
        )
        return same or bool(torch.equal(packed, last))


#: How many autograd nodes :func:`_internal_edges` visits at most per cell call. A cell
#: step's own graph has tens of nodes; the limit only stops a walk that escapes into the
#: history of a tensor the cell closes over.
_MAX_STEP_NODES = 4096


def _internal_edges(outputs: tuple[Tensor, ...], inputs: tuple[Tensor, ...]) -> list:
    """Edges ``(node, i, j)`` where a node of this step consumes output part ``j``.

    The gradient a tensor hook sees on an output part is its *total* autograd gradient. If
    the cell computes one part from another inside the same step (PyTorch's CPU
    ``LSTMCell`` computes ``h_t = o ⊙ tanh(c_t)`` from the ``c_t`` it returns), that total
    includes the within-step path, which is not part of ``∂L/∂s_t`` (the state is
    ``s_t = (h_t, c_t)``; ``h_t``'s dependence on ``c_t`` is inside ``J_t``). A node hook on
    each such consumer edge measures that share so that it can be subtracted. The walk
    starts at the output parts' autograd nodes and stops at the step's inputs.
    """
    targets: dict[tuple[Any, int], int] = {}
    for j, part in enumerate(outputs):
        if part.grad_fn is not None:
            targets[(part.grad_fn, part.output_nr)] = j
    if len(targets) < 2:
        return []
    target_nodes = {node for node, _ in targets}
    stop = {t.grad_fn for t in inputs if isinstance(t, Tensor) and t.grad_fn is not None}
    queue = list(target_nodes)
    seen = set(queue)
    edges = []
    head = 0
    while head < len(queue) and head < _MAX_STEP_NODES:
        node = queue[head]
        head += 1
        for i, (nxt, nr) in enumerate(node.next_functions):
            if nxt is None:
                continue
            j = targets.get((nxt, nr))
            if j is not None and nxt is not node:
                edges.append((node, i, j))
            if nxt in seen or nxt in stop or nxt in target_nodes:
                continue
            seen.add(nxt)
            queue.append(nxt)
    return edges


def _version(t: Tensor) -> int | None:
    """The in-place version counter (None for inference-mode tensors, which have none)."""
    try:
        return t._version
    except RuntimeError:
        return None


def _cell_state_parts(state: Any) -> tuple[Tensor, ...] | None:
    if state is None:
        return None
    if isinstance(state, Tensor):
        return (state,)
    if isinstance(state, (tuple, list)) and all(isinstance(s, Tensor) for s in state):
        return tuple(state)
    return ()


# =========================================================================== recorder
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
        self._entries: list[_FusedCall | _CellChain] = []
        self._fused_calls: dict[int, int] = {}
        self._chains: dict[int, _CellChain] = {}
        self._chain_counts: dict[int, int] = {}
        self._generic: dict[int, GenericAdapter] = {}
        self._rng: dict[int, list[Tensor | None]] = {}
        self._arguments: Any = None
        self._state = "new"  # new -> running -> done | failed
        self._trace: Trace | None = None
        self._grad_version = 0
        self._grads_done = -1
        self._warned: set[str] = set()

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
        return path if path else type(module).__name__.lower()

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
            self._trace = self._build()
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
            self._arguments = {"args": _describe(args), "kwargs": _describe(kwargs)}

    def _fused_pre_hook(self, module: nn.Module, args: tuple) -> None:
        """Copy the CPU generator's state when the module is about to draw dropout masks."""
        needs = (
            module.training
            and float(getattr(module, "dropout", 0.0)) > 0
            and int(getattr(module, "num_layers", 1)) > 1
        )
        state = torch.get_rng_state() if needs else None
        self._rng.setdefault(id(module), []).append(state)

    def _fused_hook(self, path: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            stack = self._rng.get(id(module))
            rng = stack.pop() if stack else None
            with torch.no_grad():
                call = self._capture_fused(path, module, args, kwargs, output, rng)
            self._entries.append(call)
            if self.grads and torch.is_grad_enabled():
                self._hook_fused_outputs(call, output)

        return hook

    def _cell_hook(self, path: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            self._capture_cell(path, module, args, kwargs, output)

        return hook

    # ------------------------------------------------------------------ fused capture
    def _capture_fused(
        self,
        path: str,
        module: nn.Module,
        args: tuple,
        kwargs: dict,
        output: Any,
        rng: Tensor | None,
    ) -> _FusedCall:
        bound = _bind(module, args, kwargs)
        seq = bound[0] if bound else None
        hx = bound[1] if len(bound) > 1 else None
        name = self._name(path, module)
        if not isinstance(seq, (Tensor, PackedSequence)):
            raise ShapeError(
                f"{name} ({type(module).__name__}): expected a Tensor or PackedSequence input, "
                f"got {type(seq).__name__}"
            )
        adapter = adapter_for(module)
        layout = _Layout.of(module, seq)
        x = _clone(layout.to_time_major(seq))
        num_layers = int(module.num_layers)
        dirs = 2 if module.bidirectional else 1
        params = {
            (layer, d): {
                k: _clone(v) for k, v in adapter.fused_params(module, layer, d == 1).items()
            }
            for layer in range(num_layers)
            for d in range(dirs)
        }
        sizes = adapter.state_sizes(params[(0, 0)])
        out_native, hidden = output
        if isinstance(hidden, (tuple, list)):
            h_n, c_n = hidden
        else:
            h_n, c_n = hidden, None
        h_n = _clone(layout.hidden(h_n))
        c_n = None if c_n is None else _clone(layout.hidden(c_n))
        n_states = num_layers * dirs
        if hx is None:
            s0 = x.new_zeros((n_states, layout.B, sum(sizes)))
        else:
            parts = hx if isinstance(hx, (tuple, list)) else (hx,)
            s0 = _clone(torch.cat([layout.hidden(p) for p in parts], dim=-1))
        out = _clone(layout.to_time_major(out_native))
        p = float(getattr(module, "dropout", 0.0))
        dropout = NO_DROPOUT
        if module.training and p > 0 and num_layers > 1:
            if x.device.type == "cpu" and rng is not None:
                dropout = MASK_REPRODUCED
            else:
                dropout = NOT_REPRODUCIBLE
        count = self._fused_calls.get(id(module), 0)
        self._fused_calls[id(module)] = count + 1
        return _FusedCall(
            path=path,
            name=name,
            call=count,
            module=module,
            adapter=adapter,
            layout=layout,
            x=x,
            s0=s0,
            params=params,
            out=out,
            h_n=h_n,
            c_n=c_n,
            num_layers=num_layers,
            dirs=dirs,
            dropout_p=p,
            dropout=dropout,
            rng_state=rng if dropout == MASK_REPRODUCED else None,
        )

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

    def _hook_fused_outputs(self, call: _FusedCall, output: Any) -> None:
        out_native, hidden = output
        seq = out_native.data if isinstance(out_native, PackedSequence) else out_native
        self._hook_tensor(seq, call.cot, "output")
        if isinstance(hidden, (tuple, list)):
            self._hook_tensor(hidden[0], call.cot, "h_n")
            self._hook_tensor(hidden[1], call.cot, "c_n")
        else:
            self._hook_tensor(hidden, call.cot, "h_n")

    # ------------------------------------------------------------------ cell capture
    def _cell_adapter(self, module: nn.Module, x: Tensor, state: Any, output: Any) -> CellAdapter:
        if is_registered(module):
            return adapter_for(module)
        adapter = self._generic.get(id(module))
        if adapter is None:
            adapter = GenericAdapter.from_call(module, x, state, output)
            self._generic[id(module)] = adapter
        return adapter

    def _capture_cell(
        self, path: str, module: nn.Module, args: tuple, kwargs: dict, output: Any
    ) -> None:
        name = self._name(path, module)
        cls = type(module).__name__
        bound = _bind(module, args, kwargs)
        convention = (
            f"{name} ({cls}): gradscope records a cell called as forward(x_t, state) -> state "
            "(x_t a Tensor (B, I); state a Tensor (B, D), a tuple of Tensors, or None for "
            "zeros)"
        )
        if len(bound) > 2 and any(b is not None for b in bound[2:]):
            raise CellConventionError(
                f"{convention}, but it was called with {len(bound)} arguments "
                f"{_shape_text(tuple(bound))}. Wrap it in a module with that signature."
            )
        if not bound or not isinstance(bound[0], Tensor):
            raise CellConventionError(
                f"{convention}, but its first argument is "
                f"{_shape_text(bound[0]) if bound else 'missing'}"
            )
        x = bound[0]
        state = bound[1] if len(bound) > 1 else None
        unbatched = x.ndim == 1 and is_registered(module)
        adapter = self._cell_adapter(module, x, state, output)
        with torch.no_grad():
            xb = x.unsqueeze(0) if unbatched else x
            if xb.ndim != 2:
                raise CellConventionError(
                    f"{convention}, but x_t has shape {tuple(x.shape)}; a cell step takes "
                    "one timestep (B, I)"
                )
            batch = xb.shape[0]
            in_parts = _cell_state_parts(state)
            out_parts = _cell_state_parts(output)
            if in_parts is None and isinstance(adapter, GenericAdapter):
                raise CellConventionError(
                    f"{convention}, but it was called with state=None; a custom cell's "
                    "initial state must be passed explicitly (e.g. zeros) so that it can be "
                    "recorded and replayed"
                )
            if in_parts == () or not out_parts:
                bad, what = (state, "state") if in_parts == () else (output, "output")
                raise CellConventionError(
                    f"{convention}, but its {what} is {_shape_text(bad)}; it must be a Tensor "
                    "or a tuple of Tensors"
                )
            params = None
            chain = self._chains.get(id(module))
            if chain is None or chain.adapter is not adapter:
                params = {k: _clone(v) for k, v in adapter.cell_params(module).items()}
            sizes = tuple(adapter.state_sizes(params if params is not None else chain.params))
            s_out = self._pack(adapter, out_parts, batch, sizes, unbatched, name, cls, "output")
            if in_parts is None:
                s_in = s_out.new_zeros((batch, sum(sizes)))
            else:
                s_in = self._pack(adapter, in_parts, batch, sizes, unbatched, name, cls, "state")
            if chain is None or chain.unbatched != unbatched or not chain.continues(in_parts, s_in):
                count = self._chain_counts.get(id(module), 0)
                self._chain_counts[id(module)] = count + 1
                if params is None:
                    params = {k: _clone(v) for k, v in adapter.cell_params(module).items()}
                chain = _CellChain(
                    path=path,
                    name=name,
                    call=count,
                    module=module,
                    adapter=adapter,
                    params=params,
                    unbatched=unbatched,
                )
                self._chains[id(module)] = chain
                self._entries.append(chain)
            chain.xs.append(_clone(xb))
            chain.s_in.append(s_in)
            chain.s_out.append(s_out)
            chain.last_refs = tuple(out_parts)
            chain.last_versions = tuple(_version(t) for t in out_parts)
        if self.grads and torch.is_grad_enabled():
            step = len(chain.s_out)
            for j, part in enumerate(out_parts):
                self._hook_tensor(part, chain.grads_out, (step, j))
            inputs = (x, *(in_parts or ()))
            for node, i, j in _internal_edges(out_parts, inputs):
                self._tensor_handles.append(
                    node.register_hook(self._edge_hook(chain.internal, (step, j), i))
                )

    @staticmethod
    def _pack(
        adapter: CellAdapter,
        parts: tuple[Tensor, ...],
        batch: int,
        sizes: tuple[int, ...],
        unbatched: bool,
        name: str,
        cls: str,
        what: str,
    ) -> Tensor:
        if unbatched:
            parts = tuple(p.unsqueeze(0) for p in parts)
        shapes = [tuple(p.shape) for p in parts]
        if len(parts) != len(sizes) or any(s != (batch, d) for s, d in zip(shapes, sizes)):
            expected = ", ".join(f"({batch}, {d})" for d in sizes)
            raise ShapeError(
                f"{name} ({cls}, kind {adapter.kind!r}): the {what} has parts of shapes "
                f"{shapes} but this cell's state is {len(sizes)} part(s) of shapes {expected} "
                f"(state parts {tuple(adapter.state_names)}); the batch must match x_t's "
                f"({batch}). Check the state passed to the cell, or the adapter registered for "
                f"{cls}."
            )
        return _clone(adapter.pack_state(parts))

    # ------------------------------------------------------------------ build
    def _build(self) -> Trace:
        if not self._entries:
            raise self._no_recurrent()
        layers: list[LayerTrace] = []
        for entry in self._entries:
            if isinstance(entry, _FusedCall):
                track = self.grads and bool(entry.cot)  # built after the backward
                rep = _replay_fused(entry, track=track)
                entry.tracked = rep if track else None
                check = _check_fused(entry, rep) if self.check else _FusedCheck()
                entry.layers = _fused_layer_traces(entry, rep, check)
                if check.shadows:
                    self._warn_shadow(entry, check)
                if entry.dropout == NOT_REPRODUCIBLE:
                    self._warn_dropout(entry)
                layers.extend(entry.layers)
            else:
                layers.append(self._build_chain(entry))
        return Trace(layers, self._meta(layers))

    def _warn_dropout(self, call: _FusedCall) -> None:
        if call.path in self._warned:
            return
        self._warned.add(call.path)
        warnings.warn(
            f"gradscope: {call.name} ({type(call.module).__name__}) ran in training mode with "
            f"inter-layer dropout p={call.dropout_p} on {call.x.device.type}, whose dropout "
            "mask cannot be reproduced; layers > 0 are replayed WITHOUT the mask (their "
            "inputs are the undropped outputs of the layer below), their output check is "
            "skipped, and their meta['dropout'] is 'not reproducible'. Call model.eval() or "
            "record on CPU for exact traces.",
            RuntimeWarning,
            stacklevel=3,
        )

    def _warn_shadow(self, call: _FusedCall, check: _FusedCheck) -> None:
        """One :class:`~gradscope.errors.ChaoticReplayWarning` per module and recording."""
        key = "shadow:" + call.path
        if key in self._warned:
            return
        self._warned.add(key)
        items = []
        for (layer, d), sh in sorted(check.shadows.items()):
            kind = "chaotic" if sh.growth_rate > 0 else "transiently amplifying"
            text = (
                f"layer {layer} {'reverse' if d else 'forward'} ({', '.join(sh.what)}): error "
                f"{sh.error:.3g} within the budget {sh.budget:.3g}; perturbations grow by "
                f"λ̂ = {sh.growth_rate:+.3g} per step (up to {sh.amplification:.3g}x): {kind}"
            )
            if sh.horizon is not None:
                text += (
                    f"; from step {sh.horizon} on the budget reaches the states' own size: "
                    "there the two trajectories are unrelated, and the comparison verifies "
                    "the replay only through earlier steps"
                )
            items.append(text)
        tol = _tolerance(call.x.dtype, call.x.device, fused=True)
        chaotic = any(sh.growth_rate > 0 for sh in check.shadows.values())
        nature = (
            "The dynamics are chaotic at this precision,"
            if chaotic
            else "The dynamics amplify perturbations transiently,"
        )
        warnings.warn(
            f"gradscope: {call.path or call.name} ({type(call.module).__name__}): the "
            f"step-by-step replay misses the fixed tolerance {tol:g} for {call.x.dtype}, by "
            "no more than rounding errors amplified by the dynamics along the trajectory: "
            + "; ".join(items)
            + f". {nature} so the recorded states are a shadow trajectory: each step is "
            "exact to rounding, but the trajectory differs "
            "from the kernel's by amplified rounding (different summation orders), which "
            "leaves spectra, Lyapunov exponents and decay statistics unaffected. These layers "
            "have meta['replay'] == 'shadow'.",
            ChaoticReplayWarning,
            stacklevel=3,
        )

    def _build_chain(self, chain: _CellChain) -> LayerTrace:
        xs = torch.stack(chain.xs)
        s_in = torch.stack(chain.s_in)
        s_out = torch.stack(chain.s_out)
        states = torch.cat([s_in[:1], s_out], dim=0)
        error = self._check_chain(chain, xs, s_in, s_out) if self.check else None
        sizes = tuple(int(s) for s in chain.adapter.state_sizes(chain.params))
        chain.layer = LayerTrace(
            name=_with_call(chain.name, chain.call),
            kind=chain.adapter.kind,
            states=states,
            inputs=xs,
            lengths=None,
            state_names=tuple(chain.adapter.state_names),
            state_sizes=sizes,
            params=chain.params,
            meta={
                "module": chain.path,
                "module_type": type(chain.module).__name__,
                "layer": 0,
                "direction": "forward",
                "call": chain.call,
                "source": "cell",
                "batch_first": False,
                "packed": False,
                "unbatched": chain.unbatched,
                "dropout": NO_DROPOUT,
                "replay_error": error,
            },
            adapter=chain.adapter,
        )
        return chain.layer

    def _check_chain(self, chain: _CellChain, xs: Tensor, s_in: Tensor, s_out: Tensor) -> float:
        """The adapter's step must reproduce every recorded call; returns the max error."""
        steps, batch = xs.shape[:2]
        cls = type(chain.module).__name__
        with torch.no_grad(), _rng_preserved(xs.device):
            try:
                got = chain.adapter.step(
                    chain.params, xs.reshape(steps * batch, -1), s_in.reshape(steps * batch, -1)
                )
            except (RuntimeError, ValueError, IndexError) as exc:
                raise ShapeError(
                    f"{chain.name} ({cls}, kind {chain.adapter.kind!r}): the adapter's step "
                    f"failed on inputs {tuple(xs.shape[1:])} and states {tuple(s_in.shape[1:])}: "
                    f"{exc}. Is the right adapter registered for {cls}?"
                ) from exc
        err = _mismatch(got.reshape(s_out.shape), s_out)
        tol = _tolerance(xs.dtype, xs.device, fused=False)
        if not err <= tol:
            worst = (got.reshape(s_out.shape) - s_out).abs().flatten(1).amax(1)
            step = int(torch.nan_to_num(worst, nan=float("inf")).argmax())
            raise ReplayMismatchError(
                f"{chain.name} ({cls}, kind {chain.adapter.kind!r}): the adapter's step does "
                f"not reproduce the cell's output: max error {err:.3g} relative to "
                f"max(1, |state|) exceeds {tol:g} for {xs.dtype} (worst at call {step}). The "
                f"registered adapter does not match {cls}'s forward, or the cell is stochastic "
                "(e.g. dropout in training mode: call model.eval()). Pass check=False to "
                "record anyway."
            )
        return err

    def _no_recurrent(self) -> NoRecurrentModuleError:
        model_cls = type(self.model).__name__
        types = sorted({type(m).__name__ for m in self.model.modules()})
        present = [
            (p or model_cls.lower(), type(m).__name__)
            for p, m in self.model.named_modules()
            if is_registered(m) or id(m) in self._cells
        ]
        if present:
            listed = ", ".join(f"{p} ({t})" for p, t in present[:8])
            return NoRecurrentModuleError(
                f"the forward of {model_cls} did not call any recorded recurrent module; it "
                f"contains {listed}, but none of them ran. Run the forward inside the "
                "with-block (or pass the inputs to gs.trace)."
            )
        return NoRecurrentModuleError(
            f"{model_cls} contains no recurrent module gradscope knows (its module types: "
            f"{', '.join(types)}). If one of them is a recurrent cell called as "
            "forward(x_t, state) -> state, name it: gs.record(model, cells=[model.my_cell]); "
            "or register closed forms with gs.register_cell(MyCell, MyAdapter())."
        )

    def _meta(self, layers: list[LayerTrace]) -> dict[str, Any]:
        text = repr(self.model)
        if len(text) > _REPR_LIMIT:
            text = text[:_REPR_LIMIT] + f"... [{len(text) - _REPR_LIMIT} more characters]"
        meta: dict[str, Any] = {
            "model": type(self.model).__name__,
            "model_repr": text,
            "torch_version": torch.__version__,
            "gradscope_version": __version__,
            "time_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "dtypes": sorted({str(layer.dtype).replace("torch.", "") for layer in layers}),
            "devices": sorted({str(layer.states.device) for layer in layers}),
            "arguments": self._arguments,
            "grads": "not requested" if not self.grads else "no backward pass yet",
        }
        return meta

    # ------------------------------------------------------------------ gradients
    def _fill_grads(self) -> None:
        """Turn the captured cotangents / gradients into ``LayerTrace.grads``."""
        trace = self._trace
        assert trace is not None  # guarded by the trace property
        if self._grad_version == 0:
            self._grads_done = self._grad_version
            return
        for entry in self._entries:
            if isinstance(entry, _FusedCall):
                if entry.dropout == NOT_REPRODUCIBLE:
                    for layer in entry.layers:
                        layer.grads = None
                        layer.meta["grads"] = "unavailable: dropout mask not reproducible"
                    continue
                for layer, g in zip(entry.layers, _fused_grads(entry)):
                    layer.grads = g
            elif entry.layer is not None:
                entry.layer.grads = self._chain_grads(entry)
        trace.meta["grads"] = "exact loss gradients from the backward pass(es)"
        self._grads_done = self._grad_version

    def _chain_grads(self, chain: _CellChain) -> Tensor:
        layer = chain.layer
        assert layer is not None
        sizes = list(layer.state_sizes)
        bounds = np.cumsum([0, *sizes])
        grads = torch.zeros_like(layer.states)
        for (step, j), g in chain.grads_out.items():
            inner = chain.internal.get((step, j))
            if inner is not None:
                g = g - inner
            grads[step, :, bounds[j] : bounds[j + 1]] = g.reshape(layer.B, -1)
        params, x0, s0 = chain.params, layer.inputs[0], layer.states[0]
        with torch.enable_grad(), _rng_preserved(s0.device):
            s = s0.detach().clone().requires_grad_(True)
            out = chain.adapter.step(params, x0, s)
            (g0,) = torch.autograd.grad(out, s, grads[1])
        grads[0] = g0.detach()
        return grads


def _with_call(name: str, call: int) -> str:
    return name if call == 0 else f"{name}@{call}"


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
