"""The static picture of a chart: ``render_chart`` draws what the chart holds, nothing else.

Every chartable panel is declared once, as its ``Chart``; its PNG (PDF, static HTML) is that
chart drawn by ``render_chart``. The references here are the input arrays through the
documented transforms (natural logs / ln 10 on a log axis, log10 of the quantity, percentiles
recomputed with NumPy), never the renderer's own output.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from matplotlib.collections import PolyCollection
from matplotlib.colors import to_hex

from gradscope.reporting import figures as F
from gradscope.reporting.content.document import PanelSpec
from gradscope.reporting.figures.chart import Chart, ChartError, Column, Series

LN10 = math.log(10.0)


def _decay_kwargs() -> dict:
    lags = np.arange(30.0)
    median = -0.3 * lags + 0.01 * np.sin(lags)
    band = np.stack([median - 0.5, median + 0.5])
    band[:, 7] = np.nan  # a lag where the band is unknown: a gap, not a zero
    return dict(
        lags=lags,
        median=median,
        band=band,
        rate=-0.3,
        intercept=0.0,
        fit_lags=(2, 25),
        regime="vanishing",
    )


def test_decay_picture_draws_the_charts_columns_on_a_log10_axis() -> None:
    kw = _decay_kwargs()
    chart = F.decay_chart(**kw)
    ax = F.render_chart(chart).axes[0]
    lines = {line.get_label(): line for line in ax.get_lines()}
    median = next(v for k, v in lines.items() if k.startswith("median"))
    np.testing.assert_allclose(median.get_ydata(), kw["median"] / LN10, rtol=1e-12)
    np.testing.assert_array_equal(median.get_xdata(), kw["lags"])
    fit = next(v for k, v in lines.items() if k.startswith("fit"))
    on = (kw["lags"] >= 2) & (kw["lags"] <= 25)
    np.testing.assert_array_equal(fit.get_xdata(), kw["lags"][on])
    np.testing.assert_allclose(fit.get_ydata(), -0.3 * kw["lags"][on] / LN10, rtol=1e-12)
    (band,) = [c for c in ax.collections if isinstance(c, PolyCollection)]
    ys = np.concatenate([p.vertices[:, 1] for p in band.get_paths()])
    lo, hi = kw["band"] / LN10
    assert ys.min() == pytest.approx(np.nanmin(lo)) and ys.max() == pytest.approx(np.nanmax(hi))
    assert len(band.get_paths()) == 2  # split at the unknown lag
    # title in the regime's colour; the legend lists the series the chart lists
    assert to_hex(ax.title.get_color()) == F.REGIME_COLOURS["vanishing"].lower()
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == [s.label for s in chart.series if s.legend]


def test_a_log_chart_of_quantities_plots_their_log10() -> None:
    rng = np.random.default_rng(0)
    norm = np.exp(rng.normal(size=(12, 5)) * 2.0)  # spans far more than a factor of 30
    steps = np.arange(12)
    chart = F.spectral_time_chart(None, None, steps, norm)
    assert chart.yscale == "log"
    ax = F.render_chart(chart).axes[0]
    (line,) = [ln for ln in ax.get_lines() if ln.get_label().startswith("spectral norm")]
    np.testing.assert_allclose(line.get_ydata(), np.log10(np.median(norm, axis=1)), rtol=1e-12)
    (one,) = [ln for ln in ax.get_lines() if ln.get_label() == "1"]
    assert one.get_ydata()[0] == 0.0  # the reference line at 1 sits at log10(1)


def test_a_heat_map_is_its_cells_with_missing_ones_masked() -> None:
    log_norms = np.array([[0.0, -1.0, np.nan], [-2.0, -np.inf, -3.0]])  # (K=2 lags, B=3)
    fig = F.render_chart(F.lag_heatmap_chart(log_norms))
    ax = fig.axes[0]
    (im,) = ax.images
    data = im.get_array()
    assert data.shape == (3, 2)  # rows are sequences
    want = log_norms.T / LN10
    ok = np.isfinite(want)
    np.testing.assert_array_equal(data.mask, ~ok)
    np.testing.assert_allclose(data[ok], want[ok], rtol=1e-12)
    assert "grey: no data" in ax.get_title()
    assert len(fig.axes) == 2  # and its colour bar


def test_joined_lines_cross_unmeasured_steps_and_categories_keep_their_marks() -> None:
    steps = np.array([0.0, 10, 20, 30])
    rates = np.array([-0.3, np.nan, -0.1, 0.05])
    chart = F.training_rate_chart(steps, rates, ["vanishing", "", "vanishing", "exploding"])
    ax = F.render_chart(chart).axes[0]
    (joined,) = [ln for ln in ax.get_lines() if to_hex(ln.get_color()) == "#555555"]
    np.testing.assert_array_equal(joined.get_xdata(), [0, 20, 30])  # no gap at step 10
    marks = {c.get_label(): c.get_offsets().data for c in ax.collections if c.get_label()}
    np.testing.assert_array_equal(marks["state: ▼ vanishing"], [[0, -0.3], [20, -0.1]])


def test_nothing_finite_is_a_panel_that_says_why() -> None:
    chart = F.decay_chart(
        np.arange(4.0),
        np.full(4, np.nan),
        None,
        rate=math.nan,
        intercept=math.nan,
        fit_lags=None,
        regime=None,
    )
    ax = F.render_chart(chart).axes[0]
    assert [t.get_text() for t in ax.texts] == [f"No data: {chart.empty}"]
    assert not ax.get_lines() and not ax.collections


def test_axis_labels_are_mathematics_names_are_not() -> None:
    cols = [Column("x", "u", np.arange(3.0)), Column("y", "u", np.zeros(3))]
    chart = Chart(
        "t",
        "lag k",
        "‖∂s_T/∂s_{T−k}‖ (log scale)",
        cols,
        [Series("line", "x", "y", "rnn_a $x$", "#000000")],
    )
    ax = F.render_chart(chart).axes[0]
    assert ax.get_ylabel() == "$‖∂s_T/∂s_{T−k}‖$ (log scale)"
    assert ax.get_legend().get_texts()[0].get_text() == r"rnn_a \$x\$"  # shown as typed


def test_a_panel_is_a_chart_or_a_drawing_never_both() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        PanelSpec("k", "t", "c", "n", dict, chart=F.decay_chart, draw=F.eigenvalue_figure)
    with pytest.raises(ValueError, match="exactly one"):
        PanelSpec("k", "t", "c", "n", dict)
    with pytest.raises(ChartError, match="legend"):
        Chart("t", "x", "y", legend="somewhere")
