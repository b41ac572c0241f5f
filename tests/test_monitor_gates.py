"""The Monitor's gate summaries over training, against gates, carries and path shares computed
here from the module's own weights (copied before each step's optimizer update), inputs and
outputs in float64, with Jacobians by autograd through an LSTM/GRU step written out here; their
History round trip, older history files without them, and the training report's gate panel."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import gradscope as gs
from gradscope.history import GATE_KEYS, SUMMARY_KEYS, History, load_history
from gradscope.reporting.content.gate_panels import TRAINING_GATE_PANEL
from gradscope.reporting.content.panels import make_panel

QS = (0.1, 0.5, 0.9)


def _lstm_step(w, x, h, c):
    a = x @ w["weight_ih_l0"].T + w["bias_ih_l0"] + h @ w["weight_hh_l0"].T + w["bias_hh_l0"]
    i, f, g, o = a.chunk(4, dim=-1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c, torch.sigmoid(f)


def _gru_step(w, x, h):
    gi = x @ w["weight_ih"].T + w["bias_ih"]
    gh = h @ w["weight_hh"].T + w["bias_hh"]
    r = torch.sigmoid(gi.chunk(3, -1)[0] + gh.chunk(3, -1)[0])
    z = torch.sigmoid(gi.chunk(3, -1)[1] + gh.chunk(3, -1)[1])
    n = torch.tanh(gi.chunk(3, -1)[2] + r * gh.chunk(3, -1)[2])
    return (1 - z) * n + z * h, z


def _carry_reference(g: np.ndarray) -> tuple[dict[int, float], float]:
    """Median over units and sequences of ln ∏ g over the last k steps; the 1/e lag."""
    log_c = np.concatenate([np.zeros((1, *g.shape[1:])), np.cumsum(np.log(g[::-1]), axis=0)])
    med = np.median(log_c.reshape(log_c.shape[0], -1), axis=1)
    carry = {k: float(med[k]) if k < len(med) else math.nan for k in (10, 100)}
    below = np.nonzero(med < -1)[0]
    return carry, float(below[0]) if below.size else math.inf


def _share(jacobians: list[torch.Tensor], additive: list[torch.Tensor]) -> float:
    """‖Π A‖ / (‖Π A‖ + ‖Π J − Π A‖) over the whole sequence (J_T ⋯ J_1), spectral norms."""
    P, Pi = torch.eye(jacobians[0].shape[0]), torch.eye(jacobians[0].shape[0])
    for J, A in zip(reversed(jacobians), reversed(additive)):
        P, Pi = P @ J, Pi @ A
    n_pi, n_e = torch.linalg.matrix_norm(Pi, 2), torch.linalg.matrix_norm(P - Pi, 2)
    return float(n_pi / (n_pi + n_e))


def _lstm_reference(w, x, out, seqs):
    T, B, _ = x.shape
    H = w["weight_hh_l0"].shape[1]
    h, c = torch.zeros(B, H), torch.zeros(B, H)
    f, states = [], [(h, c)]
    for t in range(T):
        h, c, ft = _lstm_step(w, x[t], h, c)
        f.append(ft)
        states.append((h, c))
    torch.testing.assert_close(torch.stack([s[0] for s in states[1:]]), out)  # the module's own
    f = torch.stack(f).numpy()
    carry, horizon = _carry_reference(f)
    shares = []
    for b in range(seqs):
        js, adds = [], []
        for t in range(T):

            def step(s, t=t, b=b):
                h2, c2, _ = _lstm_step(w, x[t, b], s[:H], s[H:])
                return torch.cat([h2, c2])

            js.append(torch.func.jacrev(step)(torch.cat([states[t][0][b], states[t][1][b]])))
            a = torch.zeros(2 * H, 2 * H)
            a[H:, H:] = torch.diag(torch.from_numpy(f[t, b]))
            adds.append(a)
        shares.append(_share(js, adds))
    return dict(q=np.quantile(f, QS), carry=carry, horizon=horizon, share=np.median(shares))


def _check_gated(s, i, ref, family, T):
    got = [s[f"gate_{family}_{k}"][i] for k in ("p10", "median", "p90")]
    np.testing.assert_allclose(got, ref["q"], rtol=1e-12)
    assert s["gate_log_carry_lag10"][i] == pytest.approx(ref["carry"][10], rel=1e-12)
    assert math.isnan(s["gate_log_carry_lag100"][i]) and math.isnan(ref["carry"][100])
    assert s["gate_carry_horizon"][i] == ref["horizon"]
    assert s["gate_path_share"][i] == pytest.approx(ref["share"], rel=1e-9)
    assert s["gate_path_share_lag"][i] == T
    others = [k for k in GATE_KEYS if "_dphi_" in k or k.endswith("_norm")]
    assert all(math.isnan(s[k][i]) for k in others)


def test_lstm_gate_summaries_equal_the_modules_gates_at_each_sampled_step(float64, seeded):
    T, B = 12, 3
    model = nn.LSTM(2, 4)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    refs = []
    with gs.Monitor(model, every=1, analyze=True, decay_batch=2) as mon:
        for _ in range(2):
            x = torch.randn(T, B, 2)
            w = {k: v.detach().clone() for k, v in model.named_parameters()}
            out, _ = model(x)
            out.pow(2).sum().backward()
            mon.step()
            opt.step()  # the next step's gates come from the updated weights
            opt.zero_grad()
            refs.append(_lstm_reference(w, x, out.detach(), seqs=2))
    s = mon.history.summaries("lstm.l0")
    assert refs[0]["q"][1] != pytest.approx(refs[1]["q"][1], rel=1e-6)  # training moved f
    for i, ref in enumerate(refs):
        _check_gated(s, i, ref, "forget", T)
        assert np.isnan(s["gate_update_median"][i])
    assert mon.history.meta["kinds"] == {"lstm.l0": "lstm"}


class _CellLoop(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.cell = nn.GRUCell(2, 3)

    def forward(self, x):
        h, hs = torch.zeros(x.shape[1], 3), []
        for t in range(x.shape[0]):
            h = self.cell(x[t], h)
            hs.append(h)
        return torch.stack(hs)


def test_gru_cell_loop_update_gate_summaries(float64, seeded):
    T, B = 11, 3
    model = _CellLoop()
    with gs.Monitor(model, every=1, analyze=True, decay_batch=2) as mon:
        x = torch.randn(T, B, 2)
        w = {k: v.detach().clone() for k, v in model.cell.named_parameters()}
        out = model(x)
        out.pow(2).sum().backward()
        mon.step()
    h, hs, zs = torch.zeros(B, 3), [torch.zeros(B, 3)], []
    for t in range(T):
        h, z = _gru_step(w, x[t], h)
        hs.append(h)
        zs.append(z)
    torch.testing.assert_close(torch.stack(hs[1:]), out.detach())
    z = torch.stack(zs).numpy()
    carry, horizon = _carry_reference(z)
    shares = []
    for b in range(2):
        js = [
            torch.func.jacrev(lambda s, t=t, b=b: _gru_step(w, x[t, b], s)[0])(hs[t][b])
            for t in range(T)
        ]
        shares.append(_share(js, [torch.diag(torch.from_numpy(z[t, b])) for t in range(T)]))
    ref = dict(q=np.quantile(z, QS), carry=carry, horizon=horizon, share=np.median(shares))
    _check_gated(mon.history.summaries("cell"), 0, ref, "update", T)


def test_vanilla_dphi_and_repeated_factor(float64, seeded):
    T, B = 20, 3
    model = nn.RNN(2, 5)
    with gs.Monitor(model, every=1, analyze=True, decay_batch=2) as mon:
        x = 2 * torch.randn(T, B, 2)
        out, _ = model(x)
        out.sum().backward()
        mon.step()
    W = model.weight_hh_l0.detach()
    h_prev = torch.cat([torch.zeros(1, B, 5), out.detach()[:-1]])
    a = x @ model.weight_ih_l0.detach().T + model.bias_ih_l0 + h_prev @ W.T + model.bias_hh_l0
    d = (1 - torch.tanh(a) ** 2).detach()
    s = mon.history.summaries("rnn.l0")
    got = [s[f"gate_dphi_{k}"][0] for k in ("p10", "median", "p90")]
    np.testing.assert_allclose(got, np.quantile(d.numpy(), QS), rtol=1e-12)
    at = np.unique(np.linspace(0, T - 1, 8).astype(int))  # 8 steps spread, first 2 sequences
    norms = [float(torch.linalg.matrix_norm(d[t, b, :, None] * W, 2)) for t in at for b in (0, 1)]
    assert s["gate_factor_norm"][0] == pytest.approx(np.median(norms), rel=1e-12)
    assert s["gate_weight_norm"][0] == pytest.approx(float(torch.linalg.matrix_norm(W, 2)))
    assert np.isnan(s["gate_forget_median"][0]) and np.isnan(s["gate_log_carry_lag10"][0])


def test_path_share_and_factor_only_on_analysed_steps_and_gates_off():
    torch.manual_seed(1)
    model = nn.GRU(2, 3)
    with gs.Monitor(model, every=1, analyze=gs.monitor.At([1])) as mon:
        for _ in range(2):
            model(torch.randn(6, 2, 2))[0].sum().backward()
            mon.step()
    s = mon.history.summaries("gru.l0")
    assert np.isfinite(s["gate_update_median"]).all()  # every sampled step
    assert np.isnan(s["gate_path_share"][0]) and np.isfinite(s["gate_path_share"][1])
    with gs.Monitor(model, every=1, gates=False) as off:
        model(torch.randn(6, 2, 2))[0].sum().backward()
        off.step()
    summ = off.history.summaries("gru.l0")
    assert all(np.isnan(summ[k]).all() for k in GATE_KEYS)
    panel = make_panel(TRAINING_GATE_PANEL, (off.history, "gru.l0"))
    assert panel.kwargs is None and "gates=False" in panel.missing


def test_history_round_trip_keeps_gate_fields(tmp_path):
    torch.manual_seed(2)
    model = nn.LSTM(2, 3)
    with torch.no_grad():
        model.bias_ih_l0[3:6] = 8.0  # f ≈ 1: the median carry never falls below 1/e
    with gs.Monitor(model, every=1, analyze=gs.monitor.At([0])) as mon:
        for _ in range(2):
            model(torch.randn(5, 2, 2))[0].sum().backward()
            mon.step()
    hist = mon.history
    assert hist.scalar("lstm.l0", "gate_carry_horizon").tolist() == [math.inf, math.inf]
    back = load_history(hist.save(tmp_path / "h.npz"))
    assert back.keys == SUMMARY_KEYS and back.meta["kinds"] == {"lstm.l0": "lstm"}
    for key in GATE_KEYS:
        np.testing.assert_array_equal(back.scalar("lstm.l0", key), hist.scalar("lstm.l0", key))
    assert np.isfinite(back.scalar("lstm.l0", "gate_forget_median")).all()
    layers = json.loads(json.dumps(back.to_dict()))["layers"]
    assert layers["lstm.l0"]["summaries"]["gate_carry_horizon"] == ["inf", "inf"]


def test_a_history_file_without_gate_fields_loads_and_the_panel_says_why(tmp_path):
    """A file written with the summary keys before the gate summaries existed."""
    old_keys = [k for k in SUMMARY_KEYS if not k.startswith("gate_")]
    old = History(1, {"model_class": "Net"}, old_keys)
    sc = np.full((1, len(old_keys)), np.nan)
    sc[0, old_keys.index("T")], sc[0, old_keys.index("B")] = 3, 2
    old.append(0, {"lstm.l0": (np.ones((1, 4)), sc)})
    back = load_history(old.save(tmp_path / "old.npz"))
    assert back.keys == tuple(old_keys) and "gate_forget_median" not in back.summaries("lstm.l0")
    with pytest.raises(KeyError):
        back.scalar("lstm.l0", "gate_forget_median")
    np.testing.assert_array_equal(back.grad_norms("lstm.l0"), np.ones((1, 4)))
    panel = make_panel(TRAINING_GATE_PANEL, (back, "lstm.l0"))
    assert panel.kwargs is None and "did not record them" in panel.missing


def test_training_report_gate_panel_for_lstm_vanilla_and_a_note_for_mingru(tmp_path):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
    from mingru import MinGRU

    torch.manual_seed(3)
    models = {
        "lstm": nn.LSTM(2, 3),
        "rnn": nn.RNN(2, 3),
        "mingru": MinGRU(2, 3),  # batch first, a diagonal recurrence without gates
    }
    hists = {}
    for label, model in models.items():
        with gs.Monitor(model, every=1) as mon:
            for _ in range(2):
                out = model(torch.randn(2, 6, 2) if label == "mingru" else torch.randn(6, 2, 2))
                (out[0] if isinstance(out, tuple) else out).sum().backward()
                mon.step()
        hists[label] = mon.history
    lstm = make_panel(TRAINING_GATE_PANEL, (hists["lstm"], "lstm.l0"))
    assert lstm.kwargs["gate"] == "f" and set(lstm.kwargs["log_carry"]) == {10, 100}
    np.testing.assert_array_equal(
        lstm.kwargs["median"], hists["lstm"].scalar("lstm.l0", "gate_forget_median")
    )
    rnn = make_panel(TRAINING_GATE_PANEL, (hists["rnn"], "rnn.l0"))
    assert rnn.kwargs["gate"] == "φ'" and rnn.kwargs["log_carry"] is None
    assert np.isfinite(rnn.kwargs["factor"][0])  # the first sampled step is analysed
    (name,) = hists["mingru"].names
    mingru = make_panel(TRAINING_GATE_PANEL, (hists["mingru"], name))
    assert mingru.kwargs is None and "not recorded for a example:mingru layer" in mingru.missing
    gs.report(hists, tmp_path / "r.html")
    html = (tmp_path / "r.html").read_text()
    assert html.count('data-figure="training-gates">') == 2  # drawn for the LSTM and the RNN
    assert html.count('data-figure="training-gates" data-missing="true"') == 1


@pytest.mark.parametrize("kind", ["lstm_proj_bidir_packed", "lstm_cell"])
def test_gate_summaries_agree_with_the_full_gate_view(float64, seeded, kind):
    """Projections, both directions, packed lengths and LSTMCell loops: the Monitor's numbers
    are the full gate view's (gradscope.analysis.gates.gate_view) of the same recording."""
    from torch.nn.utils.rnn import pack_padded_sequence

    from gradscope.analysis.gates import gate_view

    if kind == "lstm_cell":
        model = nn.LSTMCell(2, 3)

        def forward(x):
            h = c = torch.zeros(x.shape[1], 3)
            for t in range(x.shape[0]):
                h, c = model(x[t], (h, c))
            return h

    else:
        model = nn.LSTM(2, 4, proj_size=2, bidirectional=True)

        def forward(x):
            return model(pack_padded_sequence(x, torch.tensor([12, 9, 5])))[0].data

    with gs.Monitor(model, every=1, analyze=True, decay_batch=None) as mon:
        forward(torch.randn(12, 3, 2)).sum().backward()
        mon.step()
    for layer in mon.latest.trace.layers:
        view = gate_view(layer)
        s = mon.history.entry(layer.name)
        assert s["gate_forget_median"] == pytest.approx(view.medians["f"], rel=1e-12)
        assert s["gate_log_carry_lag10"] == pytest.approx(view.carry[10, 2], rel=1e-12)
        assert s["gate_path_share"] == pytest.approx(view.share[-1], rel=1e-12)
        assert s["gate_path_share_lag"] == view.walk_lags[-1] == 12
    assert len(mon.latest.trace.layers) == (1 if kind == "lstm_cell" else 2)


