"""The package's layout stays easy to live in: small modules, imports flowing one way.

* no module of ``gradscope/`` over 500 lines;
* no import cycle among gradscope's modules, counting imports inside functions too (a lazy
  import that runs back up the layers is still a cycle in the design);
* ``import gradscope`` loads neither torch, SciPy nor matplotlib (so the command line's
  ``--help`` and ``--version`` answer at once), and every public name still resolves;
* no module name equals a public function name (``import gradscope.x as m`` gives a module).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "gradscope"
MAX_LINES = 500


def _modules(pkg: Path = PKG) -> dict[str, Path]:
    mods = {}
    for p in pkg.rglob("*.py"):
        name = ".".join(p.relative_to(pkg.parent).with_suffix("").parts)
        mods[name.removesuffix(".__init__")] = p
    return mods


def import_graph(pkg: Path = PKG) -> dict[str, set[str]]:
    """Module -> gradscope modules it imports (module level and inside functions)."""
    mods = _modules(pkg)
    edges: dict[str, set[str]] = {m: set() for m in mods}
    for m, p in mods.items():
        pkg = m if p.name == "__init__.py" else m.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            for t in targets:
                while t and t not in mods:
                    t = t.rsplit(".", 1)[0] if "." in t else ""
                if t and t != m and not m.startswith(t + "."):
                    edges[m].add(t)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in edges:
        if v not in index:
            visit(v)
    return out


def test_no_module_over_the_line_limit():
    big = {
        str(p): n for p in PKG.rglob("*.py") if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert not big, f"modules over {MAX_LINES} lines (split them by concept): {big}"


def test_no_import_cycles():
    found = cycles(import_graph())
    assert not found, f"import cycles: {found}"


def test_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


#: The layers, bottom to top: a module may import its own layer and the ones below, never
#: one above (function-local imports count). Records reach the reporting layer through the
#: renderers the package's top registers (``gradscope._views``), not by importing it.
LAYERS: dict[str, int] = {
    **dict.fromkeys(
        ["errors", "_version", "_json", "_files", "_npz", "_rng", "_select", "_views"], 0
    ),
    **dict.fromkeys(["theory", "history_keys"], 0),
    **dict.fromkeys(["cells", "sequences"], 1),
    **dict.fromkeys(["layer_trace", "traces", "trace_checks", "_progress"], 2),
    **dict.fromkeys(["recording", "jacobians"], 3),
    "analysis": 4,
    **dict.fromkeys(["history", "history_checks", "history_text"], 5),
    "reporting": 6,
    **dict.fromkeys(["monitor", "integrations"], 7),
    **dict.fromkeys(["cli", "_cli_parser", "_cli_inputs", "_cli_output", "demo", "__main__"], 8),
}


def layer_of(module: str) -> int:
    """The layer of a gradscope module (the package's own ``__init__`` is the top)."""
    if module == "gradscope":
        return max(LAYERS.values()) + 1
    top = module.split(".")[1]
    assert top in LAYERS, f"{module}: add its top-level name to LAYERS in tests/test_layout.py"
    return LAYERS[top]


def test_no_import_runs_back_up_the_layers():
    up = sorted(
        f"{m} (layer {layer_of(m)}) imports {t} (layer {layer_of(t)})"
        for m, ts in import_graph().items()
        for t in ts
        if layer_of(t) > layer_of(m)
    )
    assert not up, "imports that run back up the layers:\n" + "\n".join(up)


def test_the_layer_check_sees_a_function_local_import_up(tmp_path):
    """A lazy import inside a function that runs up a layer is found (not only top-level)."""
    fake = tmp_path / "gradscope"
    (fake / "analysis").mkdir(parents=True)
    (fake / "reporting").mkdir()
    for init in (fake, fake / "analysis", fake / "reporting"):
        (init / "__init__.py").write_text("")
    (fake / "reporting" / "notebook.py").write_text("def notebook_html(obj):\n    return ''\n")
    (fake / "analysis" / "results.py").write_text(
        "def view(obj):\n    from gradscope.reporting.notebook import notebook_html\n"
        "    return notebook_html(obj)\n"
    )
    edges = import_graph(fake)
    up = [(m, t) for m, ts in edges.items() for t in ts if layer_of(t) > layer_of(m)]
    assert up == [("gradscope.analysis.results", "gradscope.reporting.notebook")]


def test_reports_never_import_the_monitor():
    edges = import_graph()
    bad = {
        m: sorted(t for t in ts if t.startswith("gradscope.monitor"))
        for m, ts in edges.items()
        if m.startswith("gradscope.reporting")
    }
    assert not any(bad.values()), bad


def test_import_gradscope_is_light_and_names_resolve():
    code = (
        "import sys, gradscope as gs\n"
        "heavy = [m for m in ('torch', 'scipy', 'matplotlib') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "import types\n"
        "for name in gs.__all__:\n"
        "    getattr(gs, name)\n"
        "assert isinstance(gs.decay, types.FunctionType) and gs.decay.__name__ == 'decay'\n"
        "import gradscope.analysis.decay\n"
        "assert gs.decay.__name__ == 'decay'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize(
    "name",
    ["trace", "record", "decay", "lyapunov", "diagnose", "report", "profile", "spectrum", "load"],
)
def test_no_module_shares_a_public_function_name(name):
    assert not (PKG / f"{name}.py").exists() and not (PKG / name).is_dir()
