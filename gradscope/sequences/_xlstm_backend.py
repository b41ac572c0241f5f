"""Which ``mlstm_kernels`` backends the mLSTM replay follows (xLSTM-7B's layer).

``xlstm.xlstm_large``'s ``mLSTMLayer`` (also inside ``transformers``' xLSTM when the ``xlstm``
package is installed) hands its config's kernel names to ``mlstm_kernels``'
``mLSTMBackend``, which runs what they name; :mod:`gradscope.sequences.xlstm` replays the
native PyTorch ones and refuses the others here, before the layer runs.
"""

from __future__ import annotations

from torch import nn

from gradscope.errors import UnsupportedModuleError

#: The ``mlstm_kernels`` kernels that run in plain PyTorch (on the CPU too), which the
#: replay follows: per backend config field, its names and the functions they bind
#: (``mLSTMBackend`` binds ``<field>_fn`` when it is built; that is what runs).
NATIVE_KERNELS = {
    "chunkwise_kernel": {
        "chunkwise--native_autograd": "mlstm_chunkwise__native_autograd",
        "chunkwise--native_custbw": "mlstm_chunkwise__native_custbw",
    },
    "sequence_kernel": {"native_sequence__native": "mlstm_recurrent_sequence__native_fw"},
    "step_kernel": {"native": "mlstm_recurrent_step__native"},
}


def check_backend(module: nn.Module) -> str:
    """The layer's backend mode, after refusing what the replay does not follow.

    Raises:
        UnsupportedModuleError: ``mode="train_with_padding"``, or (``mlstm_kernels``'
            backend only) a kernel that the mode uses (training: the chunkwise one;
            inference: all three) bound to a function other than :data:`NATIVE_KERNELS`'.
    """
    backend = module.mlstm_backend
    mode = str(getattr(backend.config, "mode", "inference"))
    if "with_padding" in mode:
        raise UnsupportedModuleError(
            f"gradscope's mLSTM adapter: this {type(module).__name__} runs "
            "mode='train_with_padding', whose backend returns no state (the layer's forward "
            "cannot unpack it); use mode='train' (T a multiple of chunk_size) or "
            "mode='inference'"
        )
    if not type(backend).__module__.startswith("mlstm_kernels"):
        return mode  # transformers' own backend: always the native kernels
    used = ("chunkwise_kernel",) if "train" in mode else tuple(NATIVE_KERNELS)
    bad = [
        n
        for n in used
        if getattr(getattr(backend, f"{n}_fn", None), "__name__", None)
        not in NATIVE_KERNELS[n].values()
    ]
    if bad:
        named = ", ".join(f"{n}={getattr(backend.config, n, '?')!r}" for n in bad)
        fix = ", ".join(f"{n}={next(iter(NATIVE_KERNELS[n]))!r}" for n in used)
        raise UnsupportedModuleError(
            f"gradscope's mLSTM adapter replays mlstm_kernels' native PyTorch kernels; this "
            f"{type(module).__name__} (mode={mode!r}) runs {named}: Triton kernels run on the "
            "GPU in their own precision and tiling, parallel kernels cannot run in this layer, "
            "siging kernels have another input gate. To record it, build the same weights "
            f"with {fix} (xLSTMLargeConfig / transformers' xLSTMConfig)"
        )
    return mode


__all__ = ["NATIVE_KERNELS", "check_backend"]
