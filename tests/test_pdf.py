"""The PDF report: printed from the HTML's print rendering by headless Chromium.

Checks what a reader of the PDF gets: a short PDF by default (the first screen) and every
layer on request, pages that render, bookmarks (the document outline, read back with
poppler's ``pdftohtml -xml``), tables that sit whole on one page (``pdftotext -layout`` per
page), and a clear error naming what to install when no engine is there. Also the pieces the
PDF is built from: the print/screen switch of the HTML renderer and the first-screen fragment.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from torch import nn

import gradscope as gs
from gradscope.errors import ArgumentError, PdfEngineError
from gradscope.reporting import first_screen_html, runs_of
from gradscope.reporting.content.build import build_document
from gradscope.reporting.content.document import Panel
from gradscope.reporting.writers import figure_html as html_figures
from gradscope.reporting.writers.html import render
from gradscope.reporting.writers.pdf import print_pdf

pytestmark = pytest.mark.browser

LABELS = {"vanilla RNN": nn.RNN, "LSTM": nn.LSTM}


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        package = "chromium" if name == "chromium" else "poppler-utils"
        msg = f"{name} not found (Debian package {package})"
        if os.environ.get("CI", "").strip().lower() in ("1", "true", "yes"):
            pytest.fail(msg + "; CI must install it")
        pytest.skip(msg)
    return path


@pytest.fixture(scope="module")
def profiles() -> dict[str, gs.Profile]:
    x = torch.randn(30, 3, 3, generator=torch.Generator().manual_seed(0))
    out = {}
    for label, cls in LABELS.items():
        with torch.random.fork_rng():
            torch.manual_seed(0)
            model = cls(3, 8)
        out[label] = gs.profile(
            model, x, loss_fn=lambda o: o[0][-1].pow(2).sum(), analysis={"progress": False}
        )
    return out


@pytest.fixture(scope="module")
def pdfs(profiles: dict[str, gs.Profile], tmp_path_factory: pytest.TempPathFactory) -> dict:
    _tool("chromium")
    tmp = tmp_path_factory.mktemp("pdf")
    return {
        "short": gs.report(profiles, tmp / "short.pdf"),
        "detail": gs.report(profiles, tmp / "detail.pdf", pdf_detail=True),
    }


def _pages(path: Path, layout: bool = False) -> list[str]:
    args = [_tool("pdftotext"), *(["-layout"] if layout else []), str(path), "-"]
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    pages = out.split("\f")
    return pages[:-1] if pages and not pages[-1].strip() else pages


def _n_pages(path: Path) -> int:
    info = subprocess.run([_tool("pdfinfo"), str(path)], capture_output=True, text=True).stdout
    return int(re.search(r"^Pages:\s+(\d+)", info, re.M).group(1))


def _outline(path: Path) -> list[tuple[int, str]]:
    """The PDF's bookmarks as (page, title), read back by poppler."""
    xml = subprocess.run(
        [_tool("pdftohtml"), "-xml", "-i", "-q", "-stdout", str(path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    items = re.findall(r'<item page="(\d+)">([^<]*)</item>', xml)
    return [(int(p), t.replace("&amp;", "&").strip()) for p, t in items]


def test_pages_render_and_the_default_pdf_is_short(
    pdfs: dict, profiles: dict[str, gs.Profile], tmp_path: Path
) -> None:
    short, detail = _n_pages(pdfs["short"]), _n_pages(pdfs["detail"])
    subprocess.run(
        [_tool("pdftoppm"), "-png", "-r", "20", str(pdfs["short"]), str(tmp_path / "s")],
        check=True,
    )
    assert len(list(tmp_path.glob("s-*.png"))) == short
    assert 1 <= short <= 3  # the first screen: summary, comparison, mechanism, verdicts
    # the detail: shared figures and one run per page at least
    assert detail >= short + 1 + len(LABELS)
    text = " ".join(" ".join(_pages(pdfs["detail"])).split())
    assert text.count("The numbers behind the verdict") == len(LABELS)
    assert "All models compared" in text
    for prof in profiles.values():  # the verdicts in full are the detail
        (d,) = prof.diagnosis.layers
        assert " ".join(d.verdict.split()) in text


def test_bookmarks_follow_the_headings(pdfs: dict) -> None:
    short = dict((t, p) for p, t in _outline(pdfs["short"]))
    assert short.get("Does the gradient survive?") == 1
    assert short.get("Side by side") == 1
    assert "The mechanism: the gradient highway" in short
    assert "Run metadata" in dict((t, p) for p, t in _outline(pdfs["detail"]))
    detail = _outline(pdfs["detail"])
    titles = [t for _, t in detail]
    assert "All models compared" in titles
    pages = _pages(pdfs["detail"])
    for label in LABELS:
        # each run is a bookmark that points at the page its section starts on (the run's
        # metadata, further on, is a second one)
        page, *_ = [p for p, t in detail if t == label]
        assert pages[page - 1].lstrip().startswith(label)


def _table_pages(pages: list[str], rows: list[str]) -> set[int]:
    """Pages on which a table's row labels appear (each row label on a line of its own)."""
    found = set()
    for row in rows:
        where = {
            i for i, page in enumerate(pages) if re.search(rf"(?m)^\s*{re.escape(row)}\s", page)
        }
        assert where, f"row {row!r} not found"
        found |= where
    return found


def test_tables_are_not_split_across_pages(pdfs: dict, profiles: dict[str, gs.Profile]) -> None:
    for kind in ("short", "detail"):
        pages = _pages(pdfs[kind], layout=True)
        # the comparison table: its header and every model on one page
        (first,) = [i for i, p in enumerate(pages) if "model / layer" in p]
        assert _table_pages(pages, list(LABELS)) >= {first}
        assert all(re.search(rf"(?m)^\s*{re.escape(label)}\s", pages[first]) for label in LABELS)
    # each layer's numbers: the first and the last row on the same page, in its run's pages
    pages = _pages(pdfs["detail"], layout=True)
    starts = [next(i for i, p in enumerate(pages) if p.lstrip().startswith(lab)) for lab in LABELS]
    bounds = list(zip(starts, [*starts[1:], len(pages)]))
    for (lo, hi), prof in zip(bounds, profiles.values()):
        (layer,) = prof.diagnosis.layers
        numbers = gs.reporting.content.numbers.layer_numbers(layer)
        first, last = numbers[0].label, numbers[-1].label
        holding = [i for i in range(lo, hi) if first in pages[i] and last in pages[i]]
        assert len(holding) == 1, (layer.name, first, last)


def _placeholder_figures(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stand a small white PNG in for every figure (tests of the layout only)."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (60, 40), "white").save(buf, format="PNG")

    class _Fig:
        def clear(self) -> None:
            pass

    monkeypatch.setattr(Panel, "render", lambda self, ax=None: _Fig())
    monkeypatch.setattr(html_figures, "figure_png", lambda fig: buf.getvalue())


@pytest.mark.parametrize("filler_mm", [118, 125])  # without the print CSS both split
def test_print_css_moves_a_table_that_would_straddle_a_page(
    profiles: dict[str, gs.Profile],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    filler_mm: int,
) -> None:
    """A block pushes the comparison table to the page's foot: it must move whole."""
    _tool("chromium")
    _placeholder_figures(monkeypatch)
    doc = build_document(runs_of(profiles), "t", "now", {})
    html = render(doc, media="print", detail=False)
    filler = f'<div style="height:{filler_mm}mm;background:#eee">filler</div>'
    html = html.replace('<section id="comparison"', filler + '<section id="comparison"', 1)
    print_pdf(html, tmp_path / "t.pdf")
    pages = _pages(tmp_path / "t.pdf", layout=True)
    (head,) = [i for i, p in enumerate(pages) if "model / layer" in p]
    below = pages[head].split("model / layer", 1)[1]  # the table, from its header on
    for label in LABELS:
        assert re.search(rf"(?m)^\s*{re.escape(label)}\s", below), (label, head)


def test_no_engine_is_a_clear_error(
    profiles: dict[str, gs.Profile], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    prof = profiles["LSTM"]
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.delenv("GRADSCOPE_CHROMIUM", raising=False)
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(PdfEngineError, match=r"needs headless Chromium.*make browser.*\.html"):
        gs.report(prof, tmp_path / "r.pdf")
    monkeypatch.setenv("GRADSCOPE_CHROMIUM", str(tmp_path / "no-such-chrome"))
    with pytest.raises(PdfEngineError, match=r"GRADSCOPE_CHROMIUM=.*no-such-chrome"):
        gs.report(prof, tmp_path / "r.pdf")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bin"]


def test_print_rendering_opens_everything_and_is_static(
    profiles: dict[str, gs.Profile], monkeypatch: pytest.MonkeyPatch
) -> None:
    _placeholder_figures(monkeypatch)  # the layout only: the figures are drawn elsewhere
    doc = build_document(runs_of(profiles), "t", "now", {})
    screen, printed = render(doc, "screen"), render(doc, media="print", detail=True)
    # on screen the runs and long verdicts are collapsed; on paper nothing can be opened
    assert re.search(r"<details(?![^>]*\bopen\b)", screen)
    assert not re.search(r"<details(?![^>]*\bopen\b)", printed)
    assert "@page" in printed and "@page" not in screen
    assert "<script" not in printed.lower()
    # static figures: every image of the print rendering is an inline PNG
    srcs = re.findall(r'<img [^>]*src="([^"]*)"', printed)
    assert srcs and all(src.startswith("data:image/png;base64,") for src in srcs)
    short = render(doc, media="print", detail=False)
    assert 'data-section="layer"' not in short and 'data-section="layer"' in printed
    with pytest.raises(ArgumentError, match="media"):
        render(doc, media="paper")


def test_first_screen_fragment(profiles: dict[str, gs.Profile]) -> None:
    html = first_screen_html(profiles)
    assert html.startswith('<div class="gradscope-report">') and html.endswith("</div>")
    for part in ('id="summary"', 'id="comparison"', 'data-figure="mechanism"'):
        assert html.count(part) == 1, part
    # the mechanism picture is an image, drawn on the first screen
    mech = html[html.index('data-figure="mechanism"') :]
    assert mech[: mech.index("</figure>")].count("data:image/png;base64,") == 1
    assert "<html" not in html and "<script" not in html.lower()
    # its CSS applies only inside the fragment: every rule is scoped
    css = html[html.index("<style>") + 7 : html.index("</style>")]
    rules = re.findall(r"([^{}]+)\{", css)
    assert rules and all(
        sel.strip().startswith(".gradscope-report") for r in rules for sel in r.split(",")
    )
