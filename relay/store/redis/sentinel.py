"""Finding the Redis master through Sentinel, before every connection.

`SentinelEndpoint` is the pool's endpoint for redis+sentinel:// URLs. Each connection attempt
first asks the sentinels, one after the other as Redis's guidelines for Sentinel clients say,
`SENTINEL GET-MASTER-ADDR-BY-NAME name`; the first that answers is moved to the front of the
list and its address is connected to. Concurrent attempts (the pool reconnecting all its
connections after a failover) share one discovery.

A sentinel may still name the old master for a moment during a failover: the connection then
fails (a dead primary) or is refused by the backend's ROLE check (a primary demoted to
replica), and the pool reconnects with a short backoff, asking again. So after a failover the
relay serves from the new master without a restart; until then its calls fail (HTTP 500).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import txredisapi
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, connectProtocol
from twisted.internet.interfaces import IProtocolFactory, IReactorTime, IStreamClientEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from relay.store.errors import StoreUnavailable

log = Logger(namespace="relay.store")

# Seconds between two checks of the master's address while connected.
CHECK_INTERVAL = 2.0


class MasterNotFound(StoreUnavailable):
    """No sentinel answered with the master's address."""


class _QueryFactory:
    """What txredisapi's protocol asks of its factory if AUTH fails (we send AUTH ourselves)."""

    isLazy = False

    def stopTrying(self) -> None:
        pass

    def connectionError(self, why: str) -> None:
        pass


@implementer(IStreamClientEndpoint)
class SentinelEndpoint:
    def __init__(self, clock: IReactorTime, sentinels: Sequence[tuple[str, int]],
                 master_name: str, timeout: float, password: str | None = None) -> None:
        """timeout bounds each sentinel's answer and the connection to the master."""
        self._clock = clock
        self._sentinels = list(sentinels)
        self._master_name = master_name
        self._timeout = timeout
        self._password = password or None
        self._waiters: list[Deferred] = []
        # The master's address as last discovered; connections made to it carry it as
        # `protocol.sentinel_master`.
        self.master: tuple[str, int] | None = None
        # Called with the new address when the sentinels name another master than before.
        self.on_master_changed: Callable[[tuple[str, int]], None] = lambda address: None

    def __repr__(self) -> str:
        # ClientService names its endpoint in its retry log lines.
        return f"<Sentinel master {self._master_name!r} via {len(self._sentinels)} sentinels>"

    def connect(self, protocol_factory: IProtocolFactory) -> Deferred:
        return Deferred.fromCoroutine(self._connect(protocol_factory))

    async def _connect(self, protocol_factory: IProtocolFactory) -> Any:
        host, port = await self.discover()
        endpoint = HostnameEndpoint(self._clock, host, port, timeout=self._timeout)
        protocol = await endpoint.connect(protocol_factory)
        protocol.sentinel_master = (host, port)
        return protocol

    def check(self) -> Deferred:
        """Ask the sentinels again (a timer calls this): a failover the connections did not
        notice (the old master cut off from the others but not from us) still moves them."""
        return self.discover().addErrback(lambda failure: None)

    def discover(self) -> Deferred:
        """The master's (host, port); one discovery at a time, shared by its callers."""
        waiter: Deferred = Deferred()
        self._waiters.append(waiter)
        if len(self._waiters) == 1:
            Deferred.fromCoroutine(self._discover()).addBoth(self._discovered)
        return waiter

    def _discovered(self, result: Any) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(result)

    async def _discover(self) -> tuple[str, int]:
        problems = []
        for sentinel in list(self._sentinels):
            try:
                address = await self._ask(sentinel)
            except Exception as e:
                problems.append(f"{sentinel[0]}:{sentinel[1]} {_reason(e)}")
                continue
            if address is None:
                problems.append(f"{sentinel[0]}:{sentinel[1]} does not know it")
                continue
            # The guidelines: a sentinel that answered is asked first next time.
            self._sentinels.remove(sentinel)
            self._sentinels.insert(0, sentinel)
            if address != self.master:
                previous, self.master = self.master, address
                log.info("Sentinel: the Redis master {name} is at {host}:{port}",
                         name=self._master_name, host=address[0], port=address[1])
                if previous is not None:
                    self.on_master_changed(address)
            return address
        raise MasterNotFound(f"no sentinel named the Redis master {self._master_name!r}: "
                             + "; ".join(problems))

    async def _ask(self, sentinel: tuple[str, int]) -> tuple[str, int] | None:
        endpoint = HostnameEndpoint(self._clock, sentinel[0], sentinel[1],
                                    timeout=self._timeout)
        protocol = txredisapi.RedisProtocol(charset="utf-8", convertNumbers=False)
        protocol.factory = _QueryFactory()
        asking = Deferred.fromCoroutine(self._query(endpoint, protocol))
        asking.addTimeout(self._timeout, self._clock)
        try:
            return await asking
        finally:
            if protocol.transport is not None:
                protocol.transport.abortConnection()

    async def _query(self, endpoint: HostnameEndpoint,
                     protocol: txredisapi.RedisProtocol) -> tuple[str, int] | None:
        await connectProtocol(endpoint, protocol)
        if self._password is not None:
            await protocol.execute_command("AUTH", self._password)
        reply = await protocol.execute_command("SENTINEL", "get-master-addr-by-name",
                                               self._master_name)
        if not reply:
            return None
        host, port = reply
        return host, int(port)


def _reason(error: Exception) -> str:
    if isinstance(error, txredisapi.ResponseError):
        return f"answered {str(error)[:80]!r}"
    return f"did not answer ({type(error).__name__})"
