"""Fixtures shared by the whole test suite (keep this small: shared fixtures only)."""

from __future__ import annotations

from collections.abc import Iterator
from importlib import metadata

import pytest
import torch

# The fast-moving dependencies the suite exercises: their versions head every test run, so
# a failure on a fresh machine can be told apart from one on the last tested set at a glance
# (CONTRIBUTING, "After upgrading a dependency").
TRACKED = (
    "torch",
    "transformers",
    "accelerate",
    "lightning",
    "numpy",
    "scipy",
    "matplotlib",
    "seaborn",
    "tensorboard",
    "wandb",
    "hypothesis",
    # the recurrences as they ship on PyPI (their adapters follow their source)
    "mambapy",
    "mingru-pytorch",
    "s5-pytorch",
    "xlstm",
    "ncps",
)


def installed_versions() -> dict[str, str]:
    """The installed version of each tracked distribution, ``"missing"`` where there is none."""
    found = {}
    for name in TRACKED:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "missing"
    return found


def pytest_report_header(config) -> str:
    """One line naming the versions this run tests (pytest prints it before the first test)."""
    return "gradscope deps: " + ", ".join(f"{k} {v}" for k, v in installed_versions().items())


@pytest.fixture
def float64() -> Iterator[torch.dtype]:
    """Make float64 the default dtype for one test, restoring the previous default after."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield torch.float64
    finally:
        torch.set_default_dtype(previous)


@pytest.fixture
def seeded() -> Iterator[torch.Generator]:
    """Seed torch's global RNG with 0 for one test and restore its state afterwards.

    Yields a separate seeded ``torch.Generator`` for tests that prefer an explicit one.
    """
    state = torch.random.get_rng_state()
    torch.manual_seed(0)
    try:
        yield torch.Generator().manual_seed(0)
    finally:
        torch.random.set_rng_state(state)


@pytest.fixture
def clean_registry() -> Iterator[None]:
    """Snapshot the cell registry and restore it after the test (for register_cell tests)."""
    from gradscope import cells

    by_type, by_kind, fused = dict(cells._BY_TYPE), dict(cells._BY_KIND), set(cells._FUSED)
    try:
        yield
    finally:
        cells._BY_TYPE.clear()
        cells._BY_TYPE.update(by_type)
        cells._BY_KIND.clear()
        cells._BY_KIND.update(by_kind)
        cells._FUSED.clear()
        cells._FUSED.update(fused)
        cells.lookup_type.cache_clear()


@pytest.fixture()
def one_thread():
    """Run with one torch thread: tiny tensors gain nothing from threads, and on a busy
    machine OpenMP's spin-waiting makes small ops 10x slower. Results do not depend on it
    (bit-identity tests compare runs made under the same setting)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
