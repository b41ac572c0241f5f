"""Shared pieces of the adapters for ``transformers``' linear-attention and SSM mixers.

The mixers (the Mamba, Mamba-2, gated DeltaNet and Kimi-delta families and their relatives;
not MiniMax's lightning attention) share one calling convention,
``forward(hidden_states, cache=None, attention_mask=None, **kwargs)``, the padding mask
(multiply the hidden states by a 2-D ``(B, T)`` mask) and the causal depthwise convolution
with SiLU. Nothing here imports ``transformers``.
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from gradscope.errors import UnsupportedModuleError

#: Keyword names under which a cache reaches a mixer (current and deprecated).
CACHE_KWARGS = ("cache", "cache_params", "past_key_values")
#: Keyword arguments of packed (varlen) batches. The torch fallbacks of ``transformers``
#: ignore them (only the CUDA kernels reset the state at sequence boundaries).
PACKED_KWARGS = ("seq_idx", "cu_seq_lens_q", "cu_seq_lens_k", "cu_seqlens")
_NAMES = ("hidden_states", "cache", "attention_mask")


def _bind(args: tuple, kwargs: dict[str, Any]) -> dict[str, Any]:
    bound = dict(zip(_NAMES, args))
    for name in _NAMES:
        if name in kwargs:
            bound[name] = kwargs[name]
    if bound.get("cache") is None:
        for name in CACHE_KWARGS[1:]:
            if kwargs.get(name) is not None:
                bound["cache"] = kwargs[name]
    return bound


def refuse_carried_state(module: nn.Module, args: tuple, kwargs: dict[str, Any], kind: str) -> None:
    """Raise if the call, about to run, continues from a cached state (a generation step).

    Meant for :meth:`~gradscope.sequences.base.SequenceAdapter.initial_state` (called just
    before the module runs): a fresh cache (a prefill with ``use_cache=True``) is fine, the
    call then starts from zeros like one without a cache.

    Raises:
        UnsupportedModuleError: the cache already holds this layer's state.
    """
    cache = _bind(args, kwargs).get("cache")
    if cache is None:
        return
    layer = getattr(module, "layer_idx", None)
    has = getattr(cache, "has_previous_state", None)
    carried = True  # a cache gradscope does not know: assume it carries a state
    if callable(has) and layer is not None:
        carried = bool(has(layer))
    if carried:
        raise UnsupportedModuleError(
            f"gradscope's {kind} adapter replays a {type(module).__name__} from a zero state; "
            "this call continues from the recurrent and convolution states of a cache (a "
            "generation step), which its arguments do not hold. Record whole sequences in one "
            "call with use_cache=False, e.g. gs.trace(model, input_ids, use_cache=False)."
        )


def call_arguments(args: tuple, kwargs: dict[str, Any], kind: str) -> tuple[Tensor, Tensor | None]:
    """``(hidden_states, attention_mask)`` of one mixer call.

    A cache in the arguments is ignored here: the hook sees it after the call updated it, so
    whether it carried a state is decided before the call (:func:`refuse_carried_state`).

    Raises:
        UnsupportedModuleError: packed-sequence arguments, or no ``(B, T, C)`` hidden states.
    """
    packed = [n for n in PACKED_KWARGS if kwargs.get(n) is not None]
    if packed:
        raise UnsupportedModuleError(
            f"{kind}: packed sequences ({', '.join(packed)}) are not supported (the state "
            "would be reset inside a row); pass a padded batch with an attention_mask instead"
        )
    bound = _bind(args, kwargs)
    hidden = bound.get("hidden_states")
    if not isinstance(hidden, Tensor) or hidden.ndim != 3:
        raise UnsupportedModuleError(
            f"{kind}: expected hidden_states (B, T, hidden) as the first argument, got "
            f"{type(hidden).__name__}"
        )
    mask = bound.get("attention_mask")
    if mask is not None and (not isinstance(mask, Tensor) or mask.ndim != 2):
        raise UnsupportedModuleError(
            f"{kind}: expected a 2-D (B, T) padding attention_mask, got "
            f"{tuple(mask.shape) if isinstance(mask, Tensor) else type(mask).__name__}"
        )
    return hidden, mask


def mask_padding(h: Tensor, mask: Tensor | None) -> Tensor:
    """``h`` ``(B, T, C)`` times a 2-D padding mask ``(B, T)``, as ``transformers`` does."""
    if mask is None:
        return h
    return (h * mask[:, :, None]).to(h.dtype)


def causal_conv_silu(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """Causal depthwise conv1d then SiLU over time: ``x`` ``(B, T, C)``, ``weight`` ``(C, 1, K)``.

    Zero left padding (the module's ``causal_conv1d_fn`` without a cache); ``O(T·C·K)``.
    """
    T = x.shape[1]
    out = F.conv1d(
        x.transpose(1, 2).to(weight.dtype),
        weight,
        bias,
        padding=weight.shape[-1] - 1,
        groups=weight.shape[0],
    )[:, :, :T]
    return F.silu(out).to(x.dtype).transpose(1, 2)


def optional_biases(module: nn.Module) -> dict[str, Tensor]:
    """The Mamba mixers' optional biases that are present (``in_proj``, ``conv1d``, ``out_proj``).

    Not detached. Shared by the Mamba-1 (``transformers`` and ``mambapy``) and Mamba-2 adapters.
    """
    out = {}
    for name in ("in_proj", "conv1d", "out_proj"):
        bias = getattr(module, name).bias
        if bias is not None:
            out[f"{name}.bias"] = bias
    return out


def check_silu(module: nn.Module, kind: str) -> None:
    """Raise :class:`UnsupportedModuleError` unless the mixer's activation is SiLU."""
    act = str(getattr(module, "activation", "silu"))
    if act not in ("silu", "swish"):
        raise UnsupportedModuleError(
            f"gradscope's {kind} adapter replays the silu activation; this "
            f"{type(module).__name__} uses {act!r}"
        )


__all__ = [
    "CACHE_KWARGS",
    "PACKED_KWARGS",
    "call_arguments",
    "causal_conv_silu",
    "check_silu",
    "mask_padding",
    "optional_biases",
    "refuse_carried_state",
]
