"""Lay a report :class:`~..content.document.Document` out as one self-contained HTML file.

Self-contained means: every figure is an inline ``data:image/png;base64`` image or an
interactive figure drawn from data in the page (:mod:`.interactive`: hover values,
zoom, CSV/JSON download; its script inlined once), the CSS is inline, and there is no
URL to anything outside the file (no fonts, no CDN), so the file opens the same offline, from
an e-mail attachment or a CI artifact.

One rendering, three media (:func:`render`): ``"screen"`` is the HTML report (interactive
figures where a panel declares its data), ``"static"`` the same with PNG figures only, and
``"print"`` is what the PDF is printed from (:mod:`.pdf`): static figures, every
collapsed block open, the print style sheet
(:data:`~gradscope.reporting.writers.css.PRINT_CSS`) and, unless asked for the detail, only the
first screen. Every figure goes through one function, :func:`_panel`.

Layout (every block carries ``id`` and ``data-section`` attributes, every figure
``data-figure``, so tests and readers can find them):

1. header, then the first screen ``#summary`` (:func:`first_screen`): "Does the gradient
   survive?" with alerts (non-finite states); for several models or layers ``#comparison``
   (the comparison table, short verdicts one click from the full ones, and every state decay
   on one axes); ``#mechanism``, the picture of the gradient highway (measured decay beside
   the gates' carry, per model); the verdict table (regime as coloured badge *and* text and
   symbol; for a comparison collapsed under "all numbers per layer");
2. ``#shared``: the figures every entry has (decay curves, spectra, Lyapunov), each drawn
   once for all entries (:mod:`gradscope.reporting.content.shared`);
3. per run ``#run-…``, per layer ``#run-…--layer``: verdict, advice, the numbers behind the
   verdict, then the figures specific to the layer, each with a two-line "how to read this"
   caption; a figure without data is a box that says what is missing and why;
4. ``#metadata``: model, shapes, dtypes, versions, time.

PNG (not SVG) because a density plot of 20,000 eigenvalues or a 200-column heatmap is a
few tens of kB as a palette PNG and far more as SVG; at :data:`DPI` the text stays sharp at
the displayed size.
"""

from __future__ import annotations

from html import escape
from pathlib import Path
from typing import Any

from gradscope.errors import ArgumentError
from gradscope.reporting.content.document import Document
from gradscope.reporting.figures import REGIME_SYMBOLS
from gradscope.reporting.figures.theme import visible_controls
from gradscope.reporting.writers import interactive as I
from gradscope.reporting.writers.css import CSS, PRINT_CSS
from gradscope.reporting.writers.figure_html import DPI, figure_png
from gradscope.reporting.writers.figure_html import panel_html as _panel
from gradscope.reporting.writers.figure_html import regime_badge as _regime
from gradscope.reporting.writers.sections import meta_section, run_section, shared_section

#: The media :func:`render` lays a document out for.
MEDIA = ("screen", "static", "print")
#: Headings of the two first-screen figures (PDF bookmarks too).
DECAY_HEADING = "How far back the gradient reaches"
MECHANISM_HEADING = "The mechanism: the gradient highway"
#: The element a first-screen fragment is wrapped in (its CSS applies only inside it).
FRAGMENT_CLASS = "gradscope-report"
#: What the headline's words mean (its tooltip).
HEADLINE_HOW = (
    "Keeps its gradient: the state gradient ‖∂s_T/∂s_{T−k}‖ is still above 0.1% of its "
    "lag-0 value k = T steps back (or the regime is neutral). Loses it after h steps: it "
    "falls below 0.1% at lag h, the memory horizon."
)


def swatch(color: str | None, dash: tuple[float, ...] | None) -> str:
    """A short line in an entry's colour and dash, as its curves are drawn (or "")."""
    if not color:
        return ""
    pattern = " ".join(f"{d:g}" for d in dash or ())
    dashes = f' stroke-dasharray="{pattern}"' if pattern else ""
    return (
        '<svg class="swatch" width="24" height="8" aria-hidden="true">'
        f'<line x1="0" y1="4" x2="24" y2="4" stroke="{escape(color)}" stroke-width="2.5"'
        f"{dashes}/></svg>"
    )


# --------------------------------------------------------------------------- first screen
def _verdict_cell(short: str, full: str, media: str) -> str:
    if media == "print":  # paper cannot open a <details>: the full verdicts are the detail
        return f"<td class='verdict-text'>{escape(short)}</td>"
    return (
        f"<td class='verdict-text'><details><summary>{escape(short)}</summary>"
        f"{escape(full)}</details></td>"
    )


