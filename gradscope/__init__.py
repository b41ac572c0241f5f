"""gradscope: does the gradient survive the trip back through time?

Record any PyTorch recurrent model step by step, get exact per-timestep Jacobians, and
measure spectra, Lyapunov exponents and gradient-norm decay with a verdict per layer.

    import gradscope as gs
    prof = gs.profile(model, x)        # trace + diagnosis
    print(prof.diagnosis)              # verdict table
    prof.report("report.html")         # figures, self-contained

The public names are loaded on first use, so ``import gradscope`` stays light (matplotlib is
imported only when a report is written).
"""

from __future__ import annotations

import importlib
from typing import Any

from gradscope._version import __version__
from gradscope.errors import (
    CellConventionError,
    GradscopeError,
    MissingDataError,
    NoRecurrentModuleError,
    OptionalDependencyError,
    ReplayMismatchError,
    ShapeError,
    TraceFormatError,
    UnsupportedModuleError,
)

# name -> module that defines it; grouped by concept.
_LAZY: dict[str, str] = {
    # recording
    "trace": "gradscope.record",
    "record": "gradscope.record",
    "Recorder": "gradscope.record",
    "Trace": "gradscope.trace",
    "LayerTrace": "gradscope.trace",
    "load": "gradscope.trace",
    # cells
    "CellAdapter": "gradscope.cells.base",
    "register_cell": "gradscope.cells",
    # analysis
    "spectrum": "gradscope.spectra",
    "Spectrum": "gradscope.spectra",
    "lyapunov": "gradscope.lyapunov",
    "Lyapunov": "gradscope.lyapunov",
    "decay": "gradscope.decay",
    "Decay": "gradscope.decay",
    "diagnose": "gradscope.diagnose",
    "Diagnosis": "gradscope.diagnose",
    "LayerDiagnosis": "gradscope.diagnose",
    "profile": "gradscope.diagnose",
    "Profile": "gradscope.diagnose",
    # reports
    "report": "gradscope.report",
    # training
    "Monitor": "gradscope.monitor",
    "History": "gradscope.monitor",
}

__all__ = [
    "CellConventionError",
    "GradscopeError",
    "MissingDataError",
    "NoRecurrentModuleError",
    "OptionalDependencyError",
    "ReplayMismatchError",
    "ShapeError",
    "TraceFormatError",
    "UnsupportedModuleError",
    "__version__",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'gradscope' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)

# ``record`` and ``trace`` are also submodule names: importing ``gradscope.record`` or
# ``gradscope.trace`` sets these package attributes to the *modules*, shadowing the lazy
# lookup above. Bind the functions eagerly instead.
from gradscope.record import Recorder, record, trace  # noqa: E402, F401
