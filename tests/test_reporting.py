"""Reports: figures, the self-contained HTML, the multi-page PDF, atomic writes.

Inputs come from the real pipeline (``gs.profile`` on small ``nn.RNN``/``nn.LSTM``/``nn.GRU``,
a ``gs.Monitor`` run, saved traces). Expected values are taken from the diagnosis objects or
computed independently (a plain forward pass for the NaN count, exact logarithms for tick
positions), never from the rendered report itself.
"""

from __future__ import annotations

import base64
import io
import math
import os
import re
import shutil
import subprocess
import warnings
from html.parser import HTMLParser
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch
from matplotlib.collections import PathCollection, PolyCollection
from PIL import Image
from torch import nn

import gradscope as gs
from gradscope.errors import GradscopeError
from gradscope.reporting import figures as F

#: Every figure a layer section must show (or show as missing, with the reason).
LAYER_FIGURES = (
    "decay-state",
    "heatmap",
    "decay-input",
    "decay-loss",
    "spectral-time",
    "eigenvalues",
    "singular-values",
    "lyapunov-spectrum",
    "lyapunov-convergence",
)
#: The figures drawn interactively in the HTML report (the others are PNG images).
INTERACTIVE = {
    "decay-state",
    "heatmap",
    "decay-input",
    "decay-loss",
    "spectral-time",
    "lyapunov-convergence",
    "comparison",
    "training-heatmap",
    "training-rate",
}
#: Of those, the figures a comparison draws once for all layers in ``#shared`` (the state
#: decay is drawn once too, as the ``comparison`` figure).
SHARED_FIGURES = (
    "decay-input",
    "decay-loss",
    "spectral-time",
    "singular-values",
    "eigenvalues",
    "lyapunov-spectrum",
    "lyapunov-convergence",
)
LABELS = {"vanilla RNN": nn.RNN, "LSTM": nn.LSTM, "GRU": nn.GRU}
T, B, H, I = 40, 4, 16, 3


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def _tool(name: str) -> str:
    """Path of a command-line tool; skip without it locally, fail in CI (where it's required)."""
    path = shutil.which(name)
    if path is None:
        package = "chromium" if name == "chromium" else "poppler-utils"
        msg = f"{name} not found (Debian package {package})"
        if _in_ci():
            pytest.fail(msg + "; CI must install it")
        pytest.skip(msg)
    return path


def _squash(text: str) -> str:
    return " ".join(text.split())


def _num(v: float) -> str:
    """How the report prints a number of moderate size: 3 significant digits."""
    return f"{v:.3g}".replace("-", "−")


def _rate(v: float) -> str:
    """Rates and exponents are printed with their sign."""
    return ("+" if v > 0 else "") + _num(v)


