"""The live transfer protocol, over encrypted records (relay/client/records.py).

Every record's kind (relay/client/records.py) says what it carries: KIND_JSON ("J") a JSON
control message, KIND_DATA ("D") file bytes. The exchange:

  sender    -> offer {entries: [{name, dir, size, mode, stream?}], text?, more?}
                                                              (split when large)
  recipient -> accept {offsets: [...]}       or   refuse {reason}
  sender    -> for each file: file {index, offset}, D records, end {index, sha256, size?}
  sender    -> done, then its final record
  recipient -> ok (or error {reason}), then its final record

The recipient checks every name (relay/client/safe_paths.py) before anything touches the
disk, writes each file to a hidden ".<name>.relay-partial" beside its target, verifies the
SHA-256 of the whole file, then renames it into place. A partial file left by an interrupted
transfer is the resume offset the next time the same offer arrives; the hash at the end
covers the resumed prefix too, so a stale partial cannot slip through.

A stream (stdin) is an entry of unknown length: `"size": null, "stream": true`, at most one
per offer. Its bytes go out as they are read; the `end` message marks the end of the
stream in-band and carries its SHA-256 and its `size`. It is never resumed (offset 0; a
cut stream's partial file is deleted), and the recipient enforces its byte caps while it
writes. With `stdout=` the recipient writes the one offered file to a stream (stdout) as
the records arrive instead of to disk, and checks the hash at the end: it cannot take back
what it already wrote, so a mismatch or a cut after the first byte is a VerificationError
that says so.

File reads and writes and the SHA-256 run in worker threads (relay/client/file_io.py), a few
blocks ahead of (or behind) the reactor thread, which seals, opens and moves the records.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import attrs
from twisted.internet.defer import Deferred

from relay.client.errors import RecordError, TransferError, UnsafePathError, VerificationError
from relay.client.file_io import (
    BackgroundHash,
    FileWorkers,
    ReadAhead,
    StreamReadAhead,
    StreamWriteBehind,
    WriteBehind,
)
from relay.client.records import Record, RecordTimeout
from relay.client.safe_paths import (
    DEFAULT_LIMITS,
    Overwrite,
    ReceiveLimits,
    check_offer_names,
    may_write,
    printable_name,
    target_path,
)

PROTOCOL_VERSION = 1
KIND_JSON = ord("J")
KIND_DATA = ord("D")
DEFAULT_CHUNK_SIZE = 64 * 1024
MAX_TEXT = 64 * 1024
PARTIAL_PREFIX = "."
PARTIAL_SUFFIX = ".relay-partial"
_READ_SIZE = 1024 * 1024
# Offer entries per record, so one JSON record stays far under the record cap.
_ENTRIES_PER_RECORD = 500
_REASON_CHARS = 300
# The progress total of a transfer that includes a stream (its size is not known).
UNKNOWN_TOTAL = -1
# While a stream's producer is silent, an empty data record this often keeps the
# recipient's read timeout (relay/client/live.py: 120 s) from cutting the transfer.
STREAM_KEEPALIVE = 30.0
# How long a sender whose connection failed looks for the recipient's reason.
_PEER_ERROR_WAIT = 2.0


class RecordChannel(Protocol):
    """What the transfer needs from a record stream (RecordStream provides it)."""

    async def send(self, kind: int, payload: bytes) -> None: ...
    async def receive(self) -> Record | None: ...
    async def finish(self) -> None: ...


# (name, bytes done in all, total bytes or UNKNOWN_TOTAL)
Progress = Callable[[str, int, int], None]


class StreamCapExceeded(TransferError):
    """A stream went past the recipient's byte cap."""


class OutputClosed(TransferError):
    """The output stream (stdout) was closed by its reader."""


@attrs.frozen
class SourceEntry:
    name: str  # relative POSIX path as offered
    path: Path | None  # None for folders and streams
    is_dir: bool
    size: int | None  # None for a stream
    mode: int
    stream: Any = None  # for a stream (stdin): a binary reader, read until it ends

    @classmethod
    def of_stream(cls, name: str, reader: Any, mode: int = 0o644) -> SourceEntry:
        """An entry whose bytes are read from reader (e.g. sys.stdin.buffer) as they come."""
        return cls(name, None, False, None, mode, reader)

    @property
    def is_stream(self) -> bool:
        return self.stream is not None


