"""What a report contains, independent of how it is laid out (HTML or PDF).

A report is built in two steps. :func:`~gradscope.reporting.content.build.build_document` turns the
records (diagnoses and Monitor histories, already normalised to
:class:`~gradscope.reporting.inputs.run.Run` objects) into a
:class:`Document`: a summary table, an optional comparison, and per run and layer the verdict,
the numbers behind it and a list of :class:`Panel` objects. The renderers
(:mod:`gradscope.reporting.writers.html`; the PDF is printed from its print rendering by
:mod:`gradscope.reporting.writers.pdf`) only lay the document out.

Each figure a section can show is declared once, as a :class:`PanelSpec` in
:mod:`gradscope.reporting.content.panels` (``LAYER_PANELS`` / ``TRAINING_PANELS``): its title, its
two-line "how to read this" caption, the data it needs (in words) and a function that pulls
that data out of the record or raises :class:`Missing` with the reason. A panel whose data is
absent is kept in the document with that reason and shown as missing, never dropped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gradscope.reporting import figures as F


class Missing(Exception):
    """Raised by a panel's data extractor: the record lacks what the panel needs."""


@dataclass(frozen=True)
class PanelSpec:
    """One kind of figure: its texts, the data it needs, and the figure itself.

    The figure is either ``chart`` (a figure a person would hover over: its data as a
    :class:`~gradscope.reporting.figures.chart.Chart`, drawn in the HTML page by the
    interactive script and, for the PDF and the static HTML, by
    :func:`~gradscope.reporting.figures.render.render_chart`) or ``draw`` (a picture drawn by
    hand with matplotlib, where no chart expresses it); exactly one of the two.

    Attributes:
        key: Stable identifier (``data-figure`` attribute in HTML, e.g. ``"decay-state"``).
        title: Heading of the panel.
        caption: Two sentences: what is plotted, then how to read it.
        needs: The data the panel needs, in words (shown with the reason when missing).
        extract: ``record -> kwargs`` of the figure; raises :class:`Missing` with the reason.
        chart: ``**kwargs -> Chart`` (a function of :mod:`gradscope.reporting.figures`), or
            None.
        draw: ``**kwargs, ax=None -> Figure``, or None.
        applies: ``record -> bool``: whether the panel belongs to this record at all (e.g.
            memory timescales only for diagonal recurrences); a panel that does not apply is
            left out, unlike a missing one, which is shown with its reason.
        live: Whether a chart is drawn in the page (hover, zoom, downloads) on screen;
            False keeps it a picture there too.
        words: ``record -> str | None``: the caption in the record's own terms (a gate
            panel names the family's carried gate and path), or None for ``caption``.

    Raises:
        ValueError: neither or both of ``chart`` and ``draw`` given (a programming error).
    """

    key: str
    title: str
    caption: str
    needs: str
    extract: Callable[[Any], dict[str, Any]]
    chart: Callable[..., Any] | None = None
    draw: Callable[..., Any] | None = None
    applies: Callable[[Any], bool] = lambda record: True
    live: bool = True
    words: Callable[[Any], str | None] | None = None

    def __post_init__(self) -> None:
        if (self.chart is None) == (self.draw is None):
            raise ValueError(f"panel {self.key!r}: give exactly one of chart= and draw=")

    def figure(self, kwargs: dict[str, Any], ax: Any = None) -> Any:
        """The picture of the panel's data ``kwargs`` (into ``ax`` if given)."""
        if self.chart is not None:
            return F.render_chart(self.chart(**kwargs), ax)
        return self.draw(**kwargs, ax=ax)


