"""The command line's argument parser: subcommands, options, help and examples.

:func:`build_parser` is kept apart from the commands (:mod:`gradscope.cli`) so that its help
can be read without running anything; the commands are passed in.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping

from gradscope._cli_inputs import MAX_INPUT_GB
from gradscope._cli_output import FAIL_ON_EXIT, REGIMES
from gradscope._version import __version__

Command = Callable[[argparse.Namespace], int]

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
named by --fail-on (the outputs are written first); --debug adds tracebacks, never changes them

--json is strict JSON: a number that is not finite is the string "nan", "inf" or "-inf"
"""


def _json_and_fail_on(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--json",
        action="store_true",
        help="results as JSON on stdout (per layer: regime, decay rates with intervals, "
        "half-life, horizon, spectra summaries, Lyapunov exponents; the paths written). "
        'Strict JSON: NaN, inf and -inf are the strings "nan", "inf", "-inf"',
    )
    p.add_argument(
        "--fail-on",
        metavar="REGIME",
        action="append",
        help=f"exit with code {FAIL_ON_EXIT} when any layer's regime is REGIME, one of "
        f"{', '.join(REGIMES)}; repeat the flag or give a comma list",
    )


def _pdf_detail(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--pdf-detail",
        action="store_true",
        help="PDF: add every layer's figures and all metadata (default: the first screen only)",
    )


def build_parser(commands: Mapping[str, Command]) -> argparse.ArgumentParser:
    """The argument parser; ``commands`` maps each subcommand to the function that runs it."""
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
    p.add_argument(
        "--out", default="reports/demo", help="output folder, created (default reports/demo)"
    )
    p.add_argument("--steps", type=int, default=600, help="training steps per model (600)")
    p.add_argument("--seq-len", type=int, default=50, help="sequence length T, at least 2 (50)")
    p.add_argument("--hidden", type=int, default=32, help="hidden size of every model (32)")
    p.add_argument("--batch", type=int, default=64, help="training batch size (64)")
    p.add_argument("--seed", type=int, default=0, help="seed of the data and weights (0)")
    _pdf_detail(p)
    p.add_argument("--no-pdf", action="store_true", help="write the HTML report only")
    p.set_defaults(func=commands["demo"])

    p = sub.add_parser(
        "profile",
        parents=[common],
        help="profile your own model: TARGET is package.module:factory",
        description="Run your model once on an input under gradscope's hooks, print the "
        "verdicts, and write a report plus the trace (.npz) for later.",
        epilog="example: gradscope profile mypkg.models:make_model --input random:100,8,32",
    )
    p.add_argument(
        "target",
        metavar="TARGET",
        help="package.module:factory (called with no arguments) or package.module:model",
    )
    p.add_argument(
        "--input",
        required=True,
        help="random:T,B,I (standard normal, in the model's dtype) or a .npy / .pt tensor "
        "file (floats become the model's dtype, integers int64 token ids)",
    )
    p.add_argument(
        "--batch-first",
        action="store_true",
        help="the input is (B, T, I), not (T, B, I): random: input is made so; for a file, "
        "it says how the file is laid out (the output says how the model read it)",
    )
    p.add_argument(
        "--max-input-gb",
        type=float,
        default=MAX_INPUT_GB,
        metavar="GB",
        help=f"refuse an input larger than this many GiB, before it is made or loaded "
        f"(default {MAX_INPUT_GB:g}; recording and analysis need several times the input)",
    )
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
    _pdf_detail(p)
    p.set_defaults(func=commands["profile"])

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
    _pdf_detail(p)
    p.set_defaults(func=commands["report"])

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
    p.set_defaults(func=commands["diagnose"])
    return parser
