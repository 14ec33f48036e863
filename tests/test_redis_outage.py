"""Redis going away: calls fail fast with StoreUnavailable, nothing piles up, and the same
backend works again once Redis is back. Each test has a redis-server of its own to kill."""

from __future__ import annotations

import os
import time

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import deferLater

from relay.config import RelayConfig, StoreConfig
from relay.store import open_store
from relay.store.errors import StoreUnavailable
from relay.store.redis.pool import RETRY_MAX_DELAY
from tests.redis_server import RedisServer

TIMEOUT = 0.5
# Scheduling slack on a busy 2-core machine.
SLACK = 0.3
LONG_TTL = 3600.0


@pytest.fixture
def server():
    with RedisServer.running() as server:
        yield server


@pytest_twisted.async_yield_fixture
async def store(server):
    config = StoreConfig(url=server.url, operation_timeout=TIMEOUT, pool_size=4,
                         max_pending_operations=50)
    store = open_store(RelayConfig(store=config), reactor)
    store.service.startService()
    try:
        yield store
    finally:
        await store.service.stopService()


def backend_of(store):
    return store.mailbox._backend


async def timed(coroutine) -> tuple[float, object]:
    """(seconds taken, result or the exception raised)."""
    started = time.monotonic()
    try:
        result = await coroutine
    except Exception as e:
        result = e
    return time.monotonic() - started, result


def concurrently(coroutines) -> Deferred:
    return gatherResults([Deferred.fromCoroutine(timed(c)) for c in coroutines])


async def a_write(store) -> None:
    await store.mailbox.store_message(os.urandom(32), os.urandom(24), b"r", os.urandom(32),
                                      LONG_TTL, 10)


async def recovered(store, within: float) -> float:
    """Seconds until store calls succeed again; fails the test if not within `within`."""
    started = time.monotonic()
    while time.monotonic() - started < within:
        try:
            await store.sessions.claim_nonce(os.urandom(32), os.urandom(24), LONG_TTL)
            return time.monotonic() - started
        except StoreUnavailable:
            await deferLater(reactor, 0.05)
    pytest.fail(f"the store did not recover within {within} s")


@pytest_twisted.ensureDeferred
async def test_killed_redis_fails_calls_fast_and_nothing_piles_up(server, store):
    await a_write(store)
    server.stop()
    results = await concurrently(a_write(store) for _ in range(40))
    for elapsed, outcome in results:
        assert isinstance(outcome, StoreUnavailable)
        assert elapsed < TIMEOUT + SLACK
    # Once the pool knows Redis is gone, calls fail at once instead of waiting.
    await deferLater(reactor, 0.05)
    elapsed, outcome = await timed(store.sessions.get_session(os.urandom(32)))
    assert isinstance(outcome, StoreUnavailable) and elapsed < 0.1
    assert backend_of(store).pending_calls == 0


@pytest_twisted.ensureDeferred
async def test_same_backend_works_again_when_redis_returns(server, store):
    hpk = os.urandom(32)
    await store.mailbox.store_message(hpk, os.urandom(24), b"before", os.urandom(32),
                                      LONG_TTL, 10)
    server.stop()
    with pytest.raises(StoreUnavailable):
        await store.mailbox.count(hpk)
    await deferLater(reactor, 0.3)  # a few failed reconnects, so the backoff has grown
    server.start()  # same port; no persistence, so it starts empty
    assert await recovered(store, within=RETRY_MAX_DELAY * 1.2 + 1.0) < RETRY_MAX_DELAY * 1.2 + 1
    await store.mailbox.store_message(hpk, os.urandom(24), b"after", os.urandom(32),
                                      LONG_TTL, 10)
    assert await store.mailbox.read(hpk, 0, 10) == [b"after"]
    # Every connection of the pool comes back (each on its own backoff schedule).
    deadline = time.monotonic() + RETRY_MAX_DELAY * 1.2 + 0.5
    while backend_of(store).pool.live_count < 4 and time.monotonic() < deadline:
        await deferLater(reactor, 0.05)
    assert backend_of(store).pool.live_count == 4


