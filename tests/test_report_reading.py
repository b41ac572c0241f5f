"""What a reader of a comparison report trips on (#27): each fixed, checked as a reader would.

A one-line headline from the decays' regimes and horizons; each analysis shown once (a
Monitor's latest step beside the other runs of its model); one colour per model and one dash
per stage in every figure and table; the metadata collapsed on screen; the training gate
panel's legend clear of its x label; a first PDF page that is used. Expected values come from
the diagnoses (regime, horizon, T) and the labels, never from the rendered report.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from PIL import Image
from torch import nn

import gradscope as gs
from gradscope.reporting import figures as F
from gradscope.reporting import runs_of
from gradscope.reporting.content.build import build_document
from gradscope.reporting.content.headline import sentence
from gradscope.reporting.writers.html import render

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: threads only spin
MODELS = {"RNN": nn.RNN, "LSTM": nn.LSTM, "GRU": nn.GRU}


class _History:
    """A Monitor history (the protocol reports read): two sampled steps of one layer."""

    def __init__(self, name: str) -> None:
        self.names = [name]
        self.steps = np.array([0, 10])

    def grad_norms(self, name: str) -> np.ndarray:
        return np.exp(-np.arange(13.0))[None, :].repeat(2, axis=0)


@pytest.fixture(scope="module")
def profiles() -> dict[str, dict[str, gs.Profile]]:
    """Per model an "init" and a "trained" profile (two seeds stand in for the two stages)."""
    x = torch.randn(12, 2, 3, generator=torch.Generator().manual_seed(0))
    out: dict[str, dict[str, gs.Profile]] = {}
    for name, cls in MODELS.items():
        out[name] = {}
        for stage, seed in (("trained", 0), ("init", 1)):
            with torch.random.fork_rng():
                torch.manual_seed(seed)
                model = cls(3, 8)
            out[name][stage] = gs.profile(model, x, analysis={"progress": False})
    return out


@pytest.fixture
def no_pictures(monkeypatch: pytest.MonkeyPatch) -> None:
    """A blank PNG for every hand-drawn figure: these tests read the page's text only."""
    import io

    from gradscope.reporting.content.document import Panel
    from gradscope.reporting.writers import figure_html

    buf = io.BytesIO()
    Image.new("RGB", (60, 40), "white").save(buf, format="PNG")
    monkeypatch.setattr(Panel, "render", lambda self, ax=None: SimpleNamespace(clear=list))
    monkeypatch.setattr(figure_html, "figure_png", lambda fig: buf.getvalue())


def _entries(profiles: dict, monitor: bool = True) -> dict:
    out = {}
    for name, stages in profiles.items():
        for stage, prof in stages.items():
            out[f"{name} · {stage}"] = prof
        if monitor:  # a Monitor: the training history and its latest step, the trained model
            layer = stages["trained"].diagnosis.layers[0].name
            out[f"{name} · training"] = SimpleNamespace(
                history=_History(layer), diagnosis=stages["trained"]
            )
    return out


# --------------------------------------------------------------------------- headline
def _layer(regime: str, horizon: float, t: int = 50, rate: float = -0.1) -> SimpleNamespace:
    decay = SimpleNamespace(regime=regime, horizon=horizon, rate=rate)
    return SimpleNamespace(decay={"state": decay}, T=t)


def test_headline_says_who_keeps_and_who_loses_the_gradient() -> None:
    entries = [
        ("LSTM", _layer("neutral", float("inf"))),
        ("GRU", _layer("vanishing", 320.0)),  # vanishing, but still above 0.1% at T: fades
        ("vanilla RNN", _layer("vanishing", 12.4)),
        ("RNN init", _layer("vanishing", 1.54)),
        ("wild", _layer("exploding", float("inf"), rate=0.25)),
        ("broken", SimpleNamespace(decay={}, T=50)),
    ]
    assert sentence(entries) == (
        "LSTM keeps its gradient over all 50 steps; GRU reaches all 50, fading at −0.1 per "
        "step; vanilla RNN loses it after 12 steps, RNN init after 1.5; wild's gradient grows "
        "going back (+0.25 per step); broken: no verdict."
    )
    assert sentence(entries[2:3]) == "vanilla RNN loses its gradient after 12 steps."
    assert sentence([]) == ""