@attrs.frozen
class ReceiveResult:
    files: list[Path]
    folders: list[Path]
    text: str | None
    bytes_received: int
    to_output: int = 0  # files written to the output stream (stdout=) instead of to disk


def collect_sources(paths: list[Path]) -> list[SourceEntry]:
    """The entries to offer for these paths: files, and folders recursively (empty ones
    included), named by their last component. Symlinks and special files are refused."""
    entries: list[SourceEntry] = []
    for top in paths:
        base = top.name or top.resolve().name
        if not base:
            raise TransferError(f"cannot send {top}: it has no name")
        _collect(top, base, entries)
    return entries


def _collect(path: Path, name: str, entries: list[SourceEntry]) -> None:
    try:
        info = os.lstat(path)
    except OSError as e:
        raise TransferError(f"cannot read {printable_name(str(path))}: {e.strerror}") from None
    if stat.S_ISLNK(info.st_mode):
        raise TransferError(f"{printable_name(str(path))} is a symlink; send its target")
    if stat.S_ISDIR(info.st_mode):
        entries.append(SourceEntry(name, None, True, 0, stat.S_IMODE(info.st_mode)))
        try:
            children = sorted(os.listdir(path))
        except OSError as e:
            raise TransferError(f"cannot list {printable_name(str(path))}: {e.strerror}") \
                from None
        for child in children:
            _collect(path / child, f"{name}/{child}", entries)
    elif stat.S_ISREG(info.st_mode):
        entries.append(SourceEntry(name, path, False, info.st_size, stat.S_IMODE(info.st_mode)))
    else:
        raise TransferError(f"{printable_name(str(path))} is not a regular file or folder")


# ---- messages ------------------------------------------------------------------------------

async def _send_json(channel: RecordChannel, message: dict[str, Any]) -> None:
    await channel.send(KIND_JSON, json.dumps(message, separators=(",", ":")).encode("utf-8"))


def _decode(record: Record | None) -> tuple[str, Any]:
    """("json", dict) or ("data", bytes); TransferError for anything else."""
    if record is None:
        raise TransferError("the peer ended the transfer early")
    kind, body = record
    if kind == KIND_DATA:
        return "data", body
    if kind == KIND_JSON:
        try:
            message = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise TransferError("the peer sent a malformed message") from None
        if not isinstance(message, dict) or not isinstance(message.get("type"), str):
            raise TransferError("the peer sent a malformed message")
        if message["type"] in ("error", "refuse"):
            reason = message.get("reason")
            reason = printable_name(reason[:_REASON_CHARS]) if isinstance(reason, str) else "?"
            verb = "refused the transfer" if message["type"] == "refuse" else "failed"
            raise TransferError(f"the peer {verb}: {reason}")
        return "json", message
    raise TransferError("the peer sent an unknown record")


async def _expect(channel: RecordChannel, kind: str) -> dict[str, Any]:
    what, message = _decode(await channel.receive())
    if what != "json" or message["type"] != kind:
        raise TransferError(f"protocol error: expected {kind}")
    return message


def _int_field(message: dict[str, Any], key: str, low: int, high: int) -> int:
    value = message.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise TransferError(f"protocol error: bad {key}")
    return value


# ---- sending -------------------------------------------------------------------------------

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
        await _send_json(channel, offer)
    accept = await _expect(channel, "accept")
    offsets = accept.get("offsets")
    if not isinstance(offsets, list) or len(offsets) != len(entries):
        raise TransferError("protocol error: bad offsets")
    total = UNKNOWN_TOTAL if any(e.is_stream for e in entries) \
        else sum(e.size or 0 for e in entries)
    reactor = _reactor(reactor)
    workers = FileWorkers.start(reactor, "send")
    try:
        await _sending_files(channel, workers, entries, offsets, chunk_size, total, progress,
                             reactor)
    finally:
        workers.stop()
    await _send_json(channel, {"type": "done"})
    await channel.finish()
    await _expect(channel, "ok")
    if await channel.receive() is not None:
        raise TransferError("protocol error: data after ok")


