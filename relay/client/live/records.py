"""End-to-end encrypted records over a byte stream (the stapled connection).

A record on the wire is a 5-byte header, a 4-byte big-endian ciphertext length and a kind
byte, then that many bytes of AES-256-GCM ciphertext of the payload (the header is the
associated data, so the kind is authenticated too). Nonces are not sent: each direction
counts its records from 0 and the 12-byte nonce is (direction byte, 3 zero bytes, 8-byte
counter), so a dropped, replayed, reordered or reflected record fails to open. Kind 0
(FINAL, empty) ends a direction; a stream that ends without it was truncated. Every other
kind is the upper layer's (the transfer's JSON and file data). Each direction has its own
key; the direction byte keeps nonces apart even if a caller passes the same key for both.

Why AES-256-GCM through `cryptography` (OpenSSL): with AES-NI/VAES it seals about 8 GB/s
per core here, against about 1 GB/s for PyNaCl's XChaCha20-Poly1305, and it releases the GIL.
The nonces are counters under a fresh key per direction and transfer, so GCM's short nonce
is never reused; 1 TiB under one key is 2^36 blocks, far inside GCM's bounds.
(`ChaCha20Poly1305` from the same module is a drop-in swap, about 3 GB/s, for hosts
without AES instructions.)

`RecordSealer`/`RecordOpener` are the pure codec; `RecordStream` is the Twisted protocol that
runs them over a transport with backpressure both ways and a timeout on every read. On a
plain TCP connection the stream reads the socket itself, straight into the opener's record
buffer (`RecordOpener.read_socket`), and seals every record into one reused buffer; given
bytes (`feed`, other transports), the opener keeps the chunks as they are and joins a
record's ciphertext only when it spans chunks.
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Callable
from typing import Any, NamedTuple

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from twisted.internet import main, tcp
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

from relay.client.errors import RecordError, RecordTimeout

KEY_LEN = 32
NONCE_LEN = 12
HEADER = struct.Struct(">IB")  # ciphertext length, kind
TAG_LEN = 16
KIND_FINAL = 0
# Which way a record travels; part of every nonce.
SENDER_TO_RECIPIENT = 1
RECIPIENT_TO_SENDER = 2
# 1 MiB records: the fixed Python cost per record (a Deferred, a transport write, a
# decryption call) becomes small next to the per-byte cost of the crypto and the hash.
DEFAULT_MAX_PAYLOAD = 1024 * 1024
HARD_MAX_PAYLOAD = 4 * 1024 * 1024
# What the TCP transport reads per call and sends per call, and how much it buffers before
# it pauses us: Twisted's defaults (64 KiB reads, 128 KiB sends, a pause above 64 KiB)
# cost a trip through the reactor per 64-128 KiB and stall the sender after every 1 MiB
# record, which was most of the client's CPU beyond the crypto, the hash and the disk.
TRANSPORT_BUFFER = 4 * 1024 * 1024
# Reads of the socket per wake-up of the reactor while whole records keep coming: each
# wake-up costs a trip through the reactor's dispatch (and an epoll_wait) per record.
READS_PER_WAKEUP = 4
# Records opened and waiting for the reader before the transport is paused.
DEFAULT_MAX_QUEUED = 8
_MAX_COUNTER = 2 ** 64 - 1
_COUNTER = struct.Struct(">Q")

Payload = bytes | bytearray | memoryview


class Record(NamedTuple):
    kind: int
    payload: bytes | memoryview  # a view where the payload was opened into a lent buffer


# allocate(kind, payload size): a writable view of exactly that size to open a record's
# payload into, or None for a new bytes object (see RecordOpener.allocate).
Allocator = Callable[[int, int], memoryview | None]


def _nonce_prefix(direction: int) -> bytes:
    return bytes([direction]) + bytes(NONCE_LEN - 1 - _COUNTER.size)


def _check(key: bytes, direction: int, max_payload: int) -> None:
    if len(key) != KEY_LEN:
        raise ValueError("a record key is 32 bytes")
    if direction not in (SENDER_TO_RECIPIENT, RECIPIENT_TO_SENDER):
        raise ValueError("unknown record direction")
    if not 0 < max_payload <= HARD_MAX_PAYLOAD:
        raise ValueError(f"max_payload must be 1..{HARD_MAX_PAYLOAD}")


class RecordSealer:
    """Seals one direction's records in order."""

    def __init__(self, key: bytes, direction: int,
                 max_payload: int = DEFAULT_MAX_PAYLOAD) -> None:
        _check(key, direction, max_payload)
        self._aead = AESGCM(key)
        self._prefix = _nonce_prefix(direction)
        self.max_payload = max_payload
        self._counter = 0
        self.finished = False

    def seal(self, kind: int, payload: Payload) -> bytes:
        """One record (header and ciphertext) of an upper-layer kind (1-255)."""
        return b"".join(self.seal_parts(kind, payload))

    def seal_parts(self, kind: int, payload: Payload,
                   scratch: bytearray | None = None) -> tuple[bytes, bytes | memoryview]:
        """One record as (header, ciphertext), to be sent one after the other. With scratch
        (at least len(payload) + TAG_LEN bytes), the ciphertext is a view of it, valid until
        scratch is used again: no new buffer per record (see RecordStream.send)."""
        if not 0 < kind < 256:
            raise ValueError("a record kind is 1..255 (0 is the final record)")
        return self._seal(kind, payload, scratch)

    def seal_final(self) -> bytes:
        record = b"".join(self.seal_final_parts())
        return record

    def seal_final_parts(self) -> tuple[bytes, bytes]:
        parts = self._seal(KIND_FINAL, b"")
        self.finished = True
        return parts

    def _seal(self, kind: int, payload: Payload,
              scratch: bytearray | None = None) -> tuple[bytes, bytes | memoryview]:
        if self.finished:
            raise RecordError("no records may follow the final record")
        if len(payload) > self.max_payload:
            raise RecordError(f"record payload over {self.max_payload} bytes")
        if self._counter >= _MAX_COUNTER:
            raise RecordError("record counter exhausted")
        header = HEADER.pack(len(payload) + TAG_LEN, kind)
        nonce = self._prefix + _COUNTER.pack(self._counter)
        self._counter += 1
        size = len(payload) + TAG_LEN
        if scratch is not None and len(scratch) >= size:
            ciphertext = memoryview(scratch)[:size]
            self._aead.encrypt_into(nonce, payload, header, ciphertext)
            return header, ciphertext
        return header, self._aead.encrypt(nonce, payload, header)


