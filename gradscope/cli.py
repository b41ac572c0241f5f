"""The ``gradscope`` command line (also ``python -m gradscope``).

Exit codes: 0 success; 1 an unexpected internal error (a bug: please report it, rerun with
``--debug`` for the traceback); 2 bad input or usage (a missing module, a corrupt trace, a
tensor of the wrong shape, ...); 3 (``--fail-on REGIME``) a layer is in that regime, after
every output was written. Errors are one line on stderr unless ``--debug``.

Results go to stdout (the verdicts, the paths written, or JSON with ``--json``); progress
goes to stderr, and ``-q`` silences progress only.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gradscope._cli_inputs import UsageError, exited_message, load_input, load_loss, load_target
from gradscope._cli_output import (
    FAIL_ON_EXIT,
    REGIMES,
    diagnosis_text,
    failing,
    parse_fail_on,
    summary,
)
from gradscope._files import check_outputs
from gradscope._json import jsonable
from gradscope._version import __version__
from gradscope.errors import GradscopeError, ShapeError

EXAMPLES = """\
examples:
  gradscope demo                                  vanilla RNN vs LSTM vs GRU -> reports/demo/
  gradscope profile mypkg.models:make_model --input random:100,8,32 -o prof.html
  gradscope profile mypkg.models:model --input batch.pt --batch-first -o prof.pdf
  gradscope report run.npz -o run.html            report a saved trace
  gradscope report rnn.npz lstm.npz -o cmp.html   compare several saved traces
  gradscope diagnose run.npz                      the verdict table in the terminal
  gradscope diagnose hist.npz                     a saved training history (Monitor.save)
  gradscope profile mypkg.models:model --input random:100,8,32 --loss mypkg.losses:mse \\
      --json --fail-on vanishing,exploding        CI: JSON on stdout, exit 3 on a bad regime

exit codes: 0 ok, 1 internal error (a bug), 2 bad input or usage, 3 a layer's regime is one
named by --fail-on (the outputs are written first)
"""


def _say(args: argparse.Namespace, msg: str) -> None:
    if not getattr(args, "quiet", False):
        print(msg, file=sys.stderr)


# --------------------------------------------------------------------------- outputs
def _check_report_suffix(out: Path) -> None:
    if out.suffix.lower() not in (".html", ".htm", ".pdf"):
        raise UsageError(
            f"-o {out}: a report is .html or .pdf (the format follows the suffix), got "
            f"{out.suffix or 'no suffix'!r}"
        )


# --------------------------------------------------------------------------- commands
def cmd_demo(args: argparse.Namespace) -> int:
    """Run the embedded demo and write its comparison report."""
    from gradscope.demo import run_demo

    t0 = time.perf_counter()
    paths = run_demo(
        out=Path(args.out),
        steps=args.steps,
        seq_len=args.seq_len,
        hidden=args.hidden,
        batch=args.batch,
        seed=args.seed,
        pdf=not args.no_pdf,
        pdf_detail=args.pdf_detail,
        progress=not args.quiet,
        log=(lambda m: _say(args, m)),
    )
    _say(args, f"done in {time.perf_counter() - t0:.0f} s")
    for p in paths:
        print(p)
    return 0


def _results(args: argparse.Namespace, diagnosis: Any, extra: dict[str, Any]) -> int:
    """Print the verdicts (or JSON) and the paths; the exit code of ``--fail-on``."""
    regimes = {d.name: d.regime for d in diagnosis.layers}
    bad = failing(regimes, args.fail_on)
    if args.json:
        doc = {**extra, "layers": summary(diagnosis, getattr(args, "arrays", False))}
        if args.fail_on:
            doc["fail_on"] = {"regimes": sorted(args.fail_on), "failing": bad}
        print(json.dumps(doc, indent=2))
    else:
        print(diagnosis_text(diagnosis))
        for value in extra.values():
            if isinstance(value, str):
                print(value)
    return _exit_code(args, regimes)


def _exit_code(args: argparse.Namespace, regimes: dict[str, str]) -> int:
    """:data:`FAIL_ON_EXIT` (saying which layers, on stderr) if ``--fail-on`` matches, else 0."""
    bad = failing(regimes, args.fail_on)
    if not bad:
        return 0
    print(
        f"gradscope: --fail-on {','.join(sorted(args.fail_on))}: {', '.join(bad)}; "
        f"exit code {FAIL_ON_EXIT}",
        file=sys.stderr,
    )
    return FAIL_ON_EXIT


def cmd_profile(args: argparse.Namespace) -> int:
    """Profile a user's model on one input and write a report and the trace."""
    import gradscope as gs
    from gradscope.traces import npz_path

    out = Path(args.output)
    _check_report_suffix(out)
    trace_path = npz_path(Path(args.trace) if args.trace else out.with_suffix(".npz"))
    if trace_path.resolve() == out.resolve():
        raise UsageError(f"the report and the trace would both be {out}; use --trace PATH")
    check_outputs([out, trace_path], args.force, "pass --force to overwrite it")
    progress = not args.quiet
    t0 = time.perf_counter()
    _say(args, f"loading {args.target} ...")
    model = load_target(args.target)
    x = load_input(args.input, model, args.batch_first)
    loss_fn = load_loss(args.loss, x) if args.loss else None
    what = "recording, loss gradients" if loss_fn else "recording"
    _say(args, f"profiling {type(model).__name__} on input {tuple(x.shape)}: {what}, analysis")
    try:
        prof = gs.profile(model, x, loss_fn=loss_fn, analysis={"progress": progress})
    except GradscopeError:
        raise
    except SystemExit as exc:
        raise UsageError(exited_message(f"the forward of {args.target}", exc)) from None
    except RuntimeError as exc:
        # PyTorch's own shape errors from the user's forward.
        raise ShapeError(
            f"{args.target} failed on input of shape {tuple(x.shape)}: {exc}".splitlines()[0]
        ) from None
    n = len(prof.diagnosis.layers)
    _say(args, f"analysed {n} layer{'s' * (n != 1)} in {time.perf_counter() - t0:.1f} s")
    trace_written = prof.trace.save(trace_path)
    _say(args, f"writing {out} ...")
    t1 = time.perf_counter()
    written = gs.report(prof, out, progress=progress, pdf_detail=args.pdf_detail)
    _say(args, f"wrote {out} in {time.perf_counter() - t1:.1f} s")
    extra: dict[str, Any] = {"report": str(written), "trace": str(trace_written)}
    if args.json:
        extra["loss"] = prof.loss
        extra["input_shape"] = list(x.shape)
    return _results(args, prof.diagnosis, extra)


