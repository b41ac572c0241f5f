"""Cost of gs.Monitor in a real LSTM training loop: time overhead and memory.

Setup (issue 5): nn.LSTM(input 32, hidden 256) + linear head, batch 32, sequence 50, Adam,
on the CPU (``--device cuda`` for a GPU). One model, optimizer and Monitor; runs with and
without the Monitor alternate in one process (the order flips every round; "without" runs
have the Monitor paused: no hooks, no calls), each run ``--steps`` training steps, after one
first pair of runs, reported apart: the Monitor's first sampled step is always analysed
(about 1 s here), a one-off cost. The overhead is reported as the median over rounds of
the paired ratio (monitored run / adjacent plain run) minus one, with its interquartile
range, and as the ratio of the total times minus one (which spreads the occasional
analysis of ``analyze="auto"`` fairly), without and with the first pair. With ``every=50``
a 100-step run samples 2 steps: one in 50. ``every=1`` samples (and records) every step;
its rows run with ``analyze=False``, with and without the gate numbers (``gates=``).

On a shared 2-core machine the alternating runs resolve a few percent at best; the script
also prints the overhead of ``every=50`` projected over 1,000 to 100,000 steps from the
medians of 15 paired single steps (a sampled step's and an analysed step's extra cost) and
the ``analyze="auto"`` rule (:func:`projected`).

Memory: a separate Monitor(every=50) trains for ``--memory-steps`` steps; the resident set
size (VmRSS from /proc/self/status, else ru_maxrss) is read after 100 steps and at five
checkpoints up to the end, next to the bytes the history holds.

    python benchmarks/monitor.py                 # the full run (about 6 minutes on 2 cores)
    python benchmarks/monitor.py --quick         # a smoke run
    python benchmarks/monitor.py --device cuda   # on a GPU
"""

from __future__ import annotations

import argparse
import gc
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout
import gradscope as gs

I, H, B, T = 32, 256, 32, 50


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(I, H)
        self.head = nn.Linear(H, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x)
        return self.head(out[-1])


def rss_mib() -> float:
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Loop:
    """One model, optimizer and a fixed pool of batches (no data loading in the timings)."""

    def __init__(self, seed: int = 0, device: str = "cpu") -> None:
        torch.manual_seed(seed)
        self.device = torch.device(device)
        self.model = Net().to(self.device)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-3)
        self.data = [
            (torch.randn(T, B, I, device=self.device), torch.randn(B, 1, device=self.device))
            for _ in range(8)
        ]
        self.i = 0

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def step(self, monitor: gs.Monitor | None) -> None:
        x, y = self.data[self.i % len(self.data)]
        self.i += 1
        loss = ((self.model(x) - y) ** 2).mean()
        self.opt.zero_grad()
        loss.backward()
        if monitor is not None:
            monitor.step()
        self.opt.step()

    def run(self, steps: int, monitor: gs.Monitor | None) -> float:
        gc.collect()
        self.sync()
        start = time.perf_counter()
        for _ in range(steps):
            self.step(monitor)
        self.sync()
        return time.perf_counter() - start


def overhead(loop: Loop, rounds: int, steps: int, monitor: gs.Monitor) -> dict:
    """Alternate runs without (the Monitor paused: no hooks, no calls) and with it.

    Each round is a pair of adjacent runs (their order flips every round), so slow drifts
    of a shared machine cancel in the per-pair ratio ``monitored / plain``.
    """
    with monitor.paused():
        plain0 = loop.run(steps, None)
    first = loop.run(steps, monitor)  # the first sampled step is always analysed
    plain, monitored = [], []
    analysed0 = _analysed(monitor)
    for r in range(rounds):
        for which in ("plain", "monitor") if r % 2 == 0 else ("monitor", "plain"):
            if which == "plain":
                with monitor.paused():
                    plain.append(loop.run(steps, None))
            else:
                monitored.append(loop.run(steps, monitor))
    ratios = sorted(m / p for m, p in zip(monitored, plain))
    q1, q3 = np.percentile(ratios, [25, 75])
    return {
        "plain_ms_per_step": 1e3 * statistics.median(plain) / steps,
        "monitor_ms_per_step": 1e3 * statistics.median(monitored) / steps,
        "overhead_pairs": statistics.median(ratios) - 1.0,
        "overhead_iqr": (q1 - 1.0, q3 - 1.0),
        "overhead_total": sum(monitored) / sum(plain) - 1.0,
        "overhead_with_first": (first + sum(monitored)) / (plain0 + sum(plain)) - 1.0,
        "first_run_overhead": first / plain0 - 1.0,
        "plain_runs_s": plain,
        "monitor_runs_s": monitored,
        "analysed": _analysed(monitor) - analysed0,
    }


