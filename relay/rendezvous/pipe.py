"""The data path between two stapled connections (user space, through Twisted).

Each connection's received data goes straight to the other's transport: `dataReceived` is
replaced on the instance by the partner transport's `write`, so no frame of ours runs per
chunk. Each transport is the other's streaming producer, so when one side's user-space write
buffer passes READ_SIZE the other side stops being read (a slow reader slows the writer);
what the relay holds per direction is bounded by about two reads. With an idle timeout,
the data path is a small closure per direction that notes the time before writing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.internet.interfaces import IReactorTime

from relay.rendezvous import splice

if TYPE_CHECKING:
    from relay.rendezvous.staple import StapleProtocol

# Bytes per recv() on a stapled socket, and the user-space buffer bound per direction.
READ_SIZE = 256 * 1024


def link(a: StapleProtocol, b: StapleProtocol, clock: IReactorTime,
         data_path: str, owner: splice.SpliceOwner, track: bool = True
         ) -> splice.SplicePair | CopyPair:
    """Start moving bytes between a and b; the pair. On the splice path the sockets leave a
    and b (and their transports) for a SplicePair; on the copy path a and b stay, in a
    CopyPair. Both keep `last`, the time a byte last moved (on the copy path only when
    track is set: it costs a clock read per chunk)."""
    assert a.channel_name is not None
    if data_path == "splice" and splice.AVAILABLE:
        to_a, to_b = b"ok\n" + b.leftover, b"ok\n" + a.leftover
        pair = splice.SplicePair(splice.take_socket(a), splice.take_socket(b), clock, owner,
                                 a.channel_name)
        pair.start(to_a, to_b)
        return pair
    copy = CopyPair(a, b, clock, a.channel_name)
    a.partner, b.partner = b, a
    a.pair = b.pair = copy
    for this in (a, b):
        this.transport.bufferSize = READ_SIZE
        this.transport.write(b"ok\n")
    for this, other in ((a, b), (b, a)):
        if this.leftover:
            other.transport.write(this.leftover)
            this.leftover = b""
        this.transport.registerProducer(other.transport, True)
    for this, other in ((a, b), (b, a)):
        if track:
            this.dataReceived = copy.forwarder(other)  # type: ignore[method-assign]
        else:
            this.dataReceived = other.transport.write  # type: ignore[method-assign]
    return copy


class CopyPair:
    """Two stapled connections on the copy path (the listener's record of the pair)."""

    __slots__ = ("a", "b", "clock", "name", "started", "last", "keys", "renewed", "moved")

    def __init__(self, a: StapleProtocol, b: StapleProtocol, clock: IReactorTime,
                 name: str) -> None:
        self.a, self.b, self.clock, self.name = a, b, clock, name
        self.started = self.last = self.renewed = clock.seconds()
        self.keys: tuple[str, ...] = ()
        self.moved = 0  # bytes relayed either way (counted when `track` is set), for metrics

    def forwarder(self, other: StapleProtocol):  # noqa: ANN201
        write = other.transport.write
        clock = self.clock

        def forward(data: bytes) -> None:
            self.last = clock.seconds()
            self.moved += len(data)
            write(data)

        return forward

    def close(self, abort: bool = False) -> None:
        """End both connections (what is in flight is delivered first, unless aborting)."""
        for peer in (self.a, self.b):
            peer.cancel_timer()
            if peer.transport is not None:
                if abort:
                    peer.transport.abortConnection()
                else:
                    peer.transport.loseConnection()
