"""Encrypted records: the codec under tampering, and streams over loopback TCP."""

from __future__ import annotations

import os

import pytest
import pytest_twisted
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred

from relay.client.errors import RecordError
from relay.client.live.records import (
    HEADER,
    KIND_FINAL,
    RECIPIENT_TO_SENDER,
    SENDER_TO_RECIPIENT,
    TAG_LEN,
    Record,
    RecordOpener,
    RecordSealer,
    RecordTimeout,
)
from tests.client.streams import loopback_streams

KEY = bytes(range(32))
DATA = 7  # any upper-layer kind


def pair(max_payload: int = 1024):
    return (RecordSealer(KEY, SENDER_TO_RECIPIENT, max_payload),
            RecordOpener(KEY, SENDER_TO_RECIPIENT, max_payload))


def test_round_trip_and_final():
    sealer, opener = pair()
    wire = sealer.seal(DATA, b"one") + sealer.seal(9, b"") + sealer.seal(DATA, b"three") \
        + sealer.seal_final()
    assert opener.feed(wire) == [(DATA, b"one"), (9, b""), (DATA, b"three")]
    assert opener.finished
    opener.end_of_stream()
    with pytest.raises(RecordError):
        sealer.seal(DATA, b"after the end")
    with pytest.raises(ValueError):
        RecordSealer(KEY, SENDER_TO_RECIPIENT).seal(KIND_FINAL, b"")  # only seal_final


def test_the_kind_is_authenticated():
    wire = bytearray(RecordSealer(KEY, SENDER_TO_RECIPIENT).seal(DATA, b"payload"))
    wire[HEADER.size - 1] = DATA + 1
    with pytest.raises(RecordError, match="authentication"):
        RecordOpener(KEY, SENDER_TO_RECIPIENT).feed(bytes(wire))


def test_a_final_record_with_a_body_is_refused_from_the_header():
    with pytest.raises(RecordError, match="out of bounds"):
        RecordOpener(KEY, SENDER_TO_RECIPIENT).feed(HEADER.pack(TAG_LEN + 1, KIND_FINAL))


def test_records_of_the_largest_size_pass_in_small_and_big_slices():
    sealer, opener = pair(max_payload=1024 * 1024)
    blob = os.urandom(1024 * 1024)
    wire = sealer.seal(DATA, blob) + sealer.seal(DATA, blob[:5]) + sealer.seal_final()
    got = []
    for start in range(0, len(wire), 65536):
        got += opener.feed(wire[start:start + 65536])
    assert got == [(DATA, blob), (DATA, blob[:5])] and opener.finished


def records(*payloads: bytes) -> list[bytes]:
    sealer = RecordSealer(KEY, SENDER_TO_RECIPIENT, 1024)
    return [sealer.seal(DATA, p) for p in payloads] + [sealer.seal_final()]


@pytest.mark.parametrize("arrange", [
    lambda r: [r[1], r[0], r[2], r[3]],  # reordered
    lambda r: [r[0], r[0], r[1], r[2], r[3]],  # replayed
    lambda r: [r[0], r[2], r[3]],  # dropped
    lambda r: [r[0], r[1], r[3] + r[2]],  # data after final
])
def test_reorder_replay_drop_and_trailing_data_are_detected(arrange):
    opener = RecordOpener(KEY, SENDER_TO_RECIPIENT, 1024)
    with pytest.raises(RecordError):
        for record in arrange(records(b"a", b"b", b"c")):
            opener.feed(record)


def test_truncation_is_detected():
    opener = RecordOpener(KEY, SENDER_TO_RECIPIENT, 1024)
    opener.feed(b"".join(records(b"a", b"b")[:2]))
    with pytest.raises(RecordError, match="truncated"):
        opener.end_of_stream()


def test_reflected_records_and_wrong_keys_fail():
    sealer = RecordSealer(KEY, RECIPIENT_TO_SENDER)
    with pytest.raises(RecordError):
        RecordOpener(KEY, SENDER_TO_RECIPIENT).feed(sealer.seal(DATA, b"mirror"))
    with pytest.raises(RecordError):
        RecordOpener(os.urandom(32), SENDER_TO_RECIPIENT).feed(records(b"x")[0])


