"""Admission of new connections: caps in all and per client, and a file descriptor reserve.

Refusing happens when a connection is made, with a short canned answer and a close;
connections already admitted are never touched. Behind the PROXY protocol Twisted's wrapper
connects us before the header names the client: the connection counts in all (and against
the descriptor reserve) from then on, and against its client's cap as soon as the header has
come, whether a request follows or not (see RelayChannel). Refusals are logged as one line per interval with a count, never
one line per connection: a flood must not flood the log too.

Why a descriptor reserve: at the process's RLIMIT_NOFILE, accept() fails with EMFILE.
Twisted's tcp.Port then closes clients through its one reserved descriptor and logs a line
per closed socket; everything else that needs a descriptor (the store's reconnects, the
staple listener's pairs and pipes, file chunks, log rotation) fails at random. The guard
refuses new connections while a margin of descriptors is still free, so that point is never
reached by connections alone. The accepted socket's own number tells how close we are:
descriptors are allocated lowest first, so descriptor N means N are already open.
"""

from __future__ import annotations

import resource
from collections import Counter
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory

log = Logger(namespace="relay.connections")

# One log line per this many seconds at most, however many connections are refused.
LOG_INTERVAL = 10.0


def descriptor_limit() -> int | None:
    """The process's soft limit on open file descriptors, or None if unlimited."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY else soft


def descriptor_of(transport: Any) -> int | None:
    """The file descriptor under a transport (TCP, TLS or PROXY-protocol wrapped), if any."""
    for _ in range(4):
        fileno = getattr(transport, "fileno", None)
        if fileno is not None:
            try:
                number = fileno()
            except Exception:  # noqa: BLE001 - a wrapper without a socket of its own
                number = None
            if isinstance(number, int) and number >= 0:
                return number
        transport = getattr(transport, "transport", None)
        if transport is None:
            return None
    return None


class RefusalLog:
    """Counts refusals by reason; logs the first at once, then the count once an interval."""

    def __init__(self, clock: IReactorTime, what: str, interval: float = LOG_INTERVAL) -> None:
        self.clock = clock
        self.what = what
        self.interval = interval
        self.counts: Counter[str] = Counter()
        self._flush_call: Any = None
        self.lines = 0  # log lines written, for tests

    def refused(self, reason: str) -> None:
        if self._flush_call is None:
            # The first refusal after a quiet interval is reported at once; the rest of
            # the interval is summed up by one line when it ends.
            self._emit(Counter({reason: 1}), first=True)
            self._flush_call = self.clock.callLater(self.interval, self._flush)
            return
        self.counts[reason] += 1

    def _flush(self) -> None:
        counts, self.counts = self.counts, Counter()
        if counts:
            self._emit(counts, first=False)
            self._flush_call = self.clock.callLater(self.interval, self._flush)
        else:
            self._flush_call = None

    def _emit(self, counts: Counter[str], first: bool) -> None:
        self.lines += 1
        reasons = ", ".join(f"{n} {reason}" for reason, n in sorted(counts.items()))
        if first:
            log.warn("closing {what} connections: {reasons}", what=self.what, reasons=reasons)
        else:
            log.warn("closed {total} {what} connections in the last {s:.0f}s: {reasons}",
                     total=sum(counts.values()), what=self.what, s=self.interval,
                     reasons=reasons)

    def stop(self) -> None:
        """Log what is still counted (at shutdown) and stop the interval."""
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush_call = None
        counts, self.counts = self.counts, Counter()
        if counts:
            self._emit(counts, first=False)


class BodyBudget:
    """Bytes of request bodies held at once by all connections of a site."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0

    def fits(self, size: int) -> bool:
        return self.held + size <= self.limit

    def take(self, size: int) -> bool:
        if self.held + size > self.limit:
            return False
        self.held += size
        return True

    def give(self, size: int) -> None:
        self.held -= size


