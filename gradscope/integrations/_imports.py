"""Optional dependencies, imported lazily and in one place, with one helpful error.

Lightning, TensorBoard, W&B and Hugging Face are extras of gradscope: ``import gradscope`` never
imports them, and an integration that needs one imports it through :func:`require`, which
turns a missing package into an :class:`~gradscope.errors.OptionalDependencyError` saying
which extra to install (the pattern of torchmetrics ``utilities/imports.py``).
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from functools import cache
from types import ModuleType

from gradscope.errors import OptionalDependencyError

#: The distribution name on the package index (``gradscope`` there is an unrelated project);
#: the import name stays ``gradscope``.
DISTRIBUTION = "gradscope-rnn"


@dataclass(frozen=True)
class Extra:
    """An optional dependency: what to import and how to install it.

    Attributes:
        module: The module to import (``"lightning.pytorch"``).
        package: The pip package that provides it (``"lightning"``).
        extra: The gradscope extra that pulls it in (``pip install "gradscope-rnn[extra]"``,
            or ``pip install -e ".[extra]"`` in a clone).
    """

    module: str
    package: str
    extra: str


LIGHTNING = Extra("lightning.pytorch", "lightning", "lightning")
PYTORCH_LIGHTNING = Extra("pytorch_lightning", "pytorch-lightning", "lightning")
TENSORBOARD = Extra("tensorboard", "tensorboard", "tensorboard")
TRANSFORMERS = Extra("transformers", "transformers", "huggingface")
WANDB = Extra("wandb", "wandb", "wandb")


@cache
def available(module: str) -> bool:
    """Whether ``module`` can be imported, without importing it (cached)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package is missing, or a broken spec
        return False


def require(extra: Extra, purpose: str) -> ModuleType:
    """Import ``extra.module`` or raise an error that says what to install.

    Args:
        extra: The optional dependency.
        purpose: What needs it, e.g. ``"gradscope.integrations.lightning"``.

    Returns:
        The imported module.

    Raises:
        OptionalDependencyError: the package is not installed (or fails to import).
    """
    try:
        return importlib.import_module(extra.module)
    except ImportError as exc:
        raise OptionalDependencyError(
            f"{purpose} needs the optional package {extra.package!r} (module "
            f"{extra.module!r}), which could not be imported: {exc}. Install it with "
            f'`pip install "{DISTRIBUTION}[{extra.extra}]"` (in a clone of gradscope: '
            f'`pip install -e ".[{extra.extra}]"`) or `pip install {extra.package}`.'
        ) from exc


def lightning() -> ModuleType:
    """``lightning.pytorch`` (Lightning >= 2), else the standalone ``pytorch_lightning``.

    Raises:
        OptionalDependencyError: neither is installed.
    """
    if not available("lightning") and available("pytorch_lightning"):
        return require(PYTORCH_LIGHTNING, "gradscope.integrations.lightning")
    return require(LIGHTNING, "gradscope.integrations.lightning")


def summary_writer() -> type:
    """``torch.utils.tensorboard.SummaryWriter`` (needs the ``tensorboard`` package).

    Raises:
        OptionalDependencyError: ``tensorboard`` is not installed.
    """
    purpose = "gradscope.integrations.tensorboard"
    require(TENSORBOARD, purpose)
    module = require(Extra("torch.utils.tensorboard", "tensorboard", "tensorboard"), purpose)
    return module.SummaryWriter


__all__ = [
    "DISTRIBUTION",
    "LIGHTNING",
    "PYTORCH_LIGHTNING",
    "TENSORBOARD",
    "TRANSFORMERS",
    "WANDB",
    "Extra",
    "available",
    "lightning",
    "require",
    "summary_writer",
]
