"""Closed-form LSTM Jacobians against the alternatives, and against the cost of a copy.

Setting (issue 2): an ``nn.LSTMCell`` with input 32 and hidden 128 (state D = h + c = 256),
run for 128 steps on a batch of 16 in float32 on the CPU; the recorded states form a real
``LayerTrace``. Every method computes all T·B = 2048 state Jacobians ``∂s_t/∂s_{t-1}``
(256 x 256 each, 512 MiB in all):

(a) closed form: ``layer.jacobians()`` (gradscope's LSTM adapter);
(b) ``torch.func.vmap(jacrev(f))`` of the ``nn.LSTMCell``'s own functional forward, over
    all T·B pairs (plain, as the goal is stated, and with ``chunk_size=128``, which is
    faster here because the vectorised backward of all pairs at once does not fit in cache);
(c) a Python loop of ``torch.autograd.functional.jacobian`` over timesteps and sequences;
    when the full loop would take over 60 s, a subset is timed and the total extrapolated
    linearly (the output says so);
(d) the floor: ``clone()`` of a tensor of the result's size (allocation + copy, what any
    method that returns a fresh result must pay). The closed form allocates large outputs
    through NumPy, which asks for transparent huge pages (``gradscope.cells.blocks.new_output``),
    so two more floors are printed for a like-for-like reading: a copy into memory from that
    same allocator, and ``copy_`` into a preallocated tensor (memory bandwidth only).

Times are medians of repeated runs in one process, with a fixed number of threads.

    python benchmarks/jacobians.py [--threads 1] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.func import functional_call, jacrev, vmap

from gradscope.cells import adapter_for
from gradscope.cells.blocks import new_output
from gradscope.traces import LayerTrace

INPUT, HIDDEN, BATCH, STEPS = 32, 128, 16, 128
LOOP_BUDGET_S = 60.0


def median_time(fn: Callable[[], object], repeats: int, warmup: int = 1) -> tuple[float, list]:
    """Median wall time of ``fn()`` over ``repeats`` runs (after ``warmup`` runs)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def interleaved(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """Wall times of each function, run in turn ``repeats`` times (after one warm-up each)."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


def build_layer(seed: int = 0) -> tuple[nn.LSTMCell, LayerTrace]:
    """Run an LSTMCell for STEPS steps and wrap its states in a LayerTrace."""
    torch.manual_seed(seed)
    cell = nn.LSTMCell(INPUT, HIDDEN)
    adapter = adapter_for(cell)
    inputs = torch.randn(STEPS, BATCH, INPUT)
    h = torch.zeros(BATCH, HIDDEN)
    c = torch.zeros(BATCH, HIDDEN)
    states = [torch.cat([h, c], dim=-1)]
    with torch.no_grad():
        for t in range(STEPS):
            h, c = cell(inputs[t], (h, c))
            states.append(torch.cat([h, c], dim=-1))
    layer = LayerTrace(
        name="bench.lstm",
        kind=adapter.kind,
        states=torch.stack(states),
        inputs=inputs,
        lengths=None,
        state_names=adapter.state_names,
        state_sizes=(HIDDEN, HIDDEN),
        params=adapter.cell_params(cell),
        adapter=adapter,
    )
    return cell, layer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (1)")
    parser.add_argument("--repeats", type=int, default=5, help="runs per fast method (5)")
    parser.add_argument("--subset", type=int, default=64, help="pairs timed for the loop (64)")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    cell, layer = build_layer()
    n_pairs = layer.T * layer.B
    d = layer.D
    params = {k: v.detach() for k, v in cell.named_parameters()}
    xs = layer.inputs.reshape(n_pairs, INPUT)
    ss = layer.states[:-1].reshape(n_pairs, d)

    def cell_forward(x1: Tensor, s1: Tensor) -> Tensor:
        """The nn.LSTMCell's own forward on one unbatched (x, (h, c)), flat state out."""
        h1, c1 = functional_call(cell, params, (x1, (s1[:HIDDEN], s1[HIDDEN:])))
        return torch.cat([h1, c1])

    result_bytes = n_pairs * d * d * 4
    print(
        f"gradscope Jacobian benchmark: LSTMCell(input={INPUT}, hidden={HIDDEN}), "
        f"batch {BATCH}, {STEPS} steps, float32, CPU"
    )
    print(
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, "
        f"{platform.processor() or platform.machine()}; result {n_pairs} x {d} x {d} "
        f"= {result_bytes / 2**20:.0f} MiB"
    )
    thp = os.environ.get("THP_MEM_ALLOC_ENABLE", "0")
    print(
        f"THP_MEM_ALLOC_ENABLE={thp} (1: PyTorch's own allocator also uses transparent huge "
        "pages, as gradscope's new_output does anyway; that speeds up clone and the baselines)"
    )

    # (a) closed form and (d) the floor, measured interleaved so that load from other
    # processes affects them alike
    closed = layer.jacobians()
    target = torch.empty_like(closed)
    paired = interleaved(
        {
            "closed": layer.jacobians,
            "clone": closed.clone,
            "copy": lambda: target.copy_(closed),
            "same_alloc": lambda: new_output(tuple(closed.shape), closed).copy_(closed),
        },
        args.repeats,
    )
    t_closed, t_clone, t_copy, t_same = (
        statistics.median(paired[k]) for k in ("closed", "clone", "copy", "same_alloc")
    )

    # (b) vmap(jacrev) over all pairs; also check it agrees with the closed form
    jac_fn = jacrev(cell_forward, argnums=1)
    reference = vmap(jac_fn)(xs, ss)
    err = float((closed.reshape(n_pairs, d, d) - reference).abs().max())
    del reference
    vmap_repeats = max(2, args.repeats // 2)
    t_vmap, runs_vmap = median_time(lambda: vmap(jac_fn)(xs, ss), vmap_repeats)
    t_vmap_c, runs_vmap_c = median_time(lambda: vmap(jac_fn, chunk_size=128)(xs, ss), vmap_repeats)

    # (c) loop of torch.autograd.functional.jacobian over (t, b)
    def loop(count: int) -> None:
        for k in range(count):
            x1 = xs[k]
            torch.autograd.functional.jacobian(lambda s1, x1=x1: cell_forward(x1, s1), ss[k])

    subset = min(args.subset, n_pairs)
    t_sub, _ = median_time(lambda: loop(subset), 3)
    estimate = t_sub * n_pairs / subset
    if estimate > LOOP_BUDGET_S:
        t_loop = estimate
        loop_note = (
            f"extrapolated linearly from {subset} of {n_pairs} pairs "
            f"({t_sub:.2f} s; full loop would exceed {LOOP_BUDGET_S:.0f} s)"
        )
    else:
        t_loop, _ = median_time(lambda: loop(n_pairs), 1, warmup=0)
        loop_note = "full loop, 1 run"

    rows = [
        ("(a) closed form  layer.jacobians()", t_closed, f"median of {args.repeats}"),
        ("(b) vmap(jacrev) of LSTMCell", t_vmap, f"median of {len(runs_vmap)}"),
        ("(b') vmap(jacrev, chunk_size=128)", t_vmap_c, f"median of {len(runs_vmap_c)}"),
        ("(c) loop of autograd.functional.jacobian", t_loop, loop_note),
        ("(d) floor: clone() of result size", t_clone, f"median of {args.repeats}"),
        ("    new_output() + copy_ (same allocator)", t_same, f"median of {args.repeats}"),
        ("    copy_ into preallocated tensor", t_copy, "bandwidth only, no allocation"),
    ]
    print()
    print(f"{'method':44s} {'seconds':>10s} {'us/Jacobian':>12s} {'x closed':>9s}  note")
    for name, sec, note in rows:
        print(f"{name:44s} {sec:10.4f} {sec / n_pairs * 1e6:12.2f} {sec / t_closed:9.2f}  {note}")
    print(f"\nclosed form vs vmap(jacrev): max |difference| = {err:.2e} (float32)")

    checks = [
        ("closed vs vmap(jacrev)", t_vmap / t_closed, ">=", 10.0),
        ("closed vs vmap(jacrev, chunk_size=128)", t_vmap_c / t_closed, ">=", 10.0),
        ("closed vs per-step autograd loop", t_loop / t_closed, ">=", 100.0),
        ("closed / clone floor", t_closed / t_clone, "<=", 3.0),
    ]
    print()
    for name, ratio, op, goal in checks:
        ok = ratio >= goal if op == ">=" else ratio <= goal
        print(f"{name:40s} {ratio:8.2f}x  goal {op} {goal:g}x  {'met' if ok else 'MISSED'}")
    print(
        f"{'closed / (same allocator + copy)':40s} {t_closed / t_same:8.2f}x  "
        "(like-for-like floor: the same allocation as (a), then a copy)"
    )
    print(
        f"{'closed / copy_ into preallocated':40s} {t_closed / t_copy:8.2f}x  "
        "(no goal: (a) pays for allocating fresh memory, copy_ does not)"
    )


if __name__ == "__main__":
    main()