class RecordOpener:
    """Opens one direction's records from arbitrary slices of the byte stream."""

    def __init__(self, key: bytes, direction: int,
                 max_payload: int = DEFAULT_MAX_PAYLOAD) -> None:
        _check(key, direction, max_payload)
        self._aead = AESGCM(key)
        self._prefix = _nonce_prefix(direction)
        self._max_ciphertext = max_payload + TAG_LEN
        self._counter = 0
        self._chunks: deque[memoryview] = deque()
        self._buffered = 0
        self._header: bytes | None = None  # of the record being received
        self._length = 0
        self.finished = False
        self._record: bytearray | None = None  # read_socket's buffer, once used
        self._filled = 0
        # Where payloads are opened: by default a new bytes object per record, which
        # cryptography zero-fills first; the recipient of a file lends page-aligned
        # buffers instead, written to the disk as they are (live/file_io.AlignedBuffers).
        self.allocate: Allocator | None = None

    def feed(self, data: bytes) -> list[Record]:
        """The records completed by data. RecordError on any tampering, an oversized
        record, or bytes after the final record. Buffers at most one record."""
        if self.finished:
            if data:
                raise RecordError("data after the final record")
            return []
        if data:
            self._chunks.append(memoryview(data))
            self._buffered += len(data)
        records = []
        while True:
            if self._header is None:
                if self._buffered < HEADER.size:
                    break
                self._check_header(bytes(self._take(HEADER.size)))
            if self._buffered < self._length:
                break
            header, self._header = self._header, None
            assert header is not None
            record = self._open(header, self._take(self._length))
            if record is None:
                if self._buffered:
                    raise RecordError("data after the final record")
                break
            records.append(record)
        return records

    def read_socket(self, sock: Any) -> list[Record] | None:
        """Read from sock (non-blocking) straight into this opener's record buffer and open
        the records completed; None at the end of the stream. Each read stops at the end of
        the record being received plus the next header, so a record is never joined from
        pieces nor moved, and no buffer is allocated per read (Twisted's own reads allocate
        up to 4 MiB each time). OSError (BlockingIOError: nothing to read) as recv_into."""
        if self._buffered:  # bytes fed before (the staple's early bytes): finish them first
            return self.feed(sock.recv(HEADER.size + self._max_ciphertext))
        if self._record is None:
            self._record = bytearray(2 * HEADER.size + self._max_ciphertext)
            if self._header is not None:  # fed its header already
                self._record[:HEADER.size] = self._header
                self._filled = HEADER.size
        end = HEADER.size if self._header is None else 2 * HEADER.size + self._length
        with memoryview(self._record) as whole:
            count = sock.recv_into(whole[self._filled:end])
            if not count:
                return None
            if self.finished:
                raise RecordError("data after the final record")
            self._filled += count
            records = []
            while True:
                if self._header is None:
                    if self._filled < HEADER.size:
                        break
                    self._check_header(bytes(whole[:HEADER.size]))
                end = HEADER.size + self._length
                if self._filled < end:
                    break
                header, self._header = self._header, None
                assert header is not None
                record = self._open(header, whole[HEADER.size:end])
                rest = self._filled - end  # at most the next header
                whole[:rest] = whole[end:self._filled]
                self._filled = rest
                if record is None:
                    if rest:
                        raise RecordError("data after the final record")
                    break
                records.append(record)
        return records

    def _check_header(self, header: bytes) -> None:
        length, kind = HEADER.unpack(header)
        if not TAG_LEN <= length <= self._max_ciphertext \
                or (kind == KIND_FINAL and length != TAG_LEN):
            raise RecordError(f"record length {length} out of bounds")
        self._header, self._length = header, length

    def _open(self, header: bytes, ciphertext: Payload) -> Record | None:
        """The record's payload; None (and finished) for the final record."""
        nonce = self._prefix + _COUNTER.pack(self._counter)
        kind = header[-1]
        into = None
        if self.allocate is not None and kind != KIND_FINAL:
            into = self.allocate(kind, len(ciphertext) - TAG_LEN)
        try:
            if into is None:
                payload: bytes | memoryview = self._aead.decrypt(nonce, ciphertext, header)
            else:
                self._aead.decrypt_into(nonce, ciphertext, header, into)
                payload = into
        except InvalidTag:
            raise RecordError("a record failed authentication (tampered, reordered, "
                              "replayed or wrong key)") from None
        self._counter += 1
        if kind == KIND_FINAL:
            self.finished = True
            return None
        return Record(kind, payload)

    def _take(self, count: int) -> memoryview | bytes:
        """The next count buffered bytes: a view when they lie in one chunk, else joined."""
        self._buffered -= count
        first = self._chunks[0]
        if len(first) > count:
            self._chunks[0] = first[count:]
            return first[:count]
        if len(first) == count:
            return self._chunks.popleft()
        parts = []
        while count:
            chunk = self._chunks[0]
            if len(chunk) <= count:
                parts.append(self._chunks.popleft())
                count -= len(chunk)
            else:
                parts.append(chunk[:count])
                self._chunks[0] = chunk[count:]
                count = 0
        return b"".join(parts)

    def end_of_stream(self) -> None:
        """The transport closed: fine after the final record, truncation otherwise."""
        if not self.finished:
            raise RecordError("the stream ended before its final record (truncated)")


