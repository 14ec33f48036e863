"""The zero-copy data path (Linux): bytes go socket -> pipe -> socket with splice(2) and never
enter user space. Measured against the user-space path in docs/performance.md.

After pairing, the two sockets are taken away from their Twisted transports (which, with
their protocols, are then freed: an idle pair costs three small slotted objects, see
docs/performance.md) and one `_End` per socket takes their place on the reactor (the reactor
keeps one object per file descriptor, so an end does both its socket's reads and its writes).
A direction holds a kernel pipe only while bytes are in it: it takes one from the listener's
PipePool when data arrives and gives it back once drained, so idle pairs cost no pipe and no
pipe descriptors. Backpressure: while a direction's pipe cannot be emptied into the
destination socket, its source socket is not read; the pipe (PIPE_SIZE) is the only buffer.
When one side ends, what is already in its pipe is delivered, then both are closed.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import struct
from typing import TYPE_CHECKING, Any, Protocol

from twisted.internet import error as net_error
from twisted.python.failure import Failure

if TYPE_CHECKING:
    from relay.rendezvous.staple import StapleProtocol

AVAILABLE = hasattr(os, "splice") and hasattr(fcntl, "F_SETPIPE_SZ")
PIPE_SIZE = 1024 * 1024
_FLAGS = getattr(os, "SPLICE_F_MOVE", 1) | getattr(os, "SPLICE_F_NONBLOCK", 2)
# Splice rounds per readable event (see _End.doRead).
_ROUNDS = 4
# Empty pipes kept for reuse: enough for the transfers one process moves at once; more are
# closed when given back (a spare pipe costs two descriptors and no memory until used).
MAX_SPARE_PIPES = 64


class PipePool:
    """Empty kernel pipes, lent to a direction while bytes are in flight."""

    def __init__(self, max_spare: int = MAX_SPARE_PIPES) -> None:
        self.max_spare = max_spare
        self.spare: list[tuple[int, int]] = []
        self.lent = 0

    def take(self) -> tuple[int, int]:
        """(read fd, write fd) of an empty pipe; raises OSError (EMFILE...) if none can be
        made."""
        if self.spare:
            pipe = self.spare.pop()
        else:
            read_fd, write_fd = pipe = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
            try:
                fcntl.fcntl(write_fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
            except OSError:
                pass  # over /proc/sys/fs/pipe-max-size: the default size works, only slower
        self.lent += 1
        return pipe

    def give(self, read_fd: int, write_fd: int, empty: bool = True) -> None:
        """Take a pipe back: kept for reuse if empty and there is room, else closed."""
        self.lent -= 1
        if empty and len(self.spare) < self.max_spare:
            self.spare.append((read_fd, write_fd))
        else:
            os.close(read_fd)
            os.close(write_fd)

    def close(self) -> None:
        for read_fd, write_fd in self.spare:
            os.close(read_fd)
            os.close(write_fd)
        self.spare.clear()


class SpliceOwner(Protocol):
    """What a pair needs from the listener that made it."""

    pipes: PipePool

    def splice_ended(self, pair: SplicePair) -> None: ...


class _End:
    """One stapled socket as the reactor sees it: readable -> splice into its outgoing pipe;
    writable -> drain the partner's pipe into it. The outgoing direction (bytes read from
    this socket, for the partner) lives here too: pipe fds (-1 when it holds none), bytes in
    the pipe, and whether the socket has ended."""

    __slots__ = ("pair", "fd", "partner", "pipe_r", "pipe_w", "pending", "eof")

    def __init__(self, pair: SplicePair, fd: int) -> None:
        self.pair = pair
        self.fd = fd
        self.partner: _End = self  # set by SplicePair
        self.pipe_r = self.pipe_w = -1
        self.pending = 0
        self.eof = False

    def fileno(self) -> int:
        return self.fd

    def logPrefix(self) -> str:
        return "StapledEnd"

    def take_pipe(self) -> None:
        self.pipe_r, self.pipe_w = self.pair.owner.pipes.take()

    def give_pipe(self) -> None:
        if self.pipe_r >= 0:
            self.pair.owner.pipes.give(self.pipe_r, self.pipe_w, empty=not self.pending)
            self.pipe_r = self.pipe_w = -1

    def doRead(self) -> Any:
        pair = self.pair
        pair.last = pair.reactor.seconds()  # the idle timeout's clock: one read per wake-up
        try:
            return self._splice_rounds()
        finally:
            if not self.pending:
                self.give_pipe()  # at most one take and give per wake-up

    def _splice_rounds(self) -> Any:
        # Refill and drain a few times per wake-up while both sides keep up: fewer trips
        # through the reactor per megabyte; bounded so other connections get their turn.
        for _ in range(_ROUNDS):
            if self.pipe_w < 0:
                try:
                    self.take_pipe()
                except OSError as e:
                    return e  # out of descriptors: this pair ends, the relay goes on
            try:
                n = os.splice(self.fd, self.pipe_w, PIPE_SIZE - self.pending, flags=_FLAGS)
            except BlockingIOError:
                return None
            except OSError as e:
                return _lost(e)
            if n == 0:
                self.eof = True
                self.pair.reactor.removeReader(self)
            else:
                self.pending += n
            result = self.partner.drain()
            if result is not None or self.pending or self.eof:
                return result
        return None

    def doWrite(self) -> Any:
        pair = self.pair
        pair.last = pair.reactor.seconds()  # a slow reader draining counts as activity
        result = self.drain()
        if not self.partner.pending:
            self.partner.give_pipe()
        return result

    def drain(self) -> Any:
        """Move the partner's pipe into this socket as far as it takes it."""
        source = self.partner
        reactor = self.pair.reactor
        while source.pending:
            try:
                n = os.splice(source.pipe_r, self.fd, source.pending, flags=_FLAGS)
            except BlockingIOError:
                break
            except OSError as e:
                return _lost(e)
            source.pending -= n
            self.pair.moved += n
        if source.pending:
            # The sink is full: stop reading the source until the sink drains.
            reactor.removeReader(source)
            reactor.addWriter(self)
            return None
        reactor.removeWriter(self)
        if source.eof:
            return net_error.ConnectionDone()
        if not self.pair.closed:
            reactor.addReader(source)
        return None

    def connectionLost(self, reason: Failure) -> None:
        self.pair.close()


