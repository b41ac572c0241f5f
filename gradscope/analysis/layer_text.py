"""A layer's diagnosis in one short line: what ``repr(LayerDiagnosis)`` shows.

The dataclass's own repr prints every spectrum and per-lag array (tens of kB); this is the
name, the recording's shape, the regime with the numbers behind it and the verdict's first
sentence, a few hundred characters at most.
"""

from __future__ import annotations

import math
import re
from typing import Any

from gradscope.analysis.formatting import fmt_num, fmt_steps

#: The most characters of the verdict the line keeps.
VERDICT_CHARS = 240


def _opening(verdict: str) -> str:
    first = re.split(r"(?<=[.!?])\s+(?=[A-Z])", " ".join(str(verdict).split()), maxsplit=1)[0]
    return first if len(first) <= VERDICT_CHARS else first[: VERDICT_CHARS - 1] + "…"


def layer_repr(d: Any) -> str:
    """``LayerDiagnosis('lstm.l0', lstm, T=40 B=4 D=32 (h + c): vanishing, ...)``.

    Args:
        d: A :class:`~gradscope.analysis.results.LayerDiagnosis`.

    Returns:
        One line: name, kind, T, B, D and the names of the state's parts, the regime, the
        state decay's rate per step with its 95% interval, half-life and horizon (steps),
        λ₁, the non-finite count when there are any, and the verdict's first sentence.
    """
    parts = " + ".join(d.state_names)
    head = f"LayerDiagnosis({d.name!r}, {d.kind}, T={d.T} B={d.B} D={d.D} ({parts}): {d.regime}"
    st = (d.decay or {}).get("state")
    facts = []
    if st is not None and math.isfinite(st.rate):
        lo, hi = st.rate_ci if st.rate_ci is not None else (math.nan, math.nan)
        facts.append(f"rate {st.rate:+.4f}/step (95% CI {fmt_num(lo)} to {fmt_num(hi)})")
        facts.append(f"half-life {fmt_steps(st.half_life)}, horizon {fmt_steps(st.horizon)} steps")
    ly = d.lyapunov
    if ly is not None and ly.k:
        facts.append(f"λ₁ {float(ly.exponents[0]):+.4f}")
    count = int((d.nonfinite or {}).get("count", 0) or 0)
    if count:
        facts.append(f"{count} non-finite states")
    body = ", ".join([head, *facts])
    return f"{body}; {_opening(d.verdict)!r})" if d.verdict else f"{body})"


__all__ = ["layer_repr"]
