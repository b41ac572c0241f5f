"""The detail of an HTML report: shared figures, runs and their layers, metadata.

Figures go through :func:`gradscope.reporting.writers.html._panel`, the one function that renders a
figure for every part of the report.
"""

from __future__ import annotations

from html import escape

from gradscope.reporting.content.document import Document, Ids, LayerSection, RunSection
from gradscope.reporting.content.panels import slug
from gradscope.reporting.figures import REGIME_SYMBOLS, regime_label
from gradscope.reporting.writers import figure_html as H


def shared_section(doc: Document, media: str = "screen") -> str:
    """The figures every entry has, each drawn once for all of them (empty when none)."""
    if not doc.shared:
        return ""
    out = [
        '<section id="shared" data-section="shared"><h2>All models compared</h2>',
        "<p class='note'>Each figure below shows every model (or layer) of the report at "
        "once; the sections further down keep what is specific to each.</p><div class='figs'>",
    ]
    # curves overlaid on one axes take half the width, small multiples the whole width
    out.extend(
        H.panel_html(p, "shared", media, wide="entries" in (p.kwargs or {})) for p in doc.shared
    )
    out.append("</div></section>")
    return "\n".join(out)


def _layer(sec: LayerSection, media: str) -> str:
    out = [
        f'<section class="layer" id="{sec.anchor}" data-section="layer" '
        f'data-layer="{escape(sec.name)}" data-regime="{escape(sec.regime or "")}">',
        f"<h3>{escape(sec.name)} <span class='sub'>({escape(sec.kind)})</span> "
        f"{H.regime_badge(sec.regime)}</h3>",
    ]
    if sec.nonfinite:
        out.append(
            '<div class="alert" role="alert" data-alert="nonfinite">'
            f"⚠ {escape(sec.nonfinite)}</div>"
        )
    cls = f" v-{sec.regime}" if sec.regime in REGIME_SYMBOLS else ""
    out.append(
        f'<div class="verdict{cls}" data-verdict><strong>Verdict.</strong> '
        f"{escape(sec.verdict or 'no verdict was produced')}</div>"
    )
    if sec.advice:
        out.append("<h4>What to try</h4><ul class='advice'>")
        out.extend(f"<li>{escape(a)}</li>" for a in sec.advice)
        out.append("</ul>")
    out.append("<h4>The numbers behind the verdict</h4><table class='numbers'><tbody>")
    for n in sec.numbers:
        out.append(
            f"<tr><td>{escape(n.label)}</td><td>{escape(n.value)}</td>"
            f"<td class='meaning'>{escape(n.meaning)}</td></tr>"
        )
    out.append("</tbody></table>")
    if sec.notes:
        out.append("<p class='note'><strong>Analysis notes:</strong> ")
        out.append(" ".join(escape(n) for n in sec.notes))
        out.append("</p>")
    if sec.gate_note:
        out.append(f"<p class='note' data-missing='gates'>{escape(sec.gate_note)}</p>")
    out.append('<div class="figs">')
    out.extend(H.panel_html(p, sec.anchor, media) for p in sec.panels)
    out.append("</div></section>")
    return "\n".join(out)


def run_section(run: RunSection, several: bool, media: str = "screen") -> str:
    """One run: its training views and layer sections (collapsed on screen when several)."""
    title = run.label if run.label is not None else "Layers"
    regimes = ", ".join(f"{s.name}: {regime_label(s.regime)}" for s in run.layers)
    out = [
        f'<section class="run" id="{run.anchor}" data-section="run" '
        f'data-run="{escape(run.label or "")}">',
        # several runs: each collapsed to one line until opened; a single run stays open
        f"<details{'' if several and media != 'print' else ' open'}><summary>",
        f"<h2>{escape(title)}</h2>" if several else "<h2>Per-layer analysis</h2>",
        f" <span class='sub'>{escape(regimes)}</span></summary>" if several else "</summary>",
        f"<p class='sub'>Source: {escape(run.source)}</p>",
    ]
    if run.problem:
        out.append(
            f"<div class='missing-line' data-missing='diagnosis'>Full analysis: not available: "
            f"{escape(run.problem)}.</div>"
        )
    tid = f"{run.anchor}--training"
    training = [f'<section class="training" id="{tid}" data-section="training">']
    if run.training_missing:
        training.append(
            "<div class='missing-line' data-missing='training'>"
            f"{escape(run.training_missing)}</div>"
        )
    names = Ids()  # the ids below are unique under tid, itself unique in the page
    for name, panels in run.training:
        training.append(f"<h3>Training history: {escape(name)}</h3><div class='figs'>")
        fid = f"{tid}--{names.take(slug(name))}"
        training.extend(H.panel_html(p, fid, media) for p in panels)
        training.append("</div>")
    training.append("</section>")
    # A Monitor's training views come first; a run without history notes it at the end.
    if run.training:
        out.extend(training)
        out.extend(_layer(sec, media) for sec in run.layers)
    else:
        out.extend(_layer(sec, media) for sec in run.layers)
        out.extend(training)
    out.append("</details></section>")
    return "\n".join(out)


def meta_section(doc: Document, detail: bool = True, media: str = "screen") -> str:
    """The metadata: every run's and the report's own (without ``detail``: one line).

    On screen the tables are collapsed under one line that says how many rows they hold
    (a ``<details>`` closed until opened); on paper they are open.
    """
    if not detail:  # the short PDF: one line, not a page of tables
        versions = " · ".join(f"{k} {v}" for k, v in [("generated", doc.generated), *doc.meta])
        return (
            '<section id="metadata" data-section="metadata"><p class="note">'
            f"<strong>This report:</strong> {escape(versions)}. The figures of every layer and "
            "each run's metadata are in the HTML report, and in the PDF written with "
            "gs.report(..., pdf_detail=True) (command line: --pdf-detail).</p></section>"
        )
    n = len(doc.common_meta) + sum(len(r.meta) for r in doc.runs) + 1 + len(doc.meta)
    out = [
        '<section id="metadata" data-section="metadata"><h2>Run metadata</h2>',
        f"<details class='meta'{' open' if media == 'print' else ''}><summary>Model, shapes, "
        f"dtypes, settings and library versions ({n} rows)</summary>",
    ]
    if doc.common_meta:
        out.append("<h3>Common to all runs</h3><table class='meta'><tbody>")
        for k, v in doc.common_meta:
            val = f"<pre>{escape(v)}</pre>" if "\n" in v else escape(v)
            out.append(f"<tr><td>{escape(k)}</td><td>{val}</td></tr>")
        out.append("</tbody></table>")
    for run in doc.runs:
        label = run.label if run.label is not None else "Run"
        out.append(f"<h3>{escape(label)}</h3><table class='meta'><tbody>")
        none = "nothing beyond what all runs share" if doc.common_meta else "no metadata"
        rows = run.meta or [("(none)", none)]
        for k, v in rows:
            val = f"<pre>{escape(v)}</pre>" if "\n" in v else escape(v)
            out.append(f"<tr><td>{escape(k)}</td><td>{val}</td></tr>")
        out.append("</tbody></table>")
    out.append("<h3>This report</h3><table class='meta'><tbody>")
    for k, v in [("generated", doc.generated), *doc.meta]:
        out.append(f"<tr><td>{escape(k)}</td><td>{escape(v)}</td></tr>")
    out.append("</tbody></table></details></section>")
    return "\n".join(out)


__all__ = ["meta_section", "run_section", "shared_section"]
