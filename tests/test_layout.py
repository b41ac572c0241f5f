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


def _modules() -> dict[str, Path]:
    mods = {}
    for p in PKG.rglob("*.py"):
        name = ".".join(p.relative_to(PKG.parent).with_suffix("").parts)
        mods[name.removesuffix(".__init__")] = p
    return mods


def import_graph() -> dict[str, set[str]]:
    """Module -> gradscope modules it imports (module level and inside functions)."""
    mods = _modules()
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
