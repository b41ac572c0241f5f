"""Distributed data parallel: each rank monitors its own batch, rank 0 gathers and writes.

Two CPU processes on the gloo backend (``torch.multiprocessing.spawn``, a ``file://`` store
in a temporary directory). The ranks see different data, sequence lengths and batch sizes;
each saves what it computed locally, and the parent checks that rank 0's gathered history
holds both ranks' numbers exactly (a float64 all_gather moves bits, it does not round).
"""

from __future__ import annotations

import datetime
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from gradscope.monitor import At, Monitor, grad_norms, load_history

WORLD = 2
STEPS = 3


pytestmark = pytest.mark.usefixtures("one_thread")


class Seq(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.GRU(3, 5, num_layers=2)
        self.head = nn.Linear(5, 1)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(out[-1])


def _shape(rank: int, step: int) -> tuple[int, int]:
    """(T, B) of a rank's batch at a step: they differ across ranks and steps."""
    return 4 + 2 * rank + step, 2 + rank


def _worker(rank: int, tmp: str) -> None:
    out = Path(tmp)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{out / 'store'}",
        rank=rank,
        world_size=WORLD,
        timeout=datetime.timedelta(seconds=120),
    )
    try:
        torch.set_num_threads(1)  # two processes on a small machine
        torch.manual_seed(0)  # same initial weights on every rank
        model = Seq()
        ddp = nn.parallel.DistributedDataParallel(model)
        opt = torch.optim.SGD(ddp.parameters(), lr=0.1, momentum=0.9)
        gen = torch.Generator().manual_seed(100 + rank)  # each rank its own data
        local: dict[str, list[np.ndarray]] = {}
        with Monitor(ddp, every=1, analyze=At([1])) as mon:
            assert mon.history.world_size == WORLD
            for step in range(STEPS):
                T, B = _shape(rank, step)
                x = torch.randn(T, B, 3, generator=gen)
                loss = ddp(x).pow(2).mean()
                opt.zero_grad()
                loss.backward()
                mon.step()
                opt.step()
                for layer in mon.latest.trace.layers:  # this rank's own batch
                    local.setdefault(layer.name, []).append(grad_norms(layer))
        report = mon.report(out / "report.html")
        saved = mon.save(out / "history.npz")
        assert (report is None) == (saved is None) == (rank != 0)
        np.savez(
            out / f"local{rank}.npz",
            **{f"{name}/{i}": g for name, gs in local.items() for i, g in enumerate(gs)},
        )
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_two_ranks_gather_to_rank_zero_which_alone_writes(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path),), nprocs=WORLD, join=True)
    # rank 0 alone wrote the report and the history
    written = sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("local"))
    assert [n for n in written if n != "store"] == ["history.npz", "report.html"]
    hist = load_history(tmp_path / "history.npz")
    assert hist.world_size == WORLD
    assert hist.steps.tolist() == list(range(STEPS))
    names = ["module.rnn.l0", "module.rnn.l1"]
    assert hist.names == names
    local = [np.load(tmp_path / f"local{r}.npz", allow_pickle=False) for r in range(WORLD)]
    for name in names:
        for rank in range(WORLD):
            per_rank = hist.grad_norms(name, rank=rank)
            for step in range(STEPS):
                T, _ = _shape(rank, step)
                mine = local[rank][f"{name}/{step}"]
                assert mine.shape == (T + 1,)
                np.testing.assert_array_equal(per_rank[step, : T + 1], mine)
                assert np.isnan(per_rank[step, T + 1 :]).all()
            assert hist.scalar(name, "T", rank=rank).tolist() == [
                float(_shape(rank, s)[0]) for s in range(STEPS)
            ]
            assert hist.scalar(name, "B", rank=rank).tolist() == [
                float(_shape(rank, s)[1]) for s in range(STEPS)
            ]
        # the two ranks saw different batches, so their numbers differ
        assert not np.array_equal(
            local[0][f"{name}/0"], local[1][f"{name}/0"][: len(local[0][f"{name}/0"])]
        )
        # aggregated: batch-size-weighted mean where both ranks ran, rank 1 alone beyond
        agg = hist.grad_norms(name)
        for step in range(STEPS):
            (t0, b0), (t1, b1) = _shape(0, step), _shape(1, step)
            g0, g1 = local[0][f"{name}/{step}"], local[1][f"{name}/{step}"]
            both = (b0 * g0 + b1 * g1[: t0 + 1]) / (b0 + b1)
            np.testing.assert_allclose(agg[step, : t0 + 1], both, rtol=1e-14)
            np.testing.assert_allclose(agg[step, t0 + 1 : t1 + 1], g1[t0 + 1 :], rtol=1e-14)
        # the loss-independent summaries were computed on both ranks at the analysed step;
        # the report analysed the latest sampled step too, on rank 0 (which reports) alone
        for rank in range(WORLD):
            rate = hist.scalar(name, "rate", rank=rank)
            assert np.isfinite(rate[1]) and np.isnan(rate[0])
            assert np.isfinite(rate[2]) == (rank == 0)
    assert (tmp_path / "report.html").stat().st_size > 0
