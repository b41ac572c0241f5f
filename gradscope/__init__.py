"""gradscope: does the gradient survive the trip back through time?

Record any PyTorch recurrent model step by step, get exact per-timestep Jacobians, and
measure spectra, Lyapunov exponents and gradient-norm decay with a verdict per layer.

    import gradscope as gs
    prof = gs.profile(model, x)        # trace + diagnosis
    print(prof.diagnosis)              # verdict table
    prof.report("report.html")         # figures, self-contained

"""

from __future__ import annotations

from gradscope._version import __version__

# Public names are bound eagerly, grouped by concept. Several functions share their name
# with the submodule that defines them (``gradscope.trace``, ``gradscope.decay``,
# ``gradscope.report`` ...); importing them here, once, after their submodules are loaded,
# is what keeps ``gs.decay`` the function even when ``gradscope.decay`` is imported later.
from gradscope.cells import register_cell
from gradscope.cells.base import CellAdapter
from gradscope.decay import Decay, decay
from gradscope.diagnose import Diagnosis, LayerDiagnosis, Profile, diagnose, profile
from gradscope.errors import (
    CellConventionError,
    ChaoticReplayWarning,
    GradscopeError,
    MissingDataError,
    NoRecurrentModuleError,
    OptionalDependencyError,
    ReplayMismatchError,
    ShapeError,
    TraceFormatError,
    UnsupportedModuleError,
)
from gradscope.lyapunov import Lyapunov, lyapunov
from gradscope.monitor import History, Monitor
from gradscope.record import Recorder, record, trace
from gradscope.report import report
from gradscope.spectra import Spectrum, spectrum
from gradscope.trace import LayerTrace, Trace, load

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
    "MissingDataError",
    "NoRecurrentModuleError",
    "OptionalDependencyError",
    "ReplayMismatchError",
    "ShapeError",
    "TraceFormatError",
    "UnsupportedModuleError",
    "__version__",
]