def test_oversized_records_are_refused_from_the_header():
    sealer = RecordSealer(KEY, SENDER_TO_RECIPIENT, 4096)
    with pytest.raises(RecordError):
        sealer.seal(DATA, bytes(4097))
    opener = RecordOpener(KEY, SENDER_TO_RECIPIENT, 1024)
    with pytest.raises(RecordError, match="out of bounds"):
        opener.feed(HEADER.pack(10 ** 9, DATA))  # refused before a byte of body is buffered
    with pytest.raises(RecordError, match="out of bounds"):
        RecordOpener(KEY, SENDER_TO_RECIPIENT).feed(HEADER.pack(3, DATA) + b"abc")


@given(st.lists(st.binary(max_size=300), max_size=8), st.data())
def test_any_split_of_the_stream_gives_the_same_records(payloads, data):
    wire = b"".join(records(*payloads))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=10)))
    opener = RecordOpener(KEY, SENDER_TO_RECIPIENT, 1024)
    got = []
    for start, end in zip([0] + cuts, cuts + [len(wire)], strict=True):
        got += opener.feed(wire[start:end])
    assert got == [Record(DATA, p) for p in payloads] and opener.finished


@settings(max_examples=200)
@given(st.lists(st.binary(min_size=1, max_size=50), min_size=1, max_size=4), st.data())
def test_a_mutated_stream_never_yields_wrong_data(payloads, data):
    wire = bytearray(b"".join(records(*payloads)))
    position = data.draw(st.integers(0, len(wire) - 1))
    wire[position] ^= data.draw(st.integers(1, 255))
    opener = RecordOpener(KEY, SENDER_TO_RECIPIENT, 1024)
    got = []
    try:
        got = opener.feed(bytes(wire))
        opener.end_of_stream()
    except RecordError:
        pass
    else:
        pytest.fail("a mutated stream was accepted")
    assert got == [Record(DATA, p) for p in payloads][:len(got)]


@pytest_twisted.ensureDeferred
async def test_streams_over_loopback_carry_megabytes_both_ways():
    async with loopback_streams(max_payload=64 * 1024) as (sender, recipient):
        blob = os.urandom(64 * 1024)
        count = 80  # 5 MiB: more than the socket buffers, so backpressure is exercised

        async def send_all():
            for _ in range(count):
                await sender.send(DATA, blob)
            await sender.finish()

        sending = Deferred.fromCoroutine(send_all())
        received = 0
        while (item := await recipient.receive()) is not None:
            assert item == (DATA, blob)
            received += 1
        await sending
        assert received == count
        assert await recipient.receive() is None  # the end stays the end
        await recipient.send(DATA, b"thanks")
        await recipient.finish()
        assert await sender.receive() == (DATA, b"thanks")
        assert await sender.receive() is None


@pytest_twisted.ensureDeferred
async def test_a_connection_cut_before_the_final_record_is_truncation():
    async with loopback_streams() as (sender, recipient):
        await sender.send(DATA, b"partial")
        sender.transport.loseConnection()
        assert await recipient.receive() == (DATA, b"partial")
        with pytest.raises(RecordError, match="truncated"):
            await recipient.receive()


@pytest_twisted.ensureDeferred
async def test_tampered_bytes_on_the_wire_abort_the_stream():
    async with loopback_streams() as (sender, recipient):
        sender.transport.write(HEADER.pack(32, DATA) + bytes(32))
        with pytest.raises(RecordError, match="authentication"):
            await recipient.receive()


@pytest_twisted.ensureDeferred
async def test_a_silent_peer_times_out():
    async with loopback_streams(read_timeout=0.2) as (_sender, recipient):
        with pytest.raises(RecordTimeout):
            await recipient.receive()


@pytest_twisted.ensureDeferred
async def test_a_peer_that_never_reads_stalls_the_writer_until_the_timeout():
    async with loopback_streams(max_payload=64 * 1024, write_timeout=0.5) as (sender, _r):
        with pytest.raises(RecordTimeout, match="took nothing"):
            for _ in range(1000):  # 64 MiB: far more than socket buffers and the queue
                await sender.send(DATA, bytes(64 * 1024))


def _read_all(opener: RecordOpener, sock) -> list[Record]:
    opened = []
    while (records := opener.read_socket(sock)) is not None:
        opened += records
        if opener.finished:
            break
    return opened


