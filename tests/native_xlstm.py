"""transformers' own xLSTM classes, also where the official ``xlstm`` package is installed.

``transformers.models.xlstm.modeling_xlstm`` defines its own ``xLSTMLayer`` only when the
``xlstm`` package is absent; with it installed (the dev extra installs it), ``xLSTMModel``
runs the package's ``mLSTMBlock`` instead, which gradscope records with the package's
adapter. :func:`modeling` executes the same file once more with the package reported
absent, as a separate module object under the real module name (so class names, and the
adapter gradscope finds by them, are those a user without the package gets), never placed
in ``sys.modules``: the installed transformers is left as it is.
"""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from types import ModuleType

import pytest

NAME = "transformers.models.xlstm.modeling_xlstm"


@lru_cache(maxsize=1)
def modeling() -> ModuleType:
    """The native modeling module (the installed one when it is native already)."""
    installed = pytest.importorskip(NAME)
    if hasattr(installed, "xLSTMLayer"):
        return installed
    import transformers.utils as utils

    spec = importlib.util.find_spec(NAME)
    module = importlib.util.module_from_spec(spec)
    real = utils.is_xlstm_available
    utils.is_xlstm_available = lambda: False  # read once, by the module's own import
    try:
        spec.loader.exec_module(module)
    finally:
        utils.is_xlstm_available = real
    return module
