"""WAIT (redis_wait_replicas) under load while no replica answers, on a real redis-server.

WAIT blocks the connection it is sent on: whatever is pipelined behind it waits too. Writes
pipelined on one connection must not each send a WAIT of their own (each taking
redis_wait_timeout when no replica answers, one after the other): calls behind them would run
out of operation_timeout, the timeout would drop the connection, and reads would fail along
with the writes. One WAIT at a time per connection covers every write sent before it.
"""

from __future__ import annotations

import time

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.task import deferLater

from relay.config import StoreConfig
from relay.store.errors import StoreUnavailable
from relay.store.redis import RedisBackend
from tests.redis_server import RedisServer

_SET = "redis.call('SET', KEYS[1], ARGV[1], 'PX', 60000) return 1"


@pytest_twisted.ensureDeferred
async def test_writes_waiting_for_a_missing_replica_do_not_stall_the_connection():
    with RedisServer.running() as server:
        config = StoreConfig(url=server.url, pool_size=1, operation_timeout=2.0,
                             redis_wait_replicas=1, redis_wait_timeout=0.5)
        backend = RedisBackend(config, reactor)
        service = backend.make_service()
        service.startService()
        try:
            assert await backend.run(lambda redis: redis.execute_command("PING")) in ("PONG", b"PONG")
            started = time.monotonic()
            writes = [Deferred.fromCoroutine(backend.run(
                lambda redis, i=i: redis.execute_command("SET", backend.key(f"k{i}"), b"v",
                                                         "PX", 60000), replicate=True))
                      for i in range(6)]
            writes += [Deferred.fromCoroutine(backend.script(
                _SET, [backend.key(f"s{i}")], [b"v"], replicate=True)) for i in range(6)]
            await deferLater(reactor, 0.1, lambda: None)  # the WAITs are out by now
            # A read on the same connection waits for one WAIT at most, not twelve.
            assert await backend.run(lambda redis: redis.execute_command(
                "GET", backend.key("k0"))) == b"v"
            results = await DeferredList(writes, consumeErrors=True)
            elapsed = time.monotonic() - started
            for ok, result in results:
                assert not ok
                result.trap(StoreUnavailable)
                assert "0 of 1" in str(result.value), result.value  # not a timeout
            assert elapsed < 2.0, elapsed
            assert backend.call_errors.get("timeout", 0) == 0
            assert backend.pool.live_count == 1  # the connection was not dropped
        finally:
            await service.stopService()



def test_a_wait_on_a_lost_connection_fails_its_callers_at_once():
    import txredisapi
    from twisted.internet.task import Clock

    class Lost:
        sent = 0

        def execute_command(self, *args: object) -> Deferred:
            self.sent += 1
            raise txredisapi.ConnectionError("Not connected")

    backend = RedisBackend(StoreConfig(url="unix:///nonexistent/redis.sock", redis_wait_replicas=1),
                           Clock())
    lost = Lost()
    for attempt in (1, 2):  # nothing stays "in flight" for the next caller to wait on
        failures: list = []
        backend._replicated(lost).addErrback(failures.append)
        assert lost.sent == attempt and failures[0].check(txredisapi.ConnectionError)