@implementer(IPushProducer)
class RecordStream(Protocol):
    """Records over a Twisted transport. `receive()` returns the next record (None after the
    peer's final record); `send()` waits while the transport's buffer is full; `finish()`
    sends the final record. At most `max_queued` opened records wait for a reader before the
    transport is paused, so a fast peer cannot fill memory."""

    def __init__(self, *, send_key: bytes, send_direction: int, receive_key: bytes,
                 receive_direction: int, clock: IReactorTime,
                 max_payload: int = DEFAULT_MAX_PAYLOAD, read_timeout: float = 60.0,
                 write_timeout: float = 60.0,
                 max_queued: int = DEFAULT_MAX_QUEUED,
                 transport_buffer: int = TRANSPORT_BUFFER) -> None:
        self.transport_buffer = transport_buffer
        self.sealer = RecordSealer(send_key, send_direction, max_payload)
        self.opener = RecordOpener(receive_key, receive_direction, max_payload)
        self.clock = clock
        self.read_timeout = read_timeout
        self.write_timeout = write_timeout
        self.max_queued = max_queued
        self._queue: deque[Record | None] = deque()  # None marks the peer's final record
        self._reader: Deferred[Record | None] | None = None
        self._failure: Failure | None = None
        self._reading_paused = False
        self._writing_paused = False
        self._drained: list[Deferred[None]] = []
        self.connected_d: Deferred[None] = Deferred()
        self.closed_d: Deferred[None] = Deferred()
        self._closed = False
        self._direct = False  # records go straight to the socket (see _send_directly)
        # Every record is sealed into this one buffer: it is sent (or copied into the
        # transport's buffer) before the next record is sealed. A new 1 MiB ciphertext per
        # record cost the sender about 0.2 CPU-s per GiB more (cache misses, page faults).
        self._scratch = bytearray(max_payload + TAG_LEN)

    # ---- connection --------------------------------------------------------------------------

    def connectionMade(self) -> None:
        _widen_transport(self.transport, self.transport_buffer)
        self._direct = _direct_writes(self.transport)
        if self._direct:
            # The reactor calls this instead of the transport's own doRead (an instance
            # attribute shadows the method): see RecordOpener.read_socket.
            self.transport.doRead = self._read_socket
        self.transport.registerProducer(self, True)
        if not self.connected_d.called:
            self.connected_d.callback(None)

    def dataReceived(self, data: bytes) -> None:
        if self._failure is not None:
            return
        try:
            payloads = self.opener.feed(data)
        except RecordError:
            self._fail(Failure())
            self.transport.abortConnection()
            return
        self._opened(payloads)

    def _read_socket(self) -> Any:
        """The transport's doRead for a plain TCP connection: what it returns is what
        Twisted's doRead would (None, or why the connection ends)."""
        for attempt in range(READS_PER_WAKEUP):
            if self._failure is not None:
                return None
            # The first read is always made: after the final record it reads the peer's
            # close (or refuses bytes after it); left unread, a readable socket would
            # wake the reactor again at once, for ever. Further reads stop where more
            # records could not be taken.
            if attempt and (self._reading_paused or self.transport.disconnecting
                            or self.opener.finished):
                return None
            try:
                payloads = self.opener.read_socket(self.transport.socket)
            except (BlockingIOError, InterruptedError):
                return None
            except OSError:
                return main.CONNECTION_LOST
            except RecordError:
                self._fail(Failure())
                self.transport.abortConnection()
                return None
            if payloads is None:
                return main.CONNECTION_DONE
            self._opened(payloads)
            if not payloads:
                return None  # a record is still arriving: the socket was likely drained
        return None

    def _opened(self, payloads: list[Record]) -> None:
        self._queue.extend(payloads)
        if self.opener.finished:
            self._queue.append(None)
        self._deliver()
        if len(self._queue) >= self.max_queued and not self._reading_paused:
            self._reading_paused = True
            self.transport.pauseProducing()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._closed = True
        if self._failure is None and not self.opener.finished:
            try:
                self.opener.end_of_stream()
            except RecordError:
                self._fail(Failure())
        for waiter in self._drained:
            waiter.errback(RecordError("the connection closed while sending"))
        self._drained = []
        self._deliver()
        if not self.closed_d.called:
            self.closed_d.callback(None)

    def _fail(self, failure: Failure) -> None:
        if self._failure is None:
            self._failure = failure
            self._deliver()

    # ---- reading ---------------------------------------------------------------------------

    def _deliver(self) -> None:
        reader = self._reader
        if reader is None:
            return
        if self._queue:
            self._reader = None
            reader.callback(self._queue.popleft())
            self._maybe_resume_reading()
        elif self._failure is not None:
            self._reader = None
            reader.errback(self._failure)

    def _maybe_resume_reading(self) -> None:
        if self._reading_paused and len(self._queue) < self.max_queued // 2 \
                and not self._closed:
            self._reading_paused = False
            self.transport.resumeProducing()

    async def receive(self) -> Record | None:
        """The next record; None once the peer sent its final record. RecordError on
        tampering, truncation or the read timeout."""
        if self._reader is not None:
            raise RuntimeError("receive() is already waiting")
        if self._queue:
            item = self._queue.popleft()
            self._maybe_resume_reading()
            if item is None:
                self._queue.appendleft(None)  # the end stays the end for later calls
            return item
        if self._failure is not None:
            self._failure.raiseException()
        reader: Deferred[Record | None] = Deferred()
        self._reader = reader

        def timed_out(_result: Any, _timeout: float) -> None:
            raise RecordTimeout(f"no data from the peer for {self.read_timeout:g} s")

        reader.addTimeout(self.read_timeout, self.clock, onTimeoutCancel=timed_out)
        try:
            item = await reader
        finally:
            if self._reader is reader:
                self._reader = None
        if item is None:
            self._queue.appendleft(None)
        return item

    def open_into(self, allocate: Allocator | None) -> None:
        """From the next record read on, open each record's payload into the view that
        allocate(kind, size) returns (None: a new bytes object, as by default)."""
        self.opener.allocate = allocate

    # ---- writing ---------------------------------------------------------------------------

    async def send(self, kind: int, payload: Payload) -> None:
        """Seal and send one record; waits while the transport's buffer is full."""
        await self._write(*self.sealer.seal_parts(kind, payload, self._scratch))

    async def finish(self) -> None:
        """Send the final record: nothing more will be sent in this direction."""
        await self._write(*self.sealer.seal_final_parts())

    async def _write(self, header: bytes, ciphertext: bytes | memoryview) -> None:
        """Send one record; ciphertext may be a view of the scratch buffer: it is sent or
        copied before this waits for anything."""
        if self._closed:
            raise RecordError("the connection is closed")
        if not self._send_directly(header, ciphertext):
            self.transport.write(header + ciphertext)
        if self._writing_paused:
            waiter: Deferred[None] = Deferred()
            self._drained.append(waiter)

            def timed_out(_result: Any, _timeout: float) -> None:
                raise RecordTimeout(f"the peer took nothing for {self.write_timeout:g} s")

            waiter.addTimeout(self.write_timeout, self.clock, onTimeoutCancel=timed_out)
            try:
                await waiter
            finally:
                if waiter in self._drained:
                    self._drained.remove(waiter)

    def _send_directly(self, header: bytes, ciphertext: bytes | memoryview) -> bool:
        """Send a record straight to the TCP socket, header and ciphertext gathered by one
        sendmsg(), when the transport has nothing queued: Twisted's write() would copy
        each record once or twice more into its buffer (about a third of the sender's
        CPU beyond the crypto). What the socket does not take goes to the transport, and
        we wait until it drained before sending again, so the order holds. False when
        this transport cannot be written to directly (the caller writes as usual)."""
        transport = self.transport
        if not self._direct or transport.disconnecting or transport._tempDataLen \
                or len(transport.dataBuffer) > transport.offset:
            return False
        total = len(header) + len(ciphertext)
        try:
            sent = transport.socket.sendmsg([header, ciphertext])
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            return False  # the transport meets the error its own way
        if sent < total:
            rest = bytes(ciphertext[sent - len(header):]) if sent >= len(header) \
                else (header + ciphertext)[sent:]
            transport.write(rest)
            # Twisted resumes a paused producer once its buffer is empty: the signal
            # to send directly again.
            transport.producerPaused = True
            self._writing_paused = True
        return True

    def close(self) -> None:
        if not self._closed:
            self.transport.loseConnection()

    # ---- IPushProducer (the transport tells us when its send buffer is full) -------------

    def pauseProducing(self) -> None:
        self._writing_paused = True

    def resumeProducing(self) -> None:
        self._writing_paused = False
        waiters, self._drained = self._drained, []
        for waiter in waiters:
            waiter.callback(None)

    def stopProducing(self) -> None:
        self._writing_paused = False


