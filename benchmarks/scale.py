"""How ``gs.profile`` scales with the state size, as a multiple of the model's own step.

For 2-layer ``nn.LSTM`` models with hidden 256, 512 and 1024 (input 64, T = 200, batch 8,
float32, PyTorch's default initialisation, seed 0) each configuration runs in a fresh
subprocess that measures

* the model's own forward + backward on the batch (``out.pow(2).mean().backward()``,
  median of 6: 3 after one warm-up before the profile and 3 after it, since a shared
  machine's speed drifts during a run), the step a user trains with;
* ``gs.profile(model, x)`` (recording + the full diagnosis, progress bars off), once;
* the peak resident memory of the process (``ru_maxrss``: the kernel's high-water mark,
  which sees torch's and NumPy's native allocations), and the memory after building the
  model and running its step, as the baseline;

and prints one JSON line; the parent prints the table, with each layer's regime and state
decay rate so that two versions can be compared for the same verdicts.

``--repo PATH`` imports gradscope from another checkout (e.g. a ``git worktree`` of an
older commit) so that before/after run with the same script on the same machine:

    git worktree add /tmp/gs-before <commit>
    python benchmarks/scale.py --repo /tmp/gs-before
    python benchmarks/scale.py

Run: ``python benchmarks/scale.py [--hidden 256 512 1024] [--threads 2]``.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child(hidden: int, T: int, B: int, threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    import gradscope as gs

    torch.manual_seed(0)
    model = torch.nn.LSTM(64, hidden, num_layers=2)
    x = torch.randn(T, B, 64)

    def own_steps(n: int) -> list[float]:
        times = []
        for _ in range(n):
            model.zero_grad()
            t0 = time.perf_counter()
            out, _ = model(x)
            out.pow(2).mean().backward()
            times.append(time.perf_counter() - t0)
        return times

    own_steps(1)  # warm-up
    before = own_steps(3)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    prof = gs.profile(model, x, analysis={"progress": False})
    took = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    # the model's step again after the profile: the machine's speed drifts during a run,
    # so the ratio uses the median of the steps on both sides
    step = statistics.median(before + own_steps(3))
    layers = {}
    for d in prof.diagnosis.layers:
        st = d.decay.get("state")
        layers[d.name] = {
            "regime": d.regime,
            "rate": None if st is None else st.rate,
            "ci": None if st is None else list(st.rate_ci),
            "lambda1": d.lambda1,
            "radius": d.eig.get("median"),
            "smax": d.svd.get("median"),
        }
    print(
        json.dumps(
            {
                "hidden": hidden,
                "step_s": step,
                "profile_s": took,
                "base_mb": base,
                "peak_mb": peak,
                "layers": layers,
            }
        )
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, nargs="+", default=[256, 512, 1024])
    ap.add_argument("--T", type=int, default=200)
    ap.add_argument("--B", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repo", type=Path, default=ROOT)
    ap.add_argument("--child", type=int, default=None)
    args = ap.parse_args()
    if args.child is not None:
        sys.path.insert(0, str(args.repo))
        child(args.child, args.T, args.B, args.threads)
        return
    print(
        f"gradscope from {args.repo}; 2-layer nn.LSTM(64, H), T={args.T}, B={args.B}, "
        f"{args.threads} threads"
    )
    print(
        f"{'hidden':>7} {'fwd+bwd s':>10} {'profile s':>10} {'ratio':>8} {'peak MB':>9} "
        f"{'(+MB)':>7}  layers: regime rate [CI] λ1"
    )
    for h in args.hidden:
        cmd = [
            sys.executable,
            __file__,
            "--child",
            str(h),
            "--T",
            str(args.T),
            "--B",
            str(args.B),
            "--threads",
            str(args.threads),
            "--repo",
            str(args.repo),
        ]
        env = {"GRADSCOPE_PROGRESS": "0", "PATH": "/usr/bin:/bin"}
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
        if out.returncode:
            print(f"{h:>7} failed: {out.stderr.strip().splitlines()[-1:]}")
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        lay = "; ".join(
            f"{n}: {v['regime']} {v['rate']:+.4f} [{v['ci'][0]:+.4f}, {v['ci'][1]:+.4f}] "
            f"λ1 {v['lambda1']:+.4f}"
            for n, v in r["layers"].items()
        )
        print(
            f"{h:>7} {r['step_s']:>10.3f} {r['profile_s']:>10.2f} "
            f"{r['profile_s'] / r['step_s']:>7.1f}× {r['peak_mb']:>9.0f} "
            f"{r['peak_mb'] - r['base_mb']:>+7.0f}  {lay}",
            flush=True,
        )


if __name__ == "__main__":
    main()