def test_the_report_opens_with_the_headline(profiles: dict, no_pictures: None) -> None:
    doc = build_document(runs_of(_entries(profiles, monitor=False)), "t", "now", {})
    page = render(doc)
    (line,) = re.findall(r"<p class='headline' data-headline[^>]*>(.*?)</p>", page)
    assert page.index("data-headline") < page.index('id="comparison"')
    for name, stages in profiles.items():
        for stage, prof in stages.items():
            (d,) = prof.diagnosis.layers
            st = d.decay["state"]
            keeps = st.regime == "neutral" or st.horizon >= d.T
            label = f"{name} · {stage}"
            assert label in line
            if st.regime == "vanishing" and not keeps:
                # "X loses it after h", "…, X after h": the horizon, 2 significant digits
                assert re.search(
                    rf"{re.escape(label)} (loses \w+ )?(gradient )?after "
                    rf"{F.fmt_value(st.horizon, 2)}\b",
                    line,
                ), (label, line)


# --------------------------------------------------------------------------- shown once
def test_a_monitors_latest_step_is_shown_once(profiles: dict) -> None:
    entries = _entries(profiles)
    doc = build_document(runs_of(entries), "t", "now", {})
    compared = [lab for lab in entries if not lab.endswith("training")]
    assert [r.run for r in doc.summary] == compared
    assert [row[0] for row in doc.comparison_table[1:]] == compared
    assert list(doc.comparison.kwargs["curves"]) == compared
    assert list(doc.mechanism.kwargs["entries"]) == compared
    for p in doc.shared:
        kw = p.kwargs or {}  # (a figure no entry has data for is missing: None)
        assert set(kw.get("curves", kw.get("entries", {}))) <= set(compared)
    for name in MODELS:
        assert f"{name} · training" in doc.shown_once
    # the Monitor's run keeps its section: its training views and its whole analysis
    (run,) = [r for r in doc.runs if r.label == "LSTM · training"]
    assert run.training and len(run.layers) == 1
    keys = {p.key for p in run.layers[0].panels}
    assert {"decay-state", "spectral-time", "lyapunov-spectrum"} <= keys  # not in #shared
    # a Monitor of a model no other run has is compared as before
    alone = {"RNN · init": profiles["RNN"]["init"], "LSTM · training": entries["LSTM · training"]}
    doc = build_document(runs_of(alone), "t", "now", {})
    assert [r.run for r in doc.summary] == list(alone) and doc.shown_once is None


# --------------------------------------------------------------------------- colours
def test_colour_names_the_model_and_dash_the_stage_everywhere(
    profiles: dict, no_pictures: None
) -> None:
    doc = build_document(runs_of(_entries(profiles, monitor=False)), "t", "now", {})
    chart = doc.comparison.chart()
    lines = {s.where[1]: (s.color, s.dash) for s in chart.series if s.kind == "line"}
    model = {lab: lab.split(" · ")[0] for lab in lines}
    stage = {lab: lab.split(" · ")[1] for lab in lines}
    for a in lines:
        for b in lines:
            assert (lines[a][0] == lines[b][0]) == (model[a] == model[b]), (a, b)
            assert (lines[a][1] == lines[b][1]) == (stage[a] == stage[b]), (a, b)
    # the same look in the shared overlays, the small multiples' titles and the tables
    (overlay,) = [p for p in doc.shared if p.key == "decay-input"]
    shared = {
        s.where[1]: (s.color, s.dash)
        for s in overlay.spec.chart(**overlay.kwargs).series
        if s.kind == "line"
    }
    assert shared == lines
    (multiples,) = [p for p in doc.shared if p.key == "spectral-time"]
    assert multiples.kwargs["colours"] == {lab: c for lab, (c, _) in lines.items()}
    assert {r.run: (r.color, r.dash) for r in doc.summary} == lines
    page = render(doc)
    for lab, (colour, _) in lines.items():
        row = re.search(
            rf"<td class='name'>(<svg class=\"swatch\"[^<]*<line[^>]*/></svg>)"
            rf"<a href='#[^']*'>{re.escape(lab)}</a>",
            page,
        )
        assert row and f'stroke="{colour}"' in row.group(1), lab