def _summary_table(doc: Document, media: str) -> str:
    several = len(doc.runs) > 1
    head = (["Model"] if several else []) + [
        "Layer",
        "Cell",
        "Regime",
        "Rate / step",
        "Half-life (steps)",
        "Horizon (steps)",
        "median ‖J‖₂",
        "median ρ(J)",
        "λ₁ / step",
        "Non-finite",
        "Verdict",
    ]
    out = ["<table class='summary'><thead><tr>"]
    out.extend(f"<th>{escape(h)}</th>" for h in head)
    out.append("</tr></thead><tbody>")
    for r in doc.summary:
        cells = (
            [f"<td class='name'>{swatch(r.color, r.dash)}{escape(r.run or '')}</td>"]
            if several
            else []
        )
        cells += [f"<td class='name'><a href='#{r.anchor}'>{escape(r.layer)}</a></td>"]
        cells += [f"<td>{escape(r.kind)}</td>", f"<td>{_regime(r.regime)}</td>"]
        cells += [
            f"<td class='num'>{escape(v)}</td>"
            for v in (r.rate, r.half_life, r.horizon, r.norm, r.radius, r.lyap)
        ]
        cells.append(f"<td>{'⚠ ' + escape(r.nonfinite) if r.nonfinite else 'none'}</td>")
        cells.append(_verdict_cell(r.short or r.verdict, r.full_verdict or r.verdict, media))
        out.append(f"<tr data-layer='{escape(r.layer)}'>{''.join(cells)}</tr>")
    out.append("</tbody></table>")
    out.append(
        "<p class='note'>Rate: slope of ln‖∂s_T/∂s_{T−k}‖ per step back in time (−0.1 means "
        "the gradient shrinks by e<sup>−0.1</sup> ≈ 0.90 each step). Half-life: steps for "
        "it to halve. Horizon: lag where it has fallen by the horizon factor (see each "
        "layer). ‖J‖₂, ρ(J): spectral norm and radius of the one-step Jacobian. λ₁: "
        "largest Lyapunov exponent. ▼ vanishing, ▲ exploding, ● neutral.</p>"
    )
    return "\n".join(out)


def _comparison(doc: Document, media: str) -> str:
    if not doc.comparison_table:
        return ""
    out = ['<section id="comparison" data-section="comparison"><h3>Side by side</h3>']
    out.append("<table class='cmp'><thead><tr>")
    head, *rows = doc.comparison_table
    out.extend(f"<th>{escape(h)}</th>" for h in [*head, "verdict"])
    out.append("</tr></thead><tbody>")
    for (who, regime, *rest), r in zip(rows, doc.summary):
        # the regime cell holds "▼ vanishing": show it as the same badge as everywhere else
        name = regime.split(" ")[-1] if regime else ""
        name = name if name in REGIME_SYMBOLS else None
        link = f"<a href='#{r.anchor}'>{escape(who)}</a>"
        cells = [
            f"<td class='name'>{swatch(r.color, r.dash)}{link}</td>",
            f"<td>{_regime(name)}</td>",
        ]
        cells += [f"<td class='num'>{escape(c)}</td>" for c in rest]
        cells.append(_verdict_cell(r.short or r.verdict, r.full_verdict or r.verdict, media))
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</tbody></table></section>")
    return "\n".join(out)


def _figures(doc: Document, media: str) -> str:
    """The state decay of every entry beside the mechanism (or the mechanism alone)."""
    figs = []
    if doc.comparison is not None:
        figs.append(
            f"<div><h4>{DECAY_HEADING}</h4>{_panel(doc.comparison, 'comparison', media)}</div>"
        )
    if doc.mechanism is not None:
        figs.append(
            '<section id="mechanism" data-section="mechanism">'
            f"<h4>{MECHANISM_HEADING}</h4>{_panel(doc.mechanism, 'first', media)}</section>"
        )
    if not figs:
        return ""
    if len(figs) == 1:
        return f"<div class='figs'>{figs[0]}</div>"
    return f"<div class='cols'>{''.join(figs)}</div>"