@pytest_twisted.ensureDeferred
async def test_hung_redis_times_out_and_recovers(server, store):
    await a_write(store)
    server.pause()
    try:
        results = await concurrently(a_write(store) for _ in range(30))
    finally:
        server.resume()
    for elapsed, outcome in results:
        assert isinstance(outcome, StoreUnavailable)
        assert elapsed < TIMEOUT + SLACK
    assert any(elapsed > TIMEOUT - 0.05 for elapsed, _ in results)
    assert backend_of(store).pending_calls == 0
    await recovered(store, within=RETRY_MAX_DELAY * 1.2 + 1.0)


@pytest_twisted.ensureDeferred
async def test_calls_beyond_the_pending_limit_fail_at_once(server, store):
    await a_write(store)
    server.pause()
    try:
        results = await concurrently(a_write(store) for _ in range(80))
    finally:
        server.resume()
    assert all(isinstance(outcome, StoreUnavailable) for _, outcome in results)
    immediate = [elapsed for elapsed, outcome in results if "too many" in str(outcome)]
    assert len(immediate) == 30  # the limit is 50
    assert all(elapsed < 0.1 for elapsed in immediate)
    assert backend_of(store).pending_calls == 0


@pytest_twisted.ensureDeferred
async def test_redis_down_at_start_then_up(server):
    server.stop()
    config = StoreConfig(url=server.url, operation_timeout=TIMEOUT, pool_size=2)
    store = open_store(RelayConfig(store=config), reactor)
    store.service.startService()
    try:
        elapsed, outcome = await timed(a_write(store))
        assert isinstance(outcome, StoreUnavailable) and elapsed < TIMEOUT + SLACK
        assert leftover_calls()  # reconnecting (this also checks leftover_calls sees them)
        server.start()
        await recovered(store, within=RETRY_MAX_DELAY * 1.2 + 1.0)
    finally:
        await store.service.stopService()


def leftover_calls() -> list:
    """Pending reactor calls belonging to the Redis store or its reconnecting services."""
    mine = ("relay.store.redis", "twisted.application", "txredisapi")
    leftovers = []
    for call in reactor.getDelayedCalls():
        owner = getattr(call.func, "__self__", call.func)
        module = getattr(type(owner), "__module__", "") or ""
        # Connection attempts in progress run as a LoopingCall inside HostnameEndpoint.
        attempt = "HostnameEndpoint" in repr(getattr(owner, "f", ""))
        if call.active() and (module.startswith(mine) or attempt):
            leftovers.append(call)
    return leftovers


@pytest_twisted.ensureDeferred
async def test_stopping_during_an_outage_is_clean(server):
    config = StoreConfig(url=server.url, operation_timeout=5.0, pool_size=3)
    store = open_store(RelayConfig(store=config), reactor)
    store.service.startService()
    await a_write(store)
    server.pause()
    try:
        pending = concurrently(a_write(store) for _ in range(5))
        await deferLater(reactor, 0.05)
        started = time.monotonic()
        await store.service.stopService()
        assert time.monotonic() - started < 1.0
        results = await pending
    finally:
        server.resume()
    assert all(isinstance(outcome, StoreUnavailable) for _, outcome in results)
    assert all(elapsed < 1.0 for elapsed, _ in results)
    await deferLater(reactor, 0)
    assert leftover_calls() == []
    assert backend_of(store).pool.live_count == 0
    # Only the inspecting connection is left on the server (once the resumed server has
    # noticed the closed ones).
    for _ in range(100):
        if server.command("CLIENT", "LIST").count(b"\n") == 1:
            break
        await deferLater(reactor, 0.01)
    else:
        pytest.fail("connections to Redis left open")


@pytest_twisted.ensureDeferred
async def test_a_stalled_reactor_is_not_taken_for_a_stuck_redis(store):
    """The relay's own stall (a burst of requests being taken in) outlasts the operation
    timeout while Redis's answers wait in the sockets: the calls still succeed, and the pool
    keeps its connections."""
    await a_write(store)  # connected
    calls = [Deferred.fromCoroutine(store.sessions.claim_nonce(os.urandom(32), os.urandom(24), LONG_TTL))
             for _ in range(40)]
    reactor.callLater(0, time.sleep, TIMEOUT + 0.6)  # blocks the reactor past the timeout
    assert await gatherResults(calls) == [True] * 40
    assert backend_of(store).pool.live_count == 4
