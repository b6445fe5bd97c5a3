"""Shared test setup: hypothesis profiles, a seeded random generator, async tests.

Every random choice in a test comes from a seed that is printed, so a failure names the
seed that replays it: ``SHARDWISE_TEST_SEED=<seed> pytest <test>``.

``async def`` tests run each on a fresh event loop (no plugin needed): asyncio's default
loop, or uvloop with ``SHARDWISE_TEST_LOOP=uvloop`` (which ``shardwise.net.loop`` uses in
production when it is installed). A test marked ``@pytest.mark.virtual_time`` runs on a
:class:`~shardwise.testing.virtualtime.VirtualTimeLoop` instead, whatever the variable
says: its timers fire in order but waiting takes no real time, so a test can wait out
multi-second timeouts without sleeping (the marker's keyword arguments go to the loop).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import os
import random
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from shardwise.net.loop import loop_factory
from shardwise.net.ports import FREE_PORT_RANGE, PORT_RANGE_VARIABLE
from shardwise.testing.virtualtime import VirtualTimeLoop

# Slow, shared CI machines: no per-example deadline (a hang is caught by pytest-timeout).
settings.register_profile(
    "default",
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("soak", parent=settings.get_profile("default"), max_examples=5000)
settings.load_profile("soak" if os.environ.get("SHARDWISE_SOAK") else "default")


def pytest_configure(config: pytest.Config) -> None:
    # Under `make test`'s workers (pytest-xdist), each worker picks ports from its own
    # part of the range: two workers' clusters never pick the same port.
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if worker.startswith("gw"):
        count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
        low, high = FREE_PORT_RANGE
        width = (high - low) // count
        start = low + int(worker[2:]) * width
        os.environ[PORT_RANGE_VARIABLE] = f"{start}-{start + width - 1}"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("SHARDWISE_SOAK"):
        return
    skip_soak = pytest.mark.skip(reason="soak test: run with `make soak`")
    for item in items:
        if "soak" in item.keywords:
            item.add_marker(skip_soak)


@pytest.fixture
def seed(request: pytest.FixtureRequest) -> Iterator[int]:
    """A seed per test: fixed by the test's name, or forced by SHARDWISE_TEST_SEED."""
    forced = os.environ.get("SHARDWISE_TEST_SEED")
    value = int(forced) if forced else zlib.crc32(request.node.nodeid.encode())
    print(f"seed={value} (replay with SHARDWISE_TEST_SEED={value})")
    yield value


@pytest.fixture
def rng(seed: int) -> random.Random:
    return random.Random(seed)


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    if not inspect.iscoroutinefunction(pyfuncitem.obj):
        return None
    names = pyfuncitem._fixtureinfo.argnames
    kwargs: dict[str, Any] = {name: pyfuncitem.funcargs[name] for name in names}
    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    virtual = pyfuncitem.get_closest_marker("virtual_time")
    if virtual is not None:
        if virtual.args:
            raise TypeError("virtual_time takes keyword arguments only (VirtualTimeLoop's)")
        # The loop's rng follows the test's seed (the fixture's, when the test asks for it).
        default_seed = pyfuncitem.funcargs.get("seed", zlib.crc32(pyfuncitem.nodeid.encode()))
        factory = functools.partial(VirtualTimeLoop, **{"seed": default_seed, **virtual.kwargs})
    elif os.environ.get("SHARDWISE_TEST_LOOP") == "uvloop":
        factory = loop_factory()
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(pyfuncitem.obj(**kwargs))
    return True