@dataclass
class Panel:
    """A panel of a concrete section: either data to draw or the reason it is missing.

    ``observer``, when set (by :func:`gradscope.reporting.report`), is told with
    ``update(1)`` each time the figure has been drawn: the report's progress.
    """

    spec: PanelSpec
    kwargs: dict[str, Any] | None
    missing: str | None
    note: str | None = None  # e.g. which entries of a comparison figure lack its data
    words: str | None = None  # the caption in the record's own terms (PanelSpec.words)
    observer: Any = field(default=None, repr=False, compare=False)

    @property
    def key(self) -> str:
        """The spec's key."""
        return self.spec.key

    @property
    def caption(self) -> str:
        """How to read this panel: in the record's own terms where the spec gives them."""
        return self.words or self.spec.caption

    def render(self, ax: Any = None) -> Any:
        """Draw the figure (into ``ax`` if given); a missing panel draws its reason."""
        if self.kwargs is None:
            fig, ax = F.new_axes(ax)
            with F.style():
                F.no_data(ax, self.missing or "not available", self.spec.title)
            return fig
        fig = self.spec.figure(self.kwargs, ax)
        if self.observer is not None:
            self.observer.update(1)
        return fig

    def chart(self) -> Any:
        """The figure (a :class:`~gradscope.reporting.figures.chart.Chart`), or None.

        None when the spec's figure is hand-drawn or the panel is missing its data.
        """
        if self.kwargs is None or self.spec.chart is None:
            return None
        return self.spec.chart(**self.kwargs)


class Ids:
    """The ids of one page: each :meth:`take` returns one not taken before.

    Args:
        reserved: Ids the page uses already (``"summary"``, ...).
    """

    def __init__(self, reserved: tuple[str, ...] = ()) -> None:
        self.used: set[str] = set(reserved)

    def take(self, base: str) -> str:
        """``base``, or ``base-2``, ``base-3``, ... the first one not taken yet."""
        out, n = base, 2
        while out in self.used:
            out, n = f"{base}-{n}", n + 1
        self.used.add(out)
        return out


@dataclass
class Number:
    """One line of the numbers behind a verdict."""

    label: str
    value: str
    meaning: str


@dataclass
class LayerSection:
    """Everything shown about one layer of one run."""

    run: str | None
    name: str
    anchor: str
    kind: str
    regime: str | None
    verdict: str
    advice: list[str]
    numbers: list[Number]
    notes: list[str]
    nonfinite: str | None
    panels: list[Panel]
    gate_note: str | None = None


@dataclass
class RunSection:
    """One run: its layers, its training history views, its metadata."""

    label: str | None
    anchor: str
    source: str
    layers: list[LayerSection]
    training: list[tuple[str, list[Panel]]]
    training_missing: str | None
    problem: str | None
    meta: list[tuple[str, str]]


@dataclass
class SummaryRow:
    """One row of the verdict table on the first screen."""

    run: str | None
    layer: str
    anchor: str
    kind: str
    regime: str | None
    rate: str
    half_life: str
    horizon: str
    radius: str
    norm: str
    lyap: str
    nonfinite: str | None
    verdict: str
    full_verdict: str = ""
    short: str = ""
    color: str | None = None  # the entry's look in the comparison figures (None: no look)
    dash: tuple[float, ...] | None = None


@dataclass
class Document:
    """The whole report, ready to be laid out."""

    title: str
    generated: str
    runs: list[RunSection]
    summary: list[SummaryRow]
    alerts: list[str]
    comparison: Panel | None
    comparison_table: list[list[str]]
    meta: list[tuple[str, str]]
    common_meta: list[tuple[str, str]] = field(default_factory=list)
    mechanism: Panel | None = None
    shared: list[Panel] = field(default_factory=list)
    headline: str = ""  # how far back each compared entry's gradient reaches, one sentence
    shown_once: str | None = None  # which entries the comparison leaves out, and why

    def figures(self) -> list[Panel]:
        """Every panel with data to draw (missing ones are a box of text), in document order."""
        panels = [p for p in (self.comparison, self.mechanism) if p is not None]
        panels.extend(self.shared)
        for run in self.runs:
            panels.extend(p for _, ps in run.training for p in ps)
            panels.extend(p for sec in run.layers for p in sec.panels)
        return [p for p in panels if p.kwargs is not None]