def cmd_report(args: argparse.Namespace) -> int:
    """Report one saved trace, or compare several."""
    import gradscope as gs

    runs = [Path(p) for p in args.runs]
    if args.names and len(args.names) != len(runs):
        raise UsageError(f"--names has {len(args.names)} names for {len(runs)} runs")
    for p in runs:
        if p.is_dir():
            raise UsageError(f"{p}: a folder, not a saved trace or history (.npz)")
        if not p.is_file():
            raise UsageError(f"{p}: no such file")
    out = Path(args.output)
    _check_report_suffix(out)
    check_outputs([out], args.force, "pass --force to overwrite it")
    if len(runs) == 1 and not args.names:
        obj: Any = runs[0]
    else:
        names = args.names or [p.stem for p in runs]
        if len(set(names)) != len(names):
            raise UsageError(f"run names must be unique, got {names}; use --names")
        obj = dict(zip(names, runs))
    t0 = time.perf_counter()
    _say(args, f"analysing {', '.join(map(str, runs))} and writing {out} ...")
    written = gs.report(obj, out, progress=not args.quiet, pdf_detail=args.pdf_detail)
    _say(args, f"done in {time.perf_counter() - t0:.1f} s")
    print(written)
    return 0


def _history_of(path: Path) -> Any | None:
    """The training history saved at ``path``, or None when the file is not one."""
    from gradscope._npz import NpzArchive
    from gradscope.errors import TraceFormatError
    from gradscope.history import HISTORY_FORMAT, History

    try:
        with NpzArchive(path, "a gradscope file", "gradscope") as npz:
            is_history = npz.meta.get("format") == HISTORY_FORMAT
    except TraceFormatError:
        return None  # gs.load below says what is wrong with the file
    return History.load(path) if is_history else None


def cmd_diagnose(args: argparse.Namespace) -> int:
    """Print the verdict table of a saved trace, or the latest numbers of a saved history."""
    import gradscope as gs

    path = Path(args.run)
    history = _history_of(path) if path.is_file() else None
    if history is not None:
        from gradscope.history_text import history_summary

        if args.json:
            print(json.dumps(history_summary(history), indent=2))
        else:
            print(history)
        names = history.names if len(history) else []
        return _exit_code(args, {n: history.entry(n)["regime"] or "unknown" for n in names})
    diagnosis = gs.diagnose(gs.load(path), progress=not args.quiet)
    extra = {"meta": jsonable(diagnosis.meta)} if args.json else {}
    return _results(args, diagnosis, extra)


