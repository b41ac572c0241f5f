"""What a gated cell declares about its gates, for the gate views, the Monitor and reports.

A family that has gates (LSTM, GRU, vanilla RNN, sLSTM, ...) sets
:attr:`~gradscope.cells.gated.GatedCell.gates` to a :class:`Gates` and implements three
read-outs of them (see :class:`~gradscope.cells.gated.GatedCell`): every shown gate from
the weights (:meth:`gate_values`), the carried gate's pre-activations alone
(:meth:`carried_logits`, a fraction of the weights) and the gate and its log from those
pre-activations (:meth:`carried_from_logits`, e.g. from what a replay kept). The additive
path itself (which state part the carried gate keeps, ``A_t`` in ``J_t = A_t + R_t``) is
the form's couplings of a part with its own previous value
(:meth:`~gradscope.cells.gated.GatedForm.additive`). Everything downstream (gate views,
the Monitor's gate numbers, sentences, report panels, history keys) iterates over these
declarations; none of it knows a family by name.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from torch import Tensor


@dataclass(frozen=True)
class Gates:
    """A family's gates, as the analysis and the reports name them.

    Attributes:
        shown: The gates whose distributions are reported (``("i", "f", "o")``); a
            vanilla cell's ``("φ'",)``.
        carried: The gate on the additive path (``"f"``, ``"z"``), None when there is none
            (a vanilla cell: its "gate" ``φ'`` scales every path).
        word: The carried gate's name in words and in a history's keys
            (``gate_{word}_median``): ``"forget"``, ``"update"`` or ``"dphi"``.
        path: The additive path in one word: ``"cell"``, ``"update"``, or ``"none"``.
        path_text: The path in a sentence: ``"cell path (diag f on c)"``.
        short_text: The path in a table cell: ``"cell path"``.
    """

    shown: tuple[str, ...]
    carried: str | None
    word: str
    path: str = "none"
    path_text: str = ""
    short_text: str = ""

    def as_dict(self) -> dict[str, Any]:
        """The declaration as plain data (a diagnosis's and a history's record of it)."""
        out = asdict(self)
        out["shown"] = list(self.shown)
        return out


def preacts(
    params: dict[str, Tensor], x: Tensor, h: Tensor, rows: slice | None = None
) -> tuple[Tensor, Tensor]:
    """``(W_ih x + b_ih, W_hh h + b_hh)`` over any leading shape, only ``rows`` if given.

    Cost ``O(R·(I + P))`` per pair for ``R`` rows (all: ``4H``, ``3H``, ``H``).
    """
    sel = slice(None) if rows is None else rows
    gi = x @ params["weight_ih"][sel].T
    gh = h @ params["weight_hh"][sel].T
    if "bias_ih" in params:  # in place: these are (T, B, R) and the analysis holds few
        gi += params["bias_ih"][sel]
    if "bias_hh" in params:
        gh += params["bias_hh"][sel]
    return gi, gh


def gate_rows(params: dict[str, Tensor], blocks: int, which: int) -> slice:
    """The rows of gate block ``which`` of ``blocks`` in the stacked weights."""
    hid = params["weight_ih"].shape[0] // blocks
    return slice(which * hid, (which + 1) * hid)


__all__ = ["Gates", "gate_rows", "preacts"]