async def _sending_files(channel: RecordChannel, workers: FileWorkers,
                         entries: list[SourceEntry], offsets: list[Any], chunk_size: int,
                         total: int, progress: Progress | None, reactor: Any) -> None:
    done = 0
    try:
        for index, entry in enumerate(entries):
            if entry.is_dir:
                continue
            if entry.is_stream:
                _int_field({"offset": offsets[index]}, "offset", 0, 0)  # never resumed
                done = await _send_stream(channel, workers, index, entry, chunk_size, done,
                                          progress, reactor)
                continue
            assert entry.size is not None
            offset = _int_field({"offset": offsets[index]}, "offset", 0, entry.size)
            done += offset
            done = await _send_one(channel, workers, index, entry, offset, chunk_size, done,
                                   total, progress)
    except RecordError as e:
        if isinstance(e, RecordTimeout):
            raise
        # The recipient stopped us (a cap, a full disk, its stdout closed): its reason is
        # the last record it sent before closing.
        reason = await _peer_error(channel, reactor)
        if reason is not None:
            raise reason from None
        raise


async def _peer_error(channel: RecordChannel, reactor: Any) -> TransferError | None:
    """The error the peer sent before the connection closed, if that is what came."""
    waiting = Deferred.fromCoroutine(channel.receive())
    waiting.addTimeout(_PEER_ERROR_WAIT, reactor)
    try:
        _decode(await waiting)
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


def _reactor(reactor: Any) -> Any:
    if reactor is None:
        from twisted.internet import reactor as default_reactor
        reactor = default_reactor
    return reactor


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
                    progress: Progress | None) -> int:
    assert entry.path is not None and entry.size is not None
    name = printable_name(entry.name)
    digest = hashlib.sha256()
    hashing = BackgroundHash(workers.hash, digest)
    await _send_json(channel, {"type": "file", "index": index, "offset": offset})
    try:
        with open(entry.path, "rb", buffering=0) as f:
            # The recipient's hash covers its resumed prefix too.
            prefix = workers.disk.submit(_hash_prefix, f, digest, offset, name)
            blocks = ReadAhead(workers.disk, f, hashing, offset, entry.size, chunk_size,
                               name=name)
            try:
                await prefix
                while (block := await blocks.next()) is not None:
                    await channel.send(KIND_DATA, block)
                    done += len(block)
                    if progress is not None:
                        progress(entry.name, done, total)
            finally:
                await blocks.settle()  # no read may outlive the file
    except OSError as e:
        raise TransferError(f"cannot read {name}: {e.strerror}") from None
    await _send_json(channel, {"type": "end", "index": index,
                               "sha256": await hashing.hexdigest()})
    return done


async def _send_stream(channel: RecordChannel, workers: FileWorkers, index: int,
                       entry: SourceEntry, chunk_size: int, done: int,
                       progress: Progress | None, reactor: Any) -> int:
    """Send a stream's bytes as they are read, then `end` with their SHA-256 and count."""
    name = printable_name(entry.name)
    hashing = BackgroundHash(workers.hash, hashlib.sha256())
    await _send_json(channel, {"type": "file", "index": index, "offset": 0})
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
    await _send_json(channel, {"type": "end", "index": index, "size": sent,
                               "sha256": await hashing.hexdigest()})
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


# ---- receiving -----------------------------------------------------------------------------

def partial_path(target: Path) -> Path:
    return target.with_name(f"{PARTIAL_PREFIX}{target.name}{PARTIAL_SUFFIX}")


@attrs.define
class _Wanted:
    parts: tuple[str, ...]
    is_dir: bool
    size: int  # 0 for a stream
    mode: int
    target: Path
    is_stream: bool = False
    limit: int = 0  # the most bytes accepted for it: its size, or for a stream the caps

    @property
    def name(self) -> str:
        return printable_name("/".join(self.parts))


