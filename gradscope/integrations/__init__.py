"""Integrations with training frameworks; each is an optional extra, imported lazily.

=====================================  ===============================================
``GradscopeCallback``                  Lightning ``Callback`` running a Monitor
                                       (:mod:`gradscope.integrations.lightning`;
                                       ``pip install "gradscope-rnn[lightning]"``)
``TensorBoardCallback``                Monitor callback logging summaries and figures
                                       (:mod:`gradscope.integrations.tensorboard`;
                                       ``pip install "gradscope-rnn[tensorboard]"``)
``GradscopeTrainerCallback``           Hugging Face ``TrainerCallback`` running a Monitor
                                       (:mod:`gradscope.integrations.huggingface`;
                                       ``pip install "gradscope-rnn[huggingface]"``)
``MonitorLogger``                      Monitor callback logging to any writers: the
                                       tags and their cadence
                                       (:mod:`gradscope.integrations.logger`)
``Writer``, ``as_writer``,             the writer protocol and its adapters
``TensorBoardWriter``,                 (:mod:`gradscope.integrations.writers`)
``LightningWriter``
``WandbWriter``                        W&B writer (:mod:`gradscope.integrations.wandb`;
                                       ``pip install "gradscope-rnn[wandb]"``)
=====================================  ===============================================

Importing :mod:`gradscope.integrations` imports none of the frameworks; a name is loaded
on first use, and a missing framework raises
:class:`~gradscope.errors.OptionalDependencyError` naming the extra to install.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY: dict[str, str] = {
    "GradscopeCallback": "gradscope.integrations.lightning",
    "TensorBoardCallback": "gradscope.integrations.tensorboard",
    "GradscopeTrainerCallback": "gradscope.integrations.huggingface",
    "MonitorLogger": "gradscope.integrations.logger",
    "Writer": "gradscope.integrations.writers",
    "as_writer": "gradscope.integrations.writers",
    "TensorBoardWriter": "gradscope.integrations.writers",
    "LightningWriter": "gradscope.integrations.writers",
    "WandbWriter": "gradscope.integrations.wandb",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'gradscope.integrations' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(__all__)
