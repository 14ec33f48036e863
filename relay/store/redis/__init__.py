"""The production store: Redis through a txredisapi connection pool.

`RedisBackend` is what every Redis table shares; a table (sessions.py, mailbox.py, files.py,
channels.py) takes the backend and uses only this API:

``backend.key(*parts) -> str``
    A namespaced key: ``"relay:" + ":".join(parts)``; str parts are used as they are (code
    constants: keep ":" out of them), bytes parts (hashes, ids, tokens) are base64url-encoded
    without padding, so a binary part can never forge a separator.

``await backend.run(fn, replicate=False)``
    Calls ``fn(redis)`` with ONE live connection (a txredisapi RedisProtocol) and returns what
    the Deferred (or coroutine) it returns gives. Replies are raw: bulk strings are bytes,
    integers int, status replies str or bytes ("OK" or b"OK": bytes when hiredis parses, as
    it does once installed), nil None, arrays lists. The connection is shared
    with other callers, so fn sends plain commands only: no MULTI/WATCH, no blocking commands,
    no pub/sub; use ``script`` for atomic multi-key updates.
    The whole call (waiting for a connection included) gets ``store.operation_timeout``
    seconds on ``backend.clock``. Then, or when the connection fails, or Redis answers with an
    error, it raises ``StoreUnavailable`` (HTTP 500); Redis's out-of-memory error (maxmemory
    reached) raises ``StoreFull`` (HTTP 507). Exceptions fn raises itself pass through.
    While Redis is down calls fail at once; the pool reconnects on its own when it returns.
    At most ``store.max_pending_operations`` calls are under way at once; more fail at once.
    ``replicate=True`` marks a write that acknowledges client data: with
    ``store.redis_wait_replicas`` > 0 the call then also sends WAIT on the same connection
    (WAIT counts the replicas that have this connection's writes) and raises
    StoreUnavailable (HTTP 500; the client retries) if fewer replicas acknowledged within
    ``store.redis_wait_timeout``. Without the setting it costs nothing.

``await backend.script(name_or_source, keys, args, replicate=False)``
    Runs a Lua script (EVALSHA, then EVAL if Redis answers NOSCRIPT, e.g. after a restart)
    through ``run``, with its timeout and error mapping. Pass the script's source text (a
    module constant) or a name given to ``backend.register_script(name, source)``. A script
    that reads the time and then writes starts with ``scripting.PRELUDE`` and calls
    ``now_ms()`` (Redis's clock, the one key TTLs run on). ``replicate`` as for ``run``; the
    WAIT is pipelined right behind the script (no extra round trip).

``await backend.scripts([(name_or_source, keys, args), ...], replicate=False)``
    Several scripts pipelined on one connection: one write, one round trip. Each runs on its
    own (Redis does not run them as one); the list of their results comes back in order,
    with the StoreError an error reply maps to (e.g. StoreFull for OOM) in the place of a
    script Redis refused, so the caller knows which ran and can undo the others. A lost
    connection or the timeout raises for all. Batch only scripts of different owners.

Key names: ``relay.store.redis.keys.KeyNames`` names every key with its owner's hash tag, so
that each script touches keys of one Redis Cluster slot (tests/test_redis_keys.py checks).

``backend.clock``
    The reactor the backend was built with (timeouts; it also makes the connections).

``backend.endpoint``
    The client endpoint to Redis, for a dedicated connection of one's own (pub/sub): with a
    redis+sentinel:// URL it asks the sentinels where the master is before connecting.

``backend.memory``
    Redis's memory as last read (relay.store.redis.memory): ``backend.memory.check(size)``
    raises StoreFull (HTTP 507) while Redis is too full for ``size`` more bytes of client data
    (call it before writing client data), ``backend.memory.written(size)`` counts what was
    written since the last reading, ``backend.memory.usage()`` for logging.

``backend.pending_calls``, ``backend.pool.live_count``, ``backend.pool.is_down``
    For tests and metrics.

TTLs: ``relay.store.redis.sessions.ttl_ms(seconds)`` converts a TTL for PX/PEXPIRE.

Keys: every key a table writes must get a TTL in the same command or script.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
import weakref
from base64 import urlsafe_b64encode
from bisect import bisect_left
from collections.abc import Callable, Sequence
from typing import Any

import txredisapi
from twisted.application.internet import TimerService
from twisted.application.service import MultiService
from twisted.internet import error as net_error
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    gatherResults,
    maybeDeferred,
    succeed,
)
from twisted.internet.endpoints import HostnameEndpoint, UNIXClientEndpoint
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from relay.config import StoreConfig
from relay.store.errors import StoreError, StoreFull, StoreUnavailable
from relay.store.redis.address import parse_redis_url
from relay.store.redis.memory import RedisMemory, eviction_refusal, read_eviction_policy
from relay.store.redis.pool import ConnectionPool
from relay.store.redis.sentinel import CHECK_INTERVAL as SENTINEL_CHECK_INTERVAL
from relay.store.redis.sentinel import SentinelEndpoint

KEY_PREFIX = "relay"

log = Logger(namespace="relay.store")

# What a dropped or refused connection looks like, from txredisapi or from Twisted.
_CONNECTION_ERRORS = (txredisapi.ConnectionError, txredisapi.InvalidResponse,
                      txredisapi.InvalidData, net_error.ConnectionClosed,
                      net_error.ConnectError)


# Upper bounds (seconds) of the store latency histogram (relay_store_call_duration_seconds).
CALL_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                5.0)


# When an operation's timer fires this much later than it was due, the reactor itself was
# stalled (a burst of requests being taken in), and Redis's answer may be waiting unread in
# the socket: the call gets LATE_GRACE more seconds, once, so that the next reactor turn
# reads it. A timeout measures Redis, not our own stall.
LATE_BY = 0.2
LATE_GRACE = 0.5


class _Call:
    """One run() in progress: the connection it uses, its timer, whether its time ran out."""

    __slots__ = ("connection", "timed_out", "timer", "due", "graced")

    def __init__(self) -> None:
        self.connection: Any = None
        self.timed_out = False
        self.timer: Any = None
        self.due = 0.0
        self.graced = False


class RedisBackend:
    def __init__(self, config: StoreConfig, clock: IReactorTime) -> None:
        self.config = config
        self.clock = clock
        self.address = parse_redis_url(config.url)
        # Verified connections (weakly: the pool owns them), so that a failover can drop
        # those still open to the old master.
        self._connections: weakref.WeakSet = weakref.WeakSet()
        # Per connection with a WAIT in flight, the calls waiting for the next WAIT.
        self._waits: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self.sentinel: SentinelEndpoint | None = None
        if self.address.sentinels:
            assert self.address.master_name is not None
            endpoint = self.sentinel = SentinelEndpoint(
                clock, self.address.sentinels, self.address.master_name,
                timeout=config.operation_timeout, password=config.redis_sentinel_password)
            self.sentinel.on_master_changed = self._master_changed
        elif self.address.socket_path is not None:
            endpoint = UNIXClientEndpoint(clock, self.address.socket_path,
                                          timeout=config.operation_timeout)
        else:
            endpoint = HostnameEndpoint(clock, self.address.host, self.address.port,
                                        timeout=config.operation_timeout)
        self.endpoint = endpoint
        self.pool = ConnectionPool(endpoint, self.address, config.pool_size, clock,
                                   verify=self._verify_connection,
                                   verify_timeout=config.operation_timeout)
        self.memory = RedisMemory(config)
        self._policy_unknown_logged = False
        self.pending_calls = 0
        # For metrics (relay.admin): calls finished, their seconds, failures by kind.
        self.calls = 0
        self.call_seconds = 0.0
        # Calls by duration: one count per CALL_BUCKETS bound, then one for longer ones.
        self.call_buckets = [0] * (len(CALL_BUCKETS) + 1)
        self.call_errors: dict[str, int] = {}
        self._running = False
        self._named_scripts: dict[str, str] = {}
        self._script_hashes: dict[str, str] = {}

    # -- keys -------------------------------------------------------------------------------

    def key(self, *parts: bytes | str) -> str:
        encoded = [part if isinstance(part, str)
                   else urlsafe_b64encode(part).rstrip(b"=").decode("ascii")
                   for part in parts]
        return ":".join([KEY_PREFIX, *encoded])

    # -- running commands -------------------------------------------------------------------

    async def run(self, fn: Callable[[Any], Any], replicate: bool = False) -> Any:
        if not self._running:
            self._failed("not_running")
            raise StoreUnavailable("the Redis store is not running")
        if self.pending_calls >= self.config.max_pending_operations:
            self._failed("too_many_pending")
            raise StoreUnavailable("too many Redis calls under way")
        started = time.monotonic()
        call = _Call()
        self.pending_calls += 1
        try:
            connection = self.pool.pick()
            if connection is not None and not (replicate and self.config.redis_wait_replicas):
                # The hot path: a live connection at hand, no WAIT; no coroutine of our own.
                call.connection = connection
                attempt = fn(connection)
                if not isinstance(attempt, Deferred):
                    attempt = (Deferred.fromCoroutine(attempt) if hasattr(attempt, "__await__")
                               else succeed(attempt))
            else:
                attempt = Deferred.fromCoroutine(self._call(fn, call, replicate))
            call.due = self.clock.seconds() + self.config.operation_timeout
            call.timer = self.clock.callLater(self.config.operation_timeout, self._time_out,
                                              attempt, call)
            return await attempt
        except CancelledError:
            if call.timed_out:
                self._failed("timeout")
                raise StoreUnavailable(
                    f"Redis did not answer within {self.config.operation_timeout} s") from None
            raise
        except txredisapi.ResponseError as e:
            if "READONLY" in str(e):
                # A master demoted to replica (a failover) while this connection stayed
                # open: drop it; the pool reconnects to the master the sentinels name.
                _abort(call.connection)
            error = _error_reply(e)
            self._failed("full" if isinstance(error, StoreFull) else "error_reply")
            raise error from None
        except _CONNECTION_ERRORS as e:
            self._failed("connection")
            raise StoreUnavailable(f"lost the connection to Redis: {e}") from None
        except StoreUnavailable:
            self._failed("unreachable")  # the pool is down: failed at once
            raise
        finally:
            self.pending_calls -= 1
            self.calls += 1
            elapsed = time.monotonic() - started
            self.call_seconds += elapsed
            self.call_buckets[bisect_left(CALL_BUCKETS, elapsed)] += 1
            if call.timer is not None and call.timer.active():
                call.timer.cancel()

    async def _call(self, fn: Callable[[Any], Any], call: _Call, replicate: bool) -> Any:
        connection = self.pool.pick()
        if connection is None:
            connection = await self.pool.wait()
        call.connection = connection
        result = fn(connection)
        if isinstance(result, Deferred) or hasattr(result, "__await__"):
            result = await result
        if replicate and self.config.redis_wait_replicas:
            await self._replicated(connection)
        return result

    def _failed(self, kind: str) -> None:
        self.call_errors[kind] = self.call_errors.get(kind, 0) + 1

    # -- replication (WAIT) -----------------------------------------------------------------

    def _replicated(self, connection: Any) -> Deferred:
        """Fires once redis_wait_replicas replicas have every write sent on `connection` so
        far, or fails (StoreUnavailable). WAIT blocks its connection (what is pipelined
        behind it waits too) and covers all the connection's earlier writes, so one is in
        flight per connection at a time: writes sent meanwhile share the next one. Twelve
        writes pipelined while no replica answers then cost two WAIT timeouts, not twelve
        one after the other (which ran the calls behind them out of operation_timeout, and
        the timeout dropped the connection and every read on it)."""
        waiter: Deferred = Deferred()
        state = self._waits.get(connection)
        if state is None:  # none in flight: send one now (pipelined behind the write)
            self._send_wait(connection, [waiter])
        else:
            state.append(waiter)  # waits for the next WAIT
        return waiter

    def _send_wait(self, connection: Any, waiters: list[Deferred]) -> None:
        timeout_ms = max(1, round(self.config.redis_wait_timeout * 1000))
        wanted = self.config.redis_wait_replicas
        self._waits[connection] = []

        def answered(result: Any) -> None:
            if isinstance(result, Failure):
                error: Any = result
            elif int(result) < wanted:
                error = Failure(StoreUnavailable(
                    f"only {int(result)} of {wanted} Redis replicas acknowledged the write "
                    f"within {self.config.redis_wait_timeout} s"))
            else:
                error = None
            for waiter in waiters:
                if not waiter.called:  # its call may have timed out meanwhile
                    if error is None:
                        waiter.callback(None)
                    else:
                        waiter.errback(error)
            following = self._waits.pop(connection, [])
            if following:  # sent after this WAIT: the next one covers them
                self._waits[connection] = following
                self._send_wait(connection, following)

        # maybeDeferred: a connection lost meanwhile raises at once ("Not connected").
        maybeDeferred(connection.execute_command, "WAIT", wanted, timeout_ms).addBoth(answered)

    def _time_out(self, attempt: Deferred, call: _Call) -> None:
        if not call.graced and self.clock.seconds() - call.due > LATE_BY:
            call.graced = True
            call.timer = self.clock.callLater(LATE_GRACE, self._time_out, attempt, call)
            return
        call.timed_out = True
        attempt.cancel()
        # A connection that let a command go unanswered that long is stuck (a hung or
        # overloaded Redis, a dead peer): drop it, failing whatever else waits on it, rather
        # than let its unanswered commands pile up. The pool reconnects.
        if call.connection is not None and call.connection.transport is not None:
            call.connection.transport.abortConnection()

    # -- scripts ----------------------------------------------------------------------------

    def register_script(self, name: str, source: str) -> None:
        self._named_scripts[name] = source

    def _sha(self, source: str) -> str:
        sha = self._script_hashes.get(source)
        if sha is None:
            sha = self._script_hashes[source] = hashlib.sha1(source.encode()).hexdigest()
        return sha

    async def script(self, name_or_source: str, keys: Sequence[str | bytes],
                     args: Sequence[Any], replicate: bool = False) -> Any:
        result = (await self.scripts([(name_or_source, keys, args)], replicate=replicate))[0]
        if isinstance(result, StoreError):
            raise result
        return result

    async def scripts(self, calls: Sequence[tuple[str, Sequence[str | bytes], Sequence[Any]]],
                      replicate: bool = False) -> list[Any]:
        """Several scripts pipelined on one connection (one round trip), each running on its
        own, in order. Returns their results; a script Redis refused (an error reply, e.g.
        OOM) has the StoreError it maps to in its place, so the caller knows which ran. A
        lost connection or the timeout raises for all (what ran is then unknown)."""
        sources = [self._named_scripts.get(name, name) for name, _, _ in calls]
        bodies = [[len(keys), *keys, *args] for _, keys, args in calls]
        waits = replicate and self.config.redis_wait_replicas > 0

        commands = [["EVALSHA", self._sha(source), *body]
                    for source, body in zip(sources, bodies, strict=True)]

        def evaluate(redis: Any) -> Deferred:
            sent = redis.execute_batch(commands)
            # WAIT goes right behind the scripts on the same connection: one round trip
            # (unless one is in flight on it: the next covers these writes too).
            waiting = self._replicated(redis) if waits else None
            if waiting is None:
                return sent.addCallback(self._plain_results, redis, sources, bodies)
            return Deferred.fromCoroutine(self._settle(redis, sent, sources, bodies, waiting))

        return await self.run(evaluate)

    def _plain_results(self, results: list[Any], redis: Any, sources: list[str],
                       bodies: list[list[Any]]) -> Any:
        for result in results:
            if isinstance(result, Exception):
                return Deferred.fromCoroutine(
                    self._settle(redis, succeed(results), sources, bodies, None))
        return results

    async def _settle(self, redis: Any, sent: Deferred, sources: list[str],
                      bodies: list[list[Any]], waiting: Deferred | None) -> list[Any]:
        """A batch's results once an error reply or a WAIT is involved."""
        waits = waiting is not None
        try:
            results = await sent
            for i, result in enumerate(results):
                if not isinstance(result, Exception):
                    continue
                if not isinstance(result, txredisapi.ResponseError):
                    raise result  # the connection was lost
                if not str(result).startswith("NOSCRIPT"):
                    results[i] = self._refused(result)
                    continue
                # Redis does not know the script yet (first use, restart, SCRIPT FLUSH);
                # EVAL runs and caches it. Scripts behind it in the batch have run already:
                # each is independent (callers batch only scripts of different owners).
                if waiting is not None:
                    waiting.addErrback(lambda failure: None)
                again = redis.execute_command("EVAL", sources[i], *bodies[i])
                waiting = self._replicated(redis) if waits else None
                try:
                    results[i] = await again
                except txredisapi.ResponseError as e:
                    results[i] = self._refused(e)
        except BaseException:
            if waiting is not None:
                waiting.addErrback(lambda failure: None)
            raise
        if waiting is not None:
            await waiting
        return results

    def _refused(self, error: txredisapi.ResponseError) -> StoreError:
        if "READONLY" in str(error):
            # A master demoted to replica: the next call's run() drops the connection.
            raise error
        refused = _error_reply(error)
        self._failed("full" if isinstance(refused, StoreFull) else "error_reply")
        return refused

    async def _verify_connection(self, connection: Any) -> str | None:
        if self.sentinel is not None:
            # The sentinels may still name a master that has just been demoted: only a
            # master is used (raising drops the connection; the pool asks again).
            role = await connection.execute_command("ROLE")
            if not role or role[0] != b"master":
                raise StoreUnavailable("the Redis the sentinels named is not a master (yet)")
            self._connections.add(connection)
        policy = await read_eviction_policy(connection)
        if policy is None and not self._policy_unknown_logged:
            self._policy_unknown_logged = True
            log.warn("could not read Redis's maxmemory-policy (CONFIG and INFO refused); "
                     "make sure it is noeviction")
        return eviction_refusal(policy, self.config.allow_evicting_redis)

    def _master_changed(self, address: tuple[str, int]) -> None:
        # The sentinels name a new master: connections still open to the old one (it may
        # come back as a replica, or be cut off from the others) are dropped.
        for connection in list(self._connections):
            if getattr(connection, "sentinel_master", address) != address:
                _abort(connection)

    def usage(self) -> dict[str, Any]:
        """Redis's memory as last read, and the limit uploads are refused at."""
        return {"kind": "redis", **self.memory.usage()}

    # -- service ----------------------------------------------------------------------------

    def make_service(self) -> MultiService:
        return _RedisService(self)

    def _start(self) -> None:
        self._running = True
        if getattr(txredisapi, "hiredis", None) is None:
            # txredisapi's own parser is slower and, under bursts of pipelined replies, was
            # seen to leave a connection paused until the operation timeout (500s).
            log.warn("hiredis is not installed: Redis replies are parsed in pure Python "
                     "(slower, and known to stall under bursts); install hiredis")
        self.pool.start()

    async def _stop(self) -> None:
        self._running = False
        await self.pool.stop()


