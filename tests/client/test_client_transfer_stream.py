"""Stream entries (stdin) in the live transfer protocol: sizes unknown, data as it is read,
the end and the SHA-256 in-band; the recipient's caps, cut streams, wrong hashes, and
writing to an output stream (--stdout) as the records arrive."""

from __future__ import annotations

import hashlib
import io
import json
import os
import threading
import time

import pytest
import pytest_twisted
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater

from relay.client.errors import OutputClosed, StreamCapExceeded, TransferError, VerificationError
from relay.client.live import receive as receive_end
from relay.client.live import send as send_end
from relay.client.live.file_io import BackgroundHash, FileWorkers, StreamReadAhead
from relay.client.live.protocol import (
    KIND_DATA,
    KIND_JSON,
    UNKNOWN_TOTAL,
    SourceEntry,
    collect_sources,
    partial_path,
)
from relay.client.live.receive import receive_files
from relay.client.live.send import send_files
from relay.client.safe_paths import ReceiveLimits
from tests.client.test_client_transfer import run_pair


class Sink(io.RawIOBase):
    """A binary output that records what was written and when it was flushed."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.lock = threading.Lock()

    def writable(self) -> bool:
        return True

    def write(self, block) -> int:
        with self.lock:
            self.data += block
        return len(block)

    def size(self) -> int:
        with self.lock:
            return len(self.data)


def stream_entry(data: bytes, name: str = "stdin") -> SourceEntry:
    return SourceEntry.of_stream(name, io.BytesIO(data))


async def send_json(stream, message) -> None:
    await stream.send(KIND_JSON, json.dumps(message).encode())


async def raw_stream_sender(stream, blocks, end, entries=None, before_cut=None, finish=False):
    """Offer one stream entry, send blocks as data, then `end` (a dict, or None to cut the
    connection, after awaiting before_cut() if given); the recipient's last JSON reply."""
    entries = entries or [{"name": "s", "dir": False, "size": None, "stream": True,
                           "mode": 0o644}]
    await send_json(stream, {"type": "offer", "version": 1, "entries": entries})
    reply = json.loads((await stream.receive()).payload)
    if reply["type"] != "accept":
        return reply
    await send_json(stream, {"type": "file", "index": 0, "offset": 0})
    for block in blocks:
        await stream.send(KIND_DATA, block)
    if end is None:
        if before_cut is not None:
            await before_cut()
        stream.transport.abortConnection()
        return None
    await send_json(stream, {"type": "end", "index": 0, **end})
    await send_json(stream, {"type": "done"})
    if finish:
        await stream.finish()
    record = await stream.receive()
    return json.loads(record.payload)


# ---- whole transfers ------------------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_a_stream_of_unknown_size_arrives_intact_beside_a_file(tmp_path):
    data = os.urandom(300_000)
    other = tmp_path / "note.txt"
    other.write_text("a file too")
    out = tmp_path / "out"
    out.mkdir()
    offered, progress = [], []

    def confirm(entries, _text):
        offered.extend(entries)
        return True

    received, sent = await run_pair(
        lambda s: send_files(s, [*collect_sources([other]), stream_entry(data, "piped.bin")],
                             chunk_size=64 * 1024),
        lambda r: receive_files(r, out, confirm_offer=confirm,
                                progress=lambda n, d, t: progress.append((d, t))))
    assert sent is None, sent
    assert (out / "piped.bin").read_bytes() == data
    assert (out / "note.txt").read_text() == "a file too"
    assert offered == [("note.txt", False, 10), ("piped.bin", False, None)]
    assert received.bytes_received == len(data) + 10
    assert {total for _, total in progress} == {UNKNOWN_TOTAL}
    assert not partial_path(out / "piped.bin").exists()


@pytest_twisted.ensureDeferred
async def test_the_offer_states_no_size_for_a_stream(tmp_path):
    async def look(recipient):
        record = await recipient.receive()
        offer = json.loads(record.payload)
        await send_json(recipient, {"type": "refuse", "reason": "just looking"})
        return offer

    offer, sent = await run_pair(lambda s: send_files(s, [stream_entry(b"x")]), look)
    assert offer["entries"] == [{"name": "stdin", "dir": False, "size": None,
                                 "stream": True, "mode": 0o644}]
    assert isinstance(sent, TransferError) and "just looking" in str(sent)


