"""One sampled step's record (:class:`Snapshot`) and its all-gather across DDP ranks."""

from __future__ import annotations

import math
import os
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gradscope._rng import rng_preserved
from gradscope.errors import GradscopeError
from gradscope.history import SUMMARY_KEYS, Entry
from gradscope.traces import Trace


@dataclass
class Snapshot:
    """The latest sampled step: its trace, and its full diagnosis on demand.

    Attributes:
        step: The training step.
        trace: Its recording, with the loss gradients. The weights in it are copies taken at
            that step, so later optimizer steps do not alter it.
    """

    step: int
    trace: Trace
    _diagnosis: Any = field(default=None, repr=False)

    @property
    def diagnosis(self) -> Any:
        """:func:`gradscope.diagnose` of :attr:`trace`, computed on first access (cached)."""
        if self._diagnosis is None:
            from gradscope.analysis.diagnosis import diagnose

            with rng_preserved(), torch.no_grad():
                self._diagnosis = diagnose(self.trace, progress=False)
        return self._diagnosis

    def report(self, path: str | os.PathLike, *, environment: bool = False) -> Path:
        """Write this step's full report (see :func:`gradscope.reporting.report`).

        ``environment=True`` adds the platform string (see there); off by default.
        """
        from gradscope.reporting import report

        return report(self, path, environment=environment)


# --------------------------------------------------------------------------- distributed
def detect_distributed(distributed: bool | None, group: Any) -> bool:
    """Whether a Monitor gathers across ranks.

    ``distributed`` itself, or (None) whenever ``torch.distributed`` is initialised with
    more than one rank in ``group``.

    Raises:
        GradscopeError: ``distributed=True`` without an initialised process group.
    """
    import torch.distributed as dist

    available = dist.is_available() and dist.is_initialized()
    if distributed is None:
        return bool(available and dist.get_world_size(group) > 1)
    if distributed and not available:
        raise GradscopeError(
            "Monitor(distributed=True) needs torch.distributed to be initialised "
            "(torch.distributed.init_process_group) before the Monitor is created"
        )
    return bool(distributed)


def world_size(group: Any) -> int:
    """The number of ranks in ``group`` (an initialised ``torch.distributed``)."""
    import torch.distributed as dist

    return int(dist.get_world_size(group))


def collective_device(group: Any) -> torch.device:
    """The device collectives of ``group`` run on (CUDA for NCCL, else the CPU)."""
    import torch.distributed as dist

    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_gather(entries: Mapping[str, Entry], group: Any) -> dict[str, Entry]:
    """Gather every rank's ``{name: (grad norms (T+1,), summaries (K,))}`` with tensors only.

    Two ``all_gather`` calls of fixed-size tensors: an int64 header ``[crc32(names),
    n_layers, max T+1]`` (checks that every rank recorded the same layers and agrees on a
    width), then one float64 ``(L, 1 + K + width)`` block per rank (NaN-padded).

    Returns:
        ``{name: (grad norms (W, width), summaries (W, K))}``.

    Raises:
        GradscopeError: the ranks recorded different layers.
    """
    import torch.distributed as dist

    world = dist.get_world_size(group)
    device = collective_device(group)
    names = list(entries)
    k = len(SUMMARY_KEYS)
    crc = zlib.crc32("\x1f".join(names).encode("utf-8"))
    width = max((gn.shape[-1] for gn, _ in entries.values()), default=0)
    header = torch.tensor([crc, len(names), width], dtype=torch.int64, device=device)
    headers = [torch.empty_like(header) for _ in range(world)]
    dist.all_gather(headers, header, group=group)
    h = torch.stack(headers).cpu().numpy()
    if (h[:, 0] != crc).any() or (h[:, 1] != len(names)).any():
        raise GradscopeError(
            f"Monitor (distributed): the ranks recorded different recurrent layers at the same "
            f"step (layer counts per rank {h[:, 1].tolist()}; this rank: {names}); every rank "
            "must run the same model with the same Monitor settings"
        )
    width = int(h[:, 2].max())
    local = torch.full((len(names), k + width), math.nan, dtype=torch.float64)
    for i, (gn, sc) in enumerate(entries.values()):
        local[i, :k] = torch.from_numpy(np.asarray(sc, dtype=np.float64).reshape(-1))
        gn = np.asarray(gn, dtype=np.float64).reshape(-1)
        local[i, k : k + gn.shape[0]] = torch.from_numpy(gn)
    local = local.to(device)
    blocks = [torch.empty_like(local) for _ in range(world)]
    if names:
        dist.all_gather(blocks, local, group=group)
    stacked = torch.stack(blocks).cpu().numpy() if names else np.zeros((world, 0, k + width))
    return {name: (stacked[:, i, k:], stacked[:, i, :k]) for i, name in enumerate(names)}