async def receive_files(channel: RecordChannel, root: Path, *,
                        limits: ReceiveLimits = DEFAULT_LIMITS,
                        overwrite: Overwrite = Overwrite.NEVER,
                        ask: Callable[[str], bool] | None = None,
                        confirm_offer: Callable[[list[tuple[str, bool, int | None]],
                                                 str | None], bool] | None = None,
                        progress: Progress | None = None,
                        reactor: Any = None, stdout: Any = None) -> ReceiveResult:
    """Receive an offer into root (which must exist), or with stdout (a binary writer) the
    offer's one file into stdout as it arrives. Every refusal or failure is told to the
    peer and raised as TransferError/UnsafePathError here. confirm_offer sees each entry as
    (printable name, is folder, size or None for a stream)."""
    workers = FileWorkers.start(_reactor(reactor), "receive")
    try:
        return await _receive(channel, workers, root, limits, overwrite, ask, confirm_offer,
                              progress, stdout)
    except (TransferError, UnsafePathError, OSError) as e:
        reason = e.strerror if isinstance(e, OSError) else str(e)
        try:
            await _send_json(channel, {"type": "error", "reason": reason or "failed"})
            await channel.finish()
        except (RecordError, TransferError):
            pass  # the connection is gone; the local error is what matters
        if isinstance(e, OSError):
            raise TransferError(f"cannot write: {e.strerror}") from None
        raise
    finally:
        workers.stop()


async def _receive_offer(channel: RecordChannel,
                         limits: ReceiveLimits) -> tuple[list[dict[str, Any]], str | None]:
    entries: list[dict[str, Any]] = []
    text = None
    while True:
        offer = await _expect(channel, "offer")
        if offer.get("version") != PROTOCOL_VERSION:
            raise TransferError("the sender speaks another protocol version")
        batch = offer.get("entries")
        if not isinstance(batch, list) or not all(isinstance(e, dict) for e in batch):
            raise TransferError("protocol error: bad offer")
        entries += batch
        if len(entries) > limits.max_files:
            raise UnsafePathError(f"more than {limits.max_files} files offered")
        if "text" in offer:
            if text is not None or not isinstance(offer["text"], str) \
                    or len(offer["text"].encode("utf-8")) > MAX_TEXT:
                raise TransferError("protocol error: bad text")
            text = offer["text"]
        if offer.get("more") is not True:
            return entries, text


def _entry_shape(e: dict[str, Any]) -> tuple[Any, bool, Any, bool]:
    """(name, is folder, size as offered, is stream) of a raw offer entry, its types
    checked (the name and size are checked with the whole offer)."""
    is_dir, mode, is_stream = e.get("dir"), e.get("mode"), e.get("stream", False)
    if not isinstance(is_dir, bool) or not isinstance(mode, int) or isinstance(mode, bool) \
            or not isinstance(is_stream, bool):
        raise TransferError("protocol error: bad offer entry")
    if is_stream and (is_dir or e.get("size") is not None):
        raise TransferError("protocol error: a stream is a file of no stated size")
    return e.get("name"), is_dir, None if is_stream else (0 if is_dir else e.get("size")), \
        is_stream


