"""The live transfer protocol, over encrypted records (relay/client/records.py).

Every record's kind (relay/client/records.py) says what it carries: KIND_JSON ("J") a JSON
control message, KIND_DATA ("D") file bytes. The exchange:

  sender    -> offer {entries: [{name, dir, size, mode}], text?, more?}  (split when large)
  recipient -> accept {offsets: [...]}       or   refuse {reason}
  sender    -> for each file: file {index, offset}, D records, end {index, sha256}
  sender    -> done, then its final record
  recipient -> ok (or error {reason}), then its final record

The recipient checks every name (relay/client/safe_paths.py) before anything touches the
disk, writes each file to a hidden ".<name>.relay-partial" beside its target, verifies the
SHA-256 of the whole file, then renames it into place. A partial file left by an interrupted
transfer is the resume offset the next time the same offer arrives; the hash at the end
covers the resumed prefix too, so a stale partial cannot slip through.

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

from relay.client.errors import RecordError, TransferError, UnsafePathError, VerificationError
from relay.client.file_io import BackgroundHash, FileWorkers, ReadAhead, WriteBehind
from relay.client.records import Record
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


class RecordChannel(Protocol):
    """What the transfer needs from a record stream (RecordStream provides it)."""

    async def send(self, kind: int, payload: bytes) -> None: ...
    async def receive(self) -> Record | None: ...
    async def finish(self) -> None: ...


Progress = Callable[[str, int, int], None]  # (name, bytes done in all, total bytes)


@attrs.frozen
class SourceEntry:
    name: str  # relative POSIX path as offered
    path: Path | None  # None for folders
    is_dir: bool
    size: int
    mode: int


@attrs.frozen
class ReceiveResult:
    files: list[Path]
    folders: list[Path]
    text: str | None
    bytes_received: int


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
    wire_entries = [{"name": e.name, "dir": e.is_dir, "size": e.size, "mode": e.mode}
                    for e in entries]
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
    total = sum(e.size for e in entries)
    done = 0
    workers = FileWorkers.start(_reactor(reactor), "send")
    try:
        for index, entry in enumerate(entries):
            if entry.is_dir:
                continue
            offset = _int_field({"offset": offsets[index]}, "offset", 0, entry.size)
            done += offset
            done = await _send_one(channel, workers, index, entry, offset, chunk_size, done,
                                   total, progress)
    finally:
        workers.stop()
    await _send_json(channel, {"type": "done"})
    await channel.finish()
    await _expect(channel, "ok")
    if await channel.receive() is not None:
        raise TransferError("protocol error: data after ok")


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
    assert entry.path is not None
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


# ---- receiving -----------------------------------------------------------------------------

def partial_path(target: Path) -> Path:
    return target.with_name(f"{PARTIAL_PREFIX}{target.name}{PARTIAL_SUFFIX}")


@attrs.define
class _Wanted:
    parts: tuple[str, ...]
    is_dir: bool
    size: int
    mode: int
    target: Path


async def receive_files(channel: RecordChannel, root: Path, *,
                        limits: ReceiveLimits = DEFAULT_LIMITS,
                        overwrite: Overwrite = Overwrite.NEVER,
                        ask: Callable[[str], bool] | None = None,
                        confirm_offer: Callable[[list[tuple[str, bool, int]], str | None],
                                                bool] | None = None,
                        progress: Progress | None = None,
                        reactor: Any = None) -> ReceiveResult:
    """Receive an offer into root (which must exist). Every refusal or failure is told to
    the peer and raised as TransferError/UnsafePathError here."""
    workers = FileWorkers.start(_reactor(reactor), "receive")
    try:
        return await _receive(channel, workers, root, limits, overwrite, ask, confirm_offer,
                              progress)
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


async def _receive(channel: RecordChannel, workers: FileWorkers, root: Path,
                   limits: ReceiveLimits,
                   overwrite: Overwrite, ask: Callable[[str], bool] | None,
                   confirm_offer: Any, progress: Progress | None) -> ReceiveResult:
    raw_entries, text = await _receive_offer(channel, limits)
    triples = []
    for e in raw_entries:
        if not isinstance(e.get("dir"), bool) or not isinstance(e.get("mode"), int) \
                or isinstance(e.get("mode"), bool):
            raise TransferError("protocol error: bad offer entry")
        triples.append((e.get("name"), e["dir"], 0 if e["dir"] else e.get("size")))
    all_parts = check_offer_names(triples, limits)
    if confirm_offer is not None and not confirm_offer(
            [(printable_name(name), is_dir, size) for name, is_dir, size in triples], text):
        raise TransferError("declined by the recipient")
    wanted = []
    for parts, (_name, is_dir, size), raw in zip(all_parts, triples, raw_entries, strict=True):
        target = target_path(root, parts, create_parents=False)
        wanted.append(_Wanted(parts, is_dir, size, raw["mode"] & 0o777, target))
    offsets = []
    for item in wanted:
        if item.is_dir:
            if os.path.lexists(item.target) and not os.path.isdir(item.target):
                raise TransferError(f"{printable_name(str(item.target))} exists and is not "
                                    f"a folder")
            offsets.append(0)
            continue
        if not may_write(item.target, overwrite, ask):
            raise TransferError(f"{printable_name(str(item.target))} exists; not overwriting")
        offsets.append(_resume_offset(item))
    await _send_json(channel, {"type": "accept", "offsets": offsets})

    created_folders = []
    for item in wanted:
        if item.is_dir:
            target_path(root, item.parts, create_parents=True)
            if not os.path.isdir(item.target):
                os.mkdir(item.target, 0o700)
                created_folders.append(item)
    total = sum(item.size for item in wanted)
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
        got = await _receive_one(channel, workers, root, wanted[index], index, offset, done,
                                 total, progress)
        done += got
        received += got
        files.append(wanted[index].target)
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
    return ReceiveResult(files, folders, text, received)


def _resume_offset(item: _Wanted) -> int:
    partial = partial_path(item.target)
    try:
        info = os.lstat(partial)
    except FileNotFoundError:
        return 0
    if not stat.S_ISREG(info.st_mode) or info.st_size > item.size:
        return 0  # not ours or stale: start over (the partial is truncated on open)
    return info.st_size


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
    name = printable_name(item.parts[-1])
    with os.fdopen(fd, "r+b", buffering=0) as f:
        if offset:
            await workers.disk.submit(_rehash_partial, f, digest, offset)
        hashing = BackgroundHash(workers.hash, digest)
        writer = WriteBehind(workers.disk, fd, hashing)
        try:
            written = offset
            while True:
                what, message = _decode(await channel.receive())
                if what == "data":
                    if written + len(message) > item.size:
                        raise TransferError(f"{name}: more data than offered")
                    await writer.write(message)
                    written += len(message)
                    if progress is not None:
                        progress("/".join(item.parts), done + written - offset, total)
                    continue
                if message["type"] != "end" or message.get("index") != index:
                    raise TransferError("protocol error: expected data or end")
                break
            await writer.flush()
        except BaseException:
            await writer.settle()  # no write may outlive the file
            raise
        if written != item.size:
            raise TransferError(f"{name}: less data than offered")
        if message.get("sha256") != await hashing.hexdigest():
            f.close()
            os.unlink(partial)  # a bad prefix must not be resumed again
            raise VerificationError(f"{printable_name('/'.join(item.parts))}: SHA-256 "
                                    f"mismatch")
        os.fsync(fd)
        os.fchmod(fd, item.mode)
    # The target was checked before accepting; re-check for a symlink raced in since.
    target_path(root, item.parts, create_parents=False)
    os.replace(partial, item.target)
    return written - offset


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
