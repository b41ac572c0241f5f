"""The ``gradscope`` command line (also ``python -m gradscope``).

Exit codes: 0 success; 1 an unexpected internal error (a bug: please report it, rerun with
``--debug`` for the traceback); 2 bad input or usage (a missing module, a corrupt trace, a
tensor of the wrong shape, ...). Errors are one line on stderr unless ``--debug``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pickle
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gradscope._files import check_outputs
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
"""


class UsageError(GradscopeError):
    """Wrong command-line input (a bad TARGET, --input spec or file)."""


def _say(args: argparse.Namespace, msg: str) -> None:
    if not getattr(args, "quiet", False):
        print(msg, file=sys.stderr)


# --------------------------------------------------------------------------- inputs
def _user_error(exc: BaseException) -> str:
    """``"Type: first line"`` of an exception raised by the user's code."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}".rstrip(": ")


def _exited(what: str, exc: SystemExit) -> str:
    return (
        f"{what} called sys.exit({exc.code!r}); gradscope needs a module that defines the "
        "model without running a script (put the script part under "
        "`if __name__ == '__main__':`)"
    )


def load_target(spec: str) -> Any:
    """Resolve ``package.module:attr`` to a model: a callable is called with no arguments.

    Raises:
        UsageError: malformed spec, missing module or attribute, a factory that raises, or
            something that is not an ``nn.Module``.
    """
    from torch import nn

    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise UsageError(
            f"TARGET must look like 'package.module:factory' (a callable returning the model, "
            f"or the model object), got {spec!r}"
        )
    # The working directory goes *last*: the user's module is found there, but a stray
    # seaborn.py (or numpy.py, ...) next to it never shadows gradscope's dependencies.
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (module_name + ".").startswith(exc.name + "."):
            raise UsageError(
                f"cannot import module {module_name!r} ({exc}); run from the directory that "
                "contains it or install it"
            ) from None
        raise UsageError(f"importing {module_name!r} failed: {_user_error(exc)}") from None
    except SystemExit as exc:
        raise UsageError(_exited(f"importing {module_name!r}", exc)) from None
    except Exception as exc:  # ImportError, SyntaxError, ...: the user's module, not gradscope
        raise UsageError(f"importing {module_name!r} failed: {_user_error(exc)}") from None
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise UsageError(f"module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not isinstance(obj, nn.Module):
        if not callable(obj):
            raise UsageError(f"{spec} is neither an nn.Module nor a callable returning one")
        try:
            obj = obj()
        except SystemExit as exc:
            raise UsageError(_exited(f"{spec}()", exc)) from None
        except Exception as exc:
            raise UsageError(f"{spec}() raised {_user_error(exc)}") from None
    if not isinstance(obj, nn.Module):
        raise UsageError(f"{spec} gave a {type(obj).__name__}, expected a torch.nn.Module")
    return obj


def load_input(spec: str, model: Any, batch_first: bool, dtype: Any = None) -> Any:
    """An input tensor from ``random:T,B,I`` or a ``.npy`` / ``.pt`` file (loaded safely).

    ``random:T,B,I`` is standard normal in the model's dtype, laid out ``(T, B, I)``, or
    ``(B, T, I)`` with ``--batch-first``. Files are loaded with ``allow_pickle=False`` /
    ``weights_only=True``: they can hold data, never code.
    """
    import numpy as np
    import torch

    params = list(model.parameters())
    dtype = dtype or (params[0].dtype if params else torch.float32)
    device = params[0].device if params else torch.device("cpu")
    if spec.startswith("random:"):
        try:
            t, b, i = (int(v) for v in spec[len("random:") :].split(","))
        except ValueError:
            raise UsageError(
                f"--input {spec!r}: expected random:T,B,I with three integers"
            ) from None
        if min(t, b, i) < 1:
            raise UsageError(f"--input {spec!r}: T, B and I must be >= 1")
        gen = torch.Generator().manual_seed(0)
        shape = (b, t, i) if batch_first else (t, b, i)
        return torch.randn(shape, generator=gen, dtype=dtype).to(device)
    path = Path(spec)
    if not path.is_file():
        raise UsageError(f"--input {spec!r}: no such file (or use random:T,B,I)")
    try:
        if path.suffix == ".npy":
            tensor = torch.from_numpy(np.load(path, allow_pickle=False))
        elif path.suffix in (".pt", ".pth"):
            tensor = torch.load(path, map_location="cpu", weights_only=True)
        else:
            raise UsageError(f"--input {spec!r}: expected a .npy or .pt file")
    except UsageError:
        raise
    except Exception as exc:
        if isinstance(exc, pickle.UnpicklingError) or "weights_only" in str(exc):
            raise UsageError(
                f"--input {spec!r}: holds pickled Python objects, not just a tensor; gradscope "
                "never unpickles them. Save the tensor alone (torch.save(tensor, path)) or "
                "as .npy"
            ) from None
        raise UsageError(f"--input {spec!r}: cannot read it ({_user_error(exc)})") from None
    if not isinstance(tensor, torch.Tensor):
        raise UsageError(f"--input {spec!r}: holds a {type(tensor).__name__}, not one tensor")
    if tensor.is_floating_point():
        tensor = tensor.to(dtype)
    return tensor.to(device)


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
    model = load_target(args.target)
    x = load_input(args.input, model, args.batch_first)
    _say(args, f"profiling {type(model).__name__} on input {tuple(x.shape)}")
    try:
        prof = gs.profile(model, x, analysis={"progress": "auto" if not args.quiet else False})
    except GradscopeError:
        raise
    except SystemExit as exc:
        raise UsageError(_exited(f"the forward of {args.target}", exc)) from None
    except RuntimeError as exc:
        # PyTorch's own shape errors from the user's forward.
        raise ShapeError(
            f"{args.target} failed on input of shape {tuple(x.shape)}: {exc}".splitlines()[0]
        ) from None
    trace_written = prof.trace.save(trace_path)
    written = gs.report(prof, out, pdf_detail=args.pdf_detail)
    if not args.quiet:
        print(prof.diagnosis)
    print(written)
    print(trace_written)
    return 0


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
    print(gs.report(obj, out, pdf_detail=args.pdf_detail))
    return 0


def cmd_diagnose(args: argparse.Namespace) -> int:
    """Print the verdict table of a saved trace."""
    import json

    import gradscope as gs

    diagnosis = gs.diagnose(gs.load(args.run), progress="auto" if not args.quiet else False)
    if args.json:
        print(json.dumps(diagnosis.to_dict(), indent=2))
    else:
        print(diagnosis)
    return 0


# --------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    """The argument parser (kept separate so tests and docs can inspect it)."""
    common = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: a flag given before the command must survive the subcommand's defaults.
    common.add_argument(
        "-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help="no progress"
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
        "--pdf-detail",
        action="store_true",
        help="PDF: add every layer's figures and all metadata (default: the first screen only)",
    )
    p.set_defaults(func=cmd_profile)

    p = sub.add_parser(
        "report",
        parents=[common],
        help="write a report from saved traces (several make a comparison)",
    )
    p.add_argument("runs", metavar="RUN.npz", nargs="+")
    p.add_argument("-o", "--output", required=True, help="OUT.html or OUT.pdf")
    p.add_argument("--names", nargs="+", help="display names for the runs")
    p.add_argument("--force", action="store_true", help="overwrite an existing report")
    p.add_argument(
        "--pdf-detail",
        action="store_true",
        help="PDF: add every layer's figures and all metadata (default: the first screen only)",
    )
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("diagnose", parents=[common], help="print the verdict table of a trace")
    p.add_argument("run", metavar="RUN.npz")
    p.add_argument("--json", action="store_true", help="machine-readable output")
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