def _lost(e: OSError) -> Exception:
    if e.errno in (errno.EPIPE, errno.ECONNRESET):
        return net_error.ConnectionLost()
    return e


def take_socket(conn: StapleProtocol) -> int:
    """The connection's socket fd, taken from its Twisted transport, which (with the
    protocol) is left for the garbage collector: it is off the reactor and will never close
    the fd."""
    transport = conn.transport
    transport.stopReading()
    transport.stopWriting()
    fd = transport.socket.detach()
    # Break the transport <-> protocol cycle so both are freed at once, not at the next
    # cyclic collection.
    transport.protocol = None
    conn.transport = None
    return fd


class SplicePair:
    """Two sockets spliced together; `owner.splice_ended(pair)` is called once both are
    closed. `name` is the channel's, for the owner to close it. `last` is when a byte last
    moved (for the owner's idle timeout); `keys` and `renewed` are the owner's."""

    __slots__ = ("reactor", "owner", "name", "a", "b", "closed", "started", "last", "keys",
                 "renewed", "moved")

    def __init__(self, a_fd: int, b_fd: int, reactor: Any, owner: SpliceOwner,
                 name: str) -> None:
        self.reactor = reactor
        self.owner = owner
        self.name = name
        self.closed = False
        # When the pair was stapled, for the log line the owner writes when it ends.
        self.started = self.last = self.renewed = reactor.seconds()
        self.keys: tuple[str, ...] = ()
        self.moved = 0  # bytes relayed either way, for metrics
        self.a, self.b = _End(self, a_fd), _End(self, b_fd)
        self.a.partner, self.b.partner = self.b, self.a

    def start(self, to_a: bytes, to_b: bytes) -> None:
        """Send each end its first bytes ("ok" and the partner's early data), then splice."""
        for end, data in ((self.a, to_a), (self.b, to_b)):
            sent = _send_some(end.fd, data)
            if sent < len(data):
                # Rare: the fresh socket did not take it all; queue the rest in a pipe.
                source = end.partner
                try:
                    source.take_pipe()
                except OSError:
                    self.close()  # out of descriptors
                    return
                os.write(source.pipe_w, data[sent:])
                source.pending += len(data) - sent
        for end in (self.a, self.b):
            if end.partner.pending:
                self.reactor.addWriter(end)
            else:
                self.reactor.addReader(end.partner)

    def close(self, abort: bool = False) -> None:
        """Close both sockets (a FIN, or a reset when aborting) and give back the pipes."""
        if self.closed:
            return
        self.closed = True
        for end in (self.a, self.b):
            self.reactor.removeReader(end)
            self.reactor.removeWriter(end)
        for end in (self.a, self.b):
            end.give_pipe()
            _close_socket(end.fd, abort)
            end.fd = -1
        self.owner.splice_ended(self)


def _send_some(fd: int, data: bytes) -> int:
    if not data:
        return 0
    try:
        return os.write(fd, data)
    except BlockingIOError:
        return 0
    except OSError:
        return len(data)  # the connection is failing; the reactor will report it


def _close_socket(fd: int, abort: bool) -> None:
    """What a Twisted transport does on close: shutdown then close, or a reset (linger 0)."""
    sock = socket.socket(fileno=fd)
    try:
        if abort:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        else:
            sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()
