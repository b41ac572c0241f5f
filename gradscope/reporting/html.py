"""Lay a report :class:`~gradscope.reporting.document.Document` out as one self-contained HTML file.

Self-contained means: every figure is an inline ``data:image/png;base64`` image or an
interactive figure drawn from data in the page (:mod:`gradscope.reporting.interactive`: hover
values, zoom, CSV/JSON download; its script inlined once), the CSS is inline, and there is no
URL to anything outside the file (no fonts, no CDN), so the file opens the same offline, from
an e-mail attachment or a CI artifact.

Layout (every block carries ``id`` and ``data-section`` attributes, every figure
``data-figure``, so tests and readers can find them):

1. header, then ``#summary``: "Does the gradient survive?" with alerts (non-finite states)
   and the verdict table (regime as coloured badge *and* text and symbol);
2. ``#comparison`` when several runs are reported together;
3. per run ``#run-…``, per layer ``#run-…--layer``: verdict, advice, the numbers behind the
   verdict, then the figures, each with a two-line "how to read this" caption; a figure
   without data is a box that says what is missing and why;
4. ``#metadata``: model, shapes, dtypes, versions, time.

PNG (not SVG) because a density plot of 20,000 eigenvalues or a 200-column heatmap is a
few tens of kB as a palette PNG and far more as SVG; at :data:`DPI` the text stays sharp at
the displayed size.
"""

from __future__ import annotations

import base64
import io
from html import escape
from pathlib import Path
from typing import Any

from gradscope.reporting import interactive as I
from gradscope.reporting.document import Document, LayerSection, Panel, RunSection
from gradscope.reporting.figures import REGIME_SYMBOLS, regime_label
from gradscope.reporting.panels import slug

#: Resolution of the inline PNG figures (pixels per inch of figure size).
DPI = 110

