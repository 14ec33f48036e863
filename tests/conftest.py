"""Shared fixtures: one real redis-server per run, and stores of every kind.

`store_factory` is parametrized over the store kinds ("memory", "redis"): a test that takes
it runs once per kind against a started `relay.store.Store`. The memory store runs on a
task.Clock (`store_clock`); Redis on the real reactor (its TTLs run on Redis's own clock).
`store_sleep(seconds)` lets that much store time pass either way, so expiry tests are
written once: keep their TTLs short (fractions of a second) for the Redis runs.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
import pytest_twisted
from hypothesis import settings
from twisted.internet import reactor
from twisted.internet.task import Clock, deferLater

from relay.config import RelayConfig, StoreConfig
from relay.store import open_store
from tests.redis_server import RedisServer

STORE_KINDS = ["memory", "redis"]

# Property tests here do I/O (files, sockets, Redis): a per-example deadline would only
# measure how busy the machine is. Failures still print the example that reproduces them.
settings.register_profile("relay", deadline=None, print_blob=True)
settings.load_profile("relay")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Soak and benchmark runs stay out of the default run (deselected, not skipped: they
    are not tests of the default run at all); they run only when asked for with `-m soak`."""
    if "soak" in (config.getoption("markexpr") or ""):
        return
    soak = [item for item in items if item.get_closest_marker("soak") is not None]
    if soak:
        items[:] = [item for item in items if item.get_closest_marker("soak") is None]
        config.hook.pytest_deselected(items=soak)


@pytest.fixture(autouse=True)
def _work_in_tmp_path(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test runs in its own directory, so relative defaults (the relay's files
    directory and seed, a client's output) never land in the checkout."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer.running() as server:
        yield server


@pytest_twisted.async_yield_fixture
async def redis_store(redis_server: RedisServer) -> Any:
    """A started Redis store on the session's redis-server, emptied first."""
    redis_server.flush()
    store = open_store(RelayConfig(store=StoreConfig(url=redis_server.url)), reactor)
    store.service.startService()
    yield store
    await store.service.stopService()


@pytest.fixture(params=STORE_KINDS)
def store_kind(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def store_clock(store_kind: str) -> Any:
    if store_kind == "memory":
        clock = Clock()
        clock.advance(time.time())
        return clock
    return reactor


@pytest.fixture
def store_config(store_kind: str, request: pytest.FixtureRequest) -> StoreConfig:
    """The store settings for this kind; Redis is flushed first so every test starts empty."""
    if store_kind == "memory":
        return StoreConfig(url="memory")
    server: RedisServer = request.getfixturevalue("redis_server")
    server.flush()
    return StoreConfig(url=server.url)


@pytest_twisted.async_yield_fixture
async def store_factory(store_config: StoreConfig, store_clock: Any):
    store = open_store(RelayConfig(store=store_config), store_clock)
    store.service.startService()
    try:
        yield store
    finally:
        await store.service.stopService()


@pytest.fixture
def store_sleep(store_kind: str, store_clock: Any) -> Callable[[float], Awaitable[None]]:
    async def sleep(seconds: float) -> None:
        if store_kind == "memory":
            store_clock.advance(seconds)
        else:
            await deferLater(reactor, seconds)

    return sleep