# --------------------------------------------------------------------------- HTML parsing
class _Page(HTMLParser):
    """Collects tags, text, figures (with their image and caption) and tag balance."""

    VOID: ClassVar[set[str]] = {"img", "meta", "br", "hr", "input", "link"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.figures: list[dict] = []
        self.depth: dict[str, int] = {}
        self._fig: dict | None = None
        self._in_caption = False
        self._sections: list[dict] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.tags.append((tag, a))
        if tag not in self.VOID:
            self.depth[tag] = self.depth.get(tag, 0) + 1
        if tag == "section":
            self._sections.append({"attrs": a, "text": []})
        if tag == "figure":
            self._fig = {"attrs": a, "imgs": [], "caption": "", "text": ""}
        elif tag == "img" and self._fig is not None:
            self._fig["imgs"].append(a.get("src") or "")
        elif tag == "figcaption":
            self._in_caption = True

    def handle_endtag(self, tag: str) -> None:
        if tag not in self.VOID:
            self.depth[tag] = self.depth.get(tag, 0) - 1
        if tag == "figure" and self._fig is not None:
            self.figures.append(self._fig)
            self._fig = None
        elif tag == "figcaption":
            self._in_caption = False
        elif tag == "section" and self._sections:
            sec = self._sections.pop()
            text = "".join(sec["text"])
            self.sections.append((sec["attrs"], text))
            for outer in self._sections:
                outer["text"].append(text)

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._fig is not None:
            self._fig["text"] += data
            if self._in_caption:
                self._fig["caption"] += data
        if self._sections:
            self._sections[-1]["text"].append(data)

    sections: list[tuple[dict, str]]

    def reset(self) -> None:
        super().reset()
        self.sections = []


def _parse(path: Path) -> tuple[str, _Page]:
    src = path.read_text(encoding="utf-8")
    page = _Page()
    page.feed(src)
    page.close()
    return src, page


def _section(page: _Page, **attrs: str) -> list[tuple[dict, str]]:
    return [(a, t) for a, t in page.sections if all(a.get(k) == v for k, v in attrs.items())]


# --------------------------------------------------------------------------- fixtures
def _profile(cls: type[nn.Module], x: torch.Tensor, loss: bool = True) -> gs.Profile:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = cls(I, H)
    loss_fn = (lambda out: out[0][-1].pow(2).sum()) if loss else None
    return gs.profile(model, x, loss_fn=loss_fn, analysis={"progress": False})


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    return torch.randn(T, B, I, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def profiles(x: torch.Tensor) -> dict[str, gs.Profile]:
    return {label: _profile(cls, x) for label, cls in LABELS.items()}


@pytest.fixture(scope="module")
def cmp_html(profiles: dict[str, gs.Profile], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return gs.report(profiles, tmp_path_factory.mktemp("cmp") / "cmp.html")


@pytest.fixture(scope="module")
def cmp_pdf(profiles: dict[str, gs.Profile], tmp_path_factory: pytest.TempPathFactory) -> Path:
    _tool("chromium")  # the PDF engine
    return gs.report(profiles, tmp_path_factory.mktemp("cmp") / "cmp.pdf")


@pytest.fixture(scope="module")
def nan_profile() -> tuple[gs.Profile, int, int, int]:
    """An RNN whose sequence 1 gets NaN inputs from step 25; expected (count, t, b)."""
    x = torch.randn(T, B, I, generator=torch.Generator().manual_seed(1))
    x[25:, 1] = float("nan")
    prof = _profile(nn.RNN, x, loss=False)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = nn.RNN(I, H)
    with torch.no_grad():
        out, _ = model(x)  # out[t-1] is the state s_t
    bad = ~torch.isfinite(out).all(dim=-1)  # (T, B)
    t_idx, b_idx = torch.nonzero(bad, as_tuple=True)
    return prof, int(bad.sum()), int(t_idx.min()) + 1, int(b_idx[t_idx.argmin()])


@pytest.fixture(scope="module")
def nan_html(
    nan_profile: tuple[gs.Profile, int, int, int], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    return gs.report(nan_profile[0], tmp_path_factory.mktemp("nan") / "nan.html")


# --------------------------------------------------------------------------- HTML
def test_html_has_every_section_and_figure(cmp_html: Path, profiles: dict[str, gs.Profile]) -> None:
    _, page = _parse(cmp_html)
    for tag in ("section", "figure", "table", "div", "main", "html"):
        assert page.depth.get(tag, 0) == 0, f"unbalanced <{tag}>"
    ids = [a["id"] for _, a in page.tags if a.get("id")]
    assert len(ids) == len(set(ids)), "duplicate ids"
    kinds = {a.get("data-section") for _, a in page.tags if a.get("data-section")}
    assert {
        "header",
        "summary",
        "comparison",
        "mechanism",
        "shared",
        "run",
        "layer",
        "training",
        "metadata",
    } <= kinds

    runs = [a["data-run"] for a, _ in _section(page, **{"data-section": "run"})]
    assert runs == list(profiles)
    layers = _section(page, **{"data-section": "layer"})
    expected = [d.name for p in profiles.values() for d in p.diagnosis.layers]
    assert [a["data-layer"] for a, _ in layers] == expected

    figs = {f["attrs"]["id"]: f for f in page.figures}
    keys = [f["attrs"]["data-figure"] for f in page.figures]
    # figures every model has are drawn once for all of them: the state decay in the
    # comparison, the others in #shared; each layer keeps what is specific to it
    for key in SHARED_FIGURES:
        assert keys.count(key) == 1, key
        # every profile has a loss, so nothing may be missing here
        fig = figs[f"shared--{key}"]
        assert fig["attrs"].get("data-missing") is None, (key, fig["text"])
    assert keys.count("comparison") == keys.count("mechanism") == 1
    assert keys.count("decay-state") == 0  # drawn as the comparison
    once = tuple(f"--{key}" for key in ("decay-state", *SHARED_FIGURES))
    for attrs, _ in layers:
        for key in set(LAYER_FIGURES) - {"decay-state", *SHARED_FIGURES}:
            fig = figs[f"{attrs['id']}--{key}"]
            assert fig["attrs"]["data-figure"] == key
            assert fig["attrs"].get("data-missing") is None, (attrs["id"], key, fig["text"])
        assert not [k for k in figs if k.startswith(attrs["id"] + "--") and k.endswith(once)]
    live = {f["attrs"]["data-figure"] for f in page.figures if f["attrs"].get("data-interactive")}
    # the shared small multiples / overlays of several entries are PNGs (they declare no
    # chart); the state-decay comparison and every per-layer chart are interactive
    drawn = {f["attrs"]["data-figure"] for f in page.figures} - set(SHARED_FIGURES)
    assert live == INTERACTIVE & drawn
    for fig in page.figures:
        assert fig["caption"].startswith("How to read this.")
        if fig["attrs"].get("data-interactive"):
            # drawn in the page from its data (tests/test_interactive.py checks the numbers)
            assert fig["imgs"] == []
            continue
        assert len(fig["imgs"]) == 1
        src = fig["imgs"][0]
        assert src.startswith("data:image/png;base64,")
        png = base64.b64decode(src.split(",", 1)[1], validate=True)
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        with Image.open(io.BytesIO(png)) as im:
            assert im.width >= 400 and im.height >= 250
        # two sentences: what is plotted, then how to read it
        assert len(re.findall(r"[.!?](?:\s|$)", fig["caption"])) >= 3


def test_html_summary_and_numbers(cmp_html: Path, profiles: dict[str, gs.Profile]) -> None:
    _, page = _parse(cmp_html)
    ((_, summary),) = _section(page, id="summary")
    summary = _squash(summary)
    ((_, comparison),) = _section(page, id="comparison")
    for label, prof in profiles.items():
        (d,) = prof.diagnosis.layers
        state = d.decay["state"]
        assert f"{F.REGIME_SYMBOLS[d.regime]} {d.regime}" in summary
        assert _rate(state.rate) in summary
        assert _squash(d.verdict.split(". ")[0]) in summary  # the verdict's opening sentence
        assert _num(state.half_life) in summary
        assert label in _squash(comparison)
        # the layer's own section: full verdict, advice, and the numbers behind it
        ((_, text),) = _section(page, **{"data-section": "layer", "data-layer": d.name})
        text = _squash(text)
        assert _squash(d.verdict) in text
        for advice in d.advice:
            assert _squash(advice) in text
        assert _rate(d.lyapunov.exponents[0]) in text
        assert _num(state.horizon) in text
        assert _rate(d.decay["loss"].rate) in text
        assert _num(d.svd["median"]) in text
    ((_, meta),) = _section(page, id="metadata")
    assert torch.__version__ in meta and gs.__version__ in meta
    assert "float32" in meta and f"{T + 1}×{B}×{H}" in meta


def test_html_is_self_contained(cmp_html: Path) -> None:
    from gradscope.reporting.writers.interactive import script

    src, page = _parse(cmp_html)
    # one script, inline, once: the interactive figures' (it loads nothing: no URL in it)
    assert src.count(script()) == 1
    assert not re.search(r"(?i)https?:|//|\bfetch\(|XMLHttpRequest|import\(|\.src\b", script())
    rest = src.replace(script(), "")
    # the figures' data: inert JSON blocks
    block = r'<script type="application/json" class="gs-data">.*?</script>'
    data = re.findall(block, rest, re.S)
    assert len(data) == len([f for f in page.figures if f["attrs"].get("data-interactive")]) > 0
    rest = re.sub(block, "", rest, flags=re.S)
    rest = rest.replace("<script></script>", "", 1)
    lowered = rest.lower()
    for banned in ("<script", "<link", "<iframe", "<object", "<embed", "@import", "url("):
        assert banned not in lowered, banned
    for _, attrs in page.tags:
        for name, value in attrs.items():
            if name == "src":
                assert (value or "").startswith("data:image/png;base64,"), value
            if name == "href":
                assert (value or "").startswith("#"), value
    # outside the inline images (base64 may contain "//"), no URL of any kind
    stripped = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", src)
    assert not re.search(r"(?i)\b(?:https?|ftp|file|wss?):", stripped)
    assert "//" not in stripped
    assert "www." not in stripped


def test_missing_data_is_shown_with_its_reason(nan_html: Path) -> None:
    # the NaN fixture is profiled without a loss: no loss-gradient decay, no Monitor
    _, page = _parse(nan_html)
    (fig,) = [f for f in page.figures if f["attrs"].get("data-figure") == "decay-loss"]
    assert fig["attrs"].get("data-missing") == "true"
    assert fig["imgs"] == []
    assert "not available" in fig["text"] and "loss_fn" in fig["text"]
    present = {
        f["attrs"]["data-figure"] for f in page.figures if not f["attrs"].get("data-missing")
    }
    # one layer: its section keeps every figure; the mechanism picture is on the first
    # screen; the vanilla gate views rest on the finite steps too (NaN φ′ left out)
    assert present == set(LAYER_FIGURES) - {"decay-loss"} | {
        "mechanism",
        "gate-distributions",
        "repeated-factor",
    }
    ((_, training),) = _section(page, **{"data-section": "training"})
    assert "not available" in training and "Monitor" in training


def test_nan_states_are_flagged(
    nan_profile: tuple[gs.Profile, int, int, int], nan_html: Path, tmp_path: Path
) -> None:
    prof, count, t, b = nan_profile
    assert count > 0
    _, page = _parse(nan_html)
    alerts = [a for tag, a in page.tags if a.get("data-alert") == "nonfinite"]
    assert len(alerts) == 2  # on the first screen and in the layer's section
    ((_, summary),) = _section(page, id="summary")
    want = f"{count} recorded state(s) hold NaN/inf, the first at step t = {t} of sequence {b}"
    assert want in _squash(summary)
    assert f"⚠ {count} (step {t})" in _squash(summary)
    # the figures still render: finite steps are analysed, the rest is excluded
    assert all(
        f["imgs"] or f["attrs"].get("data-interactive")
        for f in page.figures
        if not f["attrs"].get("data-missing")
    )

    _tool("chromium")
    pdf = gs.report(prof, tmp_path / "nan.pdf")
    text = _squash(
        subprocess.run(
            [_tool("pdftotext"), str(pdf), "-"], capture_output=True, text=True, check=True
        ).stdout
    )
    assert want in text


# --------------------------------------------------------------------------- PDF
# The PDF is printed from the HTML's print rendering by headless Chromium; the page-level
# checks (bookmarks, tables kept whole, page counts) are in tests/test_pdf.py.
def _pdf_pages(path: Path, *layout: str) -> list[str]:
    out = subprocess.run(
        [_tool("pdftotext"), *layout, str(path), "-"], capture_output=True, text=True, check=True
    ).stdout
    pages = out.split("\f")
    return pages[:-1] if pages and not pages[-1].strip() else pages


def test_pdf_pages_and_searchable_text(cmp_pdf: Path, profiles: dict[str, gs.Profile]) -> None:
    info = subprocess.run(
        [_tool("pdfinfo"), str(cmp_pdf)], capture_output=True, text=True, check=True
    ).stdout
    n_pages = int(re.search(r"^Pages:\s+(\d+)", info, re.M).group(1))
    pages = _pdf_pages(cmp_pdf)
    assert len(pages) == n_pages
    # the short PDF (default): the first screen (summary, comparison, mechanism), verdicts
    assert "Does the gradient survive?" in pages[0]
    assert "Side by side" in pages[0]
    assert "The mechanism: the gradient highway" in "".join(pages[:2])
    assert n_pages <= 3
    text = _squash("\n".join(pages))
    assert "This report: generated" in text and f"gradscope {gs.__version__}" in text
    for label, prof in profiles.items():
        (d,) = prof.diagnosis.layers
        assert label in text
        assert _squash(d.gates.short()) in text  # the short verdict
        assert f"{F.REGIME_SYMBOLS[d.regime]} {d.regime}" in text
        assert _rate(d.decay["state"].rate) in text
        # the per-layer sections are the detail, left out by default
        assert "The numbers behind the verdict" not in text
    fonts = subprocess.run(
        [_tool("pdffonts"), str(cmp_pdf)], capture_output=True, text=True, check=True
    ).stdout
    assert "Type 3" not in fonts and "TrueType" in fonts


def test_pdf_page_images_are_not_blank(cmp_pdf: Path, tmp_path: Path) -> None:
    subprocess.run(
        [_tool("pdftoppm"), "-png", "-r", "30", str(cmp_pdf), str(tmp_path / "p")], check=True
    )
    shots = sorted(tmp_path.glob("p-*.png"))
    assert 1 <= len(shots) <= 3
    for shot in shots:
        with Image.open(shot) as im:
            a = np.asarray(im.convert("L"), dtype=float)
        assert im.width > im.height  # A4 landscape
        assert a.std() > 5 and (a < 200).mean() > 0.005


# --------------------------------------------------------------------------- writing
def test_atomic_write_success_and_failure(
    profiles: dict[str, gs.Profile], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    prof = profiles["GRU"]
    out = gs.report(gs.Diagnosis([]), tmp_path / "r.html")
    assert out == tmp_path / "r.html"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.html"]
    mask = os.umask(0)
    os.umask(mask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~mask

    out.write_text("previous report")
    from gradscope.reporting.writers import figure_html as html_mod
    from gradscope.reporting.writers import pdf as pdf_mod

    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("render failed")

    monkeypatch.setattr(html_mod, "figure_png", boom)
    with pytest.raises(RuntimeError, match="render failed"):
        gs.report(prof, out)
    assert out.read_text() == "previous report"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.html"]

    # the PDF fails after part of it went to the temporary file
    def half_then_boom(html: str, path: Path, browser: str | None = None) -> None:
        Path(path).write_bytes(b"%PDF-1.4 half a report")
        raise RuntimeError("render failed")

    monkeypatch.setattr(pdf_mod, "print_pdf", half_then_boom)
    monkeypatch.setattr(pdf_mod, "engine", lambda: "chromium")
    with pytest.raises(RuntimeError, match="render failed"):
        gs.report(prof, tmp_path / "r.pdf")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.html"]


def test_bad_suffix_and_bad_input(profiles: dict[str, gs.Profile], tmp_path: Path) -> None:
    prof = profiles["LSTM"]
    for name in ("r.txt", "r", "r.html.bak", "r.svg"):
        with pytest.raises(GradscopeError, match=r"suffix.*\.html.*\.pdf"):
            gs.report(prof, tmp_path / name)
    with pytest.raises(GradscopeError, match="int"):
        gs.report(42, tmp_path / "r.html")
    with pytest.raises(GradscopeError, match="empty"):
        gs.report({}, tmp_path / "r.html")
    with pytest.raises(GradscopeError, match="'a'"):
        gs.report({"a": {"b": prof}}, tmp_path / "r.html")
    with pytest.raises(GradscopeError):
        gs.report(tmp_path / "missing.npz", tmp_path / "r.html")
    assert list(tmp_path.iterdir()) == []
    # the suffix is case-insensitive (an empty diagnosis: nothing to draw, but a valid report)
    out = gs.report(gs.Diagnosis([]), tmp_path / "R.HTML")
    assert "No layer was analysed" in out.read_text(encoding="utf-8")


def test_saved_trace_input(profiles: dict[str, gs.Profile], tmp_path: Path) -> None:
    prof = profiles["vanilla RNN"]
    path = prof.trace.save(tmp_path / "run.npz")
    _, page = _parse(gs.report({"saved": str(path)}, tmp_path / "m.html"))
    ((attrs, text),) = _section(page, **{"data-section": "run"})
    assert attrs["data-run"] == "saved" and "trace file run.npz" in text
    (d,) = prof.diagnosis.layers
    # the saved trace is re-analysed to the same verdict
    assert f"{F.REGIME_SYMBOLS[d.regime]} {d.regime}" in text
    assert _rate(d.decay["state"].rate) in text


def test_monitor_history_and_saved_history(tmp_path: Path) -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = nn.LSTM(I, 8)
            self.head = nn.Linear(8, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.rnn(x)[0][-1])

    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = Net()
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        with gs.Monitor(model, every=3, analyze=True) as monitor:
            for _ in range(7):
                xb = torch.randn(20, B, I)
                loss = (model(xb) - xb[0, :, :1]).pow(2).mean()
                opt.zero_grad()
                loss.backward()
                monitor.step()
                opt.step()
    n = len(monitor.history.steps)
    assert n == 3

    _, page = _parse(gs.report(monitor, tmp_path / "mon.html"))
    figs = {f["attrs"]["data-figure"]: f for f in page.figures}
    for key in ("training-heatmap", "training-rate", *LAYER_FIGURES):
        assert key in figs and not figs[key]["attrs"].get("data-missing"), key

    # a saved history on its own: training views only, the full analysis shown as missing
    saved = monitor.history.save(tmp_path / "hist.npz")
    _tool("chromium")
    # (a history has no analysed layer: even the short PDF shows its training views)
    pages = _pdf_pages(gs.report(saved, tmp_path / "hist.pdf"))
    text = _squash("\n".join(pages))
    assert "training history file hist.npz" in text
    assert "Full analysis: not available" in text
    # both training figures, found by their captions (the titles are drawn in the images)
    from gradscope.reporting.content.panels import TRAINING_PANELS

    (name,) = monitor.history.names
    for spec in TRAINING_PANELS:  # in the family's words where the panel has them
        words = None if spec.words is None else spec.words((monitor.history, name))
        assert _squash(words or spec.caption)[:60] in text, spec.key
    assert "forget gate f" in text and "update gate z (GRU)" not in text  # an LSTM's words


# --------------------------------------------------------------------------- figures
def _tick_log10(label: str) -> float:
    """log10 of the value a tick label stands for (exact for 10^k even far below 1e-308)."""
    label = label.replace("−", "-")
    m = re.fullmatch(r"\$(?:([\d.]+)\\times)?10\^\{(-?\d+)\}\$", label)
    if m:
        return math.log10(float(m.group(1) or 1.0)) + int(m.group(2))
    return math.log10(float(label))


@pytest.mark.parametrize(
    ("lo", "hi"), [(-800.0, 2.0), (-3.3, 0.1), (-1.2, 0.3), (-0.05, 0.02), (10.0, 10.4)]
)
def test_log10_ticks_label_the_values_they_sit_at(lo: float, hi: float) -> None:
    pos, labels = F.log10_ticks(lo, hi)
    assert 2 <= len(pos) <= 9
    assert np.all(np.diff(pos) > 0)
    assert pos.min() >= lo - 1e-9 and pos.max() <= hi + 1e-9
    for p, label in zip(pos, labels):
        # a label may only round the value it stands for (tick labels keep 3+ digits)
        assert abs(_tick_log10(label) - p) < 1e-6, (p, label)


def test_decay_figure_survives_underflow_and_draws_the_fit() -> None:
    lags = np.arange(400)
    median = -5.0 * lags  # e^-1995: zero in float64, finite in log space
    band = np.stack([median - 1, median + 1])
    fig = F.decay_figure(
        lags, median, band, rate=-5.0, intercept=0.0, fit_lags=(1, 399), regime="vanishing"
    )
    ax = fig.axes[0]
    lo, hi = ax.get_ylim()
    assert math.isfinite(lo) and lo <= median[-1] / math.log(10) and hi >= 0
    lines = {line.get_label(): line for line in ax.get_lines()}
    fit = next(line for label, line in lines.items() if label.startswith("fit"))
    xs, ys = fit.get_data()
    np.testing.assert_allclose(ys, -5.0 * np.asarray(xs) / math.log(10), rtol=1e-12)
    assert "vanishing" in ax.get_title()
    fig.savefig(io.BytesIO(), format="png", dpi=40)


def test_empty_data_gives_a_panel_that_says_why() -> None:
    nan = np.full(10, np.nan)
    figs = [
        F.decay_figure(
            np.arange(10), nan, None, rate=nan[0], intercept=nan[0], fit_lags=None, regime=None
        ),
        F.eigenvalue_figure(np.array([], dtype=complex)),
        F.singular_value_figure(np.full((3, 2, 4), np.nan)),
        F.lyapunov_spectrum_figure(np.array([])),
        F.training_heatmap_figure(np.zeros((3, 5)), np.arange(3)),
    ]
    for fig in figs:
        (ax,) = fig.axes
        texts = [t.get_text() for t in ax.texts]
        assert any(t.startswith("No data:") for t in texts)
        assert len(ax.get_lines()) == len(ax.collections) == len(ax.images) == 0


def test_eigenvalues_scatter_when_few_density_when_many() -> None:
    rng = np.random.default_rng(0)
    few = F.eigenvalue_figure(rng.normal(size=50) + 1j * rng.normal(size=50))
    many = F.eigenvalue_figure(rng.normal(size=5000) + 1j * rng.normal(size=5000))
    ax_few, ax_many = few.axes[0], many.axes[0]
    assert any(isinstance(c, PathCollection) for c in ax_few.collections)
    hexes = [c for c in ax_many.collections if isinstance(c, PolyCollection)]
    assert len(hexes) == 1 and hexes[0].get_array().sum() == 5000
    for ax in (ax_few, ax_many):
        circle = next(line for line in ax.get_lines() if "unit circle" in line.get_label())
        cx, cy = circle.get_data()
        np.testing.assert_allclose(np.hypot(cx, cy), 1.0, rtol=1e-12)


def test_training_heatmap_on_synthetic_history() -> None:
    steps = np.array([0, 50, 100, 150, 200])
    t = np.arange(31)
    norms = np.exp(-0.2 * (30 - t))[None, :] * (1.0 + np.arange(5))[:, None]
    norms[2, 5] = 0.0  # an exact zero has no logarithm: shown as missing, not as -inf
    fig = F.training_heatmap_figure(norms, steps)
    ax = fig.axes[0]
    (im,) = ax.images
    data = im.get_array()
    assert data.shape == (5, 31)
    assert data.mask[2, 5] and data.mask.sum() == 1
    ok = ~data.mask
    with np.errstate(divide="ignore"):
        expected = np.log10(norms)
    np.testing.assert_allclose(data[ok], expected[ok], rtol=1e-12)
    assert [tick.get_text() for tick in ax.get_yticklabels()] == [str(s) for s in steps]
    assert "grey" in ax.get_title()


def test_comparison_figure_names_every_model_and_regime() -> None:
    lags = np.arange(20)
    curves = {
        "vanilla": F.Curve(lags, -0.5 * lags, None, -0.5, "vanishing"),
        "LSTM": F.Curve(
            lags, -0.05 * lags, np.stack([-0.06 * lags, -0.04 * lags]), -0.05, "vanishing"
        ),
        "GRU": F.Curve(lags, 0.0 * lags, None, 0.0, "neutral"),
    }
    ax = F.comparison_figure(curves).axes[0]
    labels = [line.get_label() for line in ax.get_lines()]
    assert len(labels) == 3
    for (name, c), label in zip(curves.items(), labels):
        assert label.startswith(name) and c.regime in label
    styles = {line.get_linestyle() for line in ax.get_lines()}
    assert len(styles) == 3  # told apart by line style, not by colour alone


def test_training_rate_figure_marks_regimes_and_skips_unanalysed_steps() -> None:
    steps = np.array([0, 10, 20, 30])
    rates = np.array([-0.3, np.nan, -0.1, 0.05])  # step 10 was not analysed
    regimes = ["vanishing", "", "vanishing", "exploding"]
    loss = np.array([-0.35, -0.3, -0.12, 0.04])
    ax = F.training_rate_figure(steps, rates, regimes, loss_rates=loss).axes[0]
    points = {c.get_label(): c.get_offsets() for c in ax.collections if c.get_label()}
    np.testing.assert_array_equal(points["state: ▼ vanishing"], [[0, -0.3], [20, -0.1]])
    np.testing.assert_array_equal(points["state: ▲ exploding"], [[30, 0.05]])
    (loss_line,) = [line for line in ax.get_lines() if "loss" in line.get_label()]
    np.testing.assert_array_equal(loss_line.get_ydata(), loss)
    # only the loss rate recorded: still a figure, not an empty panel
    ax = F.training_rate_figure(steps, np.full(4, np.nan), None, loss_rates=loss).axes[0]
    assert not any(t.get_text().startswith("No data") for t in ax.texts)


# --------------------------------------------------------------------------- ids and privacy
class _Twins(nn.Module):
    """Two RNNs whose names slug alike: ``x-y`` and ``x y``."""

    def __init__(self) -> None:
        super().__init__()
        self.add_module("x-y", nn.RNN(I, 4))
        self.add_module("x y", nn.RNN(4, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = getattr(self, "x-y")(x)
        return getattr(self, "x y")(h)[0]


class _TwinHistory:
    """A history of two layers named ``x-y`` and ``x y`` (the protocol of gs.report)."""

    names = ("x-y", "x y")
    steps = np.array([0, 5])

    def grad_norms(self, name: str) -> np.ndarray:
        return np.exp(-np.arange(9.0))[None, :].repeat(2, axis=0) * (1 + self.names.index(name))


def test_ids_are_unique_and_links_reach_their_section(tmp_path: Path) -> None:
    """Regression: names ``x-y`` and ``x y`` (runs, layers, history layers) shared ids."""
    from types import SimpleNamespace

    with torch.random.fork_rng():
        torch.manual_seed(0)
        prof = gs.profile(_Twins(), torch.randn(8, 2, I), analysis={"progress": False})
    assert [str(d.name) for d in prof.diagnosis.layers] == ["x-y.l0", "x y.l0"]
    monitor = SimpleNamespace(history=_TwinHistory(), diagnosis=prof)
    _, page = _parse(gs.report({"x-y": monitor, "x y": prof}, tmp_path / "ids.html"))
    ids = [a["id"] for _, a in page.tags if a.get("id") is not None]
    assert len(ids) == len(set(ids)) and len(ids) > 20
    # every link lands on an element; a layer's link on that layer's section of its run
    runs = {a["id"]: a["data-run"] for a, _ in _section(page, **{"data-section": "run"})}
    assert sorted(runs.values()) == ["x y", "x-y"]
    layers = {a["id"]: a["data-layer"] for a, _ in _section(page, **{"data-section": "layer"})}
    assert len(layers) == 4 and sorted(set(layers.values())) == ["x y.l0", "x-y.l0"]
    for tag, a in page.tags:
        if tag == "a" and (a.get("href") or "").startswith("#"):
            assert a["href"][1:] in ids, a["href"]
    rows = [a for tag, a in page.tags if tag == "tr" and a.get("data-layer")]
    links = [a["href"][1:] for tag, a in page.tags if tag == "a" and "--" in (a.get("href") or "")]
    summary = links[-len(rows) :]  # the verdict table, the last links of the first screen
    assert [layers[i] for i in summary] == [r["data-layer"] for r in rows]
    assert [runs[i.split("--")[0]] for i in summary] == ["x-y", "x-y", "x y", "x y"]
    # the two history layers' training figures have ids of their own too
    training = [a["id"] for tag, a in page.tags if tag == "figure" and "--training--" in a["id"]]
    assert len({i.rsplit("--", 1)[0] for i in training}) == 2 and len(training) >= 4


def test_reports_name_no_machine_unless_asked(
    profiles: dict[str, gs.Profile], tmp_path: Path
) -> None:
    """Privacy: the platform string and absolute paths only with ``environment=True``."""
    import platform

    prof = profiles["vanilla RNN"]
    saved = prof.trace.save(tmp_path / "in" / "run.npz").resolve()
    machine = platform.platform()
    default = [
        gs.report({"saved": saved, "live": prof}, tmp_path / "out" / "r.html"),
        prof.report(tmp_path / "out" / "p.html"),
    ]
    for path in default:
        src = path.read_text(encoding="utf-8")
        assert machine not in src and str(tmp_path) not in src, path.name
        assert f"<td>torch</td><td>{torch.__version__}</td>" in src  # versions are kept
    _, page = _parse(default[0])
    assert "trace file run.npz" in "".join(page.text)  # the file's name, not where it is
    asked = gs.report(saved, tmp_path / "out" / "e.html", environment=True)
    src = asked.read_text(encoding="utf-8")
    assert machine in src and str(saved) in src
    assert machine in prof.report(tmp_path / "out" / "pe.html", environment=True).read_text()


def test_long_names_stay_inside_the_figures() -> None:
    """A 2000-character name: the titles and legends that show it still fit the figure."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    lags = np.arange(6.0)
    names = ["LSTM · encoder.lstm.l1_reverse", "z" * 2000, "\u202eevil $x$"]
    carry = np.stack([-0.1 * lags] * 5, axis=1)
    figs = {
        "mechanism": F.mechanism_figure(
            {n: F.Mechanism(lags, -0.3 * lags, "vanishing", "f", lags, carry) for n in names}
        ),
        "comparison": F.comparison_figure(
            {n: F.Curve(lags, -0.3 * lags, None, -0.3, "vanishing") for n in names}
        ),
    }
    for what, fig in figs.items():
        canvas = FigureCanvasAgg(fig)
        canvas.draw()
        box = fig.bbox
        texts = [ax.title for ax in fig.axes] + [
            t for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts()
        ]
        shown = [t for t in texts if t.get_text()]
        assert len(shown) >= len(names), what
        for t in shown:
            ext = t.get_window_extent(canvas.get_renderer())
            assert box.x0 - 1 <= ext.x0 and ext.x1 <= box.x1 + 1, (what, t.get_text()[:50])
        joined = " ".join(t.get_text() for t in shown)
        assert "LSTM · encoder.lstm.l1_reverse" in joined  # a usual name is shown whole
        assert "[U+202E]evil" in joined and "\u202e" not in joined


@pytest.mark.parametrize(
    ("cls", "fill"), [(nn.LSTM, math.nan), (nn.GRU, math.inf), (nn.RNN, math.nan), (nn.RNN, 0.0)]
)
def test_a_report_of_non_finite_or_zero_weights_renders_with_notes(
    cls: type[nn.Module], fill: float, tmp_path: Path
) -> None:
    """Regression: NaN/inf weights crashed the gate view (and then the mechanism figure's
    colour), zero weights divided by ‖W_hh‖ = 0; empty gate plots were drawn without a note."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = cls(I, 4)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(fill)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # numpy: "All-NaN slice encountered"
        prof = gs.profile(model, torch.randn(8, 2, I), analysis={"progress": False})
        _, page = _parse(gs.report(prof, tmp_path / "r.html", progress=False))
    figs = {f["attrs"]["data-figure"]: f for f in page.figures}
    assert {"mechanism", "decay-state", "gate-distributions"} <= set(figs)
    if math.isfinite(fill):
        return  # zero weights: finite, the report just has to exist
    for key, fig in figs.items():  # nothing finite: every figure is a box saying why
        assert fig["attrs"].get("data-missing") == "true", key
        assert "not available" in fig["text"], key
    gated = cls is not nn.RNN  # a vanilla RNN's gate view is not computed at all (its reason)
    for key in ("mechanism", "gate-share", "gate-distributions") if gated else ():
        assert "no finite" in figs[key]["text"], key


def test_a_history_without_timesteps_says_so() -> None:
    fig = F.training_heatmap_figure(np.zeros((3, 0)), np.arange(3))
    assert [t.get_text() for t in fig.axes[0].texts] == [
        "No data: the sampled steps hold no timestep"
    ]


def test_blank_run_names_still_get_a_link_text(
    profiles: dict[str, gs.Profile], tmp_path: Path
) -> None:
    """Regression: a run named "" had an empty (unclickable) table-of-contents link."""
    prof = profiles["GRU"]
    _, page = _parse(gs.report({"": prof, " ": prof}, tmp_path / "blank.html", progress=False))
    runs = [a["data-run"] for a, _ in _section(page, **{"data-section": "run"})]
    assert runs == ["(unnamed)", "(unnamed)"]

    class Links(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.texts: dict[str, str] = {}
            self._href: str | None = None

        def handle_starttag(self, tag: str, attrs: list) -> None:
            self._href = dict(attrs).get("href") if tag == "a" else None

        def handle_data(self, data: str) -> None:
            if self._href:
                self.texts[self._href] = self.texts.get(self._href, "") + data

    links = Links()
    links.feed((tmp_path / "blank.html").read_text(encoding="utf-8"))
    assert len(links.texts) >= 4 and all(t.strip() for t in links.texts.values())
