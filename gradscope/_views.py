"""Renderers the top layer plugs in, so that records can show themselves without importing it.

A :class:`~gradscope.analysis.results.Diagnosis`, a :class:`~gradscope.history.History` or a
:class:`~gradscope.analysis.profiling.Profile` offers ``.report(path)`` and a notebook view
(``_repr_html_``), but the reporting layer sits above the layers these records live in, and
imports flow one way. So the records ask for a renderer by name here, and the package's
top (``gradscope/__init__.py``, imported before any of its modules) registers where each
renderer lives. Nothing below the reporting layer names it.
"""

from __future__ import annotations

import importlib
from typing import Any

from gradscope.errors import OptionalDependencyError

#: Renderer name -> ``"module:function"``, filled in by the package's top level.
_TARGETS: dict[str, str] = {}


def register(name: str, target: str) -> None:
    """Say where renderer ``name`` lives: ``target`` is ``"package.module:function"``."""
    _TARGETS[name] = target


def render(name: str, *args: Any, **kwargs: Any) -> Any:
    """Call renderer ``name`` with ``args``/``kwargs`` (its module imported on first use).

    Raises:
        OptionalDependencyError: no renderer of that name is registered.
    """
    target = _TARGETS.get(name)
    if target is None:
        raise OptionalDependencyError(
            f"no {name!r} renderer is registered: import gradscope (its top level registers "
            "the reporting layer's renderers)"
        )
    module, func = target.split(":")
    return getattr(importlib.import_module(module), func)(*args, **kwargs)


__all__ = ["register", "render"]
