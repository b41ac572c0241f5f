"""Where is the edge of chaos of a tanh RNN, and does gradscope find it?

Question: for ``h_{t+1} = tanh(g W h_t)`` with ``W`` random Gaussian (``W_ij ~ N(0, 1/N)``)
or random orthogonal, how do the leading Lyapunov exponent λ₁ and the gradient-decay rate
measured by gradscope depend on the gain ``g``, and how do they compare with the
mean-field prediction (Molgedey et al. 1992) and with the sufficient condition for
vanishing gradients of Pascanu, Mikolov & Bengio (2013)?

Every point is measured: a real ``nn.RNN`` (bias-free, input weights zero, random initial
state) is recorded with ``gs.trace`` and analysed with ``gs.lyapunov`` and ``gs.decay``.

Writes ``reports/edge_of_chaos/``: ``edge_of_chaos.png`` (the sweep), ``summary.json`` and
``summary.md`` (the table), and ``report.html`` (gradscope's comparison report of three
gains).

Run: ``python analyses/edge_of_chaos.py`` (about a minute on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import nn

import gradscope as gs
from gradscope.reporting.figures import palette, style
from gradscope.theory import mean_field_lambda1, pascanu_gain

OUT = Path(__file__).resolve().parent.parent / "reports" / "edge_of_chaos"


def make_rnn(n: int, gain: float, init: str, seed: int) -> nn.RNN:
    """A bias-free tanh RNN with ``W_hh = g W`` and zero input weights."""
    gen = torch.Generator().manual_seed(seed)
    rnn = nn.RNN(1, n, bias=False).double()
    with torch.no_grad():
        rnn.weight_ih_l0.zero_()
        if init == "gaussian":
            w = torch.randn(n, n, generator=gen, dtype=torch.float64) / n**0.5
        else:
            q, r = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
            w = q * torch.sign(torch.diagonal(r))  # Haar-distributed orthogonal
        rnn.weight_hh_l0.copy_(gain * w)
    return rnn


def measure(n: int, gain: float, init: str, steps: int, batch: int, seed: int) -> dict:
    """Record the autonomous network and measure λ₁ and the state-decay rate."""
    rnn = make_rnn(n, gain, init, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    h0 = torch.randn(1, batch, n, generator=gen, dtype=torch.float64)
    x = torch.zeros(steps, batch, 1, dtype=torch.float64)
    layer = gs.trace(rnn, x, h0)["rnn.l0"]
    discard = steps // 4
    lyap = gs.lyapunov(layer, k=1, discard=discard, progress=False)
    dec = gs.decay(layer, of="state", progress=False)
    return {
        "init": init,
        "gain": gain,
        "lambda1": float(lyap.exponents[0]),
        "lambda1_stderr": float(lyap.stderr[0]),
        "rate": float(dec.rate),
        "rate_ci": [float(v) for v in dec.rate_ci],
        "regime": dec.regime,
        "sigma_max_W": float(torch.linalg.matrix_norm(rnn.weight_hh_l0.detach(), ord=2)),
        # below the transition the state decays to the fixed point 0, where J_t -> gW, so
        # λ₁ = ln ρ(gW) exactly (the finite-N spectral radius, not the N -> inf value 1)
        "ln_radius_gW": float(
            torch.log(torch.linalg.eigvals(rnn.weight_hh_l0.detach()).abs().max())
        ),
        "mean_field_lambda1": mean_field_lambda1(gain),
        "layer": layer,
    }


def plot(rows: list[dict], path: Path) -> None:
    """λ₁ and decay rate against g, with the theory drawn in."""
    g_fine = np.linspace(min(r["gain"] for r in rows), max(r["gain"] for r in rows), 200)
    mf = np.array([mean_field_lambda1(g) for g in g_fine])
    colours = dict(zip(("gaussian", "orthogonal"), palette(2)))
    with style():
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
        for ax, key, ylabel in (
            (axes[0], "lambda1", "leading Lyapunov exponent λ₁ (per step)"),
            (
                axes[1],
                "rate",
                r"fitted decay rate of $\|\partial h_T/\partial h_{T-k}\|$ (per step)",
            ),
        ):
            ax.plot(g_fine, mf, color="black", lw=1.5, label="mean field ½ ln(g² E[sech⁴])")
            for init, colour in colours.items():
                sel = [r for r in rows if r["init"] == init]
                ax.plot(
                    [r["gain"] for r in sel],
                    [r[key] for r in sel],
                    "o",
                    color=colour,
                    label=f"measured, {init} W",
                )
                ax.axvline(
                    pascanu_gain(init),
                    color=colour,
                    ls=":",
                    lw=1.2,
                    label=f"Pascanu bound σ_max(gW)=1, {init}",
                )
            ax.axhline(0.0, color="grey", lw=0.8)
            ax.set_xlabel("gain g of W_hh")
            ax.set_ylabel(ylabel)
        axes[0].set_title("Lyapunov exponent: order (<0) vs chaos (>0)")
        axes[1].set_title("Gradient decay: vanishing (<0) vs exploding (>0)")
        axes[1].legend(loc="lower right", fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)


def findings(table: list[dict], n: int) -> list[str]:
    """What the sweep shows, each sentence computed from the table."""
    out = ["## What the sweep shows", ""]
    ordered = [r for r in table if r["gain"] < 1.0]
    worst = max(abs(r["lambda1"] - r["ln_radius_gW"]) for r in ordered)
    out.append(
        f"- **Ordered side (g < 1)**: the state decays to the fixed point 0, where "
        f"`J_t → gW`, so λ₁ must equal ln ρ(gW) exactly. Measured: largest deviation "
        f"{worst:.1e} over {len(ordered)} networks. For Gaussian W the mean-field curve sits "
        "below the points because at N = "
        f"{n} ρ(W) is not 1: ln ρ(W) = "
        + ", ".join(
            f"{r['ln_radius_gW'] - np.log(r['gain']):+.4f}" for r in ordered if r["gain"] == 0.5
        )
        + " (Gaussian, orthogonal)."
    )
    for init in ("gaussian", "orthogonal"):
        sel = [r for r in table if r["init"] == init and r["gain"] > 1.0]
        first_chaos = next(
            (r["gain"] for r in sel if r["lambda1"] > 3 * r["lambda1_stderr"] + 1e-3), None
        )
        err = max(abs(r["lambda1"] - r["mean_field_lambda1"]) for r in sel if r["gain"] >= 2.0)
        out.append(
            f"- **{init.capitalize()} W, g > 1**: mean field (N → ∞) predicts chaos for every "
            f"g > 1; measured λ₁ is first clearly positive at g = {first_chaos} "
            f"(λ₁ > 3 standard errors + 0.001); for g ≥ 2 measured and mean-field λ₁ differ "
            f"by at most {err:.3f} per step."
        )
    agree = max(abs(r["rate"] - r["lambda1"]) for r in table)
    out.append(
        f"- **Decay rate vs λ₁**: the fitted long-run decay rate of the state gradient "
        f"agrees with λ₁ to within {agree:.4f} per step at every gain: the gradient vanishes "
        "where the dynamics are ordered and grows where they are chaotic."
    )
    sigma = {r["init"]: r["sigma_max_W"] / r["gain"] for r in table if r["gain"] == 1.0}
    vanish = {
        init: max(r["gain"] for r in table if r["init"] == init and r["regime"] == "vanishing")
        for init in sigma
    }
    out.append(
        "- **Pascanu bound**: σ_max(gW) < 1 is sufficient for vanishing. For Gaussian W "
        f"(σ_max(W) = {sigma['gaussian']:.2f}) it holds only for g < "
        f"{1 / sigma['gaussian']:.2f}, yet the measured verdict is *vanishing* up to g = "
        f"{vanish['gaussian']}: far from tight for a non-normal W. For orthogonal W "
        f"(σ_max(W) = {sigma['orthogonal']:.2f}) it holds for g < "
        f"{1 / sigma['orthogonal']:.2f} and the verdict is *vanishing* up to g = "
        f"{vanish['orthogonal']}: tight."
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=128, help="hidden units N")
    parser.add_argument("--steps", type=int, default=400, help="timesteps T")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    gains = [0.25, 0.5, 0.75, 0.9, 1.0, 1.1, 1.25, 1.5, 2.0, 2.5, 3.0]
    rows = []
    for init in ("gaussian", "orthogonal"):
        for gain in gains:
            row = measure(args.n, gain, init, args.steps, args.batch, seed=7)
            rows.append(row)
            print(
                f"{init:10s} g={gain:4.2f}  λ₁={row['lambda1']:+.4f}  "
                f"mean-field {row['mean_field_lambda1']:+.4f}  rate={row['rate']:+.4f}  "
                f"{row['regime']}"
            )
    plot(rows, args.out / "edge_of_chaos.png")
    examples = {f"g = {r['gain']}": r["layer"] for r in rows if r["init"] == "gaussian"}
    picked = {name: examples[name] for name in ("g = 0.5", "g = 1.0", "g = 2.0")}
    gs.report(
        {name: gs.diagnose([layer], progress=False) for name, layer in picked.items()},
        args.out / "report.html",
        title="tanh RNN, Gaussian W: ordered, critical, chaotic",
    )
    table = [{k: v for k, v in r.items() if k != "layer"} for r in rows]
    (args.out / "summary.json").write_text(json.dumps(table, indent=2))
    lines = [
        f"# Edge of chaos: tanh RNN, N = {args.n}, T = {args.steps}, B = {args.batch}",
        "",
        "| W | g | σ_max(gW) | λ₁ measured | λ₁ mean field | decay rate (95% CI) | regime |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in table:
        lo, hi = r["rate_ci"]
        lines.append(
            f"| {r['init']} | {r['gain']} | {r['sigma_max_W']:.2f} | {r['lambda1']:+.4f} "
            f"| {r['mean_field_lambda1']:+.4f} | {r['rate']:+.4f} ({lo:+.4f}, {hi:+.4f}) "
            f"| {r['regime']} |"
        )
    lines += ["", *findings(table, args.n)]
    lines += ["", f"Measured in {time.perf_counter() - t0:.0f} s by `analyses/edge_of_chaos.py`."]
    (args.out / "summary.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
