"""How do gradient decay and Jacobian spectra change while a recurrent network trains?

Question: over a training run on the adding problem (T = 100), how do the per-timestep
loss gradients ``‖∂L/∂s_t‖``, the state-decay rate and regime, and the spectral radius of
the one-step Jacobians evolve for a vanilla tanh RNN and for an LSTM? Everything comes
from :class:`gradscope.Monitor` attached to a plain training loop.

Writes ``reports/training_dynamics/``: ``report.html`` / ``report.pdf`` (the training-time
views of both models side by side), ``rnn_history.npz`` / ``lstm_history.npz`` (the
Monitor histories, loadable with ``gradscope.History.load``) and ``summary.md``.

Run: ``python analyses/training_dynamics.py`` (a few minutes on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

import gradscope as gs
from gradscope.demo import MODELS, AddingModel, train_adding

OUT = Path(__file__).resolve().parent.parent / "reports" / "training_dynamics"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--every", type=int, default=50)
    parser.add_argument("--seq-len", type=int, default=100)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    monitors, losses_of = {}, {}
    lines = [
        f"# Training dynamics: adding problem, T = {args.seq_len}, hidden {args.hidden}, "
        f"{args.steps} steps, sampled every {args.every}",
        "",
        "| model | step | train loss | ‖∂L/∂s_0‖ / ‖∂L/∂s_T‖ | loss-gradient rate /step "
        "| state decay rate /step (95% CI) | regime | median spectral radius |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key in ("rnn", "lstm"):
        torch.manual_seed(0)
        model = AddingModel(key, args.hidden)
        gen = torch.Generator().manual_seed(0)
        # analyze=True: every sampled step gets the decay fit and spectra (the default
        # "auto" spends at most 5% of training time on them, i.e. analyses only some)
        with gs.Monitor(model, every=args.every, analyze=True) as monitor:
            losses = train_adding(model, args.steps, args.seq_len, args.batch, gen, monitor=monitor)
        label = MODELS[key]
        losses_of[label] = losses
        monitors[label] = monitor
        history = monitor.history
        history.save(args.out / f"{key}_history.npz")
        norms = history.grad_norms("rnn.l0")
        summaries = history.summaries("rnn.l0")
        for i, step in enumerate(history.steps):
            ratio = norms[i, 0] / norms[i, -1]
            rate, (lo, hi) = summaries["rate"][i], summaries["rate_ci"][i]
            lines.append(
                f"| {label} | {step} | {losses[step]:.4f} | {ratio:.3g} "
                f"| {summaries['loss_rate'][i]:+.4f} | {rate:+.4f} ({lo:+.4f}, {hi:+.4f}) "
                f"| {summaries['regime'][i]} | {summaries['radius_median'][i]:.3f} |"
            )
        print(
            f"{label}: {len(history.steps)} samples; last ‖∂L/∂s_0‖/‖∂L/∂s_T‖ {ratio:.3g}, "
            f"state decay rate {rate:+.4f}/step, final train loss "
            f"{sum(losses[-50:]) / 50:.4f}"
        )
    lines += ["", "## What changed over training", ""]
    for label, monitor in monitors.items():
        summ = monitor.history.summaries("rnn.l0")
        rate, radius = summ["rate"], summ["radius_median"]
        steps = monitor.history.steps
        lo, hi = int(np.nanargmin(rate)), int(np.nanargmax(rate))
        regimes = sorted(set(summ["regime"]))
        lines.append(
            f"- **{label}**: state decay rate {rate[0]:+.3f} → {rate[-1]:+.3f} per step from "
            f"step {steps[0]} to {steps[-1]} (range {rate[lo]:+.3f} at step {steps[lo]} to "
            f"{rate[hi]:+.3f} at step {steps[hi]}); median spectral radius {radius[0]:.3f} → "
            f"{radius[-1]:.3f}; regime at the sampled steps: {', '.join(regimes)}. Train loss "
            f"(mean of the first / last 50 steps) {np.mean(losses_of[label][:50]):.4f} → "
            f"{np.mean(losses_of[label][-50:]):.4f}; predicting the mean of the target "
            "(the sum of two U(0, 1)) gives 1/6 = 0.1667."
        )
    title = "Training dynamics: vanilla RNN vs LSTM"
    gs.report(monitors, args.out / "report.html", title=title)
    gs.report(monitors, args.out / "report.pdf", title=title)
    elapsed = time.perf_counter() - t0
    lines += ["", f"Measured in {elapsed:.0f} s by `analyses/training_dynamics.py`."]
    (args.out / "summary.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
