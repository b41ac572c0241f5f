"""Does a vanilla RNN fail on pixel-by-pixel digits because its gradient vanishes? And the GRU?

Question: scikit-learn's handwritten digits (``load_digits``: 1,797 images of 8 × 8 pixels,
10 classes), read one pixel per step in raster order (T = 64 steps of one input; the class
is predicted from the last hidden state). Pixels, not rows: with rows as steps (T = 8)
every row is at most 7 steps from the read-out and nothing needs to survive a long trip
back; with pixels the top row is 57-64 steps back, which is where a vanilla RNN's gradient
is said to vanish. A vanilla tanh ``nn.RNN`` and an ``nn.GRU`` of the same hidden size are
profiled (``gs.profile`` with the real cross-entropy loss) at initialisation and after the
same training (Adam, the same batches), trained under ``gs.Monitor``. Does the vanilla RNN
fail because its gradient vanishes over 64 steps, and does the GRU keep the gradient through
its update gate (the additive path ``diag z``) or through its weights? The gate view's path
share says which. Two changes gradscope's advice names are trained the same way as a check
of that advice: the vanilla RNN with ``weight_hh`` initialised orthogonally and the GRU with
its update-gate bias set to 2 (z ≈ 0.88 at init). Three training seeds per model (the
initial weights and the batch order change; the split does not).

Also measured, without gradscope: test accuracy when only the last k pixels are shown (the
earlier ones set to 0, the background), i.e. how far back the trained model actually
reads; and a logistic regression on the 64 pixels at once (no memory needed) for scale.

Writes ``reports/digits_rnn_vs_gru/``: ``report.html`` (gradscope's comparison: each of the
two models at init, trained and over training), ``digits.png`` (test accuracy over epochs
beside the loss gradient that reaches the first pixel, from the Monitor), ``summary.json``
and ``summary.md``.

Run: ``python analyses/digits_rnn_vs_gru.py`` (about 4 minutes on 2 shared CPU cores;
``--epochs`` and ``--seeds`` shorten it).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

import gradscope as gs

OUT = Path(__file__).resolve().parent.parent / "reports" / "digits_rnn_vs_gru"
LAYER = "rnn.l0"
#: Model key -> (display name, cell, what is changed at init).
MODELS = {
    "rnn": ("vanilla RNN", nn.RNN, None),
    "gru": ("GRU", nn.GRU, None),
    "rnn_orth": ("vanilla RNN, orthogonal W_hh", nn.RNN, "orthogonal"),
    "gru_zbias": ("GRU, update-gate bias 2", nn.GRU, "zbias"),
}
#: The two models the report shows (the others are checks of the advice, in the summary).
REPORTED = ("rnn", "gru")
SHOWN_LAST = (8, 16, 32, 48, 64)  # pixels shown to the partial-view accuracy


def digits(seed: int = 0) -> tuple[torch.Tensor, ...]:
    """``x_train (64, N, 1)``, ``y_train``, ``x_test``, ``y_test``: pixels in [0, 1], raster order.

    A stratified 75/25 split of ``load_digits`` (fixed by ``seed``); time-major like PyTorch.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = d.data.astype(np.float32) / 16.0
    xtr, xte, ytr, yte = train_test_split(
        x, d.target, test_size=0.25, stratify=d.target, random_state=seed
    )

    def steps(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a.T.copy()).unsqueeze(-1)

    return steps(xtr), torch.from_numpy(ytr), steps(xte), torch.from_numpy(yte)


class Classifier(nn.Module):
    """``nn.RNN`` / ``nn.GRU`` over the pixels, a linear read-out of the last hidden state."""

    def __init__(self, cell: type[nn.Module], hidden: int, init: str | None) -> None:
        super().__init__()
        self.rnn = cell(1, hidden)
        self.head = nn.Linear(hidden, 10)
        with torch.no_grad():
            if init == "orthogonal":
                nn.init.orthogonal_(self.rnn.weight_hh_l0)
            elif init == "zbias":  # gate order r, z, n: rows H:2H are the update gate z
                self.rnn.bias_hh_l0[hidden : 2 * hidden] = 2.0
                self.rnn.bias_ih_l0[hidden : 2 * hidden] = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.head(out[-1])


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def shown_last(model: nn.Module, x: torch.Tensor, y: torch.Tensor, k: int) -> float:
    """Test accuracy when only the last ``k`` pixels are shown (the rest set to background 0)."""
    x = x.clone()
    x[: x.shape[0] - k] = 0.0
    return accuracy(model, x, y)


