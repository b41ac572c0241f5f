"""What a notebook shows: ``_repr_html_`` of Profile, Diagnosis, History; first_screen_html."""

from __future__ import annotations

import re

import pytest
import torch

import gradscope as gs
from gradscope.reporting import first_screen_html
from gradscope.reporting.notebook import SCOPE, scoped_css

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: threads only spin


@pytest.fixture(scope="module")
def prof():
    torch.manual_seed(0)
    return gs.profile(torch.nn.LSTM(3, 5, num_layers=2), torch.randn(20, 2, 3),
                      analysis={"progress": False})  # fmt: skip


@pytest.fixture(scope="module")
def history():
    torch.manual_seed(0)
    model = torch.nn.GRU(2, 4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gs.Monitor(model, every=2, analyze=True) as monitor:
        for _ in range(4):
            out, _ = model(torch.randn(10, 3, 2))
            opt.zero_grad()
            out.pow(2).mean().backward()
            monitor.step()
            opt.step()
    return monitor.history


def _rows(html: str) -> dict[str, str]:
    return dict(re.findall(r"<tr data-layer='([^']+)'>(.*?)</tr>", html))


@pytest.mark.parametrize("which", ["profile", "diagnosis"])
def test_repr_html_is_the_verdict_table(prof, which) -> None:
    obj = prof if which == "profile" else prof.diagnosis
    html = obj._repr_html_()
    rows = _rows(html)
    assert list(rows) == ["lstm.l0", "lstm.l1"]
    for d in prof.diagnosis:
        assert f"regime-{d.regime}" in rows[d.name]  # the badge of its own regime
        assert f"{d.decay['state'].half_life:.3g}" in rows[d.name]
    assert html.startswith(f'<div class="{SCOPE}"><style>') and html.endswith("</div>")
    assert "<img" not in html and "href='#" not in html  # no figure, no dead links
    assert f"gradscope {which.capitalize()}: 2 recurrent layers" in html


def test_history_repr_html_has_the_latest_step(history) -> None:
    html = history._repr_html_()
    rows = _rows(html)
    e = history.entry("gru.l0")
    assert list(rows) == ["gru.l0"] and f"regime-{e['regime']}" in rows["gru.l0"]
    assert f"{e['rate']:+.4f}" in rows["gru.l0"]
    assert "2 sampled steps (0 … 2); the numbers of step 2" in html
    assert "No layer was analysed" not in html


def test_empty_objects_say_so() -> None:
    assert "Nothing to show: no recurrent layer was recorded" in gs.Diagnosis([])._repr_html_()
    assert "no sampled step yet" in gs.History()._repr_html_()


def test_first_screen_html_compares_without_drawing_unless_asked(prof) -> None:
    html = first_screen_html({"a": prof, "b": prof.diagnosis}, figures=False)
    assert 'data-section="comparison"' in html and "<img" not in html
    assert "figures=True" in html  # says where the figure is
    assert len(re.findall(r"<tr data-layer=", html)) == 4  # 2 runs × 2 layers
    drawn = first_screen_html({"a": prof, "b": prof.diagnosis}, figures=True)
    assert drawn.count("<img") == 2  # the decay comparison and the mechanism picture


def test_css_is_scoped_to_the_fragment() -> None:
    css = scoped_css()
    rules = re.findall(r"([^{}]+)\{", css)
    assert len(rules) > 20
    for selectors in rules:
        for sel in selectors.split(","):
            assert sel.strip().startswith(f".{SCOPE}"), sel
    assert "@media" not in css and "body" not in css


def test_first_screen_without_figures_says_in_one_line_what_it_leaves_out(prof) -> None:
    html = first_screen_html({"a": prof, "b": prof.diagnosis}, figures=False)
    assert "not available" not in html and "data-missing" not in html  # no empty boxes
    (line,) = re.findall(r"<p class='note' data-left-out>(.*?)</p>", html)
    assert "the decay comparison and the mechanism picture" in line


def test_a_layer_diagnosis_shows_its_verdict_and_numbers(prof) -> None:
    from html import unescape

    from gradscope.reporting.content.numbers import layer_numbers
    from gradscope.reporting.notebook import layer_html

    d = prof.diagnosis[1]
    html = layer_html(d)
    assert d._repr_html_() == html
    assert html.startswith(f'<div class="{SCOPE}"><style>') and html.endswith("</div>")
    assert "<img" not in html and "<script" not in html
    text = unescape(re.sub(r"<[^>]+>", " ", html))
    assert " ".join(d.verdict.split()) in " ".join(text.split())
    assert f"regime-{d.regime}" in html and d.name in text
    for n in layer_numbers(d):
        assert n.label in text and n.value in text
    for advice in d.advice:
        assert advice in text


def test_a_layer_diagnosis_has_a_short_text_repr(prof) -> None:
    for d in prof.diagnosis:
        st = d.decay["state"]
        text = repr(d)
        assert len(text) < 2000 and "\n" not in text
        assert text.startswith(f"LayerDiagnosis({d.name!r}, {d.kind}, T={d.T} B={d.B} D={d.D}")
        assert f": {d.regime}, rate {st.rate:+.4f}/step" in text
        assert f"λ₁ {d.lyapunov.exponents[0]:+.4f}" in text
        assert d.verdict.split(". ")[0][:60] in text