# the carried gate's rows of the stacked weights (hidden 5) and its summary key
_KEPT = {
    nn.LSTM: (slice(5, 10), "gate_forget_median"),
    nn.GRU: (slice(5, 10), "gate_update_median"),
    nn.RNN: (slice(0, 5), "gate_dphi_median"),
}


@pytest.mark.parametrize("cls", [nn.LSTM, nn.GRU, nn.RNN])
def test_the_monitor_reads_the_gate_logits_its_replay_kept(float64, seeded, monkeypatch, cls):
    """A single-layer LSTM's (GRU's, RNN's) teacher-forced replay keeps ``a_f`` (``a_z``,
    ``a``) from the product that gives the states: they equal the pre-activations written
    out from the weights, follow the layer through batch selection and calls chained by
    their state, and the gate summary reads them (no second product) with the numbers of
    the recomputed path."""
    from dataclasses import replace

    import gradscope.analysis.gates.summary as summary
    from gradscope.errors import ShapeError
    from gradscope.monitor.summaries import select_batch

    model = cls(3, 5)
    x1, x2 = torch.randn(7, 4, 3), torch.randn(6, 4, 3)
    w = {k: v.detach().clone() for k, v in model.named_parameters()}
    with gs.Monitor(model, every=1, analyze=False) as mon:
        out1, state = model(x1)
        out2, _ = model(x2, state)  # the second call continues the first: one layer
        (out1.sum() + out2.pow(2).sum()).backward()
        mon.step()
    (layer,) = mon.latest.trace.layers
    x = torch.cat([x1, x2])
    out = torch.cat([out1, out2]).detach()
    h_prev = torch.cat([torch.zeros(1, 4, 5), out[:-1]])
    rows, key = _KEPT[cls]
    ref = (
        x @ w["weight_ih_l0"][rows].T
        + w["bias_ih_l0"][rows]
        + h_prev @ w["weight_hh_l0"][rows].T
        + w["bias_hh_l0"][rows]
    )
    assert layer.carried_logits is not None and layer.carried_logits.shape == (13, 4, 5)
    torch.testing.assert_close(layer.carried_logits, ref, rtol=1e-12, atol=1e-12)
    picked = select_batch(layer, np.array([3, 1]))
    torch.testing.assert_close(picked.carried_logits, ref[:, [3, 1]], rtol=1e-12, atol=1e-12)

    recomputed = summary.gate_summary(replace(layer, carried_logits=None))

    def no_product(*args, **kwargs):
        raise AssertionError("the gate summary multiplied the weights again")

    family = type(layer.cell_adapter())  # the adapter's own products of the gate weights
    monkeypatch.setattr(family, "carried_logits", no_product)
    monkeypatch.setattr(family, "gate_values", no_product)
    kept = summary.gate_summary(layer)
    assert kept.keys() == recomputed.keys()
    for name, value in recomputed.items():
        assert kept[name] == pytest.approx(value, rel=1e-12, nan_ok=True), name
    assert not math.isnan(kept[key])
    with pytest.raises(ShapeError, match="carried_logits"):
        replace(layer, carried_logits=ref[:-1])


