"""Every ```python block of README.md runs as written.

The blocks run in order in one namespace, as a reader pasting them one after another into
one session would (a later block may use the names of an earlier one), in a temporary
working directory, so the files they write land there. A block is skipped only when it
needs an optional package that is not installed (the ``dev`` extra installs them all), or
when the line above it says ``<!-- readme-test: skip REASON -->``; the reason is shown.
W&B runs offline.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import re
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"

#: Packages a README block may import that gradscope itself does not require (the ``dev``
#: extra installs them); a block that imports a missing one is skipped, saying which.
OPTIONAL = {"transformers", "accelerate", "lightning", "pytorch_lightning", "tensorboard", "wandb"}

_FENCE = re.compile(r"^```python[^\n]*\n(.*?)^```", re.M | re.S)
_SKIP = re.compile(r"<!--\s*readme-test:\s*skip\s+(.*?)\s*-->\s*$")


def blocks(text: str) -> list[tuple[int, str, str | None]]:
    """``(first line number, code, reason to skip or None)`` of every python block."""
    out = []
    for m in _FENCE.finditer(text):
        line = text.count("\n", 0, m.start()) + 2  # the code starts below the fence
        before = text[: m.start()].rstrip("\n").rsplit("\n", 1)[-1]
        skip = _SKIP.search(before)
        out.append((line, m.group(1), skip.group(1) if skip else None))
    return out


def missing_optional(code: str) -> str | None:
    """The first optional package the code imports that is not installed, or None."""
    for name in re.findall(r"^\s*(?:from|import)\s+([A-Za-z_]\w*)", code, re.M):
        if name in OPTIONAL and importlib.util.find_spec(name) is None:
            return name
    return None


BLOCKS = blocks(README.read_text(encoding="utf-8"))


def test_the_readme_has_python_blocks_and_the_parser_finds_them(monkeypatch) -> None:
    text = "a\n```python\nx = 1\n```\n<!-- readme-test: skip needs a GPU -->\n```python\ny\n```\n"
    assert blocks(text) == [(3, "x = 1\n", None), (7, "y\n", "needs a GPU")]
    assert len(BLOCKS) >= 4
    code = "import os\n  from no_such_optional_pkg import x\n"
    assert missing_optional(code) is None  # not a known optional package: it must run
    monkeypatch.setattr(sys.modules[__name__], "OPTIONAL", {"no_such_optional_pkg"})
    assert missing_optional(code) == "no_such_optional_pkg"
    assert missing_optional("import os") is None


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    """One namespace and one working directory for all blocks, in order (one torch thread:
    the README's models are tiny, and spinning threads on a shared machine only slow them)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    cwd = os.getcwd()
    env = {k: os.environ.get(k) for k in ("WANDB_MODE", "WANDB_SILENT")}
    os.chdir(tmp_path_factory.mktemp("readme"))
    os.environ.update(WANDB_MODE="offline", WANDB_SILENT="true")
    try:
        yield {"__name__": "__readme__"}
    finally:
        torch.set_num_threads(threads)
        os.chdir(cwd)
        for k, v in env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.mark.parametrize(("line", "code", "skip"), BLOCKS, ids=[f"L{b[0]}" for b in BLOCKS])
def test_readme_block_runs(session, line: int, code: str, skip: str | None) -> None:
    if skip:
        pytest.skip(f"README.md:{line}: {skip}")
    need = missing_optional(code)
    if need:
        pytest.skip(f"README.md:{line} needs the optional package {need!r}, not installed here")
    # line numbers in a traceback are README's own
    compiled = compile("\n" * (line - 1) + code, str(README), "exec")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compiled, session)
    print(out.getvalue())  # shown with -s, or on failure