def _widen_transport(transport: Any, size: int) -> None:
    """Let a TCP transport (twisted.internet.abstract.FileDescriptor) read and send up to
    size bytes per call and buffer size bytes before pausing its producer; other transports
    (TLS, tests' fakes) are left as they are."""
    if isinstance(getattr(transport, "bufferSize", None), int) \
            and isinstance(getattr(transport, "SEND_LIMIT", None), int):
        transport.bufferSize = max(transport.bufferSize, size)
        transport.SEND_LIMIT = max(transport.SEND_LIMIT, size)


def _direct_writes(transport: Any) -> bool:
    """Whether _send_directly may write to this transport's socket: a plain Twisted TCP
    connection (not TLS, not a test's fake) whose buffer it can see."""
    return isinstance(transport, tcp.Connection) and transport.TLS is False \
        and hasattr(transport.socket, "sendmsg") \
        and all(hasattr(transport, name) for name in
                ("dataBuffer", "offset", "_tempDataLen", "producerPaused", "disconnecting"))


def directions_for(role: str) -> tuple[int, int]:
    """(send_direction, receive_direction) for "sender" or "recipient" (the PAKE roles)."""
    if role == "sender":
        return SENDER_TO_RECIPIENT, RECIPIENT_TO_SENDER
    if role == "recipient":
        return RECIPIENT_TO_SENDER, SENDER_TO_RECIPIENT
    raise ValueError("role must be sender or recipient")
