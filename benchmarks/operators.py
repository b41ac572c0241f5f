"""Matrix-free LSTM Jacobian products against dense Jacobians followed by a batched product.

Setting: an ``nn.LSTM`` (PyTorch's default init, input 32) with hidden size H in {256, 512,
1024}, so the joint state ``(h, c)`` has D = 2H; 8 sequences x 64 steps give N = 512 recorded
pairs ``(x_t, s_{t-1})``; a block of k = 16 columns per pair; float64; one torch thread. Both
sides compute the same ``(N, D, k)`` result:

(a) ``jvp_state(V)`` = ``J_t V`` in closed form (gates, one GEMM with ``W_hh`` for all
    ``N · k`` columns, elementwise factors; no ``D × D`` matrix);
(b) ``jacobian_state`` (the dense ``(N, D, D)`` Jacobians, what the analysis used before
    the operators) followed by ``torch.bmm(J, V)``;

and likewise ``vjp_state(U)`` = ``J_tᵀ U`` against ``jacobian_state`` + ``bmm(Jᵀ, U)``. The
dense Jacobians of all 512 pairs would need 1, 4 and 16 GiB, so (b) runs over chunks of
pairs of at most 1 GiB of Jacobians (the way dense Jacobians are served in chunks); its
time is the sum over chunks. Times are the best of ``--repeats`` runs in this one process.

    python benchmarks/operators.py [--repeats 3] [--hidden 256 512 1024]
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout
    sys.path.insert(0, str(ROOT))

from gradscope.cells.lstm import LSTMAdapter  # noqa: E402

INPUT, SEQUENCES, STEPS, K = 32, 8, 64, 16
CHUNK_BYTES = 2**30
DTYPE = torch.float64


def recorded_pairs(hidden: int, seed: int = 0):
    """Run an ``nn.LSTM`` layer step by step; return its params and the N = T·B pairs."""
    torch.manual_seed(seed)
    module = torch.nn.LSTM(INPUT, hidden).to(DTYPE)
    adapter = LSTMAdapter()
    params = adapter.fused_params(module, 0, False)
    x = torch.randn(STEPS, SEQUENCES, INPUT, dtype=DTYPE)
    s = torch.zeros(SEQUENCES, 2 * hidden, dtype=DTYPE)
    prev = []
    with torch.no_grad():
        for t in range(STEPS):
            prev.append(s)
            s = adapter.step(params, x[t], s)
    return adapter, params, x.reshape(-1, INPUT), torch.stack(prev).reshape(-1, 2 * hidden)


def best(fn, repeats: int) -> tuple[float, object]:
    """Best wall time of ``fn()`` over ``repeats`` runs after one warm-up, and its result."""
    out = fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def dense_then_bmm(adapter, params, x, s, v, u, chunk: int) -> tuple[float, float, tuple]:
    """Seconds of (jacobians + bmm(J, V)) and (jacobians + bmm(Jᵀ, U)), summed over chunks."""
    t_jac = t_fwd = t_rev = 0.0
    fwd, rev = [], []
    for start in range(0, x.shape[0], chunk):
        sl = slice(start, start + chunk)
        t0 = time.perf_counter()
        jac = adapter.jacobian_state(params, x[sl], s[sl])
        t1 = time.perf_counter()
        fwd.append(torch.bmm(jac, v[sl]))
        t2 = time.perf_counter()
        rev.append(torch.bmm(jac.transpose(1, 2), u[sl]))
        t3 = time.perf_counter()
        t_jac, t_fwd, t_rev = t_jac + t1 - t0, t_fwd + t2 - t1, t_rev + t3 - t2
        del jac
    return t_jac + t_fwd, t_jac + t_rev, (torch.cat(fwd), torch.cat(rev))


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--hidden", type=int, nargs="+", default=[256, 512, 1024])
    args = parser.parse_args()
    torch.set_num_threads(1)
    n = SEQUENCES * STEPS
    print(
        f"LSTM, N = {SEQUENCES} sequences x {STEPS} steps = {n} pairs, k = {K}, float64, "
        f"torch {torch.__version__}, {torch.get_num_threads()} thread, {platform.machine()}; "
        f"best of {args.repeats}"
    )
    head = (
        f"{'H':>5} {'D':>5} {'chunk':>5} | {'jvp_state':>10} {'dense+bmm':>10} {'ratio':>6}"
        f" | {'vjp_state':>10} {'dense+bmmT':>10} {'ratio':>6} | {'rel. diff':>9}"
    )
    print(head)
    print("-" * len(head))
    for hidden in args.hidden:
        adapter, params, x, s = recorded_pairs(hidden)
        d = 2 * hidden
        gen = torch.Generator().manual_seed(1)
        v = torch.randn(n, d, K, dtype=DTYPE, generator=gen)
        u = torch.randn(n, d, K, dtype=DTYPE, generator=gen)
        chunk = max(1, min(n, CHUNK_BYTES // (d * d * 8)))
        t_jvp, jv = best(lambda: adapter.jvp_state(params, x, s, v), args.repeats)  # noqa: B023
        t_vjp, ju = best(lambda: adapter.vjp_state(params, x, s, u), args.repeats)  # noqa: B023
        runs = [dense_then_bmm(adapter, params, x, s, v, u, chunk) for _ in range(args.repeats)]
        t_dfwd = min(r[0] for r in runs)
        t_drev = min(r[1] for r in runs)
        dense_jv, dense_ju = runs[-1][2]
        diff = max(rel(jv, dense_jv), rel(ju, dense_ju))
        print(
            f"{hidden:>5} {d:>5} {chunk:>5} | {t_jvp * 1e3:>8.0f}ms {t_dfwd * 1e3:>8.0f}ms"
            f" {t_dfwd / t_jvp:>5.1f}x | {t_vjp * 1e3:>8.0f}ms {t_drev * 1e3:>8.0f}ms"
            f" {t_drev / t_vjp:>5.1f}x | {diff:>9.1e}",
            flush=True,
        )
        del runs, dense_jv, dense_ju
    print("ratio = dense time / operator time (higher: the operator is faster)")


if __name__ == "__main__":
    main()
