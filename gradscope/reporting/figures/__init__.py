r"""One function per figure, grouped by what it shows: arrays in, a matplotlib figure out.

Every function here is pure: it takes plain numpy arrays and numbers (the fields of the
analysis results, never a model or a trace), draws one axes, and returns the figure it drew
on. Pass ``ax=`` to draw into an existing axes (the PDF layout does, to put several figures
on a page); without it a new :class:`~matplotlib.figure.Figure` of :data:`FIGSIZE` is made
(no pyplot state is touched, so figures are garbage-collected like any object).

Conventions shared by all figures:

* one style (:func:`style`: seaborn ``whitegrid``, the ``colorblind`` palette, which is the
  Okabe–Ito set) and fixed regime colours *and* markers (:data:`REGIME_COLOURS`,
  :data:`REGIME_MARKERS`), so a regime is never told by colour alone;
* gradient norms are plotted as :math:`\log_{10}` values on a linear axis whose ticks are
  labelled with the norms themselves (``10^{-8}``, ``0.5``, ...): products of Jacobians
  routinely leave the float range (``e^{-800}``) yet their logarithm is exact, so the axis
  never clips to 0 or inf;
* natural logarithms come in (every ``log_norms``/``median``/``band`` of
  :class:`gradscope.Decay`), base-10 goes on the axis: :math:`\log_{10} x = \ln x/\ln 10`;
* a panel without data is never left blank: it says why (:func:`no_data`).

Modules: :mod:`.theme` (palette, regime colours and markers, the style context, number
formats), :mod:`.axes` (log-scale axes), :mod:`.decay`, :mod:`.training`, :mod:`.spectra`,
:mod:`.lyapunov`, :mod:`.comparison`, :mod:`.mechanism` (the gradient highway per model),
:mod:`.multiples` (one figure function drawn for several entries). The figures and the
shared look are re-exported here, so ``from gradscope.reporting import figures as F;
F.decay_figure(...)`` reads as before.
"""

from __future__ import annotations

from gradscope.reporting.figures.axes import log10_ticks
from gradscope.reporting.figures.comparison import Curve, comparison_figure
from gradscope.reporting.figures.decay import decay_figure, lag_heatmap_figure
from gradscope.reporting.figures.gates import (
    carry_figure,
    gate_distribution_figure,
    path_share_figure,
    repeated_factor_figure,
)
from gradscope.reporting.figures.lyapunov import (
    lyapunov_convergence_figure,
    lyapunov_spectrum_figure,
)
from gradscope.reporting.figures.mechanism import Mechanism, mechanism_figure
from gradscope.reporting.figures.memory import decay_heatmap_figure, timescale_figure
from gradscope.reporting.figures.multiples import small_multiples
from gradscope.reporting.figures.spectra import (
    eigenvalue_figure,
    singular_value_figure,
    spectral_time_figure,
)
from gradscope.reporting.figures.theme import (
    FIGSIZE,
    REGIME_COLOURS,
    REGIME_MARKERS,
    REGIME_SYMBOLS,
    fmt_rate,
    fmt_value,
    new_axes,
    no_data,
    palette,
    regime_label,
    style,
)
from gradscope.reporting.figures.training import (
    training_gates_figure,
    training_heatmap_figure,
    training_rate_figure,
)

__all__ = [
    "carry_figure",
    "gate_distribution_figure",
    "path_share_figure",
    "repeated_factor_figure",
    "FIGSIZE",
    "REGIME_COLOURS",
    "REGIME_MARKERS",
    "REGIME_SYMBOLS",
    "Curve",
    "Mechanism",
    "mechanism_figure",
    "small_multiples",
    "comparison_figure",
    "decay_figure",
    "decay_heatmap_figure",
    "eigenvalue_figure",
    "fmt_rate",
    "fmt_value",
    "lag_heatmap_figure",
    "log10_ticks",
    "lyapunov_convergence_figure",
    "lyapunov_spectrum_figure",
    "new_axes",
    "no_data",
    "palette",
    "regime_label",
    "singular_value_figure",
    "spectral_time_figure",
    "style",
    "timescale_figure",
    "training_gates_figure",
    "training_heatmap_figure",
    "training_rate_figure",
]