# --------------------------------------------------------------------------- metadata
def test_metadata_is_collapsed_on_screen_and_open_on_paper(
    profiles: dict, no_pictures: None
) -> None:
    doc = build_document(runs_of(_entries(profiles, monitor=False)), "t", "now", {"torch": "x"})
    for media, opened in (("screen", False), ("print", True)):
        page = render(doc, media=media, detail=True)
        meta = page[page.index('id="metadata"') :]
        head = re.search(r"<details class='meta'( open)?><summary>([^<]*)</summary>", meta)
        assert head and bool(head.group(1)) == opened, media
        n = len(doc.common_meta) + sum(len(r.meta) for r in doc.runs) + 1 + len(doc.meta)
        assert f"({n} rows)" in head.group(2)
        assert meta.index("<table class='meta'>") > head.end()  # every table inside it
        assert meta.count("<tr>") == n


# --------------------------------------------------------------------------- gate legend
@pytest.mark.parametrize("gate", ["f", "φ'"])
def test_the_gate_panels_legend_leaves_its_x_label_readable(gate: str) -> None:
    x = np.arange(0.0, 600.0, 60.0)
    med = np.full(x.size, 0.95)
    extra = (
        dict(
            log_carry={10: np.log(np.full(x.size, 0.6)), 100: np.log(np.full(x.size, 0.01))},
            share=np.where(np.arange(x.size) % 3 == 0, 0.4, np.nan),
        )
        if gate == "f"
        else dict(factor=np.full(x.size, 1.1), weight_norm=np.full(x.size, 1.6))
    )
    fig = F.training_gates_figure(x, med, med - 0.05, med + 0.03, gate=gate, **extra)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    (legend,) = fig.legends
    box = legend.get_window_extent(renderer)
    label = fig.axes[0].xaxis.label.get_window_extent(renderer)
    assert len(legend.get_texts()) >= 4
    assert box.y1 <= label.y0  # below the x label, not over it
    assert fig.bbox.x0 <= box.x0 and box.x1 <= fig.bbox.x1 and fig.bbox.y0 <= box.y0


# --------------------------------------------------------------------------- PDF page 1
@pytest.mark.browser
def test_the_first_pdf_page_is_used(profiles: dict, tmp_path: Path) -> None:
    """Regression: after a 6-row comparison the figures moved to page 2, page 1 half empty."""
    for tool in ("chromium", "pdftoppm", "pdftotext"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not found")
    pdf = gs.report(_entries(profiles, monitor=False), tmp_path / "r.pdf", progress=False)
    text = subprocess.run(
        ["pdftotext", str(pdf), "-"], capture_output=True, text=True, check=True
    ).stdout.split("\f")
    assert "How far back the gradient reaches" in text[0] and "The mechanism" in text[0]
    subprocess.run(
        ["pdftoppm", "-png", "-r", "30", "-f", "1", "-l", "1", str(pdf), str(tmp_path / "p")],
        check=True,
    )
    (shot,) = tmp_path.glob("p-*.png")
    with Image.open(shot) as im:
        grey = np.asarray(im.convert("L"), dtype=float)
    inked = np.flatnonzero((grey < 200).any(axis=1))
    assert inked.max() > 0.75 * grey.shape[0], (inked.max(), grey.shape)
