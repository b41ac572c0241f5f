"""What profiling a modern recurrence costs, as a multiple of the model's own training step.

For each family at a small realistic size (``transformers`` models with random weights, no
downloads; float32; seed 0), a fresh subprocess measures

* the model's own forward + backward on the batch (a language-model loss on random tokens,
  median of 3 after one warm-up): the step a user trains with;
* ``gs.trace`` (recording: hooks, the drive, the step-by-step replay and its check) and
  ``gs.diagnose`` (the full analysis) once each, progress bars off;
* the peak resident memory of the process (``ru_maxrss``) and the baseline after the
  model's own steps;

and prints one JSON line; the parent prints the table. The issue's target: a Mamba LM of
hidden 256, 8 layers, d_state 16, T = 256, batch 2 profiled in at most 20x its own step.
On a CPU the model's own step runs ``transformers``' reference PyTorch path (its CUDA
kernels are not installed), the step a CPU user trains with.

The PyPI families (:data:`PYPI`: ``mambapy``, ``s5-pytorch``, ``minGRU-pytorch``, ``xlstm``,
``ncps``) are stacks of the package's own layers at the same width (256), fed a random float
signal ``(B, T, 256)``; their own step is the forward and backward of the mean square of
the output. A package that is not installed is skipped with a line saying so.

Run: ``python benchmarks/modern.py [--family mamba mambapy ...] [--threads 2]``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: family -> (config class, model class, config kwargs, T, B): small but realistic widths
#: (hidden 256; the state sizes a 130M model has per head or channel group).
FAMILIES = {
    "mamba": (
        "MambaConfig",
        "MambaForCausalLM",
        dict(hidden_size=256, state_size=16, num_hidden_layers=8, vocab_size=1024),
        256,
        2,
    ),
    "mamba2": (
        "Mamba2Config",
        "Mamba2ForCausalLM",
        dict(
            hidden_size=256,
            num_heads=8,
            head_dim=64,
            state_size=16,
            n_groups=1,
            num_hidden_layers=4,
            chunk_size=64,
            vocab_size=1024,
        ),
        256,
        2,
    ),
    "rwkv": (
        "RwkvConfig",
        "RwkvForCausalLM",
        dict(
            hidden_size=256,
            attention_hidden_size=256,
            intermediate_size=1024,
            num_hidden_layers=4,
            context_length=512,
            vocab_size=1024,
        ),
        256,
        2,
    ),
    "xlstm": (
        "xLSTMConfig",
        "xLSTMForCausalLM",
        dict(
            hidden_size=256,
            num_heads=4,
            num_blocks=4,
            qk_dim_factor=1.0,
            v_dim_factor=1.0,
            vocab_size=1024,
        ),
        256,
        2,
    ),
    "recurrent_gemma": (
        "RecurrentGemmaConfig",
        "RecurrentGemmaForCausalLM",
        dict(
            hidden_size=256,
            lru_width=256,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=1,
            head_dim=64,
            intermediate_size=768,
            attention_window_size=256,
            vocab_size=1024,
        ),
        256,
        2,
    ),
    "gated_deltanet": (
        "Qwen3NextConfig",
        "Qwen3NextForCausalLM",
        dict(
            hidden_size=256,
            intermediate_size=512,
            num_hidden_layers=4,
            layer_types=["linear_attention"] * 3 + ["full_attention"],
            num_attention_heads=4,
            num_key_value_heads=1,
            head_dim=64,
            linear_key_head_dim=64,
            linear_value_head_dim=64,
            linear_num_key_heads=2,
            linear_num_value_heads=4,
            num_experts=4,
            num_experts_per_tok=2,
            moe_intermediate_size=128,
            shared_expert_intermediate_size=128,
            vocab_size=1024,
        ),
        256,
        2,
    ),
}


def _first(out):
    return out[0] if isinstance(out, tuple) else out


def _pypi(family: str):
    """``(model, x, T, B)``: a stack of the package's layers at width 256, and its signal."""
    import torch
    from torch import nn

    W, T, B = 256, 256, 2

    class Stack(nn.Module):
        """Layers in a row, each reading the first output of the one before."""

        def __init__(self, layers):
            super().__init__()
            self.layers = nn.ModuleList(layers)

        def forward(self, x):
            for layer in self.layers:
                x = _first(layer(x))
            return x

    torch.manual_seed(0)
    if family == "mambapy":
        from mambapy.mamba import Mamba, MambaConfig

        model = Mamba(MambaConfig(d_model=W, n_layers=4, d_state=16))
    elif family == "s5":
        from s5.s5_model import S5Block

        model = Stack([S5Block(W, 64, bidir=False) for _ in range(4)])
    elif family in ("mingru", "minlstm"):
        from minGRU_pytorch.minGRU import minGRU
        from minGRU_pytorch.minLSTM import minLSTM

        model = Stack([(minGRU if family == "mingru" else minLSTM)(W) for _ in range(4)])
    elif family == "mlstm":
        import xlstm

        layer = xlstm.mLSTMLayerConfig(conv1d_kernel_size=4, qkv_proj_blocksize=4, num_heads=4)
        cfg = xlstm.xLSTMBlockStackConfig(
            mlstm_block=xlstm.mLSTMBlockConfig(mlstm=layer),
            context_length=T,
            num_blocks=4,
            embedding_dim=W,
        )
        model = xlstm.xLSTMBlockStack(cfg)
    elif family == "slstm":
        from xlstm.blocks.slstm.cell import sLSTMCell, sLSTMCellConfig

        def cell():
            cfg = sLSTMCellConfig(hidden_size=W, num_heads=4, backend="vanilla", output_shape="BSH")
            return sLSTMCell(cfg)

        model = Stack([m for _ in range(4) for m in (nn.Linear(W, 4 * W), cell())])
    elif family == "cfc":
        from ncps.torch import CfC

        model = Stack([CfC(W, W, backbone_units=128) for _ in range(2)])
    elif family == "ltc":
        from ncps.torch import LTC

        model = Stack([LTC(W, 64), LTC(64, 64)])
    else:
        raise KeyError(family)
    x = torch.randn(B, T, W, generator=torch.Generator().manual_seed(1))
    return model, x, T, B