@pytest.mark.parametrize("cls", [nn.LSTM, nn.GRU, nn.RNN])
def test_kept_gate_logits_of_both_directions_are_in_processing_order(float64, seeded, cls):
    """A bidirectional single-layer module is replayed teacher-forced in each direction; the
    reverse direction's kept logits follow its processing order (``x_{T-1}`` first), like
    its states and inputs: equal to the carried gate's rows of the weights applied to them."""
    from gradscope.analysis.gates.values import carried_logits, preacts, previous_h

    model = cls(3, 4, bidirectional=True)
    with gs.Monitor(model, every=1, analyze=False) as mon:
        model(torch.randn(9, 2, 3))[0].pow(2).sum().backward()
        mon.step()
    layers = mon.latest.trace.layers
    assert [layer.meta["direction"] for layer in layers] == ["forward", "reverse"]
    for layer in layers:
        assert layer.carried_logits is not None
        x, h = layer.inputs, previous_h(layer, layer.states)
        if cls is nn.RNN:  # the whole pre-activation: φ'(a) is the vanilla cell's gate
            ref = sum(preacts(layer.params, x, h))
        else:
            ref = carried_logits(layer.kind, layer.params, x, h)
        torch.testing.assert_close(layer.carried_logits, ref, rtol=1e-12, atol=1e-12)
