"""The Monitor's extra cost for its gate summaries, in a real training loop (issue 12).

Setup as ``benchmarks/monitor.py``: a recurrent layer (input 32, hidden 256) + linear head,
batch 32, sequence 50, Adam, on the CPU; for each of LSTM, GRU and vanilla tanh RNN. One model,
optimizer and ``Monitor(every=1, analyze=False)``: every step is sampled and recorded (the
most the gate summaries can cost relative to training). Runs of ``--steps`` steps alternate
between ``gates=True`` and ``gates=False`` on that same Monitor (its ``options["gates"]``,
order flipped every round) and plain runs (the Monitor paused); reported: the median over
rounds of the paired ratio (gates on / gates off), and of (gates on / plain). Times are this
process's CPU time by default (``--clock wall`` for wall time), so that other processes on a
shared machine do not enter the ratios; run with ``--threads 1`` for CPU time to be work.

Then, on the latest sampled step's trace: the time of :func:`gate_summary` alone, with and
without ``paths`` (the path share / factor norm that only analysed steps get), median of
``--repeats`` calls.

    python benchmarks/monitor_gates.py            # about 2 minutes on 2 busy cores
    python benchmarks/monitor_gates.py --quick    # a smoke run
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout
import gradscope as gs
from gradscope.analysis.gates.summary import gate_summary

I, H, B, T = 32, 256, 32, 50
#: The clock: this process's CPU time (``--clock cpu``, the default: other processes on a
#: shared machine do not count) or wall time (``--clock wall``).
CLOCK = time.process_time
CELLS = {"LSTM": nn.LSTM, "GRU": nn.GRU, "RNN (tanh)": nn.RNN}


class Net(nn.Module):
    def __init__(self, cls: type[nn.Module]) -> None:
        super().__init__()
        self.rnn = cls(I, H)
        self.head = nn.Linear(H, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.head(out[-1])


def run(model, opt, data, steps: int, monitor: gs.Monitor | None) -> float:
    gc.collect()
    start = CLOCK()
    for i in range(steps):
        x, y = data[i % len(data)]
        loss = ((model(x) - y) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        if monitor is not None:
            monitor.step()
        opt.step()
    return CLOCK() - start


def measure(cls: type[nn.Module], rounds: int, steps: int, repeats: int) -> dict:
    torch.manual_seed(0)
    model = Net(cls)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    data = [(torch.randn(T, B, I), torch.randn(B, 1)) for _ in range(4)]
    run(model, opt, data, 5, None)  # warm up
    monitor = gs.Monitor(model, every=1, analyze=False)
    run(model, opt, data, 2, monitor)
    on, off, plain = [], [], []
    for r in range(rounds):
        order = ("on", "off", "plain") if r % 2 == 0 else ("plain", "off", "on")
        for which in order:
            if which == "plain":
                with monitor.paused():
                    plain.append(run(model, opt, data, steps, None))
                continue
            monitor.options["gates"] = which == "on"
            (on if which == "on" else off).append(run(model, opt, data, steps, monitor))
    layer = monitor.latest.trace.layers[0]
    monitor.close()
    cost = {}
    for paths in (False, True):
        times = []
        for _ in range(repeats):
            start = CLOCK()
            gate_summary(layer, paths=paths, seqs=2)
            times.append(CLOCK() - start)
        cost[paths] = statistics.median(times)
    return {
        "plain": 1e3 * statistics.median(plain) / steps,
        "off": 1e3 * statistics.median(off) / steps,
        "on": 1e3 * statistics.median(on) / steps,
        "on_off": statistics.median(a / b for a, b in zip(on, off)),
        "on_off_iqr": statistics.quantiles([a / b for a, b in zip(on, off)], n=4)[::2]
        if rounds > 1
        else (float("nan"), float("nan")),
        "on_plain": statistics.median(a / b for a, b in zip(on, plain)),
        "off_plain": statistics.median(a / b for a, b in zip(off, plain)),
        "summary_ms": 1e3 * cost[False],
        "summary_paths_ms": 1e3 * cost[True],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--cells", default=",".join(CELLS), help="comma-separated subset")
    ap.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    args = ap.parse_args(argv)
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.rounds, args.steps, args.repeats = 2, 2, 2
    print(
        f"input {I}, hidden {H}, batch {B}, sequence {T}, Adam, Monitor(every=1, "
        f"analyze=False); torch {torch.__version__}, {torch.get_num_threads()} CPU threads; "
        f"{args.rounds} rounds x {args.steps} steps per arm; {args.clock} time; load average "
        f"{Path('/proc/loadavg').read_text().split()[0] if Path('/proc/loadavg').exists() else '?'}"
    )
    for label in args.cells.split(","):
        cls = CELLS[label]
        r = measure(cls, args.rounds, args.steps, args.repeats)
        print(
            f"\n{label}: ms/step (median run) plain {r['plain']:.1f}, Monitor gates off "
            f"{r['off']:.1f}, gates on {r['on']:.1f}\n"
            f"  gates on / gates off: {r['on_off']:.3f} (median of paired ratios; IQR "
            f"{r['on_off_iqr'][0]:.3f} .. {r['on_off_iqr'][1]:.3f}); Monitor vs plain: "
            f"off {r['off_plain']:.2f}x, on {r['on_plain']:.2f}x\n"
            f"  gate_summary alone on one step's trace: {r['summary_ms']:.1f} ms; with paths "
            f"(analysed steps only): {r['summary_paths_ms']:.1f} ms"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