@pytest_twisted.ensureDeferred
async def test_an_empty_stream_is_an_empty_file(tmp_path):
    received, sent = await run_pair(lambda s: send_files(s, [stream_entry(b"")]),
                                    lambda r: receive_files(r, tmp_path))
    assert sent is None and (tmp_path / "stdin").read_bytes() == b""


@pytest_twisted.ensureDeferred
async def test_a_stream_is_never_resumed_and_replaces_a_stale_partial(tmp_path):
    partial_path(tmp_path / "stdin").write_bytes(b"old bytes from before")
    received, sent = await run_pair(lambda s: send_files(s, [stream_entry(b"fresh")]),
                                    lambda r: receive_files(r, tmp_path))
    assert sent is None and received.bytes_received == 5
    assert (tmp_path / "stdin").read_bytes() == b"fresh"


@pytest_twisted.ensureDeferred
async def test_only_one_stream_per_transfer():
    async def nothing(_recipient):
        return None

    _, sent = await run_pair(
        lambda s: send_files(s, [stream_entry(b"a", "a"), stream_entry(b"b", "b")]), nothing)
    assert isinstance(sent, TransferError) and "one stream" in str(sent)


@pytest.mark.parametrize("entries, complaint", [
    ([{"name": "a", "dir": False, "size": None, "stream": True, "mode": 0o644},
      {"name": "b", "dir": False, "size": None, "stream": True, "mode": 0o644}],
     "more than one stream"),
    ([{"name": "a", "dir": False, "size": 5, "stream": True, "mode": 0o644}], "no stated size"),
    ([{"name": "a", "dir": True, "size": None, "stream": True, "mode": 0o755}], "no stated size"),
    ([{"name": "a", "dir": False, "size": None, "mode": 0o644}], "bad size"),
    ([{"name": "a", "dir": False, "size": None, "stream": "yes", "mode": 0o644}],
     "bad offer entry"),
])
@pytest_twisted.ensureDeferred
async def test_malformed_stream_entries_are_refused(tmp_path, entries, complaint):
    received, reply = await run_pair(lambda s: raw_stream_sender(s, [], {}, entries),
                                     lambda r: receive_files(r, tmp_path))
    assert reply["type"] in ("error", "refuse") and complaint in reply["reason"]
    assert complaint in str(received)
    assert os.listdir(tmp_path) == []


# ---- the recipient's checks -------------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_a_streams_bytes_are_verified_by_the_records_not_by_a_stated_hash(tmp_path):
    # The recipient says it needs no whole-file hash for what is sent from offset 0: the
    # authenticated records are the check, so a sender's odd sha256 changes nothing.
    data = b"stream data" * 1000
    received, reply = await run_pair(
        lambda s: raw_stream_sender(s, [data], {"size": len(data), "sha256": "0" * 64},
                                    finish=True),
        lambda r: receive_files(r, tmp_path))
    assert reply["type"] == "ok" and received.bytes_received == len(data)
    assert (tmp_path / "s").read_bytes() == data


@pytest_twisted.ensureDeferred
async def test_a_wrong_stated_size_fails_verification(tmp_path):
    data = b"stream data"
    right = hashlib.sha256(data).hexdigest()
    received, reply = await run_pair(
        lambda s: raw_stream_sender(s, [data], {"size": len(data) + 1, "sha256": right}),
        lambda r: receive_files(r, tmp_path))
    assert isinstance(received, VerificationError)
    assert os.listdir(tmp_path) == []


@pytest_twisted.ensureDeferred
async def test_a_cut_stream_leaves_no_partial(tmp_path):
    received, _ = await run_pair(lambda s: raw_stream_sender(s, [b"x" * 50_000] * 4, None),
                                 lambda r: receive_files(r, tmp_path))
    assert received is not None and not isinstance(received, VerificationError)
    assert os.listdir(tmp_path) == []


@pytest_twisted.ensureDeferred
async def test_the_total_cap_stops_an_endless_stream(tmp_path):
    known = tmp_path / "known.bin"
    known.write_bytes(b"k" * 600)
    out = tmp_path / "out"
    out.mkdir()
    endless = SourceEntry.of_stream("endless", io.BytesIO(b"e" * 100_000))
    received, sent = await run_pair(
        lambda s: send_files(s, [*collect_sources([known]), endless], chunk_size=100),
        lambda r: receive_files(r, out, limits=ReceiveLimits(max_total_bytes=1000)))
    assert isinstance(received, StreamCapExceeded) and "1000" not in str(received)
    assert "400 bytes" in str(received)  # what the cap leaves after the known file
    # The sender, cut off mid-send, reports the recipient's reason.
    assert isinstance(sent, TransferError) and "cap of 400 bytes" in str(sent)
    assert not (out / "endless").exists() and not partial_path(out / "endless").exists()