def train(model, data, epochs, batch, lr, seed, monitor=None):
    """Adam with clipping at norm 1; returns per-epoch mean train loss and test accuracy."""
    xtr, ytr, xte, yte = data
    ce = nn.CrossEntropyLoss()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(1000 + seed)
    losses, accs = [], []
    for _ in range(epochs):
        perm = torch.randperm(xtr.shape[1], generator=gen)
        total = 0.0
        for i in range(0, len(perm), batch):
            idx = perm[i : i + batch]
            loss = ce(model(xtr[:, idx]), ytr[idx])
            opt.zero_grad()
            loss.backward()
            if monitor is not None:
                monitor.step()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            total += loss.item() * len(idx)
        losses.append(total / len(perm))
        accs.append(accuracy(model, xte, yte))
    return losses, accs


def _f(v: float) -> float | None:
    return None if v is None or not math.isfinite(v) else float(v)


def numbers(prof: gs.Profile) -> dict:
    """What the practitioner needs of one profile, read from its diagnosis."""
    d = prof.diagnosis[LAYER]
    st, inp, loss = d.decay["state"], d.decay["input"], d.decay["loss"]
    T = d.T
    out = dict(
        regime=d.regime,
        state_rate=st.rate,
        state_rate_ci=list(st.rate_ci),
        half_life=st.half_life,
        horizon=st.horizon,
        lambda1=d.lambda1,
        radius_median=d.eig.get("median"),
        sigma_max_median=d.svd.get("median"),
        input_rate=inp.rate,
        input_horizon=inp.horizon,
        loss_rate=loss.rate,
        loss_regime=loss.regime,
        # ‖∂L/∂s_0‖ / ‖∂L/∂s_T‖: what of the loss gradient reaches the state before pixel 1
        log10_loss_grad_first_over_last=float((loss.median[T] - loss.median[0]) / math.log(10)),
        loss_fit_lags=list(loss.fit_lags),
        loss_value=prof.loss,
    )
    g = d.gates
    if g is not None:
        lag, share = g.share_at(T)
        out.update(
            path_share_at={int(k): s for k, s in (g.share_at(k) for k in (8, 16, 32))},
            gate_sentence=g.sentence(),
            gate_medians=g.medians,
            path=g.path,
            path_share_lag=lag,
            path_share=share,
            factor_norm_median=_f(float(np.nanmedian(g.factor[:, 2])) if g.factor.size else None),
            weight_hh_norm=_f(g.weight_norm),
        )
    return out


