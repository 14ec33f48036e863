"""The data path between two stapled connections (user space, through Twisted).

Each connection's received data goes straight to the other's transport: `dataReceived` is
replaced on the instance by the partner transport's `write`, so no frame of ours runs per
chunk. Each transport is the other's streaming producer, so when one side's user-space write
buffer passes READ_SIZE the other side stops being read (a slow reader slows the writer);
what the relay holds per direction is bounded by about two reads.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.internet.interfaces import IReactorTime

from relay.rendezvous import splice

if TYPE_CHECKING:
    from relay.rendezvous.staple import StapleProtocol

# Bytes per recv() on a stapled socket, and the user-space buffer bound per direction.
READ_SIZE = 256 * 1024


def link(a: StapleProtocol, b: StapleProtocol, idle_timeout: float,
         clock: IReactorTime, data_path: str = "copy",
         owner: splice.SpliceOwner | None = None) -> splice.SplicePair | None:
    """Start moving bytes between a and b. On the splice path the sockets leave a and b
    (and their transports) for a SplicePair, which is returned; on the copy path a and b
    stay the pair (None is returned)."""
    if (data_path == "splice" and splice.AVAILABLE and idle_timeout <= 0
            and owner is not None and a.channel_name is not None):
        to_a, to_b = b"ok\n" + b.leftover, b"ok\n" + a.leftover
        pair = splice.SplicePair(splice.take_socket(a), splice.take_socket(b), clock, owner,
                                 a.channel_name)
        pair.start(to_a, to_b)
        return pair
    a.partner, b.partner = b, a
    for this in (a, b):
        this.transport.bufferSize = READ_SIZE
        this.transport.write(b"ok\n")
    for this, other in ((a, b), (b, a)):
        if this.leftover:
            other.transport.write(this.leftover)
            this.leftover = b""
        this.transport.registerProducer(other.transport, True)
    if idle_timeout > 0:
        _IdleWatch(a, b, idle_timeout, clock)
    else:
        a.dataReceived = b.transport.write  # type: ignore[method-assign]
        b.dataReceived = a.transport.write  # type: ignore[method-assign]
    return None


class _IdleWatch:
    """Closes the pair when no byte moved either way for idle_timeout seconds (one timer
    per pair, re-armed lazily; the per-chunk cost is one clock read)."""

    def __init__(self, a: StapleProtocol, b: StapleProtocol, timeout: float,
                 clock: IReactorTime) -> None:
        self.a, self.b, self.timeout, self.clock = a, b, timeout, clock
        self.last = clock.seconds()
        for this, other in ((a, b), (b, a)):
            this.dataReceived = self._forwarder(other)  # type: ignore[method-assign]
        self.timer = clock.callLater(timeout, self.check)
        a.timer = self.timer  # cancelled with the connection

    def _forwarder(self, other: StapleProtocol):  # noqa: ANN202
        write = other.transport.write

        def forward(data: bytes) -> None:
            self.last = self.clock.seconds()
            write(data)

        return forward

    def check(self) -> None:
        if self.a.gone or self.b.gone:
            return
        idle = self.clock.seconds() - self.last
        if idle >= self.timeout:
            self.a.transport.loseConnection()
            self.b.transport.loseConnection()
            return
        self.timer = self.clock.callLater(self.timeout - idle, self.check)
        self.a.timer = self.timer