def _analysed(monitor: gs.Monitor) -> int:
    """Sampled steps that got the loss-independent summaries (a finite state-decay rate)."""
    hist = monitor.history
    if not len(hist):
        return 0
    return int(np.isfinite(hist.scalar(hist.names[0], "radius_max")).sum())


def sampled_step_cost(loop: Loop, n: int, **kwargs) -> float:
    """Median extra seconds of one sampled step over a plain step (paired runs)."""
    monitor = gs.Monitor(loop.model, every=1, **kwargs)
    extra = []
    for _ in range(n):
        with monitor.paused():
            plain = loop.run(1, None)
        extra.append(loop.run(1, monitor) - plain)
    monitor.close()
    return statistics.median(extra)


def projected(
    plain: float, sampled: float, analysed: float, every: int, steps: int, budget: float = 0.02
) -> tuple[float, int]:
    """The Monitor's overhead over a run of ``steps`` training steps, from measured costs.

    ``sampled``: the extra seconds of a sampled step (recording, grad norms, gate numbers),
    ``analysed``: the further extra of an analysed one, ``plain``: one plain step. The
    ``analyze="auto"`` rule of :class:`gradscope.monitor.budget.AnalysisBudget` decides
    which sampled steps are analysed: the first, one per doubling, and any whose cost
    keeps the Monitor's total within ``budget`` of the training time. A model of the long
    run built on the medians of many paired steps, which the alternating runs above cannot
    resolve to a percent on a shared machine.

    Returns:
        ``(overhead as a fraction of the training time, analysed sampled steps)``.
    """
    train = spent = 0.0
    last = None
    count = 0
    for n in range(steps // every):
        train += every * plain
        spent += sampled
        if last is None or n >= 2 * last + 1 or spent + analysed <= budget * train:
            spent += analysed
            last, count = n, count + 1
    return spent / max(train, 1e-300), count


def exact_floor(loop: Loop, n: int) -> tuple[float, float]:
    """Median seconds of a plain step and of the arithmetic an exact sampled step cannot skip.

    The floor: the gate pre-activations of all ``T`` steps from the module's outputs (two
    GEMMs over ``T · B`` rows), their activations and ``tanh(c_t)`` (one elementwise pass
    each), and the backward sweep's ``T`` GEMMs ``(B × 4H) × (4H × H)``: the replay and
    the sweep with nothing else, timed the same way as the plain step on the same machine.
    """
    lstm = loop.model.lstm
    w_ih, w_hh = lstm.weight_ih_l0.detach(), lstm.weight_hh_l0.detach()
    bias = (lstm.bias_ih_l0 + lstm.bias_hh_l0).detach()
    x = loop.data[0][0].reshape(T * B, I)
    h = torch.randn(T * B, H, device=loop.device)
    ga = torch.randn(B, 4 * H, device=loop.device)
    out = torch.empty(B, H, device=loop.device)

    def floor() -> None:
        a = torch.addmm(bias, x, w_ih.T).addmm_(h, w_hh.T)
        a[:, : 2 * H].sigmoid_()
        a[:, 2 * H : 3 * H].tanh_()
        a[:, 3 * H :].sigmoid_()
        torch.tanh(a[:, :H])
        for _ in range(T):
            torch.mm(ga, w_hh, out=out)
        loop.sync()

    plain, least = [], []
    for _ in range(n):
        plain.append(loop.run(1, None))
        t0 = time.perf_counter()
        floor()
        least.append(time.perf_counter() - t0)
    return statistics.median(plain), statistics.median(least)


def memory(loop: Loop, steps: int, every: int) -> dict[int, tuple[float, int, int]]:
    """RSS, history bytes and sampled steps after 100 steps and at five even checkpoints."""
    monitor = gs.Monitor(loop.model, every=every)
    marks = {100, *(round(steps * f) for f in (0.2, 0.4, 0.6, 0.8, 1.0))}
    out = {}
    for s in range(1, steps + 1):
        loop.step(monitor)
        if s in marks:
            gc.collect()
            out[s] = (rss_mib(), monitor.history.nbytes, len(monitor.history))
    monitor.close()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--every1-steps", type=int, default=20)
    ap.add_argument("--memory-steps", type=int, default=2000)
    ap.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke run")
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = ap.parse_args(argv)
    if args.quick:
        args.rounds, args.steps, args.every1_steps, args.memory_steps = 2, 100, 4, 200
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"LSTM input {I}, hidden {H}, batch {B}, sequence {T}, Adam; torch "
        f"{torch.__version__}, device {args.device}, {torch.get_num_threads()} CPU threads; "
        f"gradscope {gs.__version__}"
    )
    loop = Loop(device=args.device)
    for _ in range(10):  # warm up allocator, kernels, lazy imports
        loop.step(None)
    warm = gs.Monitor(loop.model, every=1)
    loop.run(2, warm)
    warm.close()

    plain, least = exact_floor(loop, 20)
    print(
        f"\nplain step {plain * 1e3:.1f} ms; the arithmetic an exact sampled step cannot skip "
        f"(replay GEMMs and activations, the sweep's {T} GEMMs) {least * 1e3:.1f} ms = "
        f"{least / plain:.2f} of a plain step (median of 20)"
    )
    pairs = 4 if args.quick else 15
    print(f"\nextra seconds of one sampled step over a plain step (median of {pairs} paired runs):")
    costs = {}
    for label, kw in (
        ("recording + grad norms + gate numbers (analyze=False)", {"analyze": False}),
        ("recording + grad norms + analyses, default sizes (analyze=True)", {"analyze": True}),
    ):
        costs[kw["analyze"]] = sampled_step_cost(loop, pairs, **kw)
        print(f"  {label}: {costs[kw['analyze']] * 1e3:.0f} ms")
    for n in (1_000, 10_000, 100_000):
        frac, count = projected(plain, costs[False], costs[True] - costs[False], 50, n)
        print(
            f"  projected every=50 overhead over {n:,} steps (defaults, from these costs and "
            f"the plain step): {100 * frac:+.1f}%, {count} analysed sampled steps; the "
            f"sampled steps alone {100 * costs[False] / (50 * plain):+.1f}%"
        )

    for label, every, steps, kw in (
        ("every=50 (defaults: analyze='auto', budget 2%)", 50, args.steps, {}),
        (
            "every=50, analyze=False (grad norms and gate numbers)",
            50,
            args.steps,
            {"analyze": False},
        ),
        (
            "every=1, analyze=False (grad norms and gate numbers)",
            1,
            args.every1_steps,
            {"analyze": False},
        ),
        (
            "every=1, analyze=False, gates=False (grad norms only)",
            1,
            args.every1_steps,
            {"analyze": False, "gates": False},
        ),
    ):
        monitor = gs.Monitor(loop.model, every=every, **kw)
        res = overhead(loop, args.rounds, steps, monitor)
        monitor.close()
        print(
            f"\n{label}: {args.rounds} rounds x {steps} steps each way, alternating\n"
            f"  plain   {res['plain_ms_per_step']:.1f} ms/step (median run)\n"
            f"  monitor {res['monitor_ms_per_step']:.1f} ms/step (median run)\n"
            f"  overhead {100 * res['overhead_pairs']:+.1f}% (median of paired ratios; IQR "
            f"{100 * res['overhead_iqr'][0]:+.1f}% .. {100 * res['overhead_iqr'][1]:+.1f}%), "
            f"{100 * res['overhead_total']:+.1f}% (ratio of totals); "
            f"{res['analysed']} analysed sampled steps in the measured runs\n"
            f"  first run (holds the Monitor's first sampled step: analysed unless "
            f"analyze=False) "
            f"{100 * res['first_run_overhead']:+.1f}%; all {args.rounds + 1} runs with it: "
            f"{100 * res['overhead_with_first']:+.1f}% (ratio of totals)"
        )

    mem = memory(loop, args.memory_steps, 50)
    first, last = mem[100], mem[args.memory_steps]
    print(
        f"\nmemory, Monitor(every=50): RSS after 100 steps {first[0]:.1f} MiB, after "
        f"{args.memory_steps} steps {last[0]:.1f} MiB (growth {last[0] - first[0]:+.1f} MiB); "
        f"history {first[2]} -> {last[2]} sampled steps, {first[1]} -> {last[1]} bytes\n"
        "  RSS at " + ", ".join(f"{s}: {v[0]:.1f}" for s, v in sorted(mem.items())) + " MiB"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