def figure(path: Path, curves: dict, monitors: dict, T: int) -> None:
    """Test accuracy over epochs; log10 ‖∂L/∂s_0‖/‖∂L/∂s_T‖ over training steps (Monitor)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6), dpi=100)
    for key, accs in curves.items():
        a.plot(np.arange(1, len(accs) + 1), accs, label=MODELS[key][0])
    a.set_xlabel("epoch")
    a.set_ylabel("test accuracy")
    a.set_title("test accuracy (seed 0)")
    a.grid(alpha=0.3)
    a.legend(fontsize=8)
    for key, mon in monitors.items():
        g = mon.history.grad_norms(LAYER)
        b.plot(mon.history.steps, np.log10(g[:, 0] / g[:, T]), label=MODELS[key][0])
    b.axhline(-1, color="grey", lw=0.8, ls="--")
    b.set_xlabel("training step")
    b.set_ylabel("log10 ‖∂L/∂s_0‖ / ‖∂L/∂s_T‖")
    b.set_title("loss gradient reaching the first pixel (Monitor)")
    b.grid(alpha=0.3)
    b.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def first_neutral(m: dict) -> str:
    """When the Monitor first saw a loss gradient that is not vanishing, in words."""
    step = m["monitor_first_neutral"]
    if step is None:
        return "at no sampled step"
    return f"at training step {step} (epoch {m['monitor_first_neutral_epoch']})"


def findings(res: dict, logreg: float, args) -> list[str]:
    """The answer in words, every number from ``res``."""
    r, g = res["rnn"], res["gru"]
    ro, gz = res["rnn_orth"], res["gru_zbias"]
    ri, rt, gi, gt = r["init"], r["trained"], g["init"], g["trained"]

    def pct(m: dict) -> str:
        return f"{m['acc_median']:.1%} (seeds {', '.join(f'{a:.1%}' for a in m['acc_each_seed'])})"

    learned = r["acc_median"] >= 0.5
    out = ["## The answer", ""]
    out.append(
        f"**Does the vanilla RNN fail because its gradient vanishes over {args.T} steps?** "
        + (
            f"It does not fail: it reaches {pct(r)} test accuracy against the GRU's {pct(g)}. "
            if learned
            else f"It fails: {pct(r)} test accuracy against the GRU's {pct(g)}. "
        )
        + f"At initialisation its gradient does vanish: rate {ri['state_rate']:+.3f}/step, "
        f"half-life {ri['half_life']:.1f} steps, horizon {ri['horizon']:.0f} of {args.T}, and "
        f"10^{ri['log10_loss_grad_first_over_last']:.1f} of the loss gradient at the last "
        f"pixel reaches the state before the first one. But the GRU starts just as badly "
        f"({gi['state_rate']:+.3f}/step, 10^{gi['log10_loss_grad_first_over_last']:.1f}: "
        f"with z ≈ {gi['gate_medians'].get('z', math.nan):.2f} its update path halves the "
        f"gradient every step), and training repairs both: the Monitor first saw a loss "
        f"gradient that is not vanishing {first_neutral(r)} for the RNN and "
        f"{first_neutral(g)} for the GRU. Adam grows the RNN's recurrent weights "
        f"(‖W_hh‖₂ {ri['weight_hh_norm']:.2f} → {rt['weight_hh_norm']:.2f}, spectral radius "
        f"median {ri['radius_median']:.2f} → {rt['radius_median']:.2f}) until the gradient "
        f"is *{rt['regime']}* ({rt['state_rate']:+.4f}/step; "
        f"10^{rt['log10_loss_grad_first_over_last']:+.1f} reaches the first pixel). What "
        f"separates the two after that is {100 * (g['acc_median'] - r['acc_median']):+.1f} "
        "points of median accuracy (GRU minus RNN) and how steady training is: over the last "
        f"10 epochs the test accuracy of seed 0 moved by {r['acc_std_last10']:.1%} (standard "
        f"deviation) for the RNN and {g['acc_std_last10']:.1%} for the GRU; not a gradient "
        "that never arrives.",
    )
    out.append("")
    short = ", ".join(f"{s:.0%} at lag {k}" for k, s in gt["path_share_at"].items())
    out.append(
        "**Does the GRU keep its gradient through the update gate or through its weights?** "
        f"{'Through its weights' if gt['path_share'] < 0.5 else 'Through its update gate'}. "
        "After training the update-gate path (diag z on every step) "
        f"carries {gt['path_share']:.1%} of ‖∂s_T/∂s_(T−{gt['path_share_lag']})‖ ({short}); "
        f"the update gates sit at a median z = {gt['gate_medians'].get('z', math.nan):.2f}, "
        f"and the rest, {1 - gt['path_share']:.1%}, goes through the recurrent weights (the "
        "dependence of the candidate n and of the gates on h_(t−1), all through W_hh), as a "
        f"vanilla RNN's does. At init the share was {gi['path_share']:.1%}."
    )
    out.append("")
    better = [m["name"] for m, base in ((ro, r), (gz, g)) if m["acc_median"] > base["acc_median"]]
    verdict = {
        2: "Both fixes gradscope's advice names at init raise the median accuracy here",
        1: f"Of the two fixes gradscope's advice names at init, only '{better[0]}' raises "
        "the median accuracy here"
        if better
        else "",
        0: "Neither fix gradscope's advice names at init raises the median accuracy here",
    }[len(better)]
    out.append(
        f"**What to change.** {verdict} (trained the same way): "
        "the vanilla RNN with an orthogonal W_hh starts with a horizon of "
        f"{ro['init']['horizon']:.0f} steps instead of {ri['horizon']:.0f} "
        f"({ro['init']['state_rate']:+.3f}/step) and reaches {pct(ro)}; the GRU with its "
        f"update-gate bias at 2 (z ≈ {gz['init']['gate_medians'].get('z', math.nan):.2f}) "
        f"starts at {gz['init']['state_rate']:+.3f}/step (horizon "
        f"{gz['init']['horizon']:.0f}) and reaches {pct(gz)}; its update path then carries "
        f"{gz['trained']['path_share']:.1%} at lag {gz['trained']['path_share_lag']} after "
        f"training (z median {gz['trained']['gate_medians'].get('z', math.nan):.2f}). A "
        f"logistic regression that sees all 64 pixels at once gets {logreg:.1%}."
    )
    out += ["", "## Details", ""]
    parts = []
    for key in REPORTED:
        m = res[key]
        shown = ", ".join(f"{k}: {a:.1%}" for k, a in m["shown_last"].items())
        parts.append(f"{m['name']} {shown}")
    out.append(
        "- **How far back the trained models read** (test accuracy with only the last k "
        f"pixels shown, the earlier ones set to background 0; seed 0): {'; '.join(parts)}. "
        "Blank top rows are also an input the models never saw in training, so a drop mixes "
        "what those pixels carry with the surprise of an unseen input."
    )
    for key in REPORTED:
        m = res[key]
        t = m["trained"]
        out.append(
            f"- **{m['name']}, trained**: loss-gradient curve ‖∂L/∂s_t‖ fitted at "
            f"{t['loss_rate']:+.4f}/step over lags {t['loss_fit_lags'][0]}–"
            f"{t['loss_fit_lags'][1]} (*{t['loss_regime']}*), while its end-to-end ratio "
            f"‖∂L/∂s_0‖/‖∂L/∂s_T‖ is 10^{t['log10_loss_grad_first_over_last']:+.1f}; the state "
            f"decay is *{t['regime']}* ({t['state_rate']:+.4f}/step, λ₁ {t['lambda1']:+.4f})."
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--every", type=int, default=40, help="Monitor sampling period")
    parser.add_argument("--probe", type=int, default=32, help="test images profiled")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    data = digits()
    xtr, ytr, xte, yte = data
    args.T = xtr.shape[0]
    per_epoch = math.ceil(xtr.shape[1] / args.batch)
    xp, yp = xte[:, : args.probe], yte[: args.probe]
    ce = nn.CrossEntropyLoss()

    def probe_loss(out: torch.Tensor) -> torch.Tensor:
        return ce(out, yp)

    from sklearn.linear_model import LogisticRegression

    flat = LogisticRegression(max_iter=5000).fit(xtr[:, :, 0].T.numpy(), ytr.numpy())
    logreg = float(flat.score(xte[:, :, 0].T.numpy(), yte.numpy()))

    quiet = {"progress": False}
    res: dict[str, dict] = {}
    entries: dict[str, object] = {}
    curves, monitors = {}, {}
    for key, (name, cell, init) in MODELS.items():
        accs_each, times, profile_s = [], [], []
        for seed in range(args.seeds):
            torch.manual_seed(seed)
            model = Classifier(cell, args.hidden, init)
            t0 = time.perf_counter()
            prof0 = gs.profile(model, xp, loss_fn=probe_loss, analysis=quiet) if seed == 0 else None
            profile_s.append(time.perf_counter() - t0)
            watch = seed == 0 and key in REPORTED
            t0 = time.perf_counter()
            if watch:
                # every step up to 20 (the first epoch), then every ``--every``; all analysed
                sched = lambda s: s <= 20 or s % args.every == 0  # noqa: E731
                with gs.Monitor(model, schedule=sched, analyze=True) as monitor:
                    losses, accs = train(
                        model, data, args.epochs, args.batch, args.lr, seed, monitor
                    )
            else:
                losses, accs = train(model, data, args.epochs, args.batch, args.lr, seed)
            times.append(time.perf_counter() - t0)
            accs_each.append(accs[-1])
            if seed:
                continue
            t0 = time.perf_counter()
            prof1 = gs.profile(model, xp, loss_fn=probe_loss, analysis=quiet)
            profile_s.append(time.perf_counter() - t0)
            seed0 = dict(
                acc_std_last10=float(np.std(accs[-10:])),
                init=numbers(prof0),
                trained=numbers(prof1),
                train_loss_per_epoch=losses,
                test_acc_per_epoch=accs,
                shown_last={k: shown_last(model, xte, yte, k) for k in SHOWN_LAST},
                params=sum(p.numel() for p in model.parameters()),
            )
            if watch:
                hist = monitor.history
                regimes = hist.regime(LAYER, "loss_regime")
                first = next((s for s, r in zip(hist.steps, regimes) if r != "vanishing"), None)
                seed0.update(
                    monitor_steps=[int(s) for s in hist.steps],
                    monitor_loss_regime=regimes,
                    monitor_log10_grad_first_over_last=[
                        float(v)
                        for v in np.log10(hist.grad_norms(LAYER)[:, 0])
                        - np.log10(hist.grad_norms(LAYER)[:, args.T])
                    ],
                    monitor_path_share=[_f(v) for v in hist.scalar(LAYER, "gate_path_share")],
                    monitor_first_neutral=None if first is None else int(first),
                    monitor_first_neutral_epoch=(
                        None if first is None else int(first) // per_epoch + 1
                    ),
                )
                curves[key], monitors[key] = accs, monitor
                acc_note = {"test accuracy": round(accs[-1], 4), "epochs": args.epochs}
                prof1.trace.meta["result"] = acc_note
                entries[f"{name} · trained"] = prof1
                entries[f"{name} · init"] = prof0
                entries[f"{name} · training"] = monitor
            res[key] = dict(name=name, **seed0)
        res[key].update(
            acc_each_seed=accs_each,
            acc_median=statistics.median(accs_each),
            train_seconds_each_seed=times,
            profile_seconds=profile_s,
        )
        r = res[key]
        print(
            f"{name}: test acc {' '.join(f'{a:.3f}' for a in accs_each)}; init "
            f"{r['init']['regime']} {r['init']['state_rate']:+.4f}/step -> trained "
            f"{r['trained']['regime']} {r['trained']['state_rate']:+.4f}/step; "
            f"train {statistics.median(times):.1f} s/seed",
            flush=True,
        )
    t0 = time.perf_counter()
    gs.report(entries, args.out / "report.html", title="Digits pixel by pixel: vanilla RNN vs GRU")
    report_s = time.perf_counter() - t0
    figure(args.out / "digits.png", curves, monitors, args.T)
    total_s = time.perf_counter() - t_start
    settings = dict(
        data="sklearn load_digits, stratified 75/25 split (random_state 0)",
        train_images=int(xtr.shape[1]),
        test_images=int(xte.shape[1]),
        T=args.T,
        input="one pixel per step, raster order, value/16",
        hidden=args.hidden,
        epochs=args.epochs,
        batch=args.batch,
        lr=args.lr,
        seeds=args.seeds,
        monitor_every=args.every,
        probe_images=args.probe,
        threads=1,
    )
    timing = dict(total_seconds=total_s, report_seconds=report_s)
    summary = dict(settings=settings, logreg_test_acc=logreg, models=res, timing=timing)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    lines = [
        f"# Digits pixel by pixel (T = {args.T}): vanilla RNN vs GRU, hidden {args.hidden}",
        "",
        f"{xtr.shape[1]} training / {xte.shape[1]} test images, {args.epochs} epochs of Adam "
        f"(lr {args.lr}, batch {args.batch}, clipping at 1), {args.seeds} seeds; gradscope "
        f"numbers from `gs.profile` with the cross-entropy on {args.probe} test images, seed 0.",
        "",
        "| model | params | test acc, median (each seed) | when | regime | state rate/step "
        "(95% CI) | half-life | horizon | λ₁ | log10 ‖∂L/∂s_0‖/‖∂L/∂s_T‖ | additive path's "
        "share at lag T | gate / tanh′ median |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for m in res.values():
        each = ", ".join(f"{a:.1%}" for a in m["acc_each_seed"])
        for when in ("init", "trained"):
            n = m[when]
            lo, hi = n["state_rate_ci"]
            share = "none (no gate path)" if n.get("path") == "none" else f"{n['path_share']:.1%}"
            med = n.get("gate_medians", {})
            gate = ", ".join(f"{k} {v:.2f}" for k, v in med.items())
            lines.append(
                f"| {m['name']} | {m['params']} | {m['acc_median']:.1%} ({each}) | {when} "
                f"| {n['regime']} | {n['state_rate']:+.4f} ({lo:+.4f}, {hi:+.4f}) "
                f"| {n['half_life']:.1f} | {n['horizon']:.0f} | {n['lambda1']:+.4f} "
                f"| {n['log10_loss_grad_first_over_last']:+.1f} | {share} | {gate} |"
            )
    lines += ["", *findings(res, logreg, args), ""]
    per = ", ".join(
        f"{m['name']} {statistics.median(m['train_seconds_each_seed']):.1f} s" for m in res.values()
    )
    lines.append(
        f"Runtimes (1 thread, shared 2-core machine): training per seed (median) {per}; "
        f"report {report_s:.0f} s; everything {total_s:.0f} s, by "
        "`analyses/digits_rnn_vs_gru.py`."
    )
    (args.out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