@pytest_twisted.ensureDeferred
async def test_the_file_cap_applies_to_a_stream(tmp_path):
    received, sent = await run_pair(
        lambda s: send_files(s, [stream_entry(b"z" * 5000)], chunk_size=1000),
        lambda r: receive_files(r, tmp_path, limits=ReceiveLimits(max_file_bytes=4000)))
    assert isinstance(received, StreamCapExceeded) and isinstance(sent, TransferError)
    assert os.listdir(tmp_path) == []


# ---- to an output stream (--stdout) ----------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_output_gets_the_bytes_before_the_sender_has_read_them_all(tmp_path):
    read_end, write_end = os.pipe()
    reader = open(read_end, "rb")
    sink = Sink()
    first, rest = os.urandom(200_000), os.urandom(300_000)
    go_on = threading.Event()

    def produce():  # a thread: a pipe write blocks until the sender reads
        with open(write_end, "wb") as w:
            w.write(first)
            w.flush()
            if go_on.wait(10):
                w.write(rest)

    async def watch():
        deadline = time.monotonic() + 10
        while sink.size() < len(first):  # all of it out, and the sender still reading
            assert time.monotonic() < deadline, sink.size()
            await deferLater(reactor, 0.01)
        go_on.set()

    producer = threading.Thread(target=produce)
    producer.start()
    watching = Deferred.fromCoroutine(watch())
    try:
        received, sent = await run_pair(
            lambda s: send_files(s, [SourceEntry.of_stream("live.bin", reader)]),
            lambda r: receive_files(r, tmp_path, stdout=sink))
        await watching
    finally:
        go_on.set()
        producer.join()
        reader.close()
    assert sent is None, sent
    assert bytes(sink.data) == first + rest
    assert received.to_output == 1 and received.files == []
    assert os.listdir(tmp_path) == []


@pytest_twisted.ensureDeferred
async def test_a_sized_file_goes_to_output_too(tmp_path):
    source = tmp_path / "f.bin"
    source.write_bytes(os.urandom(100_000))
    sink = Sink()
    received, sent = await run_pair(
        lambda s: send_files(s, collect_sources([source]), chunk_size=10_000),
        lambda r: receive_files(r, tmp_path / "unused", stdout=sink))
    assert sent is None and bytes(sink.data) == source.read_bytes()


@pytest_twisted.ensureDeferred
async def test_output_takes_a_single_file_only(tmp_path):
    (tmp_path / "a").write_text("a")
    (tmp_path / "b").write_text("b")
    sink = Sink()
    received, sent = await run_pair(
        lambda s: send_files(s, collect_sources([tmp_path / "a", tmp_path / "b"])),
        lambda r: receive_files(r, tmp_path, stdout=sink))
    assert isinstance(received, TransferError) and "single file" in str(received)
    assert isinstance(sent, TransferError) and sink.data == b""


@pytest_twisted.ensureDeferred
async def test_a_wrong_size_on_output_says_the_bytes_are_out(tmp_path):
    data = b"already out" * 100
    sink = Sink()
    received, _ = await run_pair(
        lambda s: raw_stream_sender(s, [data], {"size": len(data) + 1}),
        lambda r: receive_files(r, tmp_path, stdout=sink))
    assert isinstance(received, VerificationError)
    assert "already written to stdout" in str(received)
    assert bytes(sink.data) == data


@pytest_twisted.ensureDeferred
async def test_a_cut_stream_on_output_is_a_verification_failure(tmp_path):
    sink = Sink()

    async def some_bytes_out():
        while sink.size() < 3000:
            await deferLater(reactor, 0.01)

    received, _ = await run_pair(
        lambda s: raw_stream_sender(s, [b"x" * 1000] * 3, None, before_cut=some_bytes_out),
        lambda r: receive_files(r, tmp_path, stdout=sink))
    assert isinstance(received, VerificationError) and "incomplete" in str(received)
    assert bytes(sink.data) == b"x" * 3000


