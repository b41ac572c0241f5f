"""What a :class:`~gradscope.Monitor` keeps over training: the :class:`History`.

A history is a record, like a trace: per sampled training step and layer, the batch-mean
loss-gradient norms ``‖∂L/∂s_t‖`` and a row of summaries (:data:`SUMMARY_KEYS`). Reports
read it; it never imports the Monitor. Saved as ``.npz`` + JSON (no pickle).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gradscope._files import as_path
from gradscope._npz import NpzArchive, check_version, write_npz
from gradscope._views import render
from gradscope.errors import ShapeError, TraceFormatError, UnknownNameError
from gradscope.history_checks import check_history_meta, plan_history, row_widths
from gradscope.history_keys import (  # re-exported: the History's vocabulary
    CARRY_LAGS,
    GATE_KEYS,
    REGIME_CODES,
    STAT_KEYS,
    SUMMARY_KEYS,
)

HISTORY_FORMAT = "gradscope.history"
HISTORY_FORMAT_VERSION = 1

_REGIME_NAMES = {v: k for k, v in REGIME_CODES.items()}

Entry = tuple[np.ndarray, np.ndarray]  # (grad norms (W, T+1), summaries (W, K))


class History:
    """What a :class:`~gradscope.Monitor` keeps over training: per step and layer, a few numbers.

    For each sampled training step and each recorded layer (and direction) it holds, per
    rank of a distributed run (``world_size`` ranks; 1 otherwise), the ``T+1`` grad norms
    (:func:`gradscope.monitor.grad_norms`) and the scalars of :data:`SUMMARY_KEYS`:
    ``O(T + K)`` numbers per layer and step, no Jacobians and no traces, so memory grows only
    with the number of *sampled* steps.

    Aggregating over ranks (``rank=None``, the default; with one rank it is that rank):
    grad norms are the mean weighted by each rank's batch size (exact for unpadded batches);
    scalars are the mean over ranks (NaN-skipping); a regime is the most frequent one.

    Saved as ``.npz`` + JSON metadata with a format version (:meth:`save`, :meth:`load`,
    :func:`load_history`); no pickle.

    Attributes:
        world_size: Number of ranks whose batches each row holds.
        meta: JSON-able facts about the run (schedule, model class, each layer's cell kind
            under ``"kinds"``, ...).
        notes: ``{message: {"first_step": int, "count": int}}``: analyses that could not be
            done, counted instead of repeated.
    """

    def __init__(
        self,
        world_size: int = 1,
        meta: Mapping[str, Any] | None = None,
        keys: Sequence[str] = SUMMARY_KEYS,
    ) -> None:
        self.keys: tuple[str, ...] = tuple(keys)
        self._k = {key: i for i, key in enumerate(self.keys)}
        self.world_size = int(world_size)
        self.meta: dict[str, Any] = dict(meta or {})
        self.notes: dict[str, dict[str, int]] = {}
        self._steps: list[int] = []
        self._rows: list[dict[str, Entry]] = []
        self._names: dict[str, None] = {}

    # ----------------------------------------------------------------- building
    def append(self, step: int, entries: Mapping[str, Entry]) -> None:
        """Add one sampled step.

        Args:
            step: The training step.
            entries: ``{layer name: (grad_norms (W, T+1), summaries (W, K))}``, ``W`` =
                :attr:`world_size`, ``K = len(SUMMARY_KEYS)``.

        Raises:
            ShapeError: an entry has the wrong shape.
        """
        row: dict[str, Entry] = {}
        for name, (gn, sc) in entries.items():
            gn = np.asarray(gn, dtype=np.float64)
            sc = np.asarray(sc, dtype=np.float64)
            shape = (self.world_size, len(self.keys))
            if gn.ndim != 2 or gn.shape[0] != self.world_size or sc.shape != shape:
                raise ShapeError(
                    f"History.append: {name}: need grad norms (W={self.world_size}, T+1) and "
                    f"summaries ({self.world_size}, {len(self.keys)}), got {gn.shape} and "
                    f"{sc.shape}"
                )
            row[name] = (gn, sc)
            self._names.setdefault(name)
        self._steps.append(int(step))
        self._rows.append(row)

    def update(self, index: int, name: str, summaries: np.ndarray, rank: int = 0) -> None:
        """Replace one rank's summaries of one layer at one sampled step (grad norms stay).

        For a step analysed after its row was appended (the Monitor analyses its latest
        sampled step when it is closed, reported or saved).

        Args:
            index: Which sampled step (row), e.g. -1 for the latest.
            name: A layer present in that row.
            summaries: ``(K,)`` the new values of :attr:`keys`.
            rank: Whose row (0 without ``torch.distributed``).

        Raises:
            ShapeError: ``summaries`` is not ``(K,)``.
            UnknownNameError: the layer is not in that row.
        """
        row = self._rows[index]
        if name not in row:
            raise UnknownNameError(f"History.update: no layer {name!r} at row {index}")
        sc = np.asarray(summaries, dtype=np.float64)
        if sc.shape != (len(self.keys),):
            raise ShapeError(
                f"History.update: {name}: need ({len(self.keys)},) summaries, got {sc.shape}"
            )
        gn, old = row[name]
        new = old.copy()
        new[rank] = sc
        row[name] = (gn, new)

    def note(self, step: int, message: str) -> None:
        """Count a remark (e.g. an analysis that could not be done) once per message."""
        entry = self.notes.setdefault(message, {"first_step": int(step), "count": 0})
        entry["count"] += 1

    # ----------------------------------------------------------------- reading
    @property
    def steps(self) -> np.ndarray:
        """``(n,)`` int64: the sampled training steps."""
        return np.asarray(self._steps, dtype=np.int64)

    @property
    def names(self) -> list[str]:
        """Names of every layer seen, in first-seen order."""
        return list(self._names)

    def __len__(self) -> int:
        return len(self._steps)

    def _check(self, name: str, rank: int | None) -> None:
        if name not in self._names:
            raise UnknownNameError(f"no layer named {name!r} in this history; it has {self.names}")
        if rank is not None and not (0 <= rank < self.world_size):
            raise IndexError(f"rank {rank} out of range for world_size {self.world_size}")

    def _select(self, index: int | None) -> list[dict[str, Entry]]:
        return self._rows if index is None else [self._rows[index]]

    def _stack_grads(self, name: str, index: int | None = None) -> np.ndarray:
        """``(n, W, Tmax+1)`` NaN-padded grad norms of every rank (one row: ``index``)."""
        rows = self._select(index)
        width = max((row[name][0].shape[1] for row in rows if name in row), default=0)
        out = np.full((len(rows), self.world_size, width), np.nan)
        for i, row in enumerate(rows):
            if name in row:
                gn = row[name][0]
                out[i, :, : gn.shape[1]] = gn
        return out

    def _stack_scalars(self, name: str, index: int | None = None) -> np.ndarray:
        """``(n, W, K)`` scalars of every rank (NaN rows where the layer was absent)."""
        rows = self._select(index)
        out = np.full((len(rows), self.world_size, len(self.keys)), np.nan)
        for i, row in enumerate(rows):
            if name in row:
                out[i] = row[name][1]
        return out

    def _grads(self, name: str, rank: int | None, index: int | None) -> np.ndarray:
        gn = self._stack_grads(name, index)
        if rank is not None:
            return gn[:, rank]
        sc = self._stack_scalars(name, index)
        t_len, b = sc[:, :, self._k["T"]], sc[:, :, self._k["B"]]
        cols = np.arange(gn.shape[2])
        valid = cols[None, None, :] <= np.nan_to_num(t_len, nan=-1.0)[:, :, None]
        weight = np.where(valid, np.nan_to_num(b, nan=0.0)[:, :, None], 0.0)
        num = np.where(valid, gn * weight, 0.0).sum(axis=1)
        den = weight.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)

    def _scalar(self, name: str, key: str, rank: int | None, index: int | None) -> np.ndarray:
        if key not in self._k:
            raise UnknownNameError(f"no summary {key!r}; the history keeps {list(self.keys)}")
        vals = self._stack_scalars(name, index)[:, :, self._k[key]]
        if rank is not None:
            return vals[:, rank]
        finite = ~np.isnan(vals)
        cnt = finite.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(cnt > 0, np.where(finite, vals, 0.0).sum(axis=1) / cnt, np.nan)

    def _regime(self, name: str, key: str, rank: int | None, index: int | None) -> list[str]:
        codes = self._stack_scalars(name, index)[:, :, self._k[key]]
        out = []
        for row in codes if rank is None else codes[:, [rank]]:
            names = [_REGIME_NAMES.get(float(c), "") for c in row if not math.isnan(c)]
            out.append(max(names, key=names.count) if names else "")
        return out

    def grad_norms(self, name: str, rank: int | None = None) -> np.ndarray:
        """``(n, Tmax+1)`` batch-mean ``‖∂L/∂s_t‖`` per sampled step (rows), ``t = 0 … T``.

        Rows of shorter batches are NaN-padded on the right to the longest ``T`` seen for
        this layer; a row is all-NaN where the layer did not run at that step.

        Args:
            name: The layer's name (``history.names``).
            rank: One rank's batch, or None for the batch-size-weighted mean over ranks.

        Raises:
            KeyError: unknown layer name.
        """
        self._check(name, rank)
        return self._grads(name, rank, None)

    def scalar(self, name: str, key: str, rank: int | None = None) -> np.ndarray:
        """``(n,)`` one summary (a key of :data:`SUMMARY_KEYS`) per sampled step.

        Args:
            name: The layer's name.
            key: Which summary, e.g. ``"rate"`` or ``"radius_median"``.
            rank: One rank, or None for the mean over ranks (NaN-skipping).
        """
        self._check(name, rank)
        return self._scalar(name, key, rank, None)

    def entry(self, name: str, index: int = -1, rank: int | None = None) -> dict[str, Any]:
        """One sampled step of one layer, without stacking the whole history.

        Args:
            name: The layer's name.
            index: Which sampled step (row), e.g. -1 for the latest.
            rank: One rank, or None to aggregate over ranks (as in :meth:`grad_norms`).

        Returns:
            ``{"step": int, "grad_norms": (T+1,), "regime": str, "loss_regime": str,
            key: float for every other key of SUMMARY_KEYS}``; the layer's values are NaN
            (and the regimes ``""``) if it did not run at that step.

        Raises:
            KeyError: unknown layer name.
            IndexError: ``index`` out of range.
        """
        self._check(name, rank)
        row = self._rows[index]
        out: dict[str, Any] = {"step": self._steps[index]}
        gn = self._grads(name, rank, index)[0]
        width = int(row[name][0].shape[1]) if name in row else 0
        out["grad_norms"] = gn[:width]
        for key in self.keys:
            if key in ("regime", "loss_regime"):
                out[key] = self._regime(name, key, rank, index)[0]
            else:
                out[key] = float(self._scalar(name, key, rank, index)[0])
        return out

    def regime(self, name: str, key: str = "regime", rank: int | None = None) -> list[str]:
        """Regime per sampled step (``""`` where it was not analysed).

        Args:
            name: The layer's name.
            key: ``"regime"`` (state-gradient decay) or ``"loss_regime"``.
            rank: One rank, or None for the most frequent regime over ranks (ties: the
                lowest rank's).
        """
        self._check(name, rank)
        return self._regime(name, key, rank, None)

    def summaries(self, name: str, rank: int | None = None) -> dict[str, Any]:
        """Every summary of one layer as ``(n,)`` arrays, plus the report's fields.

        Returns:
            ``{"steps": (n,), "rate_ci": (n, 2), "regime": list[str], "loss_regime":
            list[str], key: (n,) for every other key of SUMMARY_KEYS}``.
        """
        self._check(name, rank)
        out: dict[str, Any] = {"steps": self.steps}
        for key in self.keys:
            if key not in ("regime", "loss_regime"):
                out[key] = self.scalar(name, key, rank)
        out["regime"] = self.regime(name, "regime", rank)
        out["loss_regime"] = self.regime(name, "loss_regime", rank)
        out["rate_ci"] = np.stack([out["rate_lo"], out["rate_hi"]], axis=1)
        return out

    @property
    def nbytes(self) -> int:
        """Bytes held by the stored numbers."""
        return sum(gn.nbytes + sc.nbytes for row in self._rows for gn, sc in row.values())

    def __repr__(self) -> str:
        return (
            f"History({len(self)} sampled steps, layers={self.names}, world_size={self.world_size})"
        )

    def __str__(self) -> str:
        from gradscope.history_text import history_table

        return history_table(self)

    def _repr_html_(self) -> str:
        """In a notebook: the latest sampled step's numbers per layer, as a table."""
        return render("notebook_html", self)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (NaN/inf as strings, see :func:`gradscope._json.jsonable`)."""
        from gradscope._json import jsonable

        return jsonable(
            {
                "steps": self.steps,
                "world_size": self.world_size,
                "meta": self.meta,
                "notes": self.notes,
                "layers": {
                    name: {
                        "grad_norms": self.grad_norms(name),
                        "summaries": {
                            k: v for k, v in self.summaries(name).items() if k != "steps"
                        },
                    }
                    for name in self.names
                },
            }
        )

    # ----------------------------------------------------------------- I/O
    def save(self, path: str | os.PathLike) -> Path:
        """Write the history as ``.npz`` + JSON metadata (atomically); returns the path.

        Per layer ``i``: ``l{i}/grad_norms`` ``(n, W, Tmax+1)``, ``l{i}/summaries``
        ``(n, W, K)``, ``l{i}/present`` ``(n,)`` bool; plus ``steps`` and ``__meta__``.
        """
        path = as_path(path, "History.save", "the .npz file to write")
        if path.suffix.lower() != ".npz":
            path = path.with_name(path.name + ".npz")
        arrays: dict[str, np.ndarray] = {"steps": self.steps}
        for i, name in enumerate(self.names):
            arrays[f"l{i}/grad_norms"] = self._stack_grads(name)
            arrays[f"l{i}/summaries"] = self._stack_scalars(name)
            arrays[f"l{i}/present"] = np.array([name in row for row in self._rows], dtype=bool)
        meta = {
            "format": HISTORY_FORMAT,
            "version": HISTORY_FORMAT_VERSION,
            "keys": list(self.keys),
            "layers": self.names,
            "world_size": self.world_size,
            "meta": self.meta,
            "notes": self.notes,
        }
        return write_npz(path, arrays, meta)

    @classmethod
    def load(cls, path: str | os.PathLike) -> History:
        """Read a history written by :meth:`save`. Never unpickles anything.

        Nothing in the file is trusted before it is checked
        (:mod:`gradscope.history_checks`): the metadata's types, the arrays' headers
        against it, then each row's number of steps.

        Raises:
            ArgumentTypeError: ``path`` is not a path.
            TraceFormatError: missing or unreadable file, not a gradscope history, a newer
                format version, or inconsistent contents (the message names the field).
        """
        path = as_path(path, "History.load", "a training history (.npz) written by History.save")
        with NpzArchive(path, "a gradscope training history", "History.save") as npz:
            meta = npz.meta
            if meta.get("format") != HISTORY_FORMAT:
                raise TraceFormatError(
                    f"{path}: not a gradscope training history (format {meta.get('format')!r:.60}"
                    "); traces load with gs.load"
                )
            check_version(path, meta, HISTORY_FORMAT, HISTORY_FORMAT_VERSION, "history")
            fields = check_history_meta(path, meta)
            data = npz.read(plan_history(npz, fields))
        keys = fields["keys"]
        hist = cls(fields["world_size"], fields["meta"], keys)
        hist.notes = fields["notes"]
        steps = data["steps"]
        per_layer = []
        for i, name in enumerate(fields["layers"]):
            gn, sc, present = (data[f"l{i}/{m}"] for m in ("grad_norms", "summaries", "present"))
            where = f"{path}: layer {i} ({name!r})"
            widths = row_widths(where, steps, sc, present, keys.index("T"), gn.shape[2])
            per_layer.append((name, gn, sc, widths))
        for j, step in enumerate(steps):
            row: dict[str, Entry] = {}
            for name, gn, sc, widths in per_layer:
                if widths[j]:
                    row[name] = (gn[j, :, : widths[j]], sc[j])
            hist._steps.append(int(step))
            hist._rows.append(row)
        for name in fields["layers"]:
            hist._names.setdefault(name)
        return hist


def load_history(path: str | os.PathLike) -> History:
    """Load a training history saved with :meth:`History.save` (see :meth:`History.load`)."""
    return History.load(path)


__all__ = [
    "CARRY_LAGS",
    "GATE_KEYS",
    "HISTORY_FORMAT",
    "HISTORY_FORMAT_VERSION",
    "REGIME_CODES",
    "STAT_KEYS",
    "SUMMARY_KEYS",
    "Entry",
    "History",
    "load_history",
]