async def _receive(channel: RecordChannel, workers: FileWorkers, root: Path,
                   limits: ReceiveLimits,
                   overwrite: Overwrite, ask: Callable[[str], bool] | None,
                   confirm_offer: Any, progress: Progress | None,
                   stdout: Any) -> ReceiveResult:
    raw_entries, text = await _receive_offer(channel, limits)
    shapes = [_entry_shape(e) for e in raw_entries]
    if sum(is_stream for *_, is_stream in shapes) > 1:
        raise TransferError("protocol error: more than one stream offered")
    # A stream counts as 0 bytes here; its caps are enforced while it is written.
    all_parts = check_offer_names([(name, is_dir, 0 if is_stream else size)
                                   for name, is_dir, size, is_stream in shapes], limits)
    if stdout is not None and (any(is_dir for _, is_dir, _, _ in shapes) or len(shapes) > 1):
        raise TransferError("only a single file can be written to stdout; this offer has "
                            f"{len(shapes)} entries")
    if confirm_offer is not None and not confirm_offer(
            [(printable_name(name), is_dir, size) for name, is_dir, size, _ in shapes], text):
        raise TransferError("declined by the recipient")
    known_bytes = sum(size for _, _, size, is_stream in shapes if not is_stream)
    stream_limit = min(limits.max_file_bytes, limits.max_total_bytes - known_bytes)
    wanted = []
    for parts, (_name, is_dir, size, is_stream), raw in zip(all_parts, shapes, raw_entries,
                                                            strict=True):
        target = target_path(root, parts, create_parents=False)
        wanted.append(_Wanted(parts, is_dir, size or 0, raw["mode"] & 0o777, target,
                              is_stream, stream_limit if is_stream else size or 0))
    offsets = []
    for item in wanted:
        if item.is_dir:
            if os.path.lexists(item.target) and not os.path.isdir(item.target):
                raise TransferError(f"{printable_name(str(item.target))} exists and is not "
                                    f"a folder")
            offsets.append(0)
            continue
        if stdout is not None:
            offsets.append(0)  # nothing is kept between runs: never resumed
            continue
        if not may_write(item.target, overwrite, ask):
            raise TransferError(f"{printable_name(str(item.target))} exists; not overwriting")
        offsets.append(0 if item.is_stream else _resume_offset(item))
    await _send_json(channel, {"type": "accept", "offsets": offsets})

    created_folders = []
    for item in wanted:
        if item.is_dir:
            target_path(root, item.parts, create_parents=True)
            if not os.path.isdir(item.target):
                os.mkdir(item.target, 0o700)
                created_folders.append(item)
    total = UNKNOWN_TOTAL if any(item.is_stream for item in wanted) \
        else sum(item.size for item in wanted)
    done = sum(offsets)
    received = 0
    files = []
    pending = {i for i, item in enumerate(wanted) if not item.is_dir}
    while pending:
        header = await _expect(channel, "file")
        index = _int_field(header, "index", 0, len(wanted) - 1)
        if index not in pending:
            raise TransferError("protocol error: unexpected file")
        pending.discard(index)
        offset = _int_field(header, "offset", offsets[index], offsets[index])
        if stdout is not None:
            got = await _receive_to_output(channel, workers, stdout, wanted[index], index,
                                           done, total, progress)
        else:
            got = await _receive_one(channel, workers, root, wanted[index], index, offset,
                                     done, total, progress)
            files.append(wanted[index].target)
        done += got
        received += got
    await _expect(channel, "done")
    if await channel.receive() is not None:
        raise TransferError("protocol error: data after done")
    folders = [item.target for item in wanted if item.is_dir]
    # Modes of the folders made here (existing ones are the user's), last and deepest
    # first, so a read-only folder does not block its own contents.
    for item in sorted(created_folders, key=lambda w: -len(w.parts)):
        os.chmod(item.target, item.mode)
    await _send_json(channel, {"type": "ok"})
    await channel.finish()
    return ReceiveResult(files, folders, text, received,
                         to_output=len(wanted) if stdout is not None else 0)


def _resume_offset(item: _Wanted) -> int:
    partial = partial_path(item.target)
    try:
        info = os.lstat(partial)
    except FileNotFoundError:
        return 0
    if not stat.S_ISREG(info.st_mode) or info.st_size > item.size:
        return 0  # not ours or stale: start over (the partial is truncated on open)
    return info.st_size


async def _receive_data(channel: RecordChannel, writer: WriteBehind, item: _Wanted,
                        index: int, written: int, first: int, done: int, total: int,
                        progress: Progress | None) -> tuple[int, dict[str, Any]]:
    """Write the data records of one file (written bytes are already there, first of them
    before this run) until its `end`; (bytes written in all, the end message)."""
    while True:
        what, message = _decode(await channel.receive())
        if what == "data":
            if written + len(message) > item.limit:
                if item.is_stream:
                    raise StreamCapExceeded(f"{item.name}: the stream went past the "
                                            f"receiver's cap of {item.limit} bytes")
                raise TransferError(f"{item.name}: more data than offered")
            await writer.write(message)
            written += len(message)
            if progress is not None:
                progress("/".join(item.parts), done + written - first, total)
            continue
        if message["type"] != "end" or message.get("index") != index:
            raise TransferError("protocol error: expected data or end")
        await writer.flush()
        return written, message


