"""The sending end of the live transfer protocol (see relay/client/live/protocol.py): offer
the entries, then send what the recipient accepts, reading files in worker threads."""

from __future__ import annotations

import hashlib
from typing import Any

from twisted.internet.defer import Deferred

from relay.client.errors import RecordError, RecordTimeout, TransferError
from relay.client.live.file_io import (
    NO_HASH,
    BackgroundHash,
    FileWorkers,
    ReadAhead,
    StreamReadAhead,
)
from relay.client.live.protocol import (
    _ENTRIES_PER_RECORD,
    _PEER_ERROR_WAIT,
    _READ_SIZE,
    DEFAULT_CHUNK_SIZE,
    KIND_DATA,
    MAX_TEXT,
    PROTOCOL_VERSION,
    SHA256_RESUMED_ONLY,
    STREAM_KEEPALIVE,
    UNKNOWN_TOTAL,
    Progress,
    RecordChannel,
    SourceEntry,
    decode,
    default_reactor,
    expect,
    int_field,
    send_json,
)
from relay.client.safe_paths import printable_name


async def send_files(channel: RecordChannel, entries: list[SourceEntry], *,
                     text: str | None = None, chunk_size: int = DEFAULT_CHUNK_SIZE,
                     progress: Progress | None = None, reactor: Any = None) -> None:
    """Offer entries (and/or a short text), send what the recipient accepts, wait for its ok."""
    if text is not None and len(text.encode("utf-8")) > MAX_TEXT:
        raise TransferError(f"the text is over {MAX_TEXT} bytes; send it as a file")
    if sum(e.is_stream for e in entries) > 1:
        raise TransferError("only one stream (stdin) can be sent at a time")
    wire_entries = [_wire_entry(e) for e in entries]
    batches = [wire_entries[i:i + _ENTRIES_PER_RECORD]
               for i in range(0, len(wire_entries), _ENTRIES_PER_RECORD)] or [[]]
    for number, batch in enumerate(batches):
        offer: dict[str, Any] = {"type": "offer", "version": PROTOCOL_VERSION,
                                 "entries": batch, "more": number < len(batches) - 1}
        if number == 0 and text is not None:
            offer["text"] = text
        await send_json(channel, offer)
    accept = await expect(channel, "accept")
    offsets = accept.get("offsets")
    if not isinstance(offsets, list) or len(offsets) != len(entries):
        raise TransferError("protocol error: bad offsets")
    total = UNKNOWN_TOTAL if any(e.is_stream for e in entries) \
        else sum(e.size or 0 for e in entries)
    reactor = default_reactor(reactor)
    workers = FileWorkers.start(reactor, "send")
    try:
        await _sending_files(channel, workers, entries, offsets, chunk_size, total, progress,
                             reactor, accept.get("prefixes"),
                             accept.get("sha256") != SHA256_RESUMED_ONLY)
    finally:
        workers.stop()
    await send_json(channel, {"type": "done"})
    await channel.finish()
    await expect(channel, "ok")
    if await channel.receive() is not None:
        raise TransferError("protocol error: data after ok")


async def _sending_files(channel: RecordChannel, workers: FileWorkers,
                         entries: list[SourceEntry], offsets: list[Any], chunk_size: int,
                         total: int, progress: Progress | None, reactor: Any,
                         prefixes: Any = None, hash_all: bool = True) -> None:
    """hash_all: the recipient wants every file's SHA-256, not only resumed files'."""
    done = 0
    try:
        for index, entry in enumerate(entries):
            if entry.is_dir:
                continue
            if entry.is_stream:
                int_field({"offset": offsets[index]}, "offset", 0, 0)  # never resumed
                done = await _send_stream(channel, workers, index, entry, chunk_size, done,
                                          progress, reactor, hash_all)
                continue
            assert entry.size is not None
            offset = int_field({"offset": offsets[index]}, "offset", 0, entry.size)
            done += offset
            done = await _send_one(channel, workers, index, entry, offset, chunk_size, done,
                                   total, progress, _prefix(prefixes, index), hash_all)
    except RecordError as e:
        if isinstance(e, RecordTimeout):
            raise
        # The recipient stopped us (a cap, a full disk, its stdout closed): its reason is
        # the last record it sent before closing.
        reason = await _peer_error(channel, reactor)
        if reason is not None:
            raise reason from None
        raise


def _prefix(prefixes: Any, index: int) -> str | None:
    """The recipient's SHA-256 of its partial file of entry index (None: not sent; an older
    recipient, whose offset is taken as it is)."""
    if not isinstance(prefixes, list) or index >= len(prefixes):
        return None
    value = prefixes[index]
    return value if isinstance(value, str) else ""


async def _peer_error(channel: RecordChannel, reactor: Any) -> TransferError | None:
    """The error the peer sent before the connection closed, if that is what came."""
    waiting = Deferred.fromCoroutine(channel.receive())
    waiting.addTimeout(_PEER_ERROR_WAIT, reactor)
    try:
        decode(await waiting)
    except TransferError as e:
        return e
    except Exception:  # noqa: BLE001 - no reason to be had; the send error stands
        return None
    return None


