"""Small multiples: one figure function drawn for several entries, one axes each, in one figure.

Used for the figures every model of a comparison has (spectra, Lyapunov exponents): drawn once
as a grid instead of once per model, with one legend (the first axes') and the axis labels on
the outer axes only.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from matplotlib.figure import Figure

from gradscope.reporting.figures.theme import plain, styled


@styled
def small_multiples(
    draw: Callable[..., Any],
    entries: Mapping[str, Mapping[str, Any]],
    *,
    title: str,
    cols: int = 3,
    size: tuple[float, float] = (3.9, 2.6),
    colours: Mapping[str, str] | None = None,
) -> Figure:
    """Call ``draw(**kwargs, ax=ax)`` for every entry, each into its own axes of one figure.

    Args:
        draw: A figure function of :mod:`gradscope.reporting.figures` (accepts ``ax=``).
        entries: ``{label: kwargs of draw}`` in display order (at least one).
        title: The figure's title.
        cols: Axes per row (fewer when there are fewer entries).
        size: Size of one axes' cell, inches.
        colours: ``{label: colour}`` of the axes' titles (each entry's colour in the
            comparison figures), or None.

    Returns:
        The figure.
    """
    n = max(len(entries), 1)
    cols = max(1, min(cols, n))
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(size[0] * cols, size[1] * rows + 0.4), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for i, (label, kwargs) in enumerate(entries.items()):
        ax = axes[i // cols, i % cols]
        draw(**kwargs, ax=ax)
        colour = (colours or {}).get(label)
        ax.set_title(plain(label, 44), fontsize=9.5, **({"color": colour} if colour else {}))
        if i and ax.get_legend() is not None:
            ax.get_legend().remove()
        if i // cols != rows - 1 and (i + cols) < n:
            ax.set_xlabel("")
        if i % cols:
            ax.set_ylabel("")
    for j in range(n, rows * cols):
        axes[j // cols, j % cols].set_visible(False)
    fig.suptitle(title, fontsize=11, fontweight="bold")
    return fig


__all__ = ["small_multiples"]