def first_screen(doc: Document, media: str = "screen") -> str:
    """The first screen as an HTML section: headline, alerts, comparison, mechanism, numbers.

    On screen the comparison table comes before the two figures; on paper the figures come
    first, under the headline, so that they fill the first page (they cannot be split, and
    after a comparison of several models they no longer fit on it) and the tables follow.
    """
    several = len(doc.summary) > 1
    out = ['<section id="summary" data-section="summary"><h2>Does the gradient survive?</h2>']
    if doc.headline:
        out.append(
            f"<p class='headline' data-headline title='{escape(HEADLINE_HOW)}'>"
            f"{escape(doc.headline)}</p>"
        )
    for alert in doc.alerts:
        out.append(
            f'<div class="alert" role="alert" data-alert="nonfinite">⚠ {escape(alert)}</div>'
        )
    if not doc.summary:
        why = (
            "this report holds training histories only: see the training views below"
            if any(r.training for r in doc.runs)
            else "see the sections below"
        )
        out.append(f"<p class='missing-line'>No layer was analysed: {why}.</p>")
    once = f"<p class='note' data-shown-once>{escape(doc.shown_once)}</p>" if doc.shown_once else ""
    if media == "print":  # paper: the pictures fill page 1 under the headline, tables follow
        out += [_figures(doc, media), _comparison(doc, media), once]
    else:
        out += [_comparison(doc, media), once, _figures(doc, media)]
    if doc.summary:
        table = _summary_table(doc, media)
        if several and media != "print":
            out.append(
                "<details class='all-numbers'><summary>All numbers per layer (‖J‖₂, ρ(J), "
                f"λ₁, non-finite states, verdicts)</summary>{table}</details>"
            )
        else:
            out.append(("<h3>All numbers per layer</h3>" if several else "") + table)
    out.append("</section>")
    return "\n".join(p for p in out if p)


# --------------------------------------------------------------------------- page
def render(
    doc: Document, media: str = "screen", detail: bool = True, interactive: bool = True
) -> str:
    """The report as one HTML string.

    Args:
        doc: The document.
        media: ``"screen"`` (the HTML report) or ``"print"`` (what the PDF is printed from:
            static images, every collapsed block open, the print style sheet).
        detail: With ``False`` only the first screen and the report's own metadata (the
            short PDF); ``True`` adds the shared figures, every run and layer, all metadata.
            A document without an analysed layer (training histories only) is always shown
            in full: its first screen has nothing else to show.

        interactive: On screen, draw the panels that declare their data (a ``chart``) as
            interactive figures (hover values, zoom, CSV/JSON downloads; the script inlined
            once); False (or ``media="static"``) draws every figure as a PNG.

    Names (of runs, layers, the title) are shown as they are, escaped, except for explicit
    bidi controls, written out as ``[U+202E]`` so that they cannot reorder the page.

    Raises:
        ArgumentError: an unknown ``media``.
    """
    if media not in MEDIA:
        raise ArgumentError(f"media must be one of {MEDIA}, got {media!r}")
    if media == "screen" and not interactive:
        media = "static"
    detail = detail or not doc.summary
    several = len(doc.runs) > 1
    toc = ["<a href='#summary'>Summary</a>"]
    if doc.comparison is not None:
        toc.append("<a href='#comparison'>Comparison</a>")
    if detail and doc.shared:
        toc.append("<a href='#shared'>All models compared</a>")
    toc.extend(
        f"<a href='#{r.anchor}'>{escape(r.label if r.label is not None else 'Layers')}</a>"
        for r in (doc.runs if detail else [])
    )
    toc.append("<a href='#metadata'>Metadata</a>")
    n_layers = sum(len(r.layers) for r in doc.runs)
    css = CSS + (PRINT_CSS if media == "print" else "")
    body = [first_screen(doc, media)]
    if detail:
        body.append(shared_section(doc, media))
        body.extend(run_section(r, several, media) for r in doc.runs)
    live = I.head() if any(I.MARK in b for b in body) else ""  # the chart script, once
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(doc.title)}</title><style>{css}</style>{live}</head>",
        f'<body class="{"detail" if detail else "short"}" data-media="{media}"><main>',
        '<header class="top" id="top" data-section="header">',
        f"<h1>{escape(doc.title)}</h1>",
        f"<div class='sub'>{len(doc.runs)} run{'s' if several else ''}, {n_layers} recurrent "
        f"layer{'s' if n_layers != 1 else ''} · generated {escape(doc.generated)} by gradscope "
        f"{escape(dict(doc.meta).get('gradscope', ''))}</div>",
        f"<nav class='toc'>{''.join(toc)}</nav></header>",
        *body,
    ]
    parts += [
        meta_section(doc, detail, media),
        "<footer>Gradient norms are spectral norms of exact products of per-step Jacobians, "
        "accumulated in log space. Rates are natural log per timestep.</footer>",
        "</main></body></html>",
    ]
    # a name's bidi override would reverse the text after it, in the page and in the figures'
    # data: written out as [U+202E]
    return visible_controls("\n".join(p for p in parts if p))


def write(doc: Document, path: Path, interactive: bool = True, **options: Any) -> None:
    """Write the HTML report of ``doc`` to ``path`` (UTF-8); ``options`` are for the PDF only."""
    Path(path).write_text(render(doc, interactive=interactive), encoding="utf-8")


__all__ = ["CSS", "DPI", "MEDIA", "figure_png", "first_screen", "render", "write"]
