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
    diagnosis_text,
    failing,
    parse_fail_on,
    summary,
)
from gradscope._cli_parser import build_parser
from gradscope._files import check_outputs
from gradscope._json import jsonable
from gradscope.errors import GradscopeError, ShapeError


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
def _one_line(exc: BaseException) -> str:
    """The exception's message on one line (ANSI escapes removed)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    return " ".join(text.split())


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    parser = build_parser(
        {"demo": cmd_demo, "profile": cmd_profile, "report": cmd_report, "diagnose": cmd_diagnose}
    )
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