class DescriptorGuard:
    """Says when a new connection's descriptor eats into the reserve; reusable by any
    listener (see `guard_descriptors`)."""

    def __init__(self, limit: int | None, reserve: int) -> None:
        self.limit = limit
        self.reserve = reserve
        if limit is None:
            self.threshold: int | None = None
        else:
            # Never reserve more than half: a tiny limit still serves some connections.
            self.threshold = max(limit - reserve, limit // 2)

    @classmethod
    def for_this_process(cls, reserve: int) -> DescriptorGuard:
        return cls(descriptor_limit(), reserve)

    def near_limit(self, transport: Any) -> bool:
        if self.threshold is None:
            return False
        number = descriptor_of(transport)
        return number is not None and number >= self.threshold


class ConnectionGuard:
    """Admits a connection or says why not: relay-wide cap, per-client cap, descriptors."""

    def __init__(self, max_connections: int, max_per_client: int,
                 descriptors: DescriptorGuard, refusals: RefusalLog) -> None:
        self.max_connections = max_connections
        self.max_per_client = max_per_client
        self.descriptors = descriptors
        self.refusals = refusals
        self.total = 0
        self.per_client: dict[str, int] = {}

    def admit(self, key: str, transport: Any) -> str | None:
        """None if admitted (release(key) when it closes), else the refusal's reason:
        "descriptors", "busy" (relay-wide cap) or "client" (the client's cap)."""
        if self.descriptors.near_limit(transport):
            reason = "descriptors"
        elif self.total >= self.max_connections:
            reason = "busy"
        elif self.per_client.get(key, 0) >= self.max_per_client:
            reason = "client"
        else:
            self.total += 1
            self.per_client[key] = self.per_client.get(key, 0) + 1
            return None
        self.refusals.refused(_REASONS[reason])
        return reason

    def admit_unknown(self, transport: Any) -> str | None:
        """Admit a connection whose client is not known yet (its PROXY header is to come):
        counted in all and against the descriptor reserve now, per client by identify()
        once the header names it. None if admitted, else "descriptors" or "busy"."""
        if self.descriptors.near_limit(transport):
            reason = "descriptors"
        elif self.total >= self.max_connections:
            reason = "busy"
        else:
            self.total += 1
            return None
        self.refusals.refused(_REASONS[reason])
        return reason

    def identify(self, key: str) -> str | None:
        """The client of a connection admitted by admit_unknown is now known: None if it is
        under its cap (release(key) when it closes), else "client", and the connection no
        longer counts (release_unknown() is not called for it)."""
        if self.per_client.get(key, 0) >= self.max_per_client:
            self.total -= 1
            self.refusals.refused(_REASONS["client"])
            return "client"
        self.per_client[key] = self.per_client.get(key, 0) + 1
        return None

    def release_unknown(self) -> None:
        """A connection admitted by admit_unknown closed before its client was known."""
        self.total -= 1

    def release(self, key: str) -> None:
        self.total -= 1
        left = self.per_client[key] - 1
        if left:
            self.per_client[key] = left
        else:
            del self.per_client[key]


_REASONS = {"descriptors": "near the file descriptor limit",
            "busy": "over max_connections",
            "client": "over max_connections_per_client"}


class _DescriptorGuardedProtocol(ProtocolWrapper):
    _refused = False

    def makeConnection(self, transport: Any) -> None:
        factory: DescriptorGuardedFactory = self.factory  # type: ignore[assignment]
        if factory.guard.near_limit(transport):
            factory.refusals.refused(_REASONS["descriptors"])
            self._refused = True
            self.transport = transport
            # Closed on the spot, as HTTP refusals are: a flood within one accept batch
            # must not reach EMFILE (see relay.web.channel.close_now).
            from twisted.internet import tcp

            from relay.web.channel import close_now

            if isinstance(transport, tcp.Connection):
                close_now(transport, b"")
            else:
                transport.abortConnection()
            return
        super().makeConnection(transport)

    def dataReceived(self, data: bytes) -> None:
        if not self._refused:
            super().dataReceived(data)

    def connectionLost(self, reason: Any) -> None:
        if not self._refused:
            super().connectionLost(reason)


class DescriptorGuardedFactory(WrappingFactory):
    """Wraps another listener's factory: a connection that arrives while descriptors are
    near the limit is closed at once (it speaks no HTTP, so it gets no answer). E.g. the
    staple listener, sharing the HTTP site's guard:

        DescriptorGuardedFactory(listener, site.guard.descriptors,
                                 RefusalLog(reactor, "staple"))
    """

    protocol = _DescriptorGuardedProtocol

    def __init__(self, wrapped: Any, guard: DescriptorGuard, refusals: RefusalLog) -> None:
        super().__init__(wrapped)
        self.guard = guard
        self.refusals = refusals
