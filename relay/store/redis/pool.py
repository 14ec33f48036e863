"""A fixed-size pool of Redis connections that reconnects by itself and never queues blindly.

Each connection is kept up by its own ClientService (reconnecting with a short capped
backoff). Callers take a live connection from `pick()`; only while the pool is still making
its first connections do they `wait()` for one. Once a connection attempt has failed or the
last live connection is lost, the pool counts as down and `wait()` fails at once, so requests
fail fast during an outage instead of piling up until Redis returns.

A new connection joins the pool only once `verify(connection)` (if given) has passed: it
returns None, or a one-line reason to refuse this Redis (an evicting maxmemory-policy), which
is handed to `on_refused` while the pool stays unusable (calls fail with that reason).
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from typing import Any

import txredisapi
from twisted.application.internet import ClientService
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger

from relay.store.errors import StoreUnavailable
from relay.store.redis.address import RedisAddress
from relay.store.redis.protocol import RedisProtocol

# Reconnect delays: fast first retries (Redis restarts take well under a second), then at most
# every couple of seconds per connection, which costs Redis nothing while it is down.
RETRY_INITIAL_DELAY = 0.1
RETRY_MAX_DELAY = 2.0
_RETRY_FACTOR = 2.0
_RETRY_JITTER = 0.1

log = Logger()

# While Redis stays unreachable, one line when that starts and one each time it has lasted
# one of these many seconds more (then every OUTAGE_REPORT_EVERY): not a line per attempt.
OUTAGE_REPORTS = (10.0, 60.0)
OUTAGE_REPORT_EVERY = 300.0


class _QuietClientService(ClientService):
    """ClientService without its line per retry ("Scheduling retry N ..."), eight of them per
    backoff step with a pool of eight: the pool reports an outage itself (see _mark_down)."""

    _log = Logger(observer=lambda event: None)


class _ProtocolFactory(Factory):
    """Builds txredisapi protocols that return raw bytes and reports their life to the pool."""

    noisy = False
    # txredisapi's protocol reads these when AUTH or SELECT fails.
    isLazy = False

    def __init__(self, pool: ConnectionPool, address: RedisAddress) -> None:
        self._pool = pool
        self._address = address

    def buildProtocol(self, addr: Any) -> txredisapi.BaseRedisProtocol:
        # charset=None and convertNumbers=False: records are opaque bytes and must come back
        # exactly as stored (no decoding, no turning b"123" into an int).
        protocol = RedisProtocol(
            charset=None, convertNumbers=False, password=self._address.password,
            username=self._address.username, dbid=self._address.db or None)
        protocol.factory = self
        protocol.whenConnected().addCallback(self._pool._connection_ready)
        protocol.whenDisconnected().addCallback(self._pool._connection_lost)
        return protocol

    def stopTrying(self) -> None:
        # txredisapi calls this when AUTH or SELECT fails. The pool keeps retrying (with
        # growing delays) so the relay recovers once the operator fixes Redis.
        pass

    def connectionError(self, why: str) -> None:
        self._pool._setup_failed(why)


class ConnectionPool:
    def __init__(self, endpoint: IStreamClientEndpoint, address: RedisAddress, size: int,
                 clock: IReactorTime,
                 verify: Callable[[Any], Awaitable[str | None]] | None = None,
                 verify_timeout: float = 2.0) -> None:
        self._clock = clock
        self._verify = verify
        self._verify_timeout = verify_timeout
        # Called with the reason when a connection's verification refuses this Redis.
        self.on_refused: Callable[[str], None] = lambda reason: None
        self.refusal: str | None = None
        factory = _ProtocolFactory(self, address)
        self._services = [
            _QuietClientService(endpoint, factory, retryPolicy=self._retry_delay, clock=clock)
            for _ in range(size)
        ]
        self._live: list[txredisapi.BaseRedisProtocol] = []
        self._next = 0
        self._waiters: list[Deferred] = []
        self._running = False
        self._down = False
        # Connections in a row that closed before they were usable (bad password, wrong db):
        # they count as failed attempts so the retries back off.
        self._unready_streak = 0
        self._wake_call: Any = None
        self._where = address.socket_path or f"{address.host}:{address.port}"
        self._ever_live = False
        self._down_since: float | None = None
        self._next_report = 0.0

    @property
    def live_count(self) -> int:
        return len(self._live)

    @property
    def is_down(self) -> bool:
        return self._down

    def start(self) -> None:
        self._running = True
        self._down = False
        for service in self._services:
            service.startService()

    async def stop(self) -> None:
        self._running = False
        self._fail_waiters("the Redis store is stopping")
        if self._wake_call is not None and self._wake_call.active():
            self._wake_call.cancel()
        await gatherResults([service.stopService() for service in self._services])

    def pick(self) -> txredisapi.BaseRedisProtocol | None:
        """A live connection (round robin), or None."""
        while self._live:
            self._next = (self._next + 1) % len(self._live)
            connection = self._live[self._next]
            if connection.connected:
                return connection
            self._live.remove(connection)
        return None

    def wait(self) -> Deferred:
        """A Deferred firing with the next live connection; fails at once if Redis is down.

        The caller bounds how many waits are pending and cancels them on its timeout.
        """
        if not self._running:
            raise StoreUnavailable("the Redis store is not running")
        if self.refusal is not None:
            raise StoreUnavailable(self.refusal)
        if self._down:
            raise StoreUnavailable("Redis is unreachable")
        waiter: Deferred = Deferred(self._forget_waiter)
        self._waiters.append(waiter)
        return waiter

    def _forget_waiter(self, waiter: Deferred) -> None:
        if waiter in self._waiters:
            self._waiters.remove(waiter)

    def _connection_ready(self, connection: txredisapi.BaseRedisProtocol) -> Any:
        # Runs inside connectionMade: verification (which sends commands and may drop the
        # connection) starts on the next turn, so the connection's set-up finishes first.
        if self._verify is None:
            self._add_live(connection)
        else:
            self._clock.callLater(0, self._start_verifying, connection)
        return connection

    def _start_verifying(self, connection: txredisapi.BaseRedisProtocol) -> None:
        if not connection.connected:
            return
        assert self._verify is not None
        check = Deferred.fromCoroutine(self._verify(connection))
        check.addTimeout(self._verify_timeout, self._clock)
        check.addCallbacks(lambda refusal: self._verified(connection, refusal),
                           lambda failure: self._drop(connection))

    def _verified(self, connection: txredisapi.BaseRedisProtocol, refusal: str | None) -> None:
        if refusal is None:
            if connection.connected and self._running:
                self._add_live(connection)
            return
        self._drop(connection)
        if self.refusal is None:
            self.refusal = refusal
            self._fail_waiters(refusal)
            self.on_refused(refusal)

    def _drop(self, connection: txredisapi.BaseRedisProtocol) -> None:
        # A connection that could not be verified is closed; its service reconnects.
        if connection.transport is not None:
            connection.transport.abortConnection()

    def _add_live(self, connection: txredisapi.BaseRedisProtocol) -> None:
        # Waiters (who send commands and may drop the connection) are woken on the next turn.
        self._live.append(connection)
        if self._down_since is not None:
            log.info("Redis at {where} answers again after {s:.0f}s", where=self._where,
                     s=self._clock.seconds() - self._down_since)
            self._down_since = None
        self._ever_live = True
        self._down = False
        self._unready_streak = 0
        if self._waiters and (self._wake_call is None or not self._wake_call.active()):
            self._wake_call = self._clock.callLater(0, self._wake_waiters)

    def _wake_waiters(self) -> None:
        while self._waiters:
            connection = self.pick()
            if connection is None:
                return
            self._waiters.pop(0).callback(connection)

    def _connection_lost(self, connection: txredisapi.BaseRedisProtocol) -> Any:
        if connection in self._live:
            self._live.remove(connection)
        else:
            self._unready_streak += 1
        if not self._live and self._running:
            self._mark_down()
        return connection

    def _setup_failed(self, why: str) -> None:
        if self._unready_streak == 0:
            log.error("Redis refused the connection set-up: {why}", why=why)

    def _retry_delay(self, attempt: int) -> float:
        # ClientService asks this after every failed attempt or lost connection.
        if not self._live:
            self._mark_down()
            self._report_outage()
        exponent = min(max(attempt, self._unready_streak) - 1, 64)
        delay = min(RETRY_INITIAL_DELAY * _RETRY_FACTOR ** max(exponent, 0), RETRY_MAX_DELAY)
        return delay * random.uniform(1 - _RETRY_JITTER, 1 + _RETRY_JITTER)

    def _mark_down(self) -> None:
        if not self._down and self._down_since is None:
            self._down_since = self._clock.seconds()
            self._next_report = OUTAGE_REPORTS[0]
            if self._ever_live:
                log.warn("lost every connection to Redis at {where}; store calls fail until "
                         "it is back (retrying)", where=self._where)
            else:
                log.warn("cannot connect to Redis at {where}; retrying with backoff, store "
                         "calls fail until it answers",
                         where=self._where)
        self._down = True
        self._fail_waiters("Redis is unreachable")

    def _report_outage(self) -> None:
        if self._down_since is None:
            return
        lasted = self._clock.seconds() - self._down_since
        if lasted >= self._next_report:
            log.warn("Redis at {where} still unreachable after {s:.0f}s", where=self._where,
                     s=lasted)
            later = [t for t in OUTAGE_REPORTS if t > lasted]
            self._next_report = later[0] if later else lasted + OUTAGE_REPORT_EVERY

    def _fail_waiters(self, why: str) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.errback(StoreUnavailable(why))
