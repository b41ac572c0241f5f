"""The report's style sheets: :data:`CSS` for every rendering, :data:`PRINT_CSS` for paper.

:data:`PRINT_CSS` is what the PDF is printed with (A4 landscape; a table, a figure, a verdict
never split across two pages; headings kept with what follows them). :func:`scoped` turns
:data:`CSS` into rules that apply only inside one element, for a fragment embedded in another
page (a notebook's output cell).
"""

from __future__ import annotations

import re

CSS = """
:root { --fg:#1d1d1f; --muted:#5f6368; --line:#d9dce1; --bg:#ffffff; --soft:#f5f6f8;
  --van:#0072B2; --van-bg:#e1eef8; --exp:#B84700; --exp-bg:#fbe5d8; --neu:#00795A;
  --neu-bg:#daf2e9; --warn:#9c2a00; --warn-bg:#fff1e0; }
* { box-sizing: border-box; }
body { margin:0; font-family: system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans",
  Arial, sans-serif; color:var(--fg); background:var(--bg); line-height:1.45; font-size:15px; }
main { max-width: 1240px; margin: 0 auto; padding: 18px 24px 40px; }
header.top { border-bottom: 3px solid var(--fg); margin-bottom: 14px; padding-bottom: 8px; }
h1 { font-size: 1.55em; margin: 0 0 4px; }
h2 { font-size: 1.3em; margin: 30px 0 10px; padding-bottom: 4px;
  border-bottom: 1px solid var(--line); }
h3 { font-size: 1.12em; margin: 26px 0 8px; }
h4 { font-size: 1em; margin: 14px 0 6px; }
.sub { color: var(--muted); font-size: .92em; }
nav.toc { font-size: .9em; color: var(--muted); margin: 6px 0 0; }
nav.toc a { color: var(--van); margin-right: 12px; text-decoration: none; }
table { border-collapse: collapse; width: 100%; font-size: .9em; }
th, td { border-bottom: 1px solid var(--line); padding: 5px 8px; text-align: left;
  vertical-align: top; }
th { background: var(--soft); font-weight: 600; }
td.num { font-variant-numeric: tabular-nums; white-space: nowrap; }
table.summary td.verdict-text { font-size: .92em; min-width: 300px; }
.regime { display: inline-block; padding: 1px 8px; border-radius: 10px; font-weight: 600;
  white-space: nowrap; border: 1px solid currentColor; }
.regime-vanishing { color: var(--van); background: var(--van-bg); }
.regime-exploding { color: var(--exp); background: var(--exp-bg); }
.regime-neutral { color: var(--neu); background: var(--neu-bg); }
.regime-none { color: var(--muted); background: var(--soft); }
.alert { background: var(--warn-bg); color: var(--warn); border: 2px solid var(--warn);
  border-radius: 6px; padding: 8px 12px; margin: 10px 0; font-weight: 600; }
.verdict { background: var(--soft); border-left: 5px solid var(--muted); padding: 8px 12px;
  margin: 8px 0; }
.verdict.v-vanishing { border-left-color: var(--van); background: #f1f7fc; }
.verdict.v-exploding { border-left-color: var(--exp); background: #fdf3ed; }
.verdict.v-neutral { border-left-color: var(--neu); background: #eff9f5; }
ul.advice { margin: 4px 0 10px 0; padding-left: 22px; }
table.numbers td:first-child { white-space: nowrap; font-weight: 600; width: 16em; }
table.numbers td.meaning { color: var(--muted); font-size: .92em; }
.figs { display: grid; grid-template-columns: repeat(auto-fill, minmax(520px, 1fr)); gap: 18px;
  margin-top: 12px; }
figure { margin: 0; border: 1px solid var(--line); border-radius: 6px; padding: 8px;
  background: #fff; }
figure img { width: 100%; height: auto; display: block; }
figcaption { font-size: .86em; color: var(--fg); margin-top: 6px; }
figcaption b { color: var(--muted); }
figure.missing .nodata { border: 2px dashed var(--line); border-radius: 6px; padding: 24px 16px;
  color: var(--muted); text-align: center; min-height: 120px; }
figure.missing .nodata strong { color: var(--fg); display: block; margin-bottom: 6px; }
.note { color: var(--muted); font-size: .9em; }
.missing-line { margin: 14px 0; color: var(--muted); border: 1px dashed var(--line);
  padding: 8px 12px; border-radius: 6px; }
table.meta td:first-child { color: var(--muted); width: 18em; min-width: 12em; }
table.meta td { font-size: .88em; word-break: break-word; }
details > summary { cursor: pointer; }
section.run > details > summary h2 { display: inline-block; border: none; margin: 18px 0 6px; }
table.summary td.verdict-text details summary { color: var(--fg); }
pre { white-space: pre-wrap; margin: 0; font-size: .95em; }
/* a very long name wraps instead of widening the page (numbers and headers do not) */
h1, h2, h3, nav.toc a, td.name, .sub, .alert, figcaption, p.headline, p.note {
  overflow-wrap: anywhere; }
footer { margin-top: 30px; color: var(--muted); font-size: .85em;
  border-top: 1px solid var(--line); padding-top: 8px; }
.cols { display: grid; grid-template-columns: minmax(0, 2fr) minmax(0, 3fr); gap: 18px;
  margin-top: 12px; align-items: start; }
table.cmp td.verdict-text { font-size: .9em; min-width: 220px; }
details.all-numbers { margin: 14px 0; }
.figs > figure.wide { grid-column: 1 / -1; }
details.all-numbers > summary { font-weight: 600; }
p.headline { font-size: 1.1em; font-weight: 600; margin: 4px 0 12px; padding: 8px 12px;
  border-left: 5px solid var(--fg); background: var(--soft); }
svg.swatch { vertical-align: middle; margin-right: 6px; }
details.meta > summary { color: var(--muted); margin: 4px 0 8px; }
"""