# --------------------------------------------------------------------------- parser
def _json_and_fail_on(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--json",
        action="store_true",
        help="results as JSON on stdout (per layer: regime, decay rates with intervals, "
        "half-life, horizon, spectra summaries, Lyapunov exponents; the paths written)",
    )
    p.add_argument(
        "--fail-on",
        metavar="REGIME",
        action="append",
        help=f"exit with code {FAIL_ON_EXIT} when any layer's regime is REGIME, one of "
        f"{', '.join(REGIMES)}; repeat the flag or give a comma list",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (kept separate so tests and docs can inspect it)."""
    common = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: a flag given before the command must survive the subcommand's defaults.
    common.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        default=argparse.SUPPRESS,
        help="no progress on stderr (results are still printed)",
    )
    common.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks"
    )

    parser = argparse.ArgumentParser(
        prog="gradscope",
        description="Does the gradient survive the trip back through time? Record a PyTorch "
        "recurrent model, measure Jacobian spectra, Lyapunov exponents and gradient-norm "
        "decay, and write reports.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"gradscope {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser(
        "demo",
        parents=[common],
        help="vanilla RNN vs LSTM vs GRU on the adding problem, at init and after training",
        description="Profile a vanilla tanh RNN, an LSTM and a GRU of the same size on the "
        "adding problem at initialisation and after a short training run with the Monitor, "
        "and write one comparison report (HTML and PDF). No data or download needed.",
    )
    p.add_argument("--out", default="reports/demo", help="output folder (default reports/demo)")
    p.add_argument("--steps", type=int, default=600, help="training steps per model")
    p.add_argument("--seq-len", type=int, default=50, help="sequence length T")
    p.add_argument("--hidden", type=int, default=32, help="hidden size of every model")
    p.add_argument("--batch", type=int, default=64, help="training batch size")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--pdf-detail",
        action="store_true",
        help="PDF: add every layer's figures and all metadata (default: the first screen only)",
    )
    p.add_argument("--no-pdf", action="store_true", help="write the HTML report only")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser(
        "profile",
        parents=[common],
        help="profile your own model: TARGET is package.module:factory",
        description="Run your model once on an input under gradscope's hooks, print the "
        "verdicts, and write a report plus the trace (.npz) for later.",
        epilog="example: gradscope profile mypkg.models:make_model --input random:100,8,32",
    )
    p.add_argument("target", metavar="TARGET", help="package.module:factory or :model")
    p.add_argument(
        "--input",
        required=True,
        help="random:T,B,I (standard normal) or a .npy / .pt tensor file",
    )
    p.add_argument("--batch-first", action="store_true", help="random input as (B, T, I)")
    p.add_argument("-o", "--output", default="profile.html", help="report path (.html/.pdf)")
    p.add_argument("--trace", help="where to save the trace (default: report path, .npz)")
    p.add_argument("--force", action="store_true", help="overwrite existing output files")
    p.add_argument(
        "--loss",
        metavar="MODULE:FUNCTION",
        help="a loss called as function(output, batch) -> scalar tensor (output: what the "
        "model returned, batch: the --input tensor); adds the loss-gradient decay per layer",
    )
    _json_and_fail_on(p)
    p.add_argument(
        "--pdf-detail",
        action="store_true",
        help="PDF: add every layer's figures and all metadata (default: the first screen only)",
    )
    p.set_defaults(func=cmd_profile)

    p = sub.add_parser(
        "report",
        parents=[common],
        help="write a report from saved traces (several make a comparison)",
        description="Write an HTML or PDF report (by the suffix of -o) from traces saved by "
        "`gradscope profile` or Trace.save, or training histories saved by Monitor.save. One "
        "file gives a single report; several give a side-by-side comparison, named after "
        "the files or --names. Saved traces are analysed again (gs.diagnose).",
        epilog="example: gradscope report rnn.npz lstm.npz --names RNN LSTM -o cmp.html",
    )
    p.add_argument("runs", metavar="RUN.npz", nargs="+", help="saved traces or histories")
    p.add_argument("-o", "--output", required=True, help="OUT.html or OUT.pdf")
    p.add_argument("--names", nargs="+", help="display names for the runs")
    p.add_argument("--force", action="store_true", help="overwrite an existing report")
    p.add_argument(
        "--pdf-detail",
        action="store_true",
        help="PDF: add every layer's figures and all metadata (default: the first screen only)",
    )
    p.set_defaults(func=cmd_report)

    p = sub.add_parser(
        "diagnose",
        parents=[common],
        help="print the verdict table of a saved trace or history",
        description="Analyse a saved trace and print the verdict table and each layer's "
        "verdict; for a saved training history (Monitor.save), print the numbers of its "
        "latest sampled step and how each layer's regime moved over training.",
    )
    p.add_argument("run", metavar="RUN.npz", help="a saved trace or training history")
    _json_and_fail_on(p)
    p.add_argument(
        "--arrays", action="store_true", help="with --json: also the spectra and decay curves"
    )
    p.set_defaults(func=cmd_diagnose)
    return parser


def _one_line(exc: BaseException) -> str:
    """The exception's message on one line (ANSI escapes removed)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    return " ".join(text.split())


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    args.quiet = getattr(args, "quiet", False)
    args.debug = getattr(args, "debug", False)
    if args.command is None:
        parser.print_help()
        return 2
    if args.quiet:
        os.environ.setdefault("GRADSCOPE_PROGRESS", "0")
    try:
        if hasattr(args, "fail_on"):
            args.fail_on = parse_fail_on(args.fail_on)
        return int(args.func(args) or 0)
    except GradscopeError as exc:
        if args.debug:
            raise
        print(f"gradscope: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # `gradscope diagnose run.npz | head`: the reader left, a normal end for a command.
        # Point stdout at /dev/null so the interpreter's final flush stays quiet.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what a shell reports for a command that a pipe ended
    except KeyboardInterrupt:
        print("gradscope: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if args.debug:
            raise
        print(
            f"gradscope: internal error: {type(exc).__name__}: {_one_line(exc)} (rerun with "
            "--debug for the traceback and please report it)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