def _abort(connection: Any) -> None:
    if connection is not None and connection.transport is not None:
        connection.transport.abortConnection()


def _error_reply(error: txredisapi.ResponseError) -> StoreError:
    message = str(error)
    # With maxmemory and noeviction, Redis refuses writes (inside scripts too) with "OOM ...".
    if message.startswith("OOM") or "-OOM " in message or " OOM " in message:
        return StoreFull("the Redis store is full")
    return StoreUnavailable(f"Redis answered with an error: {message[:200]}")


def exit_with_one_line(reason: str, reactor: Any) -> None:
    """Stop the reactor, then the process with status 1 (twistd itself always exits 0)."""
    def exit_now() -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)

    reactor.addSystemEventTrigger("after", "shutdown", exit_now)
    reactor.stop()


class _RedisService(MultiService):
    """Connects the pool when started (and polls Redis's memory); closes every connection
    when stopped. A Redis the relay must not use (an evicting maxmemory-policy) is logged in
    one line and `on_refused(reason, reactor)` runs: by default it ends the process."""

    def __init__(self, backend: RedisBackend) -> None:
        super().__init__()
        self.backend = backend
        self.on_refused = exit_with_one_line
        poll = TimerService(backend.config.redis_memory_poll_interval,
                            lambda: Deferred.fromCoroutine(backend.memory.poll(backend)))
        poll.clock = backend.clock
        poll.setServiceParent(self)
        if backend.sentinel is not None:
            watch = TimerService(SENTINEL_CHECK_INTERVAL, backend.sentinel.check)
            watch.clock = backend.clock
            watch.setServiceParent(self)

    def _refused(self, reason: str) -> None:
        log.critical("refusing to use this Redis: {reason}", reason=reason)
        self.on_refused(reason, self.backend.clock)

    def startService(self) -> None:
        self.backend.pool.on_refused = self._refused
        self.backend._start()
        super().startService()

    def stopService(self) -> Deferred:
        # The pool first: it fails whatever waits for a connection (a poll, say) at once,
        # so the poll's service stops without waiting out an operation timeout.
        pool_stopped = Deferred.fromCoroutine(self.backend._stop())
        return gatherResults([pool_stopped, super().stopService()])


def open_redis_tables(backend: RedisBackend) -> dict:
    from relay.store.redis.channels import RedisChannelStore
    from relay.store.redis.files import RedisFileStore
    from relay.store.redis.mailbox import RedisMailboxStore
    from relay.store.redis.sessions import RedisSessionStore

    return {"sessions": RedisSessionStore(backend), "mailbox": RedisMailboxStore(backend),
            "channels": RedisChannelStore(backend), "files": RedisFileStore(backend)}