def _check_end(item: _Wanted, written: int, end: dict[str, Any]) -> bool:
    """Whether the end's size (for a stream) and SHA-256 can match; TransferError when
    less data came than a sized file needs."""
    if not item.is_stream:
        if written != item.size:
            raise TransferError(f"{item.name}: less data than offered")
        return True
    return end.get("size") == written


async def _receive_one(channel: RecordChannel, workers: FileWorkers, root: Path,
                       item: _Wanted, index: int, offset: int, done: int, total: int,
                       progress: Progress | None) -> int:
    target_path(root, item.parts, create_parents=True)  # re-checked now that dirs exist
    partial = partial_path(item.target)
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
    if offset == 0:
        flags |= os.O_TRUNC
    fd = os.open(partial, flags, 0o600)
    digest = hashlib.sha256()
    try:
        with os.fdopen(fd, "r+b", buffering=0) as f:
            if offset:
                await workers.disk.submit(_rehash_partial, f, digest, offset)
            hashing = BackgroundHash(workers.hash, digest)
            writer = WriteBehind(workers.disk, fd, hashing)
            try:
                written, end = await _receive_data(channel, writer, item, index, offset,
                                                   offset, done, total, progress)
            except BaseException:
                await writer.settle()  # no write may outlive the file
                raise
            if not _check_end(item, written, end) \
                    or end.get("sha256") != await hashing.hexdigest():
                raise VerificationError(f"{item.name}: SHA-256 mismatch")
            os.fsync(fd)
            os.fchmod(fd, item.mode)
    except VerificationError:
        _remove(partial)  # a bad prefix must not be resumed again
        raise
    except BaseException:
        if item.is_stream:
            _remove(partial)  # a stream is never resumed: its partial is useless
        raise
    # The target was checked before accepting; re-check for a symlink raced in since.
    target_path(root, item.parts, create_parents=False)
    os.replace(partial, item.target)
    return written - offset


def _remove(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


async def _receive_to_output(channel: RecordChannel, workers: FileWorkers, out: Any,
                             item: _Wanted, index: int, done: int, total: int,
                             progress: Progress | None) -> int:
    """One file written to out as its records arrive. What is written cannot be taken
    back: a failure after the first byte says that the output is incomplete or wrong."""
    hashing = BackgroundHash(workers.hash, hashlib.sha256())
    writer = StreamWriteBehind(workers.disk, out, hashing)
    try:
        try:
            written, end = await _receive_data(channel, writer, item, index, 0, 0, done,
                                               total, progress)
        except BaseException:
            await writer.settle()
            raise
    except BrokenPipeError:
        raise OutputClosed(f"{item.name}: stdout was closed before the end (its reader "
                           f"went away)") from None
    except (StreamCapExceeded, OutputClosed):
        raise
    except (RecordError, TransferError) as e:
        if writer.queued:
            raise VerificationError(f"{item.name}: the transfer was cut ({e}); what was "
                                    f"already written to stdout is incomplete") from None
        raise
    try:
        complete = _check_end(item, written, end)
    except TransferError as e:
        raise VerificationError(f"{e}; the {written} bytes already written to stdout are "
                                f"incomplete") from None
    if not complete or end.get("sha256") != await hashing.hexdigest():
        raise VerificationError(f"{item.name}: SHA-256 mismatch; the {written} bytes "
                                f"already written to stdout are not what was sent")
    return written


def _rehash_partial(f: Any, digest: Any, offset: int) -> None:  # worker thread
    """Hash the partial file's first offset bytes; cut it there, positioned at its end."""
    remaining = offset
    while remaining:
        block = f.read(min(_READ_SIZE, remaining))
        if not block:
            raise TransferError("the partial file changed during the transfer")
        digest.update(block)
        remaining -= len(block)
    f.seek(offset)
    f.truncate()
