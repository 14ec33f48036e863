"""The production store: Redis through a txredisapi connection pool.

`RedisBackend` is what every Redis table shares; a table (sessions.py, mailbox.py, files.py,
channels.py) takes the backend and uses only this API:

``backend.key(*parts) -> str``
    A namespaced key: ``"relay:" + ":".join(parts)``; str parts are used as they are (code
    constants: keep ":" out of them), bytes parts (hashes, ids, tokens) are base64url-encoded
    without padding, so a binary part can never forge a separator.

``await backend.run(fn)``
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

``await backend.script(name_or_source, keys, args)``
    Runs a Lua script (EVALSHA, then EVAL if Redis answers NOSCRIPT, e.g. after a restart)
    through ``run``, with its timeout and error mapping. Pass the script's source text (a
    module constant) or a name given to ``backend.register_script(name, source)``. A script
    that reads the time and then writes starts with ``scripting.PRELUDE`` and calls
    ``now_ms()`` (Redis's clock, the one key TTLs run on).

``backend.clock``
    The reactor the backend was built with (timeouts; it also makes the connections).

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
from base64 import urlsafe_b64encode
from collections.abc import Callable, Sequence
from typing import Any

import txredisapi
from twisted.application.internet import TimerService
from twisted.application.service import MultiService
from twisted.internet import error as net_error
from twisted.internet.defer import CancelledError, Deferred, gatherResults
from twisted.internet.endpoints import HostnameEndpoint, UNIXClientEndpoint
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from relay.config import StoreConfig
from relay.store.errors import StoreFull, StoreUnavailable
from relay.store.redis.address import parse_redis_url
from relay.store.redis.memory import RedisMemory, eviction_refusal, read_eviction_policy
from relay.store.redis.pool import ConnectionPool

KEY_PREFIX = "relay"

log = Logger(namespace="relay.store")

# What a dropped or refused connection looks like, from txredisapi or from Twisted.
_CONNECTION_ERRORS = (txredisapi.ConnectionError, txredisapi.InvalidResponse,
                      txredisapi.InvalidData, net_error.ConnectionClosed,
                      net_error.ConnectError)


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
        if self.address.socket_path is not None:
            endpoint = UNIXClientEndpoint(clock, self.address.socket_path,
                                          timeout=config.operation_timeout)
        else:
            endpoint = HostnameEndpoint(clock, self.address.host, self.address.port,
                                        timeout=config.operation_timeout)
        self.pool = ConnectionPool(endpoint, self.address, config.pool_size, clock,
                                   verify=self._verify_connection,
                                   verify_timeout=config.operation_timeout)
        self.memory = RedisMemory(config)
        self._policy_unknown_logged = False
        self.pending_calls = 0
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

    async def run(self, fn: Callable[[Any], Any]) -> Any:
        if not self._running:
            raise StoreUnavailable("the Redis store is not running")
        if self.pending_calls >= self.config.max_pending_operations:
            raise StoreUnavailable("too many Redis calls under way")
        call = _Call()
        self.pending_calls += 1
        attempt = Deferred.fromCoroutine(self._call(fn, call))
        call.due = self.clock.seconds() + self.config.operation_timeout
        call.timer = self.clock.callLater(self.config.operation_timeout, self._time_out,
                                          attempt, call)
        try:
            return await attempt
        except CancelledError:
            if call.timed_out:
                raise StoreUnavailable(
                    f"Redis did not answer within {self.config.operation_timeout} s") from None
            raise
        except txredisapi.ResponseError as e:
            raise _error_reply(e) from None
        except _CONNECTION_ERRORS as e:
            raise StoreUnavailable(f"lost the connection to Redis: {e}") from None
        finally:
            self.pending_calls -= 1
            if call.timer.active():
                call.timer.cancel()

    async def _call(self, fn: Callable[[Any], Any], call: _Call) -> Any:
        connection = self.pool.pick()
        if connection is None:
            connection = await self.pool.wait()
        call.connection = connection
        result = fn(connection)
        if isinstance(result, Deferred) or hasattr(result, "__await__"):
            return await result
        return result

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

    async def script(self, name_or_source: str, keys: Sequence[str | bytes],
                     args: Sequence[Any]) -> Any:
        source = self._named_scripts.get(name_or_source, name_or_source)
        sha = self._script_hashes.get(source)
        if sha is None:
            sha = hashlib.sha1(source.encode()).hexdigest()
            self._script_hashes[source] = sha
        keys_and_args = [len(keys), *keys, *args]

        async def evaluate(redis: Any) -> Any:
            try:
                return await redis.execute_command("EVALSHA", sha, *keys_and_args)
            except txredisapi.ResponseError as e:
                if not str(e).startswith("NOSCRIPT"):
                    raise
            # Redis does not know the script yet (first use, restart, SCRIPT FLUSH); EVAL
            # runs and caches it.
            return await redis.execute_command("EVAL", source, *keys_and_args)

        return await self.run(evaluate)

    async def _verify_connection(self, connection: Any) -> str | None:
        policy = await read_eviction_policy(connection)
        if policy is None and not self._policy_unknown_logged:
            self._policy_unknown_logged = True
            log.warn("could not read Redis's maxmemory-policy (CONFIG and INFO refused); "
                     "make sure it is noeviction")
        return eviction_refusal(policy, self.config.allow_evicting_redis)

    def usage(self) -> dict[str, Any]:
        """Redis's memory as last read, and the limit uploads are refused at."""
        return {"kind": "redis", **self.memory.usage()}

    # -- service ----------------------------------------------------------------------------

    def make_service(self) -> MultiService:
        return _RedisService(self)

    def _start(self) -> None:
        self._running = True
        self.pool.start()

    async def _stop(self) -> None:
        self._running = False
        await self.pool.stop()


def _error_reply(error: txredisapi.ResponseError) -> Exception:
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
