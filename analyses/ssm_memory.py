"""How far back do a Mamba layer, a minGRU and an LSTM remember, before and after learning?

Question: on the adding problem at T = 200 (two marked values among 200 random ones; the
target is their sum), how do the memory timescales of a diagonal recurrence (Mamba's
selective SSM, a minGRU) change when it learns the task, and how does that compare with the
gradient decay of an LSTM trained the same way?

For each model (sizes in the table, with their parameter counts), seeded:
gradscope's diagnosis at initialisation and after training (Adam, the same batches and
budget for all); the test MSE against the predict-the-mean baseline; for the diagonal
recurrences the share of state coordinates whose timescale τ = −1/mean ln|λ_t| reaches T,
the median τ and the selectivity of the decay; for every layer the state-decay rate and
regime. Nothing is asserted: the tables say what was measured.

Writes ``reports/ssm_memory/``: ``summary.json``, ``summary.md`` (the table) and
``report.html`` (gradscope's comparison report of the six diagnoses, with the timescale
and selectivity panels of the diagonal layers).

Run: ``python analyses/ssm_memory.py [--steps 200] [--T 200]`` (about 25 minutes on 2 shared
CPU cores, almost all of it Mamba's training: the backward of ``transformers``' reference
PyTorch scan indexes a ``(B, E, T, N)`` tensor once per step, 1.5-7 s per Adam step here,
where the LSTM takes 10 ms; so the budget is small, the same 200 steps for every model).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

import gradscope as gs

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "reports" / "ssm_memory"
sys.path.insert(0, str(ROOT / "examples"))

from mingru import MinGRU  # noqa: E402  (examples/mingru.py registers its adapter)


def adding_batch(n: int, T: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs ``(n, T, 2)`` (value, marker) and targets ``(n,)``: the sum of the two marked."""
    values = torch.rand(n, T, generator=gen)
    marks = torch.zeros(n, T)
    first = torch.randint(0, T // 2, (n,), generator=gen)
    second = torch.randint(T // 2, T, (n,), generator=gen)
    marks[torch.arange(n), first] = 1.0
    marks[torch.arange(n), second] = 1.0
    return torch.stack([values, marks], dim=-1), (values * marks).sum(1)


class Head(nn.Module):
    """``recurrence(x (B, T, 2)) -> (B, T, H)``, then a linear read-out of the last step."""

    def __init__(self, kind: str, hidden: int) -> None:
        super().__init__()
        self.kind = kind
        if kind == "lstm":
            self.rnn = nn.LSTM(2, hidden, batch_first=True)
            with torch.no_grad():  # forget-gate bias 1 (Gers et al. 2000)
                self.rnn.bias_ih_l0[hidden : 2 * hidden].fill_(1.0)
        elif kind == "mingru":
            self.rnn = MinGRU(2, hidden)
        else:
            from transformers import MambaConfig, MambaModel

            self.embed = nn.Linear(2, hidden)
            cfg = MambaConfig(
                hidden_size=hidden,
                state_size=16,
                num_hidden_layers=1,
                intermediate_size=2 * hidden,
                vocab_size=2,
                residual_in_fp32=False,
            )
            self.rnn = MambaModel(cfg)
        self.out = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "lstm":
            h, _ = self.rnn(x)
        elif self.kind == "mingru":
            h = self.rnn(x)
        else:
            h = self.rnn(inputs_embeds=self.embed(x), use_cache=False).last_hidden_state
        return self.out(h[:, -1]).squeeze(-1)


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        return float(((model(x) - y) ** 2).mean())


def summarise(diag: gs.Diagnosis) -> list[dict]:
    rows = []
    for d in diag:
        st = d.decay.get("state")
        mem = d.memory
        rows.append(
            dict(
                layer=d.name,
                kind=d.kind,
                D=d.D,
                regime=d.regime,
                rate=None if st is None else float(st.rate),
                lambda1=float(d.lambda1),
                frac_long=None if mem is None else mem.frac_long,
                median_tau=None if mem is None else mem.median_tau,
                selectivity=None if mem is None else mem.median_selectivity,
            )
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--T", type=int, default=200)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(2)
    OUT.mkdir(parents=True, exist_ok=True)
    T = args.T
    test_x, test_y = adding_batch(512, T, torch.Generator().manual_seed(10_000))
    baseline = float(((test_y - test_y.mean()) ** 2).mean())
    probe_x, _ = adding_batch(4, T, torch.Generator().manual_seed(20_000))
    sizes = {"mamba": 24, "mingru": 256, "lstm": 32}
    results: dict[str, dict] = {}
    diagnoses: dict[str, gs.Diagnosis] = {}
    for kind, hidden in sizes.items():
        torch.manual_seed(args.seed)
        model = Head(kind, hidden)
        n_params = sum(p.numel() for p in model.parameters())
        model.eval()
        t0 = time.perf_counter()
        diag0 = gs.diagnose(gs.trace(model, probe_x), progress=False)
        print(f"{kind}: diagnosed at init in {time.perf_counter() - t0:.0f} s", flush=True)
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        gen = torch.Generator().manual_seed(args.seed + 1)
        t0 = time.perf_counter()
        for i in range(args.steps):
            if i % 50 == 0:
                print(f"{kind}: step {i}, {time.perf_counter() - t0:.0f} s", flush=True)
            model.train()
            x, y = adding_batch(args.batch, T, gen)
            loss = ((model(x) - y) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
        train_s = time.perf_counter() - t0
        mse = evaluate(model, test_x, test_y)
        diag1 = gs.diagnose(gs.trace(model, probe_x), progress=False)
        diagnoses[f"{kind} at init"] = diag0
        diagnoses[f"{kind} trained"] = diag1
        results[kind] = dict(
            hidden=hidden,
            params=n_params,
            train_seconds=round(train_s, 1),
            test_mse_over_baseline=mse / baseline,
            init=summarise(diag0),
            trained=summarise(diag1),
        )
        print(f"{kind}: {n_params} params, MSE/baseline {mse / baseline:.3f}, {train_s:.0f} s")
    meta = dict(T=T, steps=args.steps, batch=args.batch, seed=args.seed, baseline_mse=baseline)
    (OUT / "summary.json").write_text(json.dumps(dict(meta=meta, results=results), indent=1))
    lines = [
        f"# Memory on the adding problem, T = {T} ({args.steps} Adam steps, batch "
        f"{args.batch}, seed {args.seed})",
        "",
        "| model | params | test MSE / baseline | when | regime | state rate/step | "
        "share τ ≥ T | median τ | selectivity |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def cell(v, fmt):
        return "n/a" if v is None or (isinstance(v, float) and np.isnan(v)) else fmt.format(v)

    for kind, r in results.items():
        for when in ("init", "trained"):
            for row in r[when]:
                lines.append(
                    f"| {kind} ({row['layer']}) | {r['params']} | "
                    f"{r['test_mse_over_baseline']:.3f} | {when} | {row['regime']} | "
                    f"{cell(row['rate'], '{:.4f}')} | {cell(row['frac_long'], '{:.0%}')} | "
                    f"{cell(row['median_tau'], '{:.3g}')} | {cell(row['selectivity'], '{:.2f}')} |"
                )
    (OUT / "summary.md").write_text("\n".join(lines) + "\n")
    gs.report(diagnoses, OUT / "report.html")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