PRINT_CSS = """
@page { size: A4 landscape; margin: 11mm 12mm 12mm; }
@media print {
  body { font-size: 10pt; }
  main { max-width: none; padding: 0; }
  nav.toc { display: none; }
  a { color: inherit; text-decoration: none; }
  h2 { margin-top: 14px; }
  h2, h3, h4 { break-after: avoid; }
  table, figure, .verdict, .alert, .missing-line { break-inside: avoid; }
  table.meta { break-inside: auto; }
  tr { break-inside: avoid; }
  thead { display: table-header-group; }
  .figs { grid-template-columns: 1fr 1fr 1fr; gap: 8px; }
  figcaption { font-size: .78em; }
  table.numbers, table.meta td { font-size: .8em; }
  table.numbers td, table.meta td { padding: 2px 6px; }
  .verdict { font-size: .92em; padding: 6px 10px; }
  ul.advice { font-size: .92em; }
  section.run, section#shared, body.detail section#metadata { break-before: page; }
  figure { padding: 4px; }
  table.summary, table.cmp { font-size: .84em; }
  table.summary td.name, table.cmp td.name { white-space: nowrap; }
  th, td { padding: 3px 6px; }
  footer { margin-top: 8px; padding-top: 4px; break-before: avoid; }
}
"""


def scoped(css: str, scope: str) -> str:
    """The rules of ``css`` rewritten to apply only inside ``scope`` (a CSS selector).

    ``:root``, ``html``, ``body`` and ``main`` become ``scope`` itself; every other selector is
    prefixed with it. ``@``-blocks (print rules) are left out: a fragment is for screens.
    """
    out = []
    for selectors, body in re.findall(
        r"([^{}@]+)\{([^{}]*)\}", re.sub(r"@[^{]+\{[^{}]*(\{[^{}]*\}[^{}]*)*\}", "", css)
    ):
        parts = []
        for sel in selectors.split(","):
            sel = sel.strip()
            if not sel:
                continue
            head, _, rest = sel.partition(" ")
            if head in (":root", "html", "body", "main"):
                parts.append(f"{scope} {rest}".strip())
            else:
                parts.append(f"{scope} {sel}")
        out.append(f"{', '.join(parts)} {{{body.strip()}}}")
    return "\n".join(out)


__all__ = ["CSS", "PRINT_CSS", "scoped"]