CSS = """
:root { --fg:#1d1d1f; --muted:#5f6368; --line:#d9dce1; --bg:#ffffff; --soft:#f5f6f8;
  --van:#0072B2; --van-bg:#e1eef8; --exp:#B84700; --exp-bg:#fbe5d8; --neu:#00795A;
  --neu-bg:#daf2e9; --warn:#9c2a00; --warn-bg:#fff1e0; }
* { box-sizing: border-box; }
body { margin:0; font-family: system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans",
  Arial, sans-serif; color:var(--fg); background:var(--bg); line-height:1.45; font-size:15px; }
main { max-width: 1240px; margin: 0 auto; padding: 18px 24px 40px; }
header.top { border-bottom: 3px solid var(--fg); margin-bottom: 14px; padding-bottom: 8px; }
h1 { font-size: 1.55em; margin: 0 0 4px; }
h2 { font-size: 1.3em; margin: 30px 0 10px; padding-bottom: 4px;
  border-bottom: 1px solid var(--line); }
h3 { font-size: 1.12em; margin: 26px 0 8px; }
h4 { font-size: 1em; margin: 14px 0 6px; }
.sub { color: var(--muted); font-size: .92em; }
nav.toc { font-size: .9em; color: var(--muted); margin: 6px 0 0; }
nav.toc a { color: var(--van); margin-right: 12px; text-decoration: none; }
table { border-collapse: collapse; width: 100%; font-size: .9em; }
th, td { border-bottom: 1px solid var(--line); padding: 5px 8px; text-align: left;
  vertical-align: top; }
th { background: var(--soft); font-weight: 600; }
td.num { font-variant-numeric: tabular-nums; white-space: nowrap; }
table.summary td.verdict-text { font-size: .92em; min-width: 300px; }
.regime { display: inline-block; padding: 1px 8px; border-radius: 10px; font-weight: 600;
  white-space: nowrap; border: 1px solid currentColor; }
.regime-vanishing { color: var(--van); background: var(--van-bg); }
.regime-exploding { color: var(--exp); background: var(--exp-bg); }
.regime-neutral { color: var(--neu); background: var(--neu-bg); }
.regime-none { color: var(--muted); background: var(--soft); }
.alert { background: var(--warn-bg); color: var(--warn); border: 2px solid var(--warn);
  border-radius: 6px; padding: 8px 12px; margin: 10px 0; font-weight: 600; }
.verdict { background: var(--soft); border-left: 5px solid var(--muted); padding: 8px 12px;
  margin: 8px 0; }
.verdict.v-vanishing { border-left-color: var(--van); background: #f1f7fc; }
.verdict.v-exploding { border-left-color: var(--exp); background: #fdf3ed; }
.verdict.v-neutral { border-left-color: var(--neu); background: #eff9f5; }
ul.advice { margin: 4px 0 10px 0; padding-left: 22px; }
table.numbers td:first-child { white-space: nowrap; font-weight: 600; width: 16em; }
table.numbers td.meaning { color: var(--muted); font-size: .92em; }
.figs { display: grid; grid-template-columns: repeat(auto-fill, minmax(520px, 1fr)); gap: 18px;
  margin-top: 12px; }
figure { margin: 0; border: 1px solid var(--line); border-radius: 6px; padding: 8px;
  background: #fff; }
figure img { width: 100%; height: auto; display: block; }
figcaption { font-size: .86em; color: var(--fg); margin-top: 6px; }
figcaption b { color: var(--muted); }
figure.missing .nodata { border: 2px dashed var(--line); border-radius: 6px; padding: 24px 16px;
  color: var(--muted); text-align: center; min-height: 120px; }
figure.missing .nodata strong { color: var(--fg); display: block; margin-bottom: 6px; }
.note { color: var(--muted); font-size: .9em; }
.missing-line { margin: 14px 0; color: var(--muted); border: 1px dashed var(--line);
  padding: 8px 12px; border-radius: 6px; }
table.meta td:first-child { white-space: nowrap; color: var(--muted); width: 18em; }
table.meta td { font-size: .88em; word-break: break-word; }
details > summary { cursor: pointer; }
section.run > details > summary h2 { display: inline-block; border: none; margin: 18px 0 6px; }
table.summary td.verdict-text details summary { color: var(--fg); }
pre { white-space: pre-wrap; margin: 0; font-size: .95em; }
footer { margin-top: 30px; color: var(--muted); font-size: .85em;
  border-top: 1px solid var(--line); padding-top: 8px; }
@media print { .figs { grid-template-columns: 1fr 1fr; } figure { break-inside: avoid; } }
"""


def figure_png(fig: Any, dpi: int = DPI) -> bytes:
    """PNG bytes of a matplotlib figure: white background, 256-colour palette.

    Quantising to an adaptive 256-colour palette (no dithering) makes the PNGs about 3×
    smaller with no visible change: a figure is a few flat colours plus anti-aliasing.
    """
    from PIL import Image

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, facecolor="white")
    buf.seek(0)
    with Image.open(buf) as im:
        pal = im.convert("RGB").quantize(
            colors=256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE
        )
    out = io.BytesIO()
    pal.save(out, format="PNG")
    return out.getvalue()


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{escape(alt)}" src="data:image/png;base64,{data}">'


def _regime(regime: str | None) -> str:
    cls = regime if regime in REGIME_SYMBOLS else "none"
    return f'<span class="regime regime-{cls}">{escape(regime_label(regime))}</span>'


def _panel(panel: Panel, anchor: str, interactive: bool = True) -> str:
    spec = panel.spec
    fid = f"{anchor}--{spec.key}"
    if panel.kwargs is None:
        return (
            f'<figure class="missing" id="{fid}" data-figure="{spec.key}" data-missing="true">'
            f'<div class="nodata"><strong>{escape(spec.title)}: not available</strong>'
            f"{escape(panel.missing or '')}<br><span class='note'>Needs: "
            f"{escape(spec.needs)}.</span></div></figure>"
        )
    live = I.panel_html(panel, fid) if interactive else None
    if live is not None:
        return live
    fig = panel.render()
    png = figure_png(fig)
    fig.clear()
    return (
        f'<figure id="{fid}" data-figure="{spec.key}">{_img(png, spec.title)}'
        f"<figcaption><b>How to read this.</b> {escape(spec.caption)}</figcaption></figure>"
    )


