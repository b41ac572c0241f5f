"""What a Jupyter notebook shows for an object: the report's first screen as a fragment.

``Profile``, ``Diagnosis`` and ``History`` have a ``_repr_html_`` that returns
:func:`notebook_html` of themselves, so the last line of a cell shows the verdict table
instead of a text repr; a ``LayerDiagnosis`` shows :func:`layer_html` (its verdict and the
numbers behind it). :func:`first_screen` lays out the same headline, summary table and
comparison as the top of the HTML report (:func:`~.content.build.build_document` and
:mod:`.writers.html`), inside one ``<div>`` with its own CSS scoped to it, so it neither
restyles the notebook nor is restyled by it.

It is fast: no figure is drawn unless ``figures=True`` (the decay comparison and the
mechanism picture; without them one line names what is left out), so a repr returns in
milliseconds, not the seconds of a full report. This module imports neither the analysis nor
the Monitor: objects are recognised by their attributes, as the report does. Its path is what
the records' ``_repr_html_`` import.
"""

from __future__ import annotations

import math
import re
from html import escape
from typing import Any

from gradscope.reporting.content.build import build_document
from gradscope.reporting.content.numbers import layer_numbers, nonfinite_text
from gradscope.reporting.figures.theme import visible_controls
from gradscope.reporting.inputs.run import Run
from gradscope.reporting.writers.css import CSS, scoped
from gradscope.reporting.writers.figure_html import regime_badge as _regime
from gradscope.reporting.writers.html import FRAGMENT_CLASS
from gradscope.reporting.writers.html import first_screen as page_first_screen

#: The class of the fragment's outer ``<div>``; every CSS rule is scoped under it.
SCOPE = FRAGMENT_CLASS

#: The line that says what a figure-less fragment leaves out (instead of a box per figure).
LEFT_OUT = (
    "Left out of this view, to keep it fast: {what}. first_screen_html(obj, figures=True) or "
    "the full report (gs.report(obj, 'report.html')) draws {them}."
)


def scoped_css() -> str:
    """The report's CSS with every rule under ``.gradscope-report`` (print rules dropped)."""
    return scoped(CSS, f".{SCOPE}")


def _wrap(body: str, title: str) -> str:
    return visible_controls(  # a name's bidi override must not reorder the notebook
        f'<div class="{SCOPE}"><style>{scoped_css()}</style>'
        f"<div class='sub'>{escape(title)}</div>{body}</div>"
    )


def first_screen(runs: list[Run], title: str, figures: bool = False) -> str:
    """The report's first screen of ``runs`` as a fragment (verdicts, comparison, mechanism).

    Args:
        runs: Normalised runs (:func:`gradscope.reporting.runs_of`).
        title: A line above the table.
        figures: Draw the first screen's figures (the decay comparison and the mechanism
            picture; off: one line naming them, and no matplotlib).

    Returns:
        An HTML ``<div>`` with its own scoped ``<style>``, and no script.
    """
    doc = build_document(runs, title, "", {})
    left = []
    if not figures:  # one line says what is left out, not a "not available" box per figure
        names = {"comparison": "the decay comparison", "mechanism": "the mechanism picture"}
        for attr, what in names.items():
            if getattr(doc, attr) is not None:
                left.append(what)
                setattr(doc, attr, None)
    if not doc.summary and not any(r.history is not None for r in runs):
        why = "; ".join(r.problem for r in runs if r.problem) or "no recurrent layer was recorded"
        return _wrap(f"<p class='missing-line'>Nothing to show: {escape(why)}.</p>", title)
    body = ""
    if doc.summary:
        # the fragment has no per-layer sections: the layer names are text, not links
        body = re.sub(r"<a href='#[^']*'>(.*?)</a>", r"\1", page_first_screen(doc, "static"))
        if left:
            what = " and ".join(left)
            line = LEFT_OUT.format(what=what, them="them" if len(left) > 1 else "it")
            body += f"<p class='note' data-left-out>{escape(line)}</p>"
    histories = [r for r in runs if r.history is not None and r.diagnosis is None]
    body += "".join(_history(r.history, r.label) for r in histories)
    return _wrap(body, title)


def _cell(x: Any, fmt: str = "{:+.4f}") -> str:
    ok = isinstance(x, (int, float)) and math.isfinite(x)
    return f"<td class='num'>{escape(fmt.format(x)) if ok else 'n/a'}</td>"