@pytest_twisted.ensureDeferred
async def test_a_closed_output_is_a_clean_failure(tmp_path):
    read_end, write_end = os.pipe()
    os.close(read_end)
    out = open(write_end, "wb")
    try:
        received, sent = await run_pair(
            lambda s: send_files(s, [stream_entry(b"y" * 300_000)], chunk_size=10_000),
            lambda r: receive_files(r, tmp_path, stdout=out))
    finally:
        try:
            out.close()
        except BrokenPipeError:
            pass
    assert isinstance(received, OutputClosed) and "stdout was closed" in str(received)
    assert isinstance(sent, TransferError) and "stdout was closed" in str(sent)


@pytest_twisted.ensureDeferred
async def test_the_cap_on_output_is_not_a_verification_failure(tmp_path):
    sink = Sink()
    received, _ = await run_pair(
        lambda s: send_files(s, [stream_entry(b"z" * 5000)], chunk_size=1000),
        lambda r: receive_files(r, tmp_path, stdout=sink,
                                limits=ReceiveLimits(max_total_bytes=2500)))
    assert isinstance(received, StreamCapExceeded)
    assert len(sink.data) <= 2500


# ---- a silent producer ---------------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_keepalives_carry_a_silent_stream_past_the_read_timeout(tmp_path, monkeypatch):
    monkeypatch.setattr(send_end, "STREAM_KEEPALIVE", 0.1)
    read_end, write_end = os.pipe()
    reader = open(read_end, "rb")

    def produce():
        os.write(write_end, b"before ")
        time.sleep(1.2)  # far past the recipient's 0.5 s read timeout
        os.write(write_end, b"after")
        os.close(write_end)

    producer = threading.Thread(target=produce)
    producer.start()
    try:
        received, sent = await run_pair(
            lambda s: send_files(s, [SourceEntry.of_stream("slow", reader)]),
            lambda r: receive_files(r, tmp_path), read_timeout=0.5)
    finally:
        producer.join()
        reader.close()
    assert sent is None, sent
    assert (tmp_path / "slow").read_bytes() == b"before after"


# ---- StreamReadAhead -------------------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_stream_blocks_come_as_they_are_ready_and_end_at_eof():
    read_end, write_end = os.pipe()
    reader = open(read_end, "rb")
    workers = FileWorkers.start(reactor, "test")
    digest = hashlib.sha256()
    try:
        blocks = StreamReadAhead(workers.disk, reader, BackgroundHash(workers.hash, digest),
                                 1024 * 1024)
        os.write(write_end, b"first")
        assert await blocks.next() == b"first"  # not held back for a full block
        os.write(write_end, b"x" * 100_000)
        os.close(write_end)
        got = b""
        while (block := await blocks.next()) is not None:
            got += block
        assert got == b"x" * 100_000
        assert await blocks.next() is None
        await blocks.settle()
        assert await blocks.hash.hexdigest() == hashlib.sha256(b"first" + got).hexdigest()
    finally:
        workers.stop()
        reader.close()


# ---- the offer entry parser --------------------------------------------------------------------

_values = st.none() | st.booleans() | st.integers(-5, 10 ** 12) | st.text(max_size=8) \
    | st.lists(st.integers(), max_size=2)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(entry=st.dictionaries(st.sampled_from(["name", "dir", "size", "mode", "stream", "x"]),
                             _values))
def test_any_offer_entry_parses_or_is_a_protocol_error(entry):
    try:
        name, is_dir, size, is_stream = receive_end._entry_shape(entry)
    except TransferError:
        return
    assert isinstance(is_dir, bool) and isinstance(is_stream, bool)
    if is_stream:
        assert size is None and not is_dir
    else:
        assert size == (0 if is_dir else entry.get("size"))


@pytest_twisted.ensureDeferred
async def test_a_short_sized_file_on_output_is_a_verification_failure(tmp_path):
    sink = Sink()
    sized = [{"name": "f", "dir": False, "size": 10, "mode": 0o644}]
    received, _ = await run_pair(
        lambda s: raw_stream_sender(s, [b"12345"], {"sha256": "0" * 64}, sized),
        lambda r: receive_files(r, tmp_path, stdout=sink))
    assert isinstance(received, VerificationError) and "less data" in str(received)
    assert "already written to stdout" in str(received) and bytes(sink.data) == b"12345"
