"""When the Monitor acts: schedules are callables ``training step -> bool``."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np

from gradscope.errors import ArgumentError, ArgumentTypeError

Schedule = Callable[[int], bool]


# --------------------------------------------------------------------------- schedules
@dataclass(frozen=True)
class Every:
    """Every ``n``-th step from ``start`` on: ``start, start + n, start + 2n, ...``.

    Args:
        n: The period (>= 1).
        start: The first step acted on.
    """

    n: int
    start: int = 0

    def __post_init__(self) -> None:
        if int(self.n) != self.n or self.n < 1:
            raise ArgumentError(f"Every: n must be an integer >= 1, got {self.n!r}")
        if int(self.start) != self.start or self.start < 0:
            raise ArgumentError(f"Every: start must be an integer >= 0, got {self.start!r}")

    def __call__(self, step: int) -> bool:
        """Whether ``step`` is on the schedule."""
        return step >= self.start and (step - self.start) % self.n == 0


@dataclass(frozen=True)
class At:
    """Exactly the listed steps.

    Args:
        steps: The steps acted on (any iterable of non-negative ints).
    """

    steps: frozenset[int]

    def __init__(self, steps: Iterable[int]) -> None:
        object.__setattr__(self, "steps", frozenset(int(s) for s in steps))

    def __call__(self, step: int) -> bool:
        """Whether ``step`` is one of :attr:`steps`."""
        return step in self.steps


@dataclass(frozen=True)
class Logarithmic:
    """``num`` steps spaced evenly on a log scale between ``start`` and ``stop``.

    Dense early in training (when things change fast), sparse later. Step 0 is included
    when ``start == 0``. Duplicates after rounding are merged, so fewer than ``num`` steps
    may result.

    Args:
        start: First step (>= 0).
        stop: Last step (> start).
        num: Number of steps requested (>= 2).
    """

    start: int
    stop: int
    num: int
    steps: frozenset[int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not (0 <= self.start < self.stop) or self.num < 2:
            raise ArgumentError(
                f"Logarithmic: need 0 <= start < stop and num >= 2, got start={self.start}, "
                f"stop={self.stop}, num={self.num}"
            )
        pts = np.geomspace(self.start + 1, self.stop + 1, self.num) - 1
        object.__setattr__(self, "steps", frozenset(int(s) for s in np.unique(np.round(pts))))

    def __call__(self, step: int) -> bool:
        """Whether ``step`` is on the schedule."""
        return step in self.steps


def as_schedule(value: Schedule | bool, what: str) -> Schedule:
    """``value`` as a schedule: True is every step, False never, a callable itself."""
    if value is True:
        return Every(1)
    if value is False:
        return At(())
    if not callable(value):
        raise ArgumentTypeError(
            f"{what} must be a callable step -> bool or a bool (analyze also takes 'auto'), "
            f"got {value!r}"
        )
    return value