def _history(history: Any, label: str | None) -> str:
    """A history's latest sampled step: one row per layer (what ``str(history)`` says)."""
    from gradscope.history_text import history_summary

    s = history_summary(history)
    name = f"{label}: " if label else ""
    if not s["layers"]:
        return f"<p class='missing-line'>{escape(name)}the history has no sampled step yet.</p>"
    head = ["Layer", "Regime", "Rate / step", "Half-life (steps)", "Loss rate / step"]
    head += ["median ρ(J)", "median ‖J‖₂", "Regime over training"]
    rows = []
    for layer in s["layers"]:
        regime = (
            layer["regime"] if layer["regime"] in ("vanishing", "exploding", "neutral") else None
        )
        rows.append(
            f"<tr data-layer='{escape(layer['name'])}'>"
            f"<td class='name'>{escape(layer['name'])}</td>"
            f"<td>{_regime(regime)}</td>{_cell(layer['rate'])}"
            f"{_cell(layer['half_life'], '{:.1f}')}{_cell(layer['loss_rate'])}"
            f"{_cell(layer['radius_median'], '{:.3g}')}{_cell(layer['norm_median'], '{:.3g}')}"
            f"<td>{escape(layer['regimes_over_training'])}</td></tr>"
        )
    return (
        f"<section data-section='history'><h2>{escape(name)}Training history</h2>"
        f"<p class='sub'>{s['sampled_steps']} sampled steps ({s['first_step']} … {s['step']}); "
        f"the numbers of step {s['step']}:</p><table class='summary'><thead><tr>"
        + "".join(f"<th>{escape(h)}</th>" for h in head)
        + "</tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table></section>"
    )


def notebook_html(obj: Any) -> str:
    """``_repr_html_`` of a Profile, a Diagnosis or a History (recognised by attributes).

    Args:
        obj: The object a notebook cell returned.

    Returns:
        :func:`first_screen` of it.
    """
    if hasattr(obj, "trace") and hasattr(obj, "diagnosis"):  # a Profile
        run = Run(None, "Profile", obj.diagnosis)
        what = "Profile"
    elif hasattr(obj, "grad_norms") and hasattr(obj, "steps"):  # a History
        run = Run(None, "History", None, obj, problem="a training history alone")
        what = "Training history"
    else:  # a Diagnosis
        run = Run(None, "Diagnosis", obj)
        what = "Diagnosis"
    diagnosis = run.diagnosis
    n = len(diagnosis.layers) if diagnosis is not None else len(getattr(obj, "names", []))
    title = f"gradscope {what}: {n} recurrent layer{'s' * (n != 1)}"
    return first_screen([run], title)


def layer_html(d: Any) -> str:
    """``_repr_html_`` of one :class:`~gradscope.analysis.results.LayerDiagnosis`.

    The layer's heading and regime, its verdict paragraph, what to try, and the numbers
    behind the verdict (:func:`~gradscope.reporting.content.numbers.layer_numbers`), as in
    its section of the report; no figure (``gs.report`` draws them).

    Args:
        d: The layer's diagnosis.

    Returns:
        An HTML ``<div>`` with its own scoped ``<style>``, and no script.
    """
    regime = getattr(d, "regime", None)
    cls = f" v-{regime}" if regime in ("vanishing", "exploding", "neutral") else ""
    out = [
        f"<h3>{escape(str(d.name))} <span class='sub'>({escape(str(d.kind))})</span> "
        f"{_regime(regime if cls else None)}</h3>"
    ]
    warning = nonfinite_text(d)
    if warning:
        out.append(
            f'<div class="alert" role="alert" data-alert="nonfinite">⚠ {escape(warning)}</div>'
        )
    verdict = str(getattr(d, "verdict", "") or "no verdict was produced")
    out.append(
        f'<div class="verdict{cls}" data-verdict><strong>Verdict.</strong> {escape(verdict)}</div>'
    )
    advice = [str(a) for a in getattr(d, "advice", []) or []]
    if advice:
        out.append(
            "<ul class='advice'>" + "".join(f"<li>{escape(a)}</li>" for a in advice) + "</ul>"
        )
    out.append("<table class='numbers'><tbody>")
    out.extend(
        f"<tr><td>{escape(n.label)}</td><td>{escape(n.value)}</td>"
        f"<td class='meaning'>{escape(n.meaning)}</td></tr>"
        for n in layer_numbers(d)
    )
    out.append("</tbody></table>")
    return _wrap("".join(out), f"gradscope layer diagnosis: {d.name}")


__all__ = ["SCOPE", "first_screen", "layer_html", "notebook_html", "scoped_css"]
