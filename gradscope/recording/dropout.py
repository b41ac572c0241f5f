"""Inter-layer dropout of fused modules: whether masks are drawn, and drawing them again.

PyTorch's fused CPU kernels multiply each layer's output but the last by a dropout mask
drawn from the default CPU generator (see "Inter-layer dropout" in
:mod:`gradscope.recording`). The recorder copies that generator's state just before the
module runs (:func:`draws_masks` says when); :func:`draw_masks` draws the same masks again
from a private generator, and :func:`dropout_mode` says whether the replay can use them.
The global RNG is never touched.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn

#: ``meta["dropout"]`` of a layer whose inter-layer dropout mask the replay reproduced.
MASK_REPRODUCED = "mask reproduced"
#: ... of a layer whose mask came from a generator that cannot be replayed (CUDA).
NOT_REPRODUCIBLE = "not reproducible"
#: ... of a layer that reads no dropped-out input.
NO_DROPOUT = "none"


def draws_masks(module: nn.Module) -> bool:
    """Whether a call of the fused ``module`` now draws inter-layer dropout masks."""
    return (
        module.training
        and float(getattr(module, "dropout", 0.0)) > 0
        and int(getattr(module, "num_layers", 1)) > 1
    )


def dropout_mode(module: nn.Module, device: torch.device, rng: Tensor | None) -> str:
    """``meta["dropout"]`` of a call of ``module`` on ``device`` (``rng``: the copied state).

    Returns:
        :data:`NO_DROPOUT`, :data:`MASK_REPRODUCED` (CPU, generator state copied) or
        :data:`NOT_REPRODUCIBLE`.
    """
    if not draws_masks(module):
        return NO_DROPOUT
    if device.type == "cpu" and rng is not None:
        return MASK_REPRODUCED
    return NOT_REPRODUCIBLE


def draw_masks(
    rng_state: Tensor, p: float, rows: tuple[int, ...], widths: list[int], like: Tensor
) -> list[Tensor]:
    """The dropout multipliers PyTorch's CPU kernel drew, one ``(*rows, width)`` per width.

    ``noise = empty_like(y).bernoulli_(1 - p, generator=g) / (1 - p)`` in order, with ``g``
    a private generator in the state ``rng_state`` the global CPU generator had when the
    module started.

    Args:
        rng_state: The copied CPU generator state.
        p: The dropout probability.
        rows: The leading shape of the outputs: ``(T, B)``, or ``(ΣL_b,)`` for packed data.
        widths: The feature width of each dropped-out output, in the kernel's order.
        like: A tensor with the outputs' dtype and device.
    """
    gen = torch.Generator(device="cpu")
    gen.set_state(rng_state)
    masks = []
    for width in widths:
        if p >= 1.0:  # at::dropout multiplies by zero and draws nothing
            masks.append(like.new_zeros((*rows, width)))
            continue
        noise = torch.empty((*rows, width), dtype=like.dtype, device=like.device)
        noise.bernoulli_(1.0 - p, generator=gen)
        noise.div_(1.0 - p)
        masks.append(noise)
    return masks


def warn_not_reproducible(name: str, module_type: str, p: float, device_type: str) -> None:
    """Warn that a module's dropout mask cannot be reproduced (see :data:`NOT_REPRODUCIBLE`)."""
    warnings.warn(
        f"gradscope: {name} ({module_type}) ran in training mode with "
        f"inter-layer dropout p={p} on {device_type}, whose dropout "
        "mask cannot be reproduced; layers > 0 are replayed WITHOUT the mask (their "
        "inputs are the undropped outputs of the layer below), their output check is "
        "skipped, and their meta['dropout'] is 'not reproducible'. Call model.eval() or "
        "record on CPU for exact traces.",
        RuntimeWarning,
        stacklevel=4,  # Recorder.stop (via build_trace, _build_fused)
    )
