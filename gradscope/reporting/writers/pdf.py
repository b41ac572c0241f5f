"""The PDF report: the HTML report's print rendering, printed by headless Chromium.

There is one layout, the HTML one. :func:`write` renders the document for print
(:func:`gradscope.reporting.writers.html.render` with ``media="print"``: static figures, every
collapsed block open, the print style sheet: A4 landscape, tables and figures never split
across pages) and has headless Chromium print it, with a document outline (PDF bookmarks)
made from the headings and tagged text, so the PDF is searchable and navigable.

By default the PDF is short: the first screen (verdict table, comparison, the mechanism
picture) and the report's own metadata. ``detail=True`` (``gs.report(..., pdf_detail=True)``,
command line ``--pdf-detail``) adds the figures shared by all entries, every run and layer
and all metadata, like the HTML report.

Why Chromium and not WeasyPrint: on the three-model test report Chromium printed in about
3 s a tagged 150 kB PDF with bookmarks, and it is the browser the HTML report is checked in
(its CSS grid, its fonts); WeasyPrint 70 took about 11 s and wrote an untagged PDF about six
times larger. The Chromium binary is looked up as ``$GRADSCOPE_CHROMIUM``, ``chromium``,
``chromium-browser``, ``google-chrome``; :func:`engine` raises with what to install when none
is found (``make browser`` installs the Debian package).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from gradscope.errors import PdfEngineError
from gradscope.reporting.content.document import Document
from gradscope.reporting.writers.html import render

#: Binaries tried in order (after ``$GRADSCOPE_CHROMIUM``).
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
#: Seconds Chromium may take to print one report.
TIMEOUT = 180


def engine() -> str:
    """Path of the headless Chromium that prints PDFs.

    Raises:
        PdfEngineError: none is installed, with what to install.
    """
    env = os.environ.get("GRADSCOPE_CHROMIUM", "").strip()
    if env:
        if shutil.which(env) is None:
            raise PdfEngineError(
                f"GRADSCOPE_CHROMIUM={env!r} is not an executable; point it at a Chromium or "
                "Chrome binary, or unset it"
            )
        return shutil.which(env) or env
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    raise PdfEngineError(
        "writing a PDF report needs headless Chromium, and none was found (tried "
        f"{', '.join(BROWSERS)}). Install it (Debian/Ubuntu: apt-get install chromium, or "
        "`make browser` in the gradscope repository), set GRADSCOPE_CHROMIUM to a Chrome "
        "binary, or write the report as .html instead"
    )


def _flags(profile: Path) -> list[str]:
    return [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        "--host-resolver-rules=MAP * ~NOTFOUND",  # the report loads nothing from outside
        f"--user-data-dir={profile}",
        "--no-pdf-header-footer",
        "--generate-pdf-document-outline",
    ]


def print_pdf(html: str, path: Path, browser: str | None = None) -> None:
    """Print the HTML string ``html`` to the PDF ``path`` with headless Chromium.

    Raises:
        PdfEngineError: no Chromium, or it did not write a PDF (with its last messages).
    """
    browser = browser or engine()
    path = Path(path)
    with tempfile.TemporaryDirectory(prefix="gradscope-pdf-") as tmp:
        page = Path(tmp) / "report.html"
        page.write_text(html, encoding="utf-8")
        out = Path(tmp) / "report.pdf"
        cmd = [browser, *_flags(Path(tmp) / "profile"), f"--print-to-pdf={out}", page.as_uri()]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            raise PdfEngineError(
                f"Chromium ({browser}) did not print the report within {TIMEOUT} s"
            ) from None
        if not out.is_file() or out.read_bytes()[:5] != b"%PDF-":
            tail = "\n".join(proc.stderr.strip().splitlines()[-8:])
            raise PdfEngineError(
                f"Chromium ({browser}) wrote no PDF (exit status {proc.returncode}); its last "
                f"messages:\n{tail}"
            )
        shutil.copyfile(out, path)


def write(doc: Document, path: Path, *, detail: bool = False, **options: Any) -> None:
    """Write the PDF report of ``doc`` to ``path``.

    Args:
        doc: The document.
        path: Destination.
        detail: Add the shared figures, every run and layer, and all metadata (default: the
            first screen only).
        **options: Accepted for the HTML writer's options (unused here).
    """
    print_pdf(render(doc, media="print", detail=detail), path)


__all__ = ["BROWSERS", "PdfEngineError", "engine", "print_pdf", "write"]