def _wire_entry(entry: SourceEntry) -> dict[str, Any]:
    if entry.is_stream:
        return {"name": entry.name, "dir": False, "size": None, "stream": True,
                "mode": entry.mode}
    return {"name": entry.name, "dir": entry.is_dir, "size": entry.size, "mode": entry.mode}


def _hash_prefix(f: Any, digest: Any, size: int, name: str) -> None:  # worker thread
    """Hash the first size bytes of f into digest, leaving f positioned after them."""
    while size:
        block = f.read(min(_READ_SIZE, size))
        if not block:
            raise TransferError(f"{name} shrank while sending")
        digest.update(block)
        size -= len(block)


async def _send_one(channel: RecordChannel, workers: FileWorkers, index: int,
                    entry: SourceEntry, offset: int, chunk_size: int, done: int, total: int,
                    progress: Progress | None, their_prefix: str | None = None,
                    hash_all: bool = True) -> int:
    """Send one file from offset (the size of the recipient's partial file). Resuming goes
    by content: when the recipient's partial does not hash like this file's first offset
    bytes (their_prefix), the file is sent whole (offset 0) and the recipient starts over.
    `end` carries the whole file's SHA-256 for a resumed file, or for every file when
    hash_all (an older recipient); the records verify the rest (live/protocol.py)."""
    assert entry.path is not None and entry.size is not None
    name = printable_name(entry.name)
    digest = hashlib.sha256()
    try:
        with open(entry.path, "rb", buffering=0) as f:
            if offset:
                # The recipient's hash covers its resumed prefix too.
                await workers.disk.submit(_hash_prefix, f, digest, offset, name)
                if their_prefix is not None and digest.hexdigest() != their_prefix:
                    done -= offset
                    offset, digest = 0, hashlib.sha256()
                    f.seek(0)
            await send_json(channel, {"type": "file", "index": index, "offset": offset})
            with_hash = hash_all or offset > 0
            hashing = BackgroundHash(workers.hash, digest) if with_hash else NO_HASH
            # Read on this thread: no read can outlive the file.
            blocks = ReadAhead(f, hashing, offset, entry.size, chunk_size, name=name)
            while (block := await blocks.next()) is not None:
                await channel.send(KIND_DATA, block)
                done += len(block)
                if progress is not None:
                    progress(entry.name, done, total)
    except OSError as e:
        raise TransferError(f"cannot read {name}: {e.strerror}") from None
    end: dict[str, Any] = {"type": "end", "index": index}
    if with_hash:
        end["sha256"] = await hashing.hexdigest()
    await send_json(channel, end)
    return done


async def _send_stream(channel: RecordChannel, workers: FileWorkers, index: int,
                       entry: SourceEntry, chunk_size: int, done: int,
                       progress: Progress | None, reactor: Any, with_hash: bool = True) -> int:
    """Send a stream's bytes as they are read, then `end` with their count (and SHA-256)."""
    name = printable_name(entry.name)
    hashing = BackgroundHash(workers.hash, hashlib.sha256()) if with_hash else NO_HASH
    await send_json(channel, {"type": "file", "index": index, "offset": 0})
    blocks = StreamReadAhead(workers.disk, entry.stream, hashing, chunk_size)
    sent = 0
    try:
        while (job := blocks.next_read()) is not None:
            block = blocks.take(await _keeping_alive(channel, job, reactor))
            if block is None:
                break
            await channel.send(KIND_DATA, block)
            sent += len(block)
            done += len(block)
            if progress is not None:
                progress(entry.name, done, UNKNOWN_TOTAL)
    except OSError as e:
        blocks.abandon()
        raise TransferError(f"cannot read {name}: {e.strerror}") from None
    except BaseException:
        blocks.abandon()
        raise
    await blocks.settle()  # the reads queued after the end return at once
    end: dict[str, Any] = {"type": "end", "index": index, "size": sent}
    if with_hash:
        end["sha256"] = await hashing.hexdigest()
    await send_json(channel, end)
    return done


async def _keeping_alive(channel: RecordChannel, job: Deferred[bytes], reactor: Any) -> bytes:
    """The read's result; while it is not there, an empty data record every
    STREAM_KEEPALIVE seconds tells the recipient that the sender is still alive."""
    wake: Deferred[None] | None = None

    def fired(result: Any) -> Any:
        if wake is not None and not wake.called:
            wake.callback(None)
        return result

    job.addBoth(fired)
    while not job.called:
        wake = Deferred()
        timer = reactor.callLater(STREAM_KEEPALIVE, wake.callback, None)
        await wake
        if timer.active():
            timer.cancel()
        if not job.called:
            await channel.send(KIND_DATA, b"")
    return await job
