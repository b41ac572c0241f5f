"""Benchmarks of the analysis layer (issues 3 and 10).

A. Memory and time of ``gs.lyapunov(k=16)`` and ``gs.decay`` (state) over 10,000 steps of an
   LSTM with hidden size 256 (state D = 512: h and c), batch 4. All state Jacobians at once
   would take 10,000 · 4 · 512² numbers (42 GB in float32, 84 GB in float64); the analyses
   stream them in chunks. Each measurement runs in a fresh subprocess that loads the saved
   trace and reports its peak resident memory (``resource.getrusage(...).ru_maxrss``, the
   kernel's high-water mark of the whole process, which sees torch's and NumPy's native
   allocations; ``tracemalloc`` would only see Python objects). The baseline is the peak after
   importing gradscope and loading the trace, before the analysis. ``lyapunov`` runs three
   ways: the default (on Jacobian operators at this size), ``method="dense"`` (the dense
   chunked QR iteration, what gradscope did before the operators) and a NumPy QR loop over
   the dense Jacobians streamed in chunks (what a user would otherwise write); ``--repo PATH``
   adds the same measurements with another checkout (e.g. a ``git worktree`` of an older
   commit).

B. The full Lyapunov spectrum (k = 64) of a 64-unit tanh RNN over 2,000 steps, three ways on
   the *same* float64 Jacobians: ``gs.lyapunov``, a plain NumPy QR loop
   (``Q, R = np.linalg.qr(J_t @ Q)``), and the ``lyapynov`` package (PyPI, ``LCE`` on a
   ``DiscreteDS`` whose Jacobian function returns the stored ``J_t``). All three start from
   ``Q_0 = I``, so they compute the same numbers up to rounding; the maximum absolute
   difference is printed, with times (best of 3) and speed ratios. All three run with
   single-threaded BLAS, which is fastest for these sizes on a shared machine.

Run: ``python benchmarks/analysis.py`` (``--steps N`` for a shorter part A).
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


# ----------------------------------------------------------------------------- part A
def build_lstm_trace(path: Path, steps: int, hidden: int = 256, batch: int = 4) -> None:
    """Run an LSTM (PyTorch default init, float32) through the LSTM adapter; save the trace."""
    from gradscope.cells.lstm import LSTMAdapter
    from gradscope.traces import LayerTrace, Trace

    torch.manual_seed(0)
    module = torch.nn.LSTM(32, hidden)
    adapter = LSTMAdapter()
    params = adapter.fused_params(module, 0, False)
    x = torch.randn(steps, batch, 32)
    s = torch.zeros(batch, 2 * hidden)
    states = [s]
    with torch.no_grad():
        for t in range(steps):
            s = adapter.step(params, x[t], s)
            states.append(s)
    layer = LayerTrace(
        "lstm.l0",
        "lstm",
        torch.stack(states),
        x,
        None,
        ("h", "c"),
        (hidden, hidden),
        params,
    )
    Trace([layer]).save(path)


def child(what: str, path: str) -> None:
    """One measurement in this (fresh) process; prints one JSON line."""
    import gradscope  # noqa: F401
    import gradscope as gs  # the public API, so that --repo works with older checkouts

    decay, lyapunov = gs.decay, gs.lyapunov
    layer = gs.load(path)[0]
    base = _maxrss_mb()
    t0 = time.perf_counter()
    if what.startswith("lyapunov"):
        kw = {"method": what.split(":")[1]} if ":" in what else {}
        res = lyapunov(layer, k=16, progress=False, **kw)
        summary = {"lambda1": float(res.exponents[0]), "stderr1": float(res.stderr[0])}
    elif what == "numpy_qr":
        summary = {"lambda1": float(_numpy_qr_streamed(layer, 16)), "stderr1": float("nan")}
    else:
        res = decay(layer, of="state", progress=False)
        summary = {"rate": res.rate, "rate_ci": list(res.rate_ci), "regime": res.regime}
    sec = time.perf_counter() - t0
    print(
        json.dumps(
            {"what": what, "seconds": sec, "base_mb": base, "peak_mb": _maxrss_mb(), **summary}
        )
    )


def _numpy_qr_streamed(layer, k: int) -> float:
    """What a user would write: dense Jacobians in chunks, ``np.linalg.qr(J @ Q)`` per step."""
    rng = np.random.default_rng(0)
    Qs = [np.linalg.qr(rng.standard_normal((layer.D, k)))[0] for _ in range(layer.B)]
    sums = np.zeros((layer.B, k))
    for _, jac in layer.iter_jacobians(chunk=32):
        J = jac.double().numpy()
        for t in range(J.shape[0]):
            for b in range(layer.B):
                Qs[b], R = np.linalg.qr(J[t, b] @ Qs[b])
                sums[b] += np.log(np.abs(np.diag(R)))
    return float(np.sort(sums / layer.T, axis=1)[:, ::-1][:, 0].mean())


def part_a(steps: int, repo: Path | None) -> None:
    T, B, D = steps, 4, 512
    print(f"A. LSTM hidden 256 (D = 512), batch {B}, {T:,} steps")
    print(
        f"   all state Jacobians at once: {T * B * D * D * 4 / 1e9:.0f} GB float32, "
        f"{T * B * D * D * 8 / 1e9:.0f} GB float64"
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "lstm.npz"
        t0 = time.perf_counter()
        build_lstm_trace(path, T)
        print(f"   trace built and saved in {time.perf_counter() - t0:.1f} s")
        print(f"   {'analysis':<22}{'time (s)':>10}{'baseline MB':>14}{'peak MB':>10}  result")
        runs = [
            ("lyapunov", None, "lyapunov(k=16)"),
            ("lyapunov:dense", None, "lyapunov, dense path"),
            ("numpy_qr", None, "NumPy QR loop"),
            ("decay", None, "decay(of='state')"),
        ]
        if repo is not None:
            runs += [("lyapunov", repo, "lyapunov, --repo"), ("decay", repo, "decay, --repo")]
        times = {}
        for what, where, label in runs:
            cmd = [sys.executable, __file__, "--child", what, str(path)]
            if where is not None:
                cmd += ["--repo", str(where)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            times[label] = r["seconds"]
            if what != "decay":
                res = f"λ1 = {r['lambda1']:+.4f} ± {r['stderr1']:.1e}"
            else:
                lo, hi = r["rate_ci"]
                res = f"rate = {r['rate']:+.4f} [{lo:+.4f}, {hi:+.4f}] {r['regime']}"
            sec, base, peak = r["seconds"], r["base_mb"], r["peak_mb"]
            print(f"   {label:<22}{sec:>10.1f}{base:>14.0f}{peak:>10.0f}  {res}")
        t = times["lyapunov(k=16)"]
        print(
            f"   lyapunov speed-up: {times['lyapunov, dense path'] / t:.1f}x over "
            f"the dense path, {times['NumPy QR loop'] / t:.1f}x over the NumPy QR loop"
            + (f", {times['lyapunov, --repo'] / t:.1f}x over --repo" if repo else "")
        )


# ----------------------------------------------------------------------------- part B
def _numpy_loop(J: np.ndarray) -> np.ndarray:
    T, D, _ = J.shape
    Q = np.eye(D)
    s = np.zeros(D)
    for t in range(T):
        Q, R = np.linalg.qr(J[t] @ Q)
        s += np.log(np.abs(np.diag(R)))
    return s / T


def _lyapynov(J: np.ndarray) -> np.ndarray:
    import lyapynov

    T, D, _ = J.shape

    def f(x, t):
        return x

    def jac(x, t):
        return J[int(t)]

    system = lyapynov.DiscreteDS(np.zeros(D), 0, f, jac)
    return np.asarray(lyapynov.LCE(system, D, 0, T, False))


def _best(fn, reps: int = 3) -> tuple[float, object]:
    best, out = math.inf, None
    for _ in range(reps):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def part_b() -> None:
    from gradscope._progress import compute_threads
    from gradscope.analysis.lyapunov import lyapunov
    from gradscope.cells.vanilla import VanillaAdapter
    from gradscope.traces import LayerTrace

    N, T = 64, 2000
    print(
        f"\nB. Full Lyapunov spectrum (k = {N}) of a {N}-unit tanh RNN, {T:,} steps, same Jacobians"
    )
    rng = np.random.default_rng(0)
    params = {
        "weight_hh": torch.as_tensor(1.5 * rng.standard_normal((N, N)) / math.sqrt(N)),
        "weight_ih": torch.as_tensor(rng.standard_normal((N, 8)) / math.sqrt(8)),
    }
    x = torch.as_tensor(rng.standard_normal((T, 1, 8)))
    adapter = VanillaAdapter("tanh")
    s = [torch.zeros(1, N, dtype=torch.float64)]
    for t in range(T):
        s.append(adapter.step(params, x[t], s[-1]))
    live = LayerTrace("rnn", "rnn_tanh", torch.stack(s), x, None, ("h",), (N,), params)
    J = live.jacobians()  # (T, 1, N, N) float64
    stored = LayerTrace(
        "rnn", "rnn_tanh", live.states, x, None, ("h",), (N,), params, stored_jacobians={"state": J}
    )
    Jn = J[:, 0].numpy()
    try:
        import lyapynov  # noqa: F401

        have_lyapynov = True
    except ImportError:
        have_lyapynov = False
        print("   lyapynov is not installed (pip install lyapynov): its column is skipped")
    with compute_threads(1):
        t_gs, ly = _best(lambda: lyapunov(stored, init="identity", progress=False))
        t_np, ref = _best(lambda: _numpy_loop(Jn))
        if have_lyapynov:
            t_ly, lyp = _best(lambda: _lyapynov(Jn))
    ours = ly.exponents
    ref = np.sort(ref)[::-1]
    print(
        f"   {'method':<26}{'time (s)':>10}{'max |Δλ| vs gradscope':>24}{'gradscope speed-up':>20}"
    )
    print(f"   {'gradscope.lyapunov':<26}{t_gs:>10.3f}{'':>24}{'':>20}")
    d_np = np.abs(ref - ours).max()
    print(f"   {'NumPy QR loop':<26}{t_np:>10.3f}{d_np:>24.2e}{t_np / t_gs:>19.2f}×")
    if have_lyapynov:
        lyp = np.sort(lyp)[::-1]
        d_ly = np.abs(lyp - ours).max()
        print(f"   {'lyapynov.LCE':<26}{t_ly:>10.3f}{d_ly:>24.2e}{t_ly / t_gs:>19.2f}×")
    print(
        f"   λ1 = {ours[0]:+.5f}, λ64 = {ours[-1]:+.5f}, Kaplan–Yorke dimension "
        f"{ly.kaplan_yorke:.3f}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=10_000, help="steps of part A")
    ap.add_argument("--skip-a", action="store_true")
    ap.add_argument("--repo", type=Path, default=None, help="also time another checkout")
    ap.add_argument("--child", nargs=2, metavar=("WHAT", "PATH"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        if args.repo is not None:
            sys.path.insert(0, str(args.repo))
        child(*args.child)
        return
    print(f"python {sys.version.split()[0]}, torch {torch.__version__}, numpy {np.__version__}")
    if not args.skip_a:
        part_a(args.steps, args.repo)
    part_b()


if __name__ == "__main__":
    main()
