"""One guard for the user's global random number generators."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator

import numpy as np
import torch


@contextlib.contextmanager
def rng_preserved() -> Iterator[None]:
    """Run a block that may draw random numbers, then restore every global RNG.

    Restores torch's CPU generator and the generators of every initialised CUDA device
    (``torch.random.fork_rng``), NumPy's legacy global state and Python's ``random``, also
    when the block raises. Recording and the Monitor run under it, so that they never change
    the random numbers a training loop sees.
    """
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    np_state = np.random.get_state()  # noqa: NPY002 (the user's global RNG, restored)
    py_state = random.getstate()
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        np.random.set_state(np_state)  # noqa: NPY002
        random.setstate(py_state)
