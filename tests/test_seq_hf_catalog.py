"""Every recurrent mixer in the installed transformers is served, or refused with a reason.

The test walks ``transformers.models`` (every ``modeling_*`` module that imports) and picks
the ``nn.Module`` classes that look like a recurrent mixer: by name (``…Mixer``,
``…MambaLayer``, ``…GatedDeltaNet``, ``…DeltaAttention``, ``…LinearAttention``,
``…LightningAttention``, ``…Rglru``, ``…xLSTMLayer``, ``Rwkv…Attention``), or because their
``forward`` reads or writes a cache's recurrent state (``get_recurrent_state``,
``update_recurrent_state``, MiniMax's ``get_linear_cache``: the names its code uses, not its
source text). Each must be
served (:func:`gradscope.cells.served`, declared by the adapter modules' ``SERVES``) or listed
in :data:`NOT_SERVED` with the reason. A transformers release that adds a hybrid makes this
test name the new class; and every served class must exist and have a toy-size case (in
``hf_relatives.MIXERS`` or its family's own test).
"""

from __future__ import annotations

import importlib
import inspect
import os
import pkgutil
import re
import warnings

import pytest
from hf_relatives import MIXERS
from torch import nn

from gradscope.cells import served

transformers = pytest.importorskip("transformers")
M = "transformers.models"

NAME = re.compile(
    r"(Mixer|MambaLayer|GatedDeltaNet|DeltaAttention|LinearAttention|LightningAttention"
    r"|Rglru|xLSTMLayer|Rwkv\w*Attention)$"
)
#: Names a forward's code uses when it carries a recurrent state in a cache.
CACHE_STATE = {
    "get_recurrent_state",
    "update_recurrent_state",
    "get_linear_cache",
    "set_linear_cache",
}

#: Classes that look like recurrent mixers but are deliberately not recorded, and why.
NOT_SERVED = {
    f"{M}.kimi_linear.modeling_kimi_linear.KimiLinearAttention": (
        "softmax multi-head latent attention (MLA, DeepSeek-V2 style), not a recurrence; Kimi "
        "Linear's recurrent layer is KimiLinearDeltaAttention (served, kind kimi_delta)"
    ),
    f"{M}.recurrent_gemma.modeling_recurrent_gemma.RecurrentGemmaRecurrentBlock": (
        "the block around RecurrentGemmaRglru (projections, a short convolution, the gate); "
        "its recurrence is recorded through RecurrentGemmaRglru (served, kind rglru)"
    ),
    f"{M}.zaya.modeling_zaya.ZayaCCAProjection": (
        "ZAYA's compressed convolutional attention projection: two finite convolutions and a "
        "value delayed by one token (the 'recurrent state' it caches is the previous token's "
        "projection): a fixed-length window, no recurrence whose gradients decay over time"
    ),
    f"{M}.sam3_lite_text.modeling_sam3_lite_text.Sam3LiteTextRepMixer": (
        "a re-parameterised depthwise-convolution token mixer of a text encoder (RepMixer), "
        "not a recurrence"
    ),
}
#: Served classes tested by their family's own test module, not by hf_relatives.
OWN_TESTS = {
    f"{M}.rwkv.modeling_rwkv.RwkvSelfAttention": "test_seq_rwkv.py",
    f"{M}.xlstm.modeling_xlstm.xLSTMLayer": "test_seq_xlstm.py",
    f"{M}.recurrent_gemma.modeling_recurrent_gemma.RecurrentGemmaRglru": "test_seq_rglru.py",
}


def _code_names(fn) -> set[str]:
    code = getattr(inspect.unwrap(fn), "__code__", None)
    out: set[str] = set()
    stack = [code] if code is not None else []
    while stack:
        c = stack.pop()
        out.update(c.co_names)
        stack.extend(k for k in c.co_consts if inspect.iscode(k))
    return out


def _modeling_modules():
    models = importlib.import_module(M)
    root = models.__path__[0]
    for info in pkgutil.iter_modules(models.__path__):
        folder = os.path.join(root, info.name)
        if not os.path.isdir(folder):
            continue
        for file in sorted(os.listdir(folder)):
            if file.startswith("modeling_") and file.endswith(".py"):
                yield f"{M}.{info.name}.{file[:-3]}"


@pytest.fixture(scope="module")
def candidates() -> dict[str, str]:
    """Qualified name -> why it looks like a recurrent mixer, over all importable models."""
    found: dict[str, str] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in _modeling_modules():
            try:
                module = importlib.import_module(name)
            except Exception:  # an optional dependency missing: nothing of it can be recorded
                continue
            for cname, cls in vars(module).items():
                if not (
                    isinstance(cls, type) and issubclass(cls, nn.Module) and cls.__module__ == name
                ):
                    continue
                forward = cls.__dict__.get("forward")
                if NAME.search(cname):
                    found[f"{name}.{cls.__qualname__}"] = "name"
                elif forward is not None and _code_names(forward) & CACHE_STATE:
                    found[f"{name}.{cls.__qualname__}"] = "cached recurrent state"
    return found


def test_every_recurrent_mixer_is_served_or_refused_with_a_reason(candidates):
    table = served()
    unknown = sorted(q for q in candidates if q not in table and q not in NOT_SERVED)
    assert not unknown, (
        "transformers has recurrent-looking mixers gradscope neither serves nor lists as "
        "deliberately unsupported (add them to an adapter module's SERVES, with a case in "
        "tests/hf_relatives.py, or to NOT_SERVED with the reason): " + ", ".join(unknown)
    )
    assert len(candidates) >= 20  # the walk really saw the hybrids (25 in transformers 5.25)


def test_the_catalog_holds_the_known_hybrids(candidates):
    for qualname in (
        f"{M}.jamba.modeling_jamba.JambaMambaMixer",
        f"{M}.falcon_h1.modeling_falcon_h1.FalconH1Mixer",
        f"{M}.qwen3_5.modeling_qwen3_5.Qwen3_5GatedDeltaNet",
        f"{M}.kimi_linear.modeling_kimi_linear.KimiLinearDeltaAttention",
        f"{M}.minimax.modeling_minimax.MiniMaxLightningAttention",
    ):
        assert qualname in candidates and qualname in served()


def test_every_served_class_exists_and_has_a_toy_case():
    xlstm_external = importlib.import_module("transformers.utils").is_xlstm_available()
    cases = {spec.qualname for spec in MIXERS}
    for qualname, adapter in served().items():
        module, _, name = qualname.rpartition(".")
        if not module.startswith(M):
            continue  # another library's class (a PyPI package's family)
        if qualname.endswith("xLSTMLayer") and xlstm_external:
            continue  # transformers then builds xLSTM from the xlstm package's classes
        cls = getattr(importlib.import_module(module), name, None)
        assert isinstance(cls, type) and issubclass(cls, nn.Module), f"{qualname} is not there"
        assert qualname in cases or qualname in OWN_TESTS, f"{qualname} has no toy-size case"
        assert adapter.runs_sequences


def test_not_served_entries_are_real_and_not_served():
    for qualname in NOT_SERVED:
        module, _, name = qualname.rpartition(".")
        assert isinstance(getattr(importlib.import_module(module), name, None), type), qualname
        assert qualname not in served()
