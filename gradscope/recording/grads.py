"""Loss gradients ``∂L/∂s_t`` of the recorded layers, from what the real backward delivered.

The recorder's tensor hooks collect, during the user's ``backward()``, the cotangents that
reach each fused call's outputs (:func:`fused_cotangent_tensors` says which tensors) and
the gradients of every cell call's output state parts. :func:`assign_grads` turns them into
``LayerTrace.grads``: the cotangents of a fused call are back-propagated through its
replayed states by closed-form vector-Jacobian products
(:func:`gradscope.jacobians.bptt.stack_state_grads`: no autograd graph over the replay); a
chain subtracts the within-step shares and gets ``g_0`` from a vector-Jacobian product of
the adapter's step.
See "Loss gradients" in :mod:`gradscope.recording`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.nn.utils.rnn import PackedSequence

from gradscope._rng import rng_preserved
from gradscope.jacobians.bptt import stack_state_grads
from gradscope.recording.chains import CellChain
from gradscope.recording.dropout import MASK_REPRODUCED, NOT_REPRODUCIBLE
from gradscope.recording.fused import FusedCall
from gradscope.recording.fused_chain import FusedChain, join_grads
from gradscope.recording.replay import replay_fused, stacked
from gradscope.recording.sequences import SequenceCall, sequence_grads


def fused_cotangent_tensors(output: Any) -> list[tuple[str, Any]]:
    """The outputs of a fused call whose cotangents are captured, keyed as in ``call.cot``.

    Args:
        output: What the module returned: ``(output, h_n)`` or ``(output, (h_n, c_n))``,
            ``output`` a Tensor or a PackedSequence (its ``data`` is the tensor).
    """
    out_native, hidden = output
    seq = out_native.data if isinstance(out_native, PackedSequence) else out_native
    if isinstance(hidden, (tuple, list)):
        return [("output", seq), ("h_n", hidden[0]), ("c_n", hidden[1])]
    return [("output", seq), ("h_n", hidden)]


def grad_hook(ref: Any, store: dict, key: Any, entry: Any) -> Callable[[Tensor], None]:
    """A tensor hook adding the gradient it sees to ``store[key]``; it changes nothing.

    It holds the recorder only weakly (``ref``) and does nothing once it is gone; it marks
    ``entry`` (the call's chain) as reached by a backward pass.
    """

    def hook(grad: Tensor | None) -> None:
        rec = ref()
        if rec is None:
            return
        rec._grad_version += 1
        entry.reached = True
        if rec.loss_scale is not None and rec.scale is None:  # the backward's loss scale
            rec.scale = rec.loss_scale()
        if grad is None:  # cuDNN's backward passes None for an output without gradient
            return
        g = grad.detach().clone()
        store[key] = store[key] + g if key in store else g

    return hook


def edge_hook(store: dict, key: Any, index: int) -> Callable[..., None]:
    """A node hook adding the gradient of one of its inputs to ``store[key]``."""

    def hook(grad_inputs: tuple, grad_outputs: tuple) -> None:
        g = grad_inputs[index]
        if g is not None:
            g = g.detach().clone()
            store[key] = store[key] + g if key in store else g

    return hook


def assign_grads(entries: list[FusedChain | CellChain | SequenceCall]) -> None:
    """Set ``LayerTrace.grads`` of every built layer from the captured gradients."""
    for entry in entries:
        if isinstance(entry, SequenceCall):
            if entry.layer is not None:
                entry.layer.grads = sequence_grads(entry)
        elif isinstance(entry, FusedChain):
            if any(call.dropout == NOT_REPRODUCIBLE for call in entry.calls):
                for layer in entry.layers:
                    layer.grads = None
                    layer.meta["grads"] = "unavailable: dropout mask not reproducible"
                continue
            grads = join_grads([_fused_grads(call) for call in entry.calls])
            for layer, g in zip(entry.layers, grads):
                layer.grads = g
        elif entry.layer is not None:
            entry.layer.grads = _chain_grads(entry)


def _fused_grads(call: FusedCall) -> list[Tensor]:
    """``∂L/∂s_t`` ``(T+1, B, D)`` per layer and direction from the captured cotangents."""
    lay = call.layout
    valid = call.valid
    # under torch.autocast the outputs (so their cotangents) may be in the lower precision
    cot = {k: v.to(call.x.dtype) for k, v in call.cot.items()}
    if not cot:  # the backward never reached this call: every ∂L/∂s_t is zero
        out = []
        for layer in range(call.num_layers):
            for d in range(call.dirs):
                size = sum(call.adapter.state_sizes(call.params[(layer, d)]))
                g = call.x.new_zeros((lay.T + 1, lay.B, size))
                if valid is not None:
                    g[1:][~valid] = float("nan")
                out.append(g)
        return out
    rep, call.tracked = call.tracked or replay_fused(call, keep_factors=True), None
    p = call.h_n.shape[-1]
    final = None
    if "h_n" in cot or "c_n" in cot:
        sizes = [
            sum(call.adapter.state_sizes(call.params[(k, d)]))
            for k in range(call.num_layers)
            for d in range(call.dirs)
        ]
        final = call.x.new_zeros((len(sizes), lay.B, max(sizes)))
        if "h_n" in cot:
            final[..., :p] = lay.hidden(cot["h_n"])
        if "c_n" in cot:
            final[..., p:] = lay.hidden(cot["c_n"])
    grads = stack_state_grads(
        call.adapter,
        call.params,
        [[stacked(seq) for seq in layer] for layer in rep.states],
        rep.inputs,
        out_cot=lay.to_time_major(cot["output"]) if "output" in cot else None,
        final_cot=final,
        valid=valid,
        positions=call.positions,
        masks=call.masks if call.dropout == MASK_REPRODUCED else None,
        factors=rep.factors,
    )
    return [g for layer in grads for g in layer]


def _chain_grads(chain: CellChain) -> Tensor:
    """``∂L/∂s_t`` ``(T+1, B, D)`` of one chain from its output parts' gradients."""
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
    with torch.enable_grad(), rng_preserved():
        s = s0.detach().clone().requires_grad_(True)
        out = chain.adapter.step(params, x0, s)
        (g0,) = torch.autograd.grad(out, s, grads[1])
    grads[0] = g0.detach()
    return grads