def _layer(sec: LayerSection, interactive: bool = True) -> str:
    out = [
        f'<section class="layer" id="{sec.anchor}" data-section="layer" '
        f'data-layer="{escape(sec.name)}" data-regime="{escape(sec.regime or "")}">',
        f"<h3>{escape(sec.name)} <span class='sub'>({escape(sec.kind)})</span> "
        f"{_regime(sec.regime)}</h3>",
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
    out.extend(_panel(p, sec.anchor, interactive) for p in sec.panels)
    out.append("</div></section>")
    return "\n".join(out)


def _run(run: RunSection, several: bool, interactive: bool = True) -> str:
    title = run.label if run.label is not None else "Layers"
    regimes = ", ".join(f"{s.name}: {regime_label(s.regime)}" for s in run.layers)
    out = [
        f'<section class="run" id="{run.anchor}" data-section="run" '
        f'data-run="{escape(run.label or "")}">',
        # several runs: each collapsed to one line until opened; a single run stays open
        f"<details{'' if several else ' open'}><summary>",
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
    for name, panels in run.training:
        training.append(f"<h3>Training history: {escape(name)}</h3><div class='figs'>")
        training.extend(_panel(p, f"{tid}--{slug(name)}", interactive) for p in panels)
        training.append("</div>")
    training.append("</section>")
    # A Monitor's training views come first; a run without history notes it at the end.
    if run.training:
        out.extend(training)
        out.extend(_layer(sec, interactive) for sec in run.layers)
    else:
        out.extend(_layer(sec, interactive) for sec in run.layers)
        out.extend(training)
    out.append("</details></section>")
    return "\n".join(out)


def _summary(doc: Document) -> str:
    several = len(doc.runs) > 1
    out = ['<section id="summary" data-section="summary"><h2>Does the gradient survive?</h2>']
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
    else:
        head = ["Model"] if several else []
        head += [
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
        out.append("<table class='summary'><thead><tr>")
        out.extend(f"<th>{escape(h)}</th>" for h in head)
        out.append("</tr></thead><tbody>")
        for r in doc.summary:
            cells = [f"<td>{escape(r.run or '')}</td>"] if several else []
            cells += [
                f"<td><a href='#{r.anchor}'>{escape(r.layer)}</a></td>",
                f"<td>{escape(r.kind)}</td>",
                f"<td>{_regime(r.regime)}</td>",
                f"<td class='num'>{escape(r.rate)}</td>",
                f"<td class='num'>{escape(r.half_life)}</td>",
                f"<td class='num'>{escape(r.horizon)}</td>",
                f"<td class='num'>{escape(r.norm)}</td>",
                f"<td class='num'>{escape(r.radius)}</td>",
                f"<td class='num'>{escape(r.lyap)}</td>",
                f"<td>{'⚠ ' + escape(r.nonfinite) if r.nonfinite else 'none'}</td>",
                f"<td class='verdict-text'><details><summary>{escape(r.short or r.verdict)}"
                f"</summary>{escape(r.full_verdict or r.verdict)}</details></td>",
            ]
            out.append(f"<tr data-layer='{escape(r.layer)}'>{''.join(cells)}</tr>")
        out.append("</tbody></table>")
        out.append(
            "<p class='note'>Rate: slope of ln‖∂s_T/∂s_{T−k}‖ per step back in time (−0.1 means "
            "the gradient shrinks by e<sup>−0.1</sup> ≈ 0.90 each step). Half-life: steps for "
            "it to halve. Horizon: lag where it has fallen by the horizon factor (see each "
            "layer). ‖J‖₂, ρ(J): spectral norm and radius of the one-step Jacobian. λ₁: "
            "largest Lyapunov exponent. ▼ vanishing, ▲ exploding, ● neutral.</p>"
        )
    out.append("</section>")
    return "\n".join(out)


def _comparison(doc: Document, interactive: bool = True) -> str:
    if doc.comparison is None:
        return ""
    out = ['<section id="comparison" data-section="comparison"><h2>Side by side</h2>']
    many = doc.comparison.kwargs is not None and len(doc.comparison.kwargs["curves"]) > 4
    # few models: figure and table side by side; many: the (wider) figure above the table
    cols = "minmax(0, 1fr)" if many else "minmax(0, 3fr) minmax(0, 2fr)"
    out.append(f'<div class="figs" style="grid-template-columns: {cols}">')
    out.append(_panel(doc.comparison, "comparison", interactive))
    out.append("<div><table class='cmp'><thead><tr>")
    head, *rows = doc.comparison_table
    out.extend(f"<th>{escape(h)}</th>" for h in head)
    out.append("</tr></thead><tbody>")
    for who, regime, *rest in rows:
        # the regime cell holds "▼ vanishing": show it as the same badge as everywhere else
        name = regime.split(" ")[-1] if regime else ""
        name = name if name in REGIME_SYMBOLS else None
        cells = [f"<td>{escape(who)}</td>", f"<td>{_regime(name)}</td>"]
        cells += [f"<td class='num'>{escape(c)}</td>" for c in rest]
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</tbody></table></div></div></section>")
    return "\n".join(out)


def _meta(doc: Document) -> str:
    out = ['<section id="metadata" data-section="metadata"><h2>Run metadata</h2>']
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
    out.append("</tbody></table></section>")
    return "\n".join(out)


def render(doc: Document, interactive: bool = True) -> str:
    """The report as one HTML string.

    Args:
        doc: The document to lay out.
        interactive: Draw the panels that declare their data (a ``chart``) as interactive
            figures; False draws every figure as a PNG.

    Returns:
        The page.
    """
    several = len(doc.runs) > 1
    toc = ["<a href='#summary'>Summary</a>"]
    if doc.comparison is not None:
        toc.append("<a href='#comparison'>Comparison</a>")
    toc.extend(
        f"<a href='#{r.anchor}'>{escape(r.label if r.label is not None else 'Layers')}</a>"
        for r in doc.runs
    )
    toc.append("<a href='#metadata'>Metadata</a>")
    n_layers = sum(len(r.layers) for r in doc.runs)
    body = [
        _summary(doc),
        _comparison(doc, interactive),
        *(_run(r, several, interactive) for r in doc.runs),
    ]
    live = I.head() if any(I.MARK in b for b in body) else ""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(doc.title)}</title><style>{CSS}</style>{live}</head><body><main>",
        '<header class="top" id="top" data-section="header">',
        f"<h1>{escape(doc.title)}</h1>",
        f"<div class='sub'>{len(doc.runs)} run{'s' if several else ''}, {n_layers} recurrent "
        f"layer{'s' if n_layers != 1 else ''} · generated {escape(doc.generated)} by gradscope "
        f"{escape(dict(doc.meta).get('gradscope', ''))}</div>",
        f"<nav class='toc'>{''.join(toc)}</nav></header>",
        *body,
        _meta(doc),
        "<footer>Gradient norms are spectral norms of exact products of per-step Jacobians, "
        "accumulated in log space. Rates are natural log per timestep.</footer>",
        "</main></body></html>",
    ]
    return "\n".join(p for p in parts if p)


def write(doc: Document, path: Path, interactive: bool = True) -> None:
    """Write the HTML report of ``doc`` to ``path`` (UTF-8); ``interactive`` as in render."""
    Path(path).write_text(render(doc, interactive), encoding="utf-8")


__all__ = ["CSS", "DPI", "figure_png", "render", "write"]
