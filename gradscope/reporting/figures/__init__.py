r"""The figures a report can show, grouped by what they show; and how a chart is drawn.

A figure a person would hover over is declared once, as a function that returns its
:class:`~gradscope.reporting.figures.chart.Chart` (named columns with units, and how to draw
them): the HTML report draws that chart in the page (hover values, zoom, CSV/JSON download of
the same numbers), and :func:`~gradscope.reporting.figures.render.render_chart` draws the same
chart as the picture of the PDF and of the static HTML. ``*_figure`` of a chart is
``figure_of(*_chart)``: the same arguments plus ``ax=``, returning the picture. The figures
that have no chart (the eigenvalue plane, the singular-value histograms, the Lyapunov
spectrum, the gate views, the memory timescales, the mechanism picture, the gates over
training) are drawn by hand with matplotlib; each module says why.

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

Modules: :mod:`.chart` (the data model), :mod:`.render` (a chart as a picture),
:mod:`.theme` (palette, regime colours and markers, dash patterns, the style context, number
formats), :mod:`.axes` (log-scale axes), :mod:`.decay`, :mod:`.comparison` (and the look of
each entry of a comparison), :mod:`.training`, :mod:`.spectra`, :mod:`.lyapunov`,
:mod:`.gates`, :mod:`.memory`, :mod:`.mechanism` (the gradient highway per model),
:mod:`.multiples` (one figure function drawn for several entries). The figures and the
shared look are re-exported here (``from gradscope.reporting import figures as F``).
"""

from __future__ import annotations

from gradscope.reporting.figures.axes import log10_ticks
from gradscope.reporting.figures.comparison import (
    Curve,
    comparison_chart,
    comparison_figure,
    entry_styles,
)
from gradscope.reporting.figures.decay import (
    decay_chart,
    decay_figure,
    lag_heatmap_chart,
    lag_heatmap_figure,
)
from gradscope.reporting.figures.gates import (
    carry_chart,
    carry_figure,
    gate_distribution_figure,
    path_share_figure,
    repeated_factor_figure,
)
from gradscope.reporting.figures.lyapunov import (
    lyapunov_convergence_chart,
    lyapunov_convergence_figure,
    lyapunov_spectrum_figure,
)
from gradscope.reporting.figures.mechanism import Mechanism, mechanism_figure
from gradscope.reporting.figures.memory import decay_heatmap_figure, timescale_figure
from gradscope.reporting.figures.multiples import small_multiples
from gradscope.reporting.figures.render import figure_of, render_chart
from gradscope.reporting.figures.spectra import (
    eigenvalue_figure,
    singular_value_figure,
    spectral_time_chart,
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
    training_heatmap_chart,
    training_heatmap_figure,
    training_rate_chart,
    training_rate_figure,
)

__all__ = [
    "FIGSIZE",
    "REGIME_COLOURS",
    "REGIME_MARKERS",
    "REGIME_SYMBOLS",
    "Curve",
    "Mechanism",
    "carry_chart",
    "carry_figure",
    "comparison_chart",
    "comparison_figure",
    "decay_chart",
    "decay_figure",
    "decay_heatmap_figure",
    "eigenvalue_figure",
    "entry_styles",
    "figure_of",
    "fmt_rate",
    "fmt_value",
    "gate_distribution_figure",
    "lag_heatmap_chart",
    "lag_heatmap_figure",
    "log10_ticks",
    "lyapunov_convergence_chart",
    "lyapunov_convergence_figure",
    "lyapunov_spectrum_figure",
    "mechanism_figure",
    "new_axes",
    "no_data",
    "palette",
    "path_share_figure",
    "regime_label",
    "render_chart",
    "repeated_factor_figure",
    "singular_value_figure",
    "small_multiples",
    "spectral_time_chart",
    "spectral_time_figure",
    "style",
    "timescale_figure",
    "training_gates_figure",
    "training_heatmap_chart",
    "training_heatmap_figure",
    "training_rate_chart",
    "training_rate_figure",
]