def test_read_socket_opens_records_read_straight_from_a_socket():
    import socket

    sealer, opener = pair(max_payload=64 * 1024)
    payloads = [os.urandom(n) for n in (0, 1, 5, 64 * 1024, 4000, 64 * 1024 - 1)]
    wire = b"".join(sealer.seal(DATA, p) for p in payloads) + sealer.seal_final()
    ours, theirs = socket.socketpair()
    with ours, theirs:
        # The first bytes fed (as the staple's early bytes are), cut inside a header.
        early = opener.feed(wire[:HEADER.size + 3])
        theirs.sendall(wire[HEADER.size + 3:])
        theirs.shutdown(socket.SHUT_WR)
        opened = early + _read_all(opener, ours)
    assert [bytes(r.payload) for r in opened] == payloads
    assert opener.finished


def test_read_socket_refuses_data_after_the_final_record():
    import socket

    sealer, opener = pair()
    ours, theirs = socket.socketpair()
    with ours, theirs:
        theirs.sendall(sealer.seal(DATA, b"x") + sealer.seal_final() + b"more")
        theirs.shutdown(socket.SHUT_WR)
        with pytest.raises(RecordError, match="after the final record"):
            _read_all(opener, ours)
            opener.read_socket(ours)


def test_payloads_open_into_the_views_the_allocator_lends():
    import socket

    sealer, opener = pair(max_payload=64 * 1024)
    lent = []

    def allocate(kind: int, size: int) -> memoryview | None:
        if kind != DATA or size < 100:
            return None  # a new bytes object, as by default
        view = memoryview(bytearray(size + 7))[:size]
        lent.append(view)
        return view

    opener.allocate = allocate
    payloads = [(DATA, os.urandom(64 * 1024)), (9, b"{}" * 80), (DATA, b"short"),
                (DATA, os.urandom(1000))]
    wire = b"".join(sealer.seal(kind, p) for kind, p in payloads) + sealer.seal_final()
    ours, theirs = socket.socketpair()
    with ours, theirs:
        theirs.sendall(wire)
        theirs.shutdown(socket.SHUT_WR)
        opened = _read_all(opener, ours)
    assert [(r.kind, bytes(r.payload)) for r in opened] == payloads
    assert [r.payload for r in opened if isinstance(r.payload, memoryview)] == lent
    assert len(lent) == 2 and all(isinstance(r.payload, bytes) for r in opened[1:3])


def test_a_tampered_record_opened_into_a_lent_view_still_fails():
    sealer, opener = pair()
    opener.allocate = lambda kind, size: memoryview(bytearray(size))
    wire = bytearray(sealer.seal(DATA, b"x" * 500))
    wire[-1] ^= 1
    with pytest.raises(RecordError, match="authentication"):
        opener.feed(bytes(wire))


@pytest_twisted.ensureDeferred
async def test_records_arriving_together_stay_within_the_queue_bound():
    # Several records are read per wake-up of the reactor, but never past max_queued.
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    async with loopback_streams(max_queued=3) as (sender, recipient):
        for number in range(40):
            await sender.send(DATA, bytes([number]) * 1000)
        await sender.finish()
        most = 0
        for _ in range(20):  # the records arrive while nobody reads them
            await deferLater(reactor, 0.01)
            most = max(most, len(recipient._queue))
        assert 0 < most <= 3
        got = []
        while (item := await recipient.receive()) is not None:
            got.append(item)
        assert got == [(DATA, bytes([n]) * 1000) for n in range(40)]


@pytest_twisted.ensureDeferred
async def test_the_peers_close_after_its_final_record_is_read_at_once():
    # After the final record the socket is still read: the peer's close ends the connection
    # at once (it was left unread, so the reactor spun on a readable socket until our side
    # closed), and bytes after the final record are still refused.
    from twisted.internet import reactor

    async with loopback_streams() as (sender, recipient):
        reads = 0
        read_socket = recipient.transport.doRead

        def counted():
            nonlocal reads
            reads += 1
            return read_socket()

        recipient.transport.doRead = counted
        await sender.send(DATA, b"last")
        await sender.finish()
        sender.transport.loseConnection()
        assert await recipient.receive() == (DATA, b"last")
        assert await recipient.receive() is None
        await recipient.closed_d.addTimeout(5, reactor)
        assert reads < 20, reads
