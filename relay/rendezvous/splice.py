"""The zero-copy data path (Linux): bytes go socket -> pipe -> socket with splice(2) and never
enter user space. Measured against the user-space path in docs/performance.md.

After pairing, the two Twisted transports are taken off the reactor and one `_End` per socket
takes their place (the reactor keeps one object per file descriptor, so an end does both its
socket's reads and its writes). Each direction has a kernel pipe, made on the first byte (an
idle pair costs no pipe). Backpressure: while a direction's pipe cannot be emptied into the
destination socket, its source socket is not read; the pipe (PIPE_SIZE) is the only buffer.
When one side ends, what is already in its pipe is delivered, then both are closed.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
from typing import TYPE_CHECKING, Any

from twisted.internet import error as net_error
from twisted.python.failure import Failure

if TYPE_CHECKING:
    from relay.rendezvous.staple import StapleProtocol

AVAILABLE = hasattr(os, "splice") and hasattr(fcntl, "F_SETPIPE_SZ")
PIPE_SIZE = 1024 * 1024
_FLAGS = getattr(os, "SPLICE_F_MOVE", 1) | getattr(os, "SPLICE_F_NONBLOCK", 2)
# Splice rounds per readable event (see _End.doRead).
_ROUNDS = 4


class _Direction:
    """One way's pipe; bytes spliced in from the source and not yet out to the sink."""

    __slots__ = ("read_fd", "write_fd", "pending", "eof")

    def __init__(self) -> None:
        self.read_fd = self.write_fd = -1
        self.pending = 0
        self.eof = False

    def open(self) -> None:
        self.read_fd, self.write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            fcntl.fcntl(self.write_fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        except OSError:
            pass  # over /proc/sys/fs/pipe-max-size: the default size works, only slower

    def close(self) -> None:
        for fd in (self.read_fd, self.write_fd):
            if fd >= 0:
                os.close(fd)
        self.read_fd = self.write_fd = -1


class _End:
    """One stapled socket as the reactor sees it: readable -> splice into its outgoing pipe;
    writable -> drain the incoming pipe into it."""

    def __init__(self, pair: SplicePair, conn: StapleProtocol) -> None:
        self.pair = pair
        self.conn = conn
        self.fd = conn.transport.fileno()
        self.outgoing = _Direction()  # bytes read from this socket, for the partner
        self.partner: _End = self  # set by SplicePair

    def fileno(self) -> int:
        return self.fd

    def logPrefix(self) -> str:
        return "StapledEnd"

    def doRead(self) -> Any:
        out = self.outgoing
        if out.read_fd < 0:
            out.open()
        # Refill and drain a few times per wake-up while both sides keep up: fewer trips
        # through the reactor per megabyte; bounded so other connections get their turn.
        for _ in range(_ROUNDS):
            try:
                n = os.splice(self.fd, out.write_fd, PIPE_SIZE - out.pending, flags=_FLAGS)
            except BlockingIOError:
                return None
            except OSError as e:
                return _lost(e)
            if n == 0:
                out.eof = True
                self.pair.reactor.removeReader(self)
            else:
                out.pending += n
            result = self.partner.drain()
            if result is not None or out.pending or out.eof:
                return result
        return None

    def doWrite(self) -> Any:
        return self.drain()

    def drain(self) -> Any:
        """Move the partner's pipe into this socket as far as it takes it."""
        incoming = self.partner.outgoing
        reactor = self.pair.reactor
        while incoming.pending:
            try:
                n = os.splice(incoming.read_fd, self.fd, incoming.pending, flags=_FLAGS)
            except BlockingIOError:
                break
            except OSError as e:
                return _lost(e)
            incoming.pending -= n
        if incoming.pending:
            # The sink is full: stop reading the source until the sink drains.
            reactor.removeReader(self.partner)
            reactor.addWriter(self)
            return None
        reactor.removeWriter(self)
        if incoming.eof:
            return net_error.ConnectionDone()
        if not self.pair.closed:
            reactor.addReader(self.partner)
        return None

    def connectionLost(self, reason: Failure) -> None:
        self.pair.close(reason)


def _lost(e: OSError) -> Exception:
    if e.errno in (errno.EPIPE, errno.ECONNRESET):
        return net_error.ConnectionLost()
    return e


class SplicePair:
    def __init__(self, a: StapleProtocol, b: StapleProtocol, reactor: Any) -> None:
        self.reactor = reactor
        self.closed = False
        self.a, self.b = _End(self, a), _End(self, b)
        self.a.partner, self.b.partner = self.b, self.a
        for end in (self.a, self.b):
            transport = end.conn.transport
            transport.stopReading()
            transport.stopWriting()

    def start(self, first: dict[StapleProtocol, bytes]) -> None:
        """Send each end its first bytes ("ok" and the partner's early data), then splice."""
        for end in (self.a, self.b):
            data = first.get(end.conn, b"")
            sent = _send_some(end.conn.transport.socket, data)
            if sent < len(data):
                # Rare: the fresh socket did not take it all; queue the rest in the pipe.
                incoming = end.partner.outgoing
                incoming.open()
                os.write(incoming.write_fd, data[sent:])
                incoming.pending += len(data) - sent
        for end in (self.a, self.b):
            if end.partner.outgoing.pending:
                self.reactor.addWriter(end)
            else:
                self.reactor.addReader(end.partner)

    def close(self, reason: Failure | None = None) -> None:
        """Both sockets go back to their transports, which close them (and tell the
        protocols, so the listener forgets the pair)."""
        if self.closed:
            return
        self.closed = True
        for end in (self.a, self.b):
            self.reactor.removeReader(end)
            self.reactor.removeWriter(end)
        for end in (self.a, self.b):
            end.outgoing.close()
            end.conn.transport.loseConnection()


def _send_some(sock: socket.socket, data: bytes) -> int:
    if not data:
        return 0
    try:
        return sock.send(data)
    except BlockingIOError:
        return 0
    except OSError:
        return len(data)  # the connection is failing; the reactor will report it
