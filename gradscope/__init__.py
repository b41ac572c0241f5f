"""gradscope: does the gradient survive the trip back through time?

Record any PyTorch recurrent model step by step, get exact per-timestep Jacobians, and
measure spectra, Lyapunov exponents and gradient-norm decay with a verdict per layer.

    import gradscope as gs
    prof = gs.profile(model, x)        # trace + diagnosis
    print(prof.diagnosis)              # verdict table
    prof.report("report.html")         # figures, self-contained

Public names are resolved lazily (PEP 562): ``import gradscope`` loads no torch, SciPy or
matplotlib, so the command line answers ``--help`` at once; the first use of a name imports
its home module. No module of the package shares its name with a public function, so
``gs.decay`` is always the function, whatever was imported before.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from gradscope import _views
from gradscope._version import __version__

# Records below the reporting layer render through these (gradscope._views): the top
# plugs the reporting layer in, so no lower layer imports it.
_views.register("report", "gradscope.reporting:report")
_views.register("notebook_html", "gradscope.reporting.notebook:notebook_html")
_views.register("layer_html", "gradscope.reporting.notebook:layer_html")

#: Where each public name lives, grouped by concept.
_HOMES: dict[str, str] = {
    # recording
    "LayerTrace": "gradscope.traces",
    "Trace": "gradscope.traces",
    "load": "gradscope.traces",
    "Recorder": "gradscope.recording",
    "record": "gradscope.recording",
    "trace": "gradscope.recording",
    # cells
    "CellAdapter": "gradscope.cells.base",
    "register_cell": "gradscope.cells",
    "Drive": "gradscope.sequences",
    "SequenceAdapter": "gradscope.sequences",
    "register_sequence": "gradscope.sequences",
    "register_step": "gradscope.sequences.step",
    # analysis
    "Decay": "gradscope.analysis.decay",
    "decay": "gradscope.analysis.decay",
    "Lyapunov": "gradscope.analysis.lyapunov",
    "lyapunov": "gradscope.analysis.lyapunov",
    "Spectrum": "gradscope.analysis.spectra",
    "spectrum": "gradscope.analysis.spectra",
    "Diagnosis": "gradscope.analysis.results",
    "LayerDiagnosis": "gradscope.analysis.results",
    "diagnose": "gradscope.analysis.diagnosis",
    "Profile": "gradscope.analysis.profiling",
    "profile": "gradscope.analysis.profiling",
    # reports and training
    "History": "gradscope.history",
    "Monitor": "gradscope.monitor",
    "report": "gradscope.reporting",
    # errors
    "CellConventionError": "gradscope.errors",
    "ChaoticReplayWarning": "gradscope.errors",
    "GradscopeError": "gradscope.errors",
    "GradscopeWarning": "gradscope.errors",
    "MissingDataError": "gradscope.errors",
    "NoRecurrentModuleError": "gradscope.errors",
    "OptionalDependencyError": "gradscope.errors",
    "ReplayMismatchError": "gradscope.errors",
    "ShapeError": "gradscope.errors",
    "TraceFormatError": "gradscope.errors",
    "UnsupportedModuleError": "gradscope.errors",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'gradscope' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # cache: later lookups do not come here again
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOMES))


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from gradscope.analysis.decay import Decay, decay
    from gradscope.analysis.diagnosis import diagnose
    from gradscope.analysis.lyapunov import Lyapunov, lyapunov
    from gradscope.analysis.profiling import Profile, profile
    from gradscope.analysis.results import Diagnosis, LayerDiagnosis
    from gradscope.analysis.spectra import Spectrum, spectrum
    from gradscope.cells import register_cell
    from gradscope.cells.base import CellAdapter
    from gradscope.errors import (
        CellConventionError,
        ChaoticReplayWarning,
        GradscopeError,
        GradscopeWarning,
        MissingDataError,
        NoRecurrentModuleError,
        OptionalDependencyError,
        ReplayMismatchError,
        ShapeError,
        TraceFormatError,
        UnsupportedModuleError,
    )
    from gradscope.history import History
    from gradscope.monitor import Monitor
    from gradscope.recording import Recorder, record, trace
    from gradscope.reporting import report
    from gradscope.sequences import Drive, SequenceAdapter, register_sequence
    from gradscope.sequences.step import register_step
    from gradscope.traces import LayerTrace, Trace, load

__all__ = [
    # recording
    "LayerTrace",
    "Recorder",
    "Trace",
    "load",
    "record",
    "trace",
    # cells
    "CellAdapter",
    "register_cell",
    "Drive",
    "SequenceAdapter",
    "register_sequence",
    "register_step",
    # analysis
    "Decay",
    "Diagnosis",
    "LayerDiagnosis",
    "Lyapunov",
    "Profile",
    "Spectrum",
    "decay",
    "diagnose",
    "lyapunov",
    "profile",
    "spectrum",
    # reports and training
    "History",
    "Monitor",
    "report",
    # errors
    "CellConventionError",
    "ChaoticReplayWarning",
    "GradscopeError",
    "GradscopeWarning",
    "MissingDataError",
    "NoRecurrentModuleError",
    "OptionalDependencyError",
    "ReplayMismatchError",
    "ShapeError",
    "TraceFormatError",
    "UnsupportedModuleError",
    "__version__",
]
