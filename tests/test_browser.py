"""A real browser opens the HTML report from disk, offline, and renders it.

Headless Chromium (Debian package ``chromium``) loads the file with networking disabled and
every host name unresolvable, takes a screenshot of the first screen and dumps the DOM it
built. The test checks that the page rendered (expected size, not blank, the inline figures
decoded into the colours they were drawn with), that the browser logged no console error and
no failed load, and that the DOM holds every section. Without Chromium the test is skipped
locally and fails under CI (``CI=true``), where the browser is required.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import gradscope as gs
from gradscope.reporting import figures as F

pytestmark = pytest.mark.browser

WIDTH, HEIGHT = 1280, 2000


def _chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    if Path("/usr/bin/chromium").is_file():
        return "/usr/bin/chromium"
    msg = "headless Chromium not found (Debian package chromium)"
    if os.environ.get("CI", "").strip().lower() in ("1", "true", "yes"):
        pytest.fail(msg + "; CI must install it")
    pytest.skip(msg)


def _flags(profile: Path) -> list[str]:
    return [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        "--host-resolver-rules=MAP * ~NOTFOUND",  # any network request would fail loudly
        f"--user-data-dir={profile}",
        "--enable-logging=stderr",
        "--v=0",
    ]


@pytest.fixture(scope="module")
def report_html(tmp_path_factory: pytest.TempPathFactory) -> Path:
    x = torch.randn(40, 4, 3, generator=torch.Generator().manual_seed(0))
    profs = {}
    for label, cls in (("vanilla RNN", nn.RNN), ("LSTM", nn.LSTM), ("GRU", nn.GRU)):
        with torch.random.fork_rng():
            torch.manual_seed(0)
            model = cls(3, 16)
        profs[label] = gs.profile(model, x, analysis={"progress": False})
    return gs.report(profs, tmp_path_factory.mktemp("browser") / "report.html")


def _console_problems(stderr: str) -> list[str]:
    """Console output (the report's one script logs nothing, so any console message is a
    problem: a script error, for one) and failed loads, as Chromium logs them with
    ``--enable-logging=stderr``."""
    bad = (":CONSOLE", "Uncaught", "net::ERR_", "Not allowed to load", "Failed to load")
    return [line for line in stderr.splitlines() if any(b in line for b in bad)]


def test_console_scan_catches_errors(tmp_path: Path) -> None:
    """The scan above is not vacuous: a page with a script error is caught."""
    chromium = _chromium()
    page = tmp_path / "bad.html"
    page.write_text("<!DOCTYPE html><p>x</p><script>undefinedFunction();</script>")
    proc = subprocess.run(
        [chromium, *_flags(tmp_path / "profile-bad"), "--dump-dom", page.as_uri()],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert any("undefinedFunction" in line for line in _console_problems(proc.stderr))


def test_chromium_renders_the_report_offline(report_html: Path, tmp_path: Path) -> None:
    chromium = _chromium()
    shot = tmp_path / "first_screen.png"
    proc = subprocess.run(
        [
            chromium,
            *_flags(tmp_path / "profile-shot"),
            f"--screenshot={shot}",
            f"--window-size={WIDTH},{HEIGHT}",
            report_html.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert _console_problems(proc.stderr) == []
    with Image.open(shot) as im:
        assert im.size == (WIDTH, HEIGHT)
        rgb = np.asarray(im.convert("RGB"), dtype=float)
    grey = rgb.mean(axis=2)
    assert grey.std() > 20, "blank screenshot"
    assert (grey < 128).mean() > 0.01, "no text or lines drawn"
    # the comparison figure (on the first screen) decoded: its three model colours show up
    for colour in F.palette(3):
        want = np.array([int(colour[i : i + 2], 16) for i in (1, 3, 5)], dtype=float)
        close = np.linalg.norm(rgb - want, axis=2) < 40
        assert close.sum() > 200, f"figure colour {colour} not on screen"


def test_chromium_dom_has_every_section(report_html: Path, tmp_path: Path) -> None:
    chromium = _chromium()
    proc = subprocess.run(
        [chromium, *_flags(tmp_path / "profile-dom"), "--dump-dom", report_html.as_uri()],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert _console_problems(proc.stderr) == []
    dom = proc.stdout
    for section in ("summary", "comparison", "metadata"):
        assert f'id="{section}"' in dom
    assert len(re.findall(r'data-section="layer"', dom)) == 3
    srcs = re.findall(r'<img [^>]*src="([^"]*)"', dom)
    assert srcs and all(src.startswith("data:image/png;base64,") for src in srcs)
    source = report_html.read_text(encoding="utf-8")
    n_images = len(re.findall(r"<img ", source))
    assert n_images > 0 and len(re.findall(r"<img ", dom)) == n_images


#: Sets an attribute on <html> if any of it ever runs as script.
PWN = "document.documentElement.setAttribute('data-pwned','1')"
HOSTILE = [
    f"<script>{PWN}</script>",
    f'"><img src=x onerror="{PWN}">',
    f'\'><svg onload="{PWN}">',
    "</script><!--",
    "\u202eevil",  # a bidi override: would reverse everything after it
    "y" * 2000,
    "",
    "😀 层",
]


class _Named(nn.Module):
    """One small RNN per name, called in a chain (module names as layer names)."""

    def __init__(self, names: list[str]) -> None:
        super().__init__()
        self.names = names
        for i, name in enumerate(names):
            self.add_module(name, nn.RNN(3 if i == 0 else 4, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for name in self.names:
            x = getattr(self, name)(x)[0]
        return x


def _dom(page: Path, profile: Path, *extra: str) -> tuple[str, str]:
    chromium = _chromium()
    proc = subprocess.run(
        [chromium, *_flags(profile), *extra, "--virtual-time-budget=3000", page.as_uri()],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert _console_problems(proc.stderr) == []
    return proc.stdout, proc.stderr


@pytest.mark.filterwarnings("ignore:Glyph .* missing from font")  # 层 in DejaVu Sans
def test_hostile_names_run_no_script_and_keep_the_page_whole(tmp_path: Path) -> None:
    """Names from the user (runs, layers, title, metadata) are text on every HTML path."""
    from html import unescape

    from gradscope.reporting import first_screen_html

    layers = [n.replace(".", "_") for n in HOSTILE if n]  # module names: no "." nor ""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        prof = gs.profile(_Named(layers[:4]), torch.randn(6, 2, 3), analysis={"progress": False})
        other = gs.profile(_Named(layers[4:]), torch.randn(6, 2, 3), analysis={"progress": False})
    prof.trace.meta.update({n or "empty": n for n in HOSTILE})
    pages = {
        "report": gs.report(
            {n: (prof, other)[i % 2] for i, n in enumerate(HOSTILE[::2] + HOSTILE[1:2])},
            tmp_path / "r.html",
        ),
        "titled": gs.report(prof, tmp_path / "t.html", title=HOSTILE[0]),
    }
    frag = first_screen_html({n: other for n in HOSTILE[:3]}, title=HOSTILE[1], figures=True)
    pages["fragment"] = tmp_path / "f.html"
    pages["fragment"].write_text(f"<!DOCTYPE html><body>{frag}{prof._repr_html_()}</body>")
    probe = (
        "<script>window.addEventListener('load', function () { var p = "
        "document.createElement('pre'); p.id = 'w'; p.textContent = "
        "document.documentElement.scrollWidth + ' ' + document.documentElement.clientWidth; "
        "document.body.appendChild(p); });</script></body>"
    )
    for key, path in pages.items():
        src = path.read_text(encoding="utf-8")
        assert "\u202e" not in src and "[U+202E]evil" in src, key  # written out, not obeyed
        page = tmp_path / f"probe-{key}.html"
        page.write_text(src.replace("</body>", probe), encoding="utf-8")
        dom, _ = _dom(page, tmp_path / f"profile-{key}", "--window-size=1280,2000", "--dump-dom")
        html_tag = re.search(r"<html[^>]*>", dom).group(0)
        assert "data-pwned" not in html_tag, key
        scroll, client = map(int, re.search(r'<pre id="w">(\d+) (\d+)</pre>', dom).groups())
        assert scroll <= client, (key, scroll, client)  # a 2000-character name wraps
        text = unescape(re.sub(r"<[^>]+>", "", dom))
        for name in HOSTILE[:3]:
            assert name in text, (key, name)  # shown as the text it is