#: The families built from PyPI packages (see :func:`_pypi`), and the package each needs.
PYPI = {
    "mambapy": "mambapy",
    "s5": "s5",
    "mingru": "minGRU_pytorch",
    "minlstm": "minGRU_pytorch",
    "mlstm": "xlstm",
    "slstm": "xlstm",
    "cfc": "ncps",
    "ltc": "ncps",
}


def child(family: str, threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    import gradscope as gs

    if family in PYPI:
        model, x, T, B = _pypi(family)
        args, kwargs = (x,), {}

        def own_step():
            (_first(model(x)) ** 2).mean().backward()

    else:
        import transformers

        cfg_name, model_name, kw, T, B = FAMILIES[family]
        torch.manual_seed(0)
        cfg = getattr(transformers, cfg_name)(**kw)
        if family == "gated_deltanet":
            cfg._experts_implementation = "eager"
        model = getattr(transformers, model_name)(cfg)
        ids = torch.randint(0, cfg.vocab_size, (B, T))
        args, kwargs = (ids,), {"use_cache": False}

        def own_step():
            model(ids, labels=ids, use_cache=False).loss.backward()

    times = []
    for i in range(4):
        model.zero_grad()
        t0 = time.perf_counter()
        own_step()
        if i:
            times.append(time.perf_counter() - t0)
    step = statistics.median(times)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    model.eval()
    t0 = time.perf_counter()
    trace = gs.trace(model, *args, **kwargs)
    t_trace = time.perf_counter() - t0
    t0 = time.perf_counter()
    diag = gs.diagnose(trace, progress=False)
    t_diag = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    layer = trace.layers[0]
    print(
        json.dumps(
            dict(
                family=family,
                kind=layer.kind,
                layers=len(trace.layers),
                D=layer.D,
                I=layer.I,
                T=T,
                B=B,
                step_s=step,
                trace_s=t_trace,
                diagnose_s=t_diag,
                ratio=(t_trace + t_diag) / step,
                base_mb=base,
                peak_mb=peak,
                regimes=sorted({d.regime for d in diag}),
                frac_long=[round(d.memory.frac_long, 3) for d in diag if d.memory is not None],
            )
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", nargs="*", default=[*FAMILIES, *PYPI])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.threads)
        return
    print(
        f"{'family':8} {'layers':>6} {'D':>7} {'T×B':>8} {'own step':>9} {'trace':>8} "
        f"{'diagnose':>9} {'ratio':>7} {'peak MB':>8} {'base MB':>8}"
    )
    for fam in args.family:
        if fam in PYPI and importlib.util.find_spec(PYPI[fam]) is None:
            print(f"{fam}: skipped, {PYPI[fam]} is not installed")
            continue
        out = subprocess.run(
            [sys.executable, __file__, "--child", fam, "--threads", str(args.threads)],
            capture_output=True,
            text=True,
            cwd=ROOT,
            env={"GRADSCOPE_PROGRESS": "0", **__import__("os").environ},
        )
        line = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
        if not line:
            print(f"{fam}: failed\n{out.stderr[-2000:]}")
            continue
        r = json.loads(line[-1])
        print(
            f"{r['family']:8} {r['layers']:>6} {r['D']:>7} {r['T']}×{r['B']:<4} "
            f"{r['step_s']:>8.2f}s {r['trace_s']:>7.2f}s {r['diagnose_s']:>8.2f}s "
            f"{r['ratio']:>6.1f}x {r['peak_mb']:>8.0f} {r['base_mb']:>8.0f}   "
            f"regimes {r['regimes']}, share τ≥T {r['frac_long']}"
        )


if __name__ == "__main__":
    main()
