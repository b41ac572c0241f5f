"""The look of every figure.

Palette, regime colours and markers, one style context, new axes, the "no data" panel and
number formats.
"""

from __future__ import annotations

import math
import re
import textwrap
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import wraps
from typing import Any, TypeVar

import matplotlib as mpl
from matplotlib.axes import Axes
from matplotlib.figure import Figure

#: Size (inches) of a stand-alone figure; two fit side by side in the HTML report.
FIGSIZE = (6.0, 3.7)
#: Colour-blind-safe colours (Okabe–Ito) of the three regimes.
REGIME_COLOURS = {"vanishing": "#0072B2", "exploding": "#D55E00", "neutral": "#009E73"}
#: Marker shapes of the three regimes, so that colour is never the only cue.
REGIME_MARKERS = {"vanishing": "v", "exploding": "^", "neutral": "o"}
#: Symbols used next to regime names in titles, legends and tables.
REGIME_SYMBOLS = {"vanishing": "▼", "exploding": "▲", "neutral": "●"}
#: Colour for anything without a regime (unknown / missing).
NEUTRAL_GREY = "#6b6b6b"
#: Heat-map cells without a finite value.
MISSING_GREY = "#d9d9d9"
#: Sequential colour maps: gradient magnitude, point density.
HEAT_CMAP = "viridis"
DENSITY_CMAP = "mako_r"
#: Above this many eigenvalues the complex plane is a 2-D density (hexbin), not a scatter.
HEXBIN_THRESHOLD = 1500
LN10 = math.log(10.0)

_F = TypeVar("_F", bound=Callable[..., Any])


def palette(n: int) -> list[str]:
    """``n`` colour-blind-safe colours (seaborn ``colorblind``, cycled when ``n > 10``)."""
    import seaborn as sns

    base = sns.color_palette("colorblind").as_hex()
    return [base[i % len(base)] for i in range(n)]


#: Dash patterns (pixels; empty: solid) cycled over curves, so they differ in more than hue.
DASHES: tuple[tuple[float, ...], ...] = ((), (7, 4), (8, 3, 2, 3), (2, 3), (6, 2, 2, 2, 2, 2))


def heat_colors(n: int = 64) -> tuple[str, ...]:
    """``n`` colours of the heat maps' colour map (:data:`HEAT_CMAP`, low to high), ``#rrggbb``."""
    cmap = mpl.colormaps[HEAT_CMAP]
    return tuple(mpl.colors.to_hex(cmap(i / (n - 1))) for i in range(n))


def _rc() -> dict[str, Any]:
    import seaborn as sns

    rc: dict[str, Any] = {}
    rc.update(sns.axes_style("whitegrid"))
    rc.update(sns.plotting_context("notebook", font_scale=0.82))
    rc.update(
        {
            "axes.prop_cycle": mpl.cycler(color=palette(10)),
            "axes.titlesize": 10.5,
            "axes.titleweight": "bold",
            "axes.labelsize": 9.5,
            "xtick.labelsize": 8.5,
            "ytick.labelsize": 8.5,
            "legend.fontsize": 8,
            "legend.framealpha": 0.85,
            "legend.edgecolor": "#cccccc",
            "font.family": "DejaVu Sans",
            "mathtext.fontset": "dejavusans",
            "axes.edgecolor": "#888888",
            "grid.color": "#e3e3e3",
            "image.cmap": HEAT_CMAP,
            "figure.facecolor": "white",
            "savefig.facecolor": "white",
            "pdf.fonttype": 42,
            "ps.fonttype": 42,
            "svg.fonttype": "none",
        }
    )
    return rc


@contextmanager
def style() -> Iterator[None]:
    """The report's visual style, active only inside the ``with`` block (no global change)."""
    with mpl.rc_context(_rc()):
        yield


def styled(fn: _F) -> _F:
    """Draw the decorated figure function inside :func:`style`."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with style():
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def new_axes(ax: Axes | None, figsize: tuple[float, float] = FIGSIZE) -> tuple[Any, Axes]:
    """``(figure, ax)``: the given axes, or a new figure of ``figsize`` with one axes."""
    if ax is not None:
        return ax.figure, ax
    # "tight" rather than "constrained": one layout pass, ~2.5x faster to render, and a
    # single axes (plus colour bar or outside legend) needs nothing more.
    fig = Figure(figsize=figsize, layout="tight")
    return fig, fig.add_subplot()


def no_data(ax: Axes, reason: str, title: str | None = None) -> None:
    """Turn ``ax`` into a visible "no data" panel that says ``reason`` (never a blank panel)."""
    if title:
        ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)
    for spine in ax.spines.values():
        spine.set_color("#cccccc")
        spine.set_linestyle("--")
    ax.text(
        0.5,
        0.5,
        textwrap.fill(f"No data: {reason}", 48, break_on_hyphens=False),
        transform=ax.transAxes,
        ha="center",
        va="center",
        color=NEUTRAL_GREY,
        fontsize=9,
    )


#: Explicit bidirectional embeddings, overrides and isolates (U+202A–E, U+2066–9): in a
#: name they would reorder the text after it; reports show them as ``[U+202E]``.
BIDI_CONTROLS = re.compile("[\u202a-\u202e\u2066-\u2069]")


def visible_controls(text: str) -> str:
    """``text`` with each bidi control (:data:`BIDI_CONTROLS`) written out as ``[U+XXXX]``."""
    return BIDI_CONTROLS.sub(lambda m: f"[U+{ord(m.group()):04X}]", str(text))


def plain(text: str, limit: int | None = None) -> str:
    """``text`` as matplotlib shows it literally: a ``$`` in a name never starts mathtext.

    Bidi controls are written out (:func:`visible_controls`); with ``limit``, a longer text
    keeps its beginning and end around an ellipsis (names differ most at their ends:
    ``encoder.lay…l1_reverse``), so a long name cannot push a figure's layout apart.
    """
    text = visible_controls(text)
    if limit is not None and len(text) > limit:
        head = (limit - 1) // 2
        text = text[:head] + "…" + text[len(text) - (limit - 1 - head) :]
    return text.replace("$", r"\$")


def regime_label(regime: str | None) -> str:
    """``"▼ vanishing"`` etc.: the regime with its symbol (plain text for unknown regimes)."""
    if not regime:
        return "no verdict"
    sym = REGIME_SYMBOLS.get(regime)
    return f"{sym} {regime}" if sym else regime


def _superscript(n: int) -> str:
    return str(n).translate(str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹"))


def fmt_value(v: float, digits: int = 3) -> str:
    """A compact human number: ``0.25``, ``2254``, ``−3.07×10⁻⁴``, ``∞``, ``n/a`` for NaN."""
    if v is None:
        return "n/a"
    v = float(v)
    if math.isnan(v):
        return "n/a"
    if math.isinf(v):
        return "∞" if v > 0 else "−∞"
    if v == 0:
        return "0"
    a = abs(v)
    if 100 <= a < 1e5:
        out = f"{v:.0f}"
    elif 1e-3 <= a < 100:
        out = f"{v:.{digits}g}"
    else:
        e = math.floor(math.log10(a))
        m = v / 10.0**e
        if abs(round(m, digits - 1)) >= 10:
            m, e = m / 10, e + 1
        out = f"{m:.{digits - 1}f}×10{_superscript(e)}"
    return out.replace("-", "−")


def fmt_rate(v: float, digits: int = 3) -> str:
    """A rate with its sign always shown (``+0.248``, ``−0.5``): the sign is the verdict."""
    out = fmt_value(v, digits)
    return f"+{out}" if v is not None and not math.isnan(float(v)) and float(v) > 0 else out
