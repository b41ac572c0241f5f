"""The time accounting behind ``Monitor(analyze="auto")``: when an analysis fits the budget."""

from __future__ import annotations

import time


class AnalysisBudget:
    r"""Training time against the analyses' time, and which sampled steps get analysed.

    Training time is what passes between two ``Monitor.step()`` calls, less paused blocks;
    the Monitor's time is what passes inside ``step()`` (recording, summaries, analyses,
    callbacks), of which the analyses' time is what :meth:`record` is told. A sampled step
    is analysed when it is the first, when the sampled steps have doubled since the latest
    analysis (sampled steps 0, 1, 3, 7, 15, ... when the budget allows nothing more, so
    every analysed summary forms a curve), or when the analyses so far plus the latest
    analysis's cost again stay within ``fraction`` of the training time:

    .. math:: \sum_{\text{analyses}} c_i + c_{\text{last}} \le f \cdot T_{\text{train}}.

    The recording of a sampled step is the schedule's cost (the user chose ``every``), not
    the analyses', so it does not count here: an analysis that costs a fraction ``f`` of
    one training step runs on every sampled step even with ``every=1``, and one that costs
    ``m`` training steps on every ``m / (f · every)``-th sampled step. Cheap analyses give
    curves, not dots.

    Args:
        fraction: The analyses' target cost as a fraction of the training time.
    """

    def __init__(self, fraction: float) -> None:
        self.fraction = float(fraction)
        self.clock = time.perf_counter()  # when the previous step() returned
        self.excluded = 0.0  # paused time since then
        self.train_s = 0.0  # training time between step() calls
        self.monitor_s = 0.0  # time spent inside step(): recording and analyses
        self.analysis_s = 0.0  # time spent in analyses (inside step() or not)
        self.last_cost = 0.0  # cost of the latest analysis
        self.analysed = 0  # sampled steps analysed so far
        self.analysed_at = 0  # the index of the latest analysed sampled step

    def enter(self) -> float:
        """``step()`` began: count the training time since the last one; returns the time."""
        entered = time.perf_counter()
        self.train_s += max(0.0, entered - self.clock - self.excluded)
        return entered

    def leave(self, entered: float) -> None:
        """``step()`` ends: count its time as the Monitor's."""
        self.excluded = 0.0
        self.clock = time.perf_counter()
        self.monitor_s += self.clock - entered

    def pause(self, seconds: float) -> None:
        """A paused block took ``seconds``: not training time."""
        self.excluded += seconds

    def should_analyze(self, n: int) -> bool:
        """Whether sampled step ``n`` (0, 1, ...) gets the analyses."""
        if not self.analysed or n >= 2 * self.analysed_at + 1:
            return True  # the first one (its cost is known from then on), or a doubling
        return self.analysis_s + self.last_cost <= self.fraction * self.train_s

    def record(self, n: int, cost: float) -> None:
        """Sampled step ``n`` was analysed at a cost of ``cost`` seconds."""
        self.last_cost = cost
        self.analysis_s += cost
        self.analysed += 1
        self.analysed_at = max(self.analysed_at, n)
