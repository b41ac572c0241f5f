"""Reports a person reads at a glance: one self-contained HTML file, or a PDF printed from it.

    import gradscope as gs
    gs.report(prof, "run.html")                       # a Profile, Diagnosis, Monitor, ...
    gs.report({"vanilla": p1, "LSTM": p2}, "cmp.pdf")  # several: a comparison

The format follows the suffix (``.html``/``.htm`` or ``.pdf``). Reports read records, never
live models: what goes in is normalised to :class:`~gradscope.reporting.inputs.run.Run`
objects (a diagnosis and/or a training history plus metadata; :mod:`.inputs.sources`),
:func:`~gradscope.reporting.content.build.build_document` decides what is shown (every figure
declares the data it needs and is shown as missing, with the reason, when that data is
absent), and :mod:`~gradscope.reporting.writers.html`
lays it out; :mod:`~gradscope.reporting.writers.pdf` prints the HTML's print rendering with headless
Chromium (short by default: the first screen; ``pdf_detail=True`` for every layer). Figures
live in :mod:`gradscope.reporting.figures`. :func:`first_screen_html` gives the first screen
(verdicts, comparison, the mechanism picture) as an HTML fragment to embed elsewhere.

Accepted inputs (``obj`` of :func:`report`):

* a :class:`gradscope.analysis.diagnosis.Diagnosis`;
* a :class:`gradscope.Profile` (its trace adds shapes and dtypes to the metadata);
* a :class:`gradscope.traces.Trace` (analysed with :func:`gradscope.analysis.diagnosis.diagnose`);
* a path (``str`` / ``os.PathLike``) of a trace saved with ``Trace.save`` (``.npz``): it is
  loaded with :func:`gradscope.traces.load` and analysed with :func:`gradscope.analysis.diagnosis.\
diagnose`;
* a *monitor-like* object (see below), e.g. :class:`gradscope.Monitor`;
* a *history-like* object on its own (training views only);
* a mapping ``{name: one of the above}``: a comparison report, in the mapping's order.

The Monitor protocol (duck-typed, so that reports never import the Monitor)::

    monitor.history             history-like (below)
    monitor.diagnosis           the latest full analysis, read first if present: a
                                Diagnosis, or a Profile-like object with ``.trace`` and
                                ``.diagnosis``, or None; else
    monitor.latest              the same (gradscope.Monitor: a Snapshot of the latest sampled
                                step, with ``.trace`` and ``.diagnosis``), or None before the
                                first sampled step; either may be a method taking no arguments

    history.steps               (n,) ints: the sampled training steps
    history.names               layer names (or ``history.layers``: names or objects
                                with a ``.name``)
    history.grad_norms(name)    (n, T+1) batch-mean ‖∂L/∂s_t‖, columns t = 0..T
                                (KeyError for an unknown name)
    history.summaries(name)     optional: mapping with ``"rate"`` (n,) (NaN where not
                                fitted), and optionally ``"regime"`` (n,) str ("" where
                                not analysed), ``"rate_ci"`` (n, 2), ``"loss_rate"`` (n,),
                                ``"steps"`` (n,)
    history.meta                optional: a mapping shown with the run's metadata

A saved history (``History.save``, ``.npz``) is accepted as a path too: a path is first read
as a trace and, if it is not one, as a history.

A history without ``summaries`` still gets its heatmap; the rate figure is then shown as
missing with that reason.

A report names no machine by default: the library versions are shown, the platform string
(``platform.platform()``) and absolute paths (of a saved trace read from a file) only with
``environment=True``.

Writes are atomic: the report is written to a temporary file in the destination directory
and moved into place with :func:`os.replace`, so an interrupted or failing render never
leaves a partial report (and keeps any previous file at ``path`` intact).
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import sys
from pathlib import Path
from typing import Any

from gradscope._files import atomic_write, check_writable
from gradscope.errors import GradscopeError
from gradscope.reporting.content.build import build_document
from gradscope.reporting.inputs.run import Run
from gradscope.reporting.inputs.sources import runs_of

#: Report formats by file suffix: the module that writes them.
FORMATS: dict[str, str] = {
    ".html": "gradscope.reporting.writers.html",
    ".htm": "gradscope.reporting.writers.html",
    ".pdf": "gradscope.reporting.writers.pdf",
}


# --------------------------------------------------------------------------- metadata
def _versions(environment: bool = False) -> dict[str, str]:
    """The library versions; with ``environment`` also the machine (``platform.platform()``)."""
    import matplotlib
    import numpy
    import torch

    from gradscope._version import __version__

    out = {
        "gradscope": __version__,
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "matplotlib": matplotlib.__version__,
        "python": sys.version.split()[0],
    }
    if environment:
        out["platform"] = platform.platform()
    return out


def _default_title(runs: list[Run]) -> str:
    if len(runs) > 1:
        return "gradscope comparison: " + " vs ".join(_short(str(r.label)) for r in runs)
    run = runs[0]
    model = run.meta.get("model_class") or run.meta.get("model") or run.source
    model = str(model).splitlines()[0] if model else "recurrent model"
    return f"gradscope report: {model[:80]}"


def _short(label: str, limit: int = 60) -> str:
    """A label for the title: its beginning and end around an ellipsis when long."""
    if len(label) <= limit:
        return label
    head = (limit - 1) // 2
    return label[:head] + "…" + label[len(label) - (limit - 1 - head) :]


# --------------------------------------------------------------------------- writing
def report(
    obj: Any,
    path: str | os.PathLike,
    *,
    title: str | None = None,
    progress: bool | str = "auto",
    pdf_detail: bool = False,
    environment: bool = False,
) -> Path:
    """Write a report of ``obj`` to ``path``; the format follows the suffix.

    Args:
        obj: A Diagnosis, a Profile, a Monitor (or history), the path of a saved trace, or a
            ``{name: one of those}`` mapping for a side-by-side comparison.
        path: Destination ending in ``.html`` (one self-contained file: figures inline, no
            network access when opened) or ``.pdf`` (printed from the HTML by headless
            Chromium: searchable text, bookmarks).
        title: Report title (default: derived from the model / the compared names).
        progress: Progress of the analysis of saved traces and of drawing the figures:
            True, False or ``"auto"`` (a bar on a terminal; see :mod:`gradscope._progress`).
        pdf_detail: For a PDF, add every layer's section, the figures shared by all entries
            and all metadata; by default the PDF holds the first screen only (verdicts,
            comparison, the mechanism picture). The HTML report always holds everything.
        environment: Also show where the report was made: the platform string
            (``platform.platform()``: OS, kernel, architecture) and the absolute path of a
            saved trace reported from a file. Off by default, so a report can be shared
            without them; the library versions are always shown.

    Returns:
        The path written.

    Raises:
        OutputError: ``path`` cannot be written (checked before any work): ``cannot write
            PATH: reason``.
        PdfEngineError: a ``.pdf`` was asked for and no headless Chromium is installed
            (checked before any work; the message says what to install).
        GradscopeError: an unsupported suffix or input type (and the errors of loading or
            analysing a saved trace, e.g. :class:`~gradscope.errors.TraceFormatError`).
    """
    path = Path(path)
    module_name = FORMATS.get(path.suffix.lower())
    if module_name is None:
        raise GradscopeError(
            f"gs.report: cannot tell the format of {str(path)!r} from its suffix "
            f"{path.suffix or '(none)'!r}; use one of {', '.join(sorted(set(FORMATS)))}"
        )
    check_writable(path)  # before any analysis: a path that cannot be written fails fast
    import importlib

    from gradscope._progress import progress_bar

    writer = importlib.import_module(module_name)
    if hasattr(writer, "engine"):
        writer.engine()  # a PDF without a PDF engine fails fast too, saying what to install
    doc = _document(obj, title, progress, environment)
    figures = doc.figures()
    with progress_bar(len(figures), f"figures of {path.name}", progress, unit="figure") as bar:
        for panel in figures:
            panel.observer = bar
        try:
            atomic_write(path, lambda tmp: writer.write(doc, tmp, detail=pdf_detail))
        finally:
            for panel in figures:
                panel.observer = None
    return path


def _document(
    obj: Any, title: str | None, progress: bool | str = False, environment: bool = False
) -> Any:
    runs = runs_of(obj, progress)
    if environment:
        for run in runs:
            run.meta.update(run.environment)
    generated = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")
    return build_document(runs, title or _default_title(runs), generated, _versions(environment))


def first_screen_html(obj: Any, *, figures: bool = True, title: str | None = None) -> str:
    """The report's first screen as an HTML fragment with its own (scoped) CSS.

    The verdicts, the comparison (for several models or layers) and the picture of the
    mechanism, as one ``<div class="gradscope-report">`` whose style applies only inside it,
    so it can be embedded in another page; a notebook's ``_repr_html_`` of a Profile, a
    Diagnosis or a History is this without figures. Figures are inline PNGs; no script.

    Args:
        obj: Anything :func:`report` accepts (a saved trace's path is analysed first).
        figures: Draw the first screen's figures (off: a note in their place, no
            matplotlib, milliseconds instead of seconds).
        title: Heading of the fragment (default as in :func:`report`).

    Returns:
        The HTML fragment.
    """
    from gradscope.reporting.notebook import first_screen

    runs = runs_of(obj, progress=False)
    return first_screen(runs, title or _default_title(runs), figures=figures)


__all__ = ["FORMATS", "first_screen_html", "report", "runs_of"]
