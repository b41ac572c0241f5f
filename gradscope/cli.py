"""The ``gradscope`` command line (also ``python -m gradscope``).

Exit codes: 0 success; 1 an unexpected internal error (a bug: please report it, rerun with
``--debug`` for the traceback); 2 bad input or usage (a missing module, a corrupt trace, a
tensor of the wrong shape, a model whose forward fails on the input, ...); 3
(``--fail-on REGIME``) a layer is in that regime, after every output was written. Errors
are one line on stderr; ``--debug`` prints the traceback before it and keeps the exit code.

Results go to stdout (the verdicts, the paths written, or JSON with ``--json``: strict
JSON, NaN and ±inf as the strings ``"nan"``, ``"inf"``, ``"-inf"``, see
:mod:`gradscope._json`); progress goes to stderr, and ``-q`` silences progress only
(warnings, ``gradscope: warning: ...``, still show).
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gradscope._cli_inputs import (
    UsageError,
    exited_message,
    load_input,
    load_loss,
    load_target,
    nonfinite_note,
)
from gradscope._cli_output import (
    FAIL_ON_EXIT,
    diagnosis_text,
    failing,
    layout_warnings,
    parse_fail_on,
    read_as,
    read_as_text,
    summary,
)
from gradscope._cli_parser import build_parser
from gradscope._files import check_outputs
from gradscope._json import dumps, jsonable
from gradscope.errors import GradscopeError

_PACKAGE = str(Path(__file__).resolve().parent)


def _say(args: argparse.Namespace, msg: str) -> None:
    if not getattr(args, "quiet", False):
        print(msg, file=sys.stderr)


# --------------------------------------------------------------------------- outputs
def _warn(msg: str) -> None:
    print(f"gradscope: warning: {msg}", file=sys.stderr)


def _check_report(out: Path) -> None:
    """A report path gradscope can write: ``.html`` or ``.pdf``, Chromium there for a PDF."""
    if out.suffix.lower() not in (".html", ".htm", ".pdf"):
        raise UsageError(
            f"-o {out}: a report is .html or .pdf (the format follows the suffix), got "
            f"{out.suffix or 'no suffix'!r}"
        )
    if out.suffix.lower() == ".pdf":
        from gradscope.reporting.writers.pdf import engine

        engine()  # before minutes of work, the PdfEngineError saying what to install


def _check_paths(paths: Sequence[str], what: str) -> list[Path]:
    """The saved runs to read: existing regular files."""
    out = []
    for text in paths:
        p = Path(text)
        if not text.strip():
            raise UsageError(f"{what}: an empty path; give a saved trace or history (.npz)")
        if p.is_dir():
            raise UsageError(f"{p}: a folder, not a saved trace or history (.npz)")
        if not p.exists():
            raise UsageError(f"{p}: no such file")
        if not p.is_file():
            raise UsageError(f"{p}: not a regular file; give a saved trace or history (.npz)")
        out.append(p)
    return out


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
        print(dumps(doc, indent=2))
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


#: The shadowing ``forward`` that routes direct ``module.forward(...)`` calls through the
#: hooks (:class:`gradscope.recording.calls.ForwardSeen`): it only calls the module's own
#: forward, so an error raised below it is the module's, not gradscope's.
_PASS_THROUGH = (str(Path(_PACKAGE) / "recording" / "calls.py"), "forward")


def _raised_in_model(exc: BaseException, model: Any) -> bool:
    """Whether ``exc`` came from the user's model, not from gradscope.

    It did when its traceback enters the model's call and no gradscope code runs below it
    (a gradscope hook that fails inside the forward is gradscope's error).
    """
    entered = False
    for frame, _ in traceback.walk_tb(exc.__traceback__):
        if not entered:
            entered = frame.f_locals.get("self") is model
        elif (
            frame.f_code.co_filename.startswith(_PACKAGE)
            and (frame.f_code.co_filename, frame.f_code.co_name) != _PASS_THROUGH
        ):
            return False
    return entered


def _model_failed(args: argparse.Namespace, exc: BaseException, x: Any) -> UsageError:
    """The error for a model whose forward raised on the input it was given."""
    import torch

    dtype = str(x.dtype).replace("torch.", "")
    layout = "(B, T, I) with --batch-first" if args.batch_first else "(T, B, I)"
    hint = f"check that the input's shape and layout, {layout}, are what the model takes"
    if x.dtype == torch.bool:
        hint = "booleans are passed as they are; save features as float32 (0 and 1)"
    elif not (x.is_floating_point() or x.is_complex()):
        hint = (
            "integer arrays are passed as int64 token ids; if the model takes features, "
            "save the array as float32"
        )
    elif x.is_floating_point() and re.search(r"indices|Long|Int\b", str(exc)):
        hint = (
            "token ids must be saved as an integer array (int64); floats become the model's dtype"
        )
    lines = str(exc).strip().splitlines()
    return UsageError(
        f"the model from {args.target} failed on --input {args.input} (shape "
        f"{tuple(x.shape)}, {dtype}): {type(exc).__name__}: {lines[0] if lines else ''}; {hint}"
    )


def cmd_profile(args: argparse.Namespace) -> int:
    """Profile a user's model on one input and write a report and the trace."""
    import gradscope as gs
    from gradscope.traces import npz_path

    out = Path(args.output)
    _check_report(out)
    trace_path = npz_path(Path(args.trace) if args.trace else out.with_suffix(".npz"))
    if trace_path.resolve() == out.resolve():
        raise UsageError(f"the report and the trace would both be {out}; use --trace PATH")
    if not args.max_input_gb > 0 or not math.isfinite(args.max_input_gb):
        raise UsageError(f"--max-input-gb {args.max_input_gb}: give a positive number of GiB")
    check_outputs([out, trace_path], args.force, "pass --force to overwrite it")
    progress = not args.quiet
    t0 = time.perf_counter()
    _say(args, f"loading {args.target} ...")
    model = load_target(args.target)
    x = load_input(args.input, model, args.batch_first, max_bytes=args.max_input_gb * 2**30)
    warnings = [w for w in [nonfinite_note(args.input, x)] if w]
    loss_fn = load_loss(args.loss, x) if args.loss else None
    what = "recording, loss gradients" if loss_fn else "recording"
    _say(args, f"profiling {type(model).__name__} on input {tuple(x.shape)}: {what}, analysis")
    try:
        prof = gs.profile(model, x, loss_fn=loss_fn, analysis={"progress": progress})
    except GradscopeError:
        raise
    except SystemExit as exc:
        raise UsageError(exited_message(f"the forward of {args.target}", exc)) from None
    except Exception as exc:
        if _raised_in_model(exc, model):
            raise _model_failed(args, exc, x) from None
        raise
    n = len(prof.diagnosis.layers)
    _say(args, f"analysed {n} layer{'s' * (n != 1)} in {time.perf_counter() - t0:.1f} s")
    groups = read_as(prof.trace)
    random = args.input.startswith("random:")
    warnings += layout_warnings(prof.trace, tuple(x.shape), args.batch_first, random)
    if prof.loss is not None and not math.isfinite(prof.loss):
        warnings.append(
            f"--loss {args.loss} returned {prof.loss}: its gradients are not finite, and the "
            "loss-gradient decay cannot be measured"
        )
    for w in warnings:
        _warn(w)
    trace_written = prof.trace.save(trace_path)
    _say(args, f"writing {out} ...")
    t1 = time.perf_counter()
    written = gs.report(prof, out, progress=progress, pdf_detail=args.pdf_detail)
    _say(args, f"wrote {out} in {time.perf_counter() - t1:.1f} s")
    extra: dict[str, Any] = {"report": str(written), "trace": str(trace_written)}
    if args.json:
        extra["loss"] = prof.loss
        extra["input_shape"] = list(x.shape)
        extra["input"] = {
            "spec": args.input,
            "shape": list(x.shape),
            "dtype": str(x.dtype).replace("torch.", ""),
            "layout": "(B, T, I)" if args.batch_first else "(T, B, I)",
            "read_as": groups,
        }
        extra["warnings"] = warnings
    else:
        print(read_as_text(tuple(x.shape), args.batch_first, groups))
    return _results(args, prof.diagnosis, extra)


def cmd_report(args: argparse.Namespace) -> int:
    """Report one saved trace, or compare several."""
    import gradscope as gs

    runs = _check_paths(args.runs, "report")
    if args.names and len(args.names) != len(runs):
        raise UsageError(f"--names has {len(args.names)} names for {len(runs)} runs")
    out = Path(args.output)
    _check_report(out)
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

    if args.arrays and not args.json:
        raise UsageError("--arrays adds the spectra and decay curves to --json; pass --json too")
    (path,) = _check_paths([args.run], "diagnose")
    history = _history_of(path)
    if history is not None:
        from gradscope.history_text import history_summary

        if args.json:
            print(dumps(history_summary(history), indent=2))
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
        if args.debug:  # the traceback, and the same exit code as without --debug
            traceback.print_exc()
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
            traceback.print_exc()
        print(
            f"gradscope: internal error: {type(exc).__name__}: {_one_line(exc)} (rerun with "
            "--debug for the traceback and please report it)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
