"""The embedded demo: vanilla RNN vs LSTM vs GRU on the adding problem.

The adding problem (Hochreiter & Schmidhuber 1997; Le, Jaitly & Hinton 2015) is the classic
long-memory task: each input step carries a random number in [0, 1] and a marker; exactly
two steps are marked, one in each half of the sequence, and the target is the sum of the two
marked numbers. Predicting the mean (1.0) gives MSE ≈ 1/6 ≈ 0.167; doing better requires
carrying information across about ``T/2`` steps, which is where vanishing gradients bite.

Three models of the same hidden size (a tanh RNN, an LSTM and a GRU) are profiled at
initialisation, trained for a short run under :class:`gradscope.Monitor`, profiled again,
and written as one comparison report. Every number in the report is measured on the run;
nothing is asserted.

The defaults are chosen like a classroom experiment that fits in a few minutes on 2 CPU
cores: ``T = 50`` (long enough that a tanh RNN's gradient, halving every step or two, is
gone long before the first marker; short enough that the gated cells learn within 600
steps), hidden 32, Adam at learning rate 1e-2, and the LSTM's forget gates given
*chrono initialisation* (Tallec & Ollivier 2018: ``b_f = ln U(1, T − 1)``, ``b_i = −b_f``),
so that its cell path carries gradients across the sequence from the first step. A model
"learned" the task when its test MSE is at most half that of predicting the mean.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

from gradscope._json import dumps
from gradscope.errors import ArgumentError

#: Display names of the three model families, in report order.
MODELS = {"rnn": "vanilla RNN", "lstm": "LSTM", "gru": "GRU"}


def adding_problem(
    batch: int, seq_len: int, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """A batch of the adding problem, time-major.

    Returns:
        ``x (T, B, 2)``: channel 0 uniform numbers, channel 1 the two markers;
        ``y (B, 1)``: the sum of the two marked numbers.
    """
    if seq_len < 2:
        raise ArgumentError(f"seq_len must be >= 2, got {seq_len}")
    values = torch.rand(seq_len, batch, generator=generator)
    half = seq_len // 2
    first = torch.randint(0, half, (batch,), generator=generator)
    second = torch.randint(half, seq_len, (batch,), generator=generator)
    marker = torch.zeros(seq_len, batch)
    cols = torch.arange(batch)
    marker[first, cols] = 1.0
    marker[second, cols] = 1.0
    y = (values[first, cols] + values[second, cols]).unsqueeze(-1)
    return torch.stack([values, marker], dim=-1), y


def chrono_init(lstm: nn.LSTM, t_max: int, generator: torch.Generator) -> None:
    """Chrono initialisation of a one-layer LSTM's gate biases (Tallec & Ollivier 2018).

    ``b_f = ln u`` with ``u ~ U(1, t_max − 1)`` per unit and ``b_i = −b_f`` (on ``bias_ih``;
    the ``bias_hh`` parts of both gates set to 0): forget gates between ``σ(0) = 0.5`` and
    ``σ(ln(t_max − 1))``, i.e. characteristic memory times spread up to ``t_max`` steps.
    """
    h = lstm.hidden_size
    u = torch.rand(h, generator=generator) * max(t_max - 2, 0) + 1.0
    with torch.no_grad():
        b_f = torch.log(u).to(lstm.bias_ih_l0.dtype)
        lstm.bias_ih_l0[h : 2 * h] = b_f
        lstm.bias_hh_l0[h : 2 * h] = 0.0
        lstm.bias_ih_l0[:h] = -b_f
        lstm.bias_hh_l0[:h] = 0.0


class AddingModel(nn.Module):
    """A one-layer recurrent network with a linear read-out of its last hidden state."""

    def __init__(self, cell: str, hidden: int) -> None:
        super().__init__()
        kinds = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}
        if cell not in kinds:
            raise ArgumentError(f"cell must be one of {sorted(kinds)}, got {cell!r}")
        self.rnn = kinds[cell](2, hidden)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        out, _ = self.rnn(x)
        return self.head(out[-1])


def train_adding(
    model: nn.Module,
    steps: int,
    seq_len: int,
    batch: int,
    generator: torch.Generator,
    *,
    monitor: object | None = None,
    lr: float = 3e-3,
    progress: bool = False,
    desc: str = "training",
) -> list[float]:
    """Train ``model`` on fresh adding-problem batches; returns the loss of every step.

    Adam (learning rate ``lr``) with gradient clipping at norm 1; ``monitor.step()`` (a
    :class:`gradscope.Monitor`) is called after ``backward`` and before the update.
    """
    from gradscope._progress import progress_bar

    mse = nn.MSELoss()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    with progress_bar(steps, desc, progress=progress) as bar:
        for _ in range(steps):
            x, y = adding_problem(batch, seq_len, generator)
            loss = mse(model(x), y)
            opt.zero_grad()
            loss.backward()
            if monitor is not None:
                monitor.step()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            losses.append(loss.item())
            bar.update()
    return losses


#: The largest tensor the demo may build, in numbers (1 GiB of float32): the LSTM's
#: recurrent weights ``4H × H`` and one batch of its gate activations ``T × B × 4H``.
MAX_NUMBERS = 2**28


def check_settings(*, steps: int, seq_len: int, hidden: int, batch: int, seed: int) -> None:
    """Refuse demo settings out of range before any work.

    Raises:
        ArgumentError: a size below its least value, a model or batch too large for
            :data:`MAX_NUMBERS`, or a seed ``torch.Generator`` refuses.
    """
    for name, value, least in (
        ("steps", steps, 1),
        ("seq_len", seq_len, 2),
        ("hidden", hidden, 1),
        ("batch", batch, 1),
    ):
        if value < least:
            flag = "--" + name.replace("_", "-")
            raise ArgumentError(f"demo: {name} ({flag}) must be at least {least}, got {value}")
    largest = {
        "the LSTM's recurrent weights (4·hidden × hidden)": 4 * hidden * hidden,
        "one batch's gate activations (seq_len × max(batch, 512) × 4·hidden)": (
            seq_len * max(batch, 512) * 4 * hidden
        ),
    }
    for what, numbers in largest.items():
        if numbers > MAX_NUMBERS:
            raise ArgumentError(
                f"demo: {what} would be {numbers:,} numbers, over the demo's limit of "
                f"{MAX_NUMBERS:,} (1 GiB of float32); choose smaller --hidden, --seq-len or "
                "--batch"
            )
    try:
        torch.Generator().manual_seed(seed)
    except (RuntimeError, ValueError, OverflowError):
        raise ArgumentError(
            f"demo: seed (--seed) must be an integer in [-2**63, 2**64), got {seed}"
        ) from None


def check_out(out: Path, pdf: bool) -> None:
    """The output folder can take the demo's files (created if missing).

    Raises:
        OutputError: ``out`` is a file, or a file cannot be written in it.
    """
    from gradscope._files import check_writable
    from gradscope.errors import OutputError

    if out.exists() and not out.is_dir():
        raise OutputError(f"cannot write into {out}: it is a file, not a folder (--out)")
    for name in ("report.html", "summary.json") + (("report.pdf",) if pdf else ()):
        check_writable(out / name)


def run_demo(
    out: Path = Path("reports/demo"),
    steps: int = 600,
    seq_len: int = 50,
    hidden: int = 32,
    batch: int = 64,
    seed: int = 0,
    lr: float = 1e-2,
    chrono: bool = True,
    every: int | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
    pdf: bool = True,
    pdf_detail: bool = False,
) -> list[Path]:
    """Profile, train with the Monitor, profile again; write the comparison report.

    Args:
        out: Output folder (created).
        steps: Training steps per model (Adam, gradient clipping at norm 1).
        seq_len: Sequence length ``T`` of the adding problem.
        hidden: Hidden size of every model.
        batch: Training batch size.
        seed: Seed of a private generator for data and initialisation.
        lr: Adam's learning rate.
        chrono: Chrono initialisation of the LSTM's gate biases (:func:`chrono_init`).
        every: Monitor sampling period (default: about 10 samples per run).
        progress: Show progress of training and of drawing the reports' figures (a bar on
            a terminal, an occasional line elsewhere).
        log: Where progress messages go.
        pdf: Also write the PDF report (needs headless Chromium, checked before training).
        pdf_detail: The PDF with every layer's figures (default: the first screen only).

    Returns:
        The paths written: the HTML report, the PDF report (when ``pdf``) and a JSON summary.

    Raises:
        ArgumentError: a size or the seed out of range (before any work).
        OutputError: ``out`` is a file or cannot be written (before any work).
        PdfEngineError: ``pdf`` and no headless Chromium is installed (before any training).
    """
    from gradscope._progress import compute_threads

    check_settings(steps=steps, seq_len=seq_len, hidden=hidden, batch=batch, seed=seed)
    if pdf:
        from gradscope.reporting.writers.pdf import engine

        engine()  # fail before minutes of training, saying what to install
    check_out(Path(out), pdf)
    opts = dict(pdf=pdf, pdf_detail=pdf_detail)

    # models this small run fastest on one thread, and a busy machine's spinning worker
    # threads made every step ~100× slower in our measurements (see gradscope._progress)
    with compute_threads(1):
        return _run(
            out, steps, seq_len, hidden, batch, seed, lr, chrono, every, progress, log, **opts
        )


def _run(out, steps, seq_len, hidden, batch, seed, lr, chrono, every, progress, log, **opts):
    """:func:`run_demo` with the threads already set."""
    import gradscope as gs

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    every = every or max(1, steps // 10)
    mse = nn.MSELoss()
    gen = torch.Generator().manual_seed(seed)
    x_probe, y_probe = adding_problem(16, seq_len, gen)
    x_test, y_test = adding_problem(512, seq_len, gen)
    quiet = {"progress": False}

    def probe_loss(output: Tensor) -> Tensor:
        return mse(output, y_probe)

    entries: dict[str, object] = {}
    summary: dict[str, dict[str, float]] = {}
    for key, label in MODELS.items():
        torch.manual_seed(seed)  # same initial weights for every run of the demo
        model = AddingModel(key, hidden)
        if key == "lstm" and chrono:
            chrono_init(model.rnn, seq_len, torch.Generator().manual_seed(seed + 1))
        prof_init = gs.profile(model, x_probe, loss_fn=probe_loss, analysis=quiet)
        t0 = time.perf_counter()
        with gs.Monitor(model, every=every) as monitor:
            losses = train_adding(
                model,
                steps,
                seq_len,
                batch,
                gen,
                monitor=monitor,
                lr=lr,
                progress=progress,
                desc=f"training {label}",
            )
        train_s = time.perf_counter() - t0
        prof_trained = gs.profile(model, x_probe, loss_fn=probe_loss, analysis=quiet)
        with torch.no_grad():
            test_mse = float(mse(model(x_test), y_test))
        baseline = float(mse(torch.full_like(y_test, float(y_test.mean())), y_test))
        outcome = {
            "test_mse": test_mse,
            "baseline_mse": baseline,
            "ratio": test_mse / baseline,
            "learned": test_mse <= 0.5 * baseline,
        }
        prof_trained.trace.meta["outcome"] = dict(outcome)
        entries[f"{label} · trained"] = prof_trained
        entries[f"{label} · init"] = prof_init
        entries[f"{label} · training"] = monitor
        d = prof_trained.diagnosis[0]
        summary[label] = {
            **outcome,
            "final_train_loss_mean_last_50": float(sum(losses[-50:]) / len(losses[-50:])),
            "train_seconds": train_s,
            "trained": {
                "regime": d.regime,
                "half_life": d.decay["state"].half_life,
                "horizon": d.decay["state"].horizon,
                "gates": None if d.gates is None else d.gates.sentence(),
            },
        }
        log(
            f"{label}: test MSE {test_mse:.4f} (predict-the-mean baseline {baseline:.4f}, "
            f"ratio {test_mse / baseline:.3f}), trained {steps} steps in {train_s:.1f} s"
        )
    title = "gradscope demo: the adding problem"
    written = []
    names = ["report.html"] + (["report.pdf"] if opts["pdf"] else [])
    for name in names:
        log(f"writing {out / name} ...")
        t0 = time.perf_counter()
        written.append(
            gs.report(
                entries, out / name, title=title, progress=progress, pdf_detail=opts["pdf_detail"]
            )
        )
        log(f"wrote {out / name} in {time.perf_counter() - t0:.0f} s")
    html = written[0]
    summary_path = out / "summary.json"
    settings = dict(
        task="adding problem",
        seq_len=seq_len,
        hidden=hidden,
        batch=batch,
        steps=steps,
        lr=lr,
        lstm_init="chrono" if chrono else "PyTorch default",
        seed=seed,
    )
    summary_path.write_text(dumps({"settings": settings, **summary}, indent=2))
    log(f"report: {html}")
    return [*written, summary_path]
