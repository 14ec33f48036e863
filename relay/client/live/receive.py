"""The receiving end of the live transfer protocol (see relay/client/live/protocol.py): check
the offer, ask, write each file to a hidden partial beside its target, verify, rename."""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs

from relay.client.errors import (
    OutputClosed,
    PeerCancelled,
    RecordError,
    Refused,
    StreamCapExceeded,
    TransferError,
    UnsafePathError,
    VerificationError,
)
from relay.client.live.file_io import (
    NO_HASH,
    AlignedBuffers,
    BackgroundHash,
    FileWorkers,
    StreamWriteBehind,
    WriteBehind,
)
from relay.client.live.protocol import (
    _READ_SIZE,
    KIND_DATA,
    MAX_TEXT,
    PROTOCOL_VERSION,
    SHA256_RESUMED_ONLY,
    UNKNOWN_TOTAL,
    Progress,
    ReceiveResult,
    RecordChannel,
    decode,
    default_reactor,
    expect,
    int_field,
    partial_path,
    send_json,
)
from relay.client.live.records import DEFAULT_MAX_PAYLOAD
from relay.client.safe_paths import (
    DEFAULT_LIMITS,
    Overwrite,
    ReceiveLimits,
    check_offer_names,
    may_write,
    printable_name,
    target_path,
)


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
    workers = FileWorkers.start(default_reactor(reactor), "receive")
    # File records are opened into lent page-aligned buffers, written as they are.
    buffers = AlignedBuffers(DEFAULT_MAX_PAYLOAD)
    open_into = getattr(channel, "open_into", None)
    if open_into is not None:
        open_into(lambda kind, size: buffers.take(size) if kind == KIND_DATA else None)
    try:
        return await _receive(channel, workers, buffers, root, limits, overwrite, ask,
                              confirm_offer, progress, stdout)
    except PeerCancelled:
        raise  # the sender is gone: nobody to tell
    except (TransferError, UnsafePathError, OSError) as e:
        reason = e.strerror if isinstance(e, OSError) else str(e)
        kind = "refuse" if isinstance(e, Refused | UnsafePathError) else "error"
        try:
            await send_json(channel, {"type": kind, "reason": reason or "failed"})
            await channel.finish()
        except (RecordError, TransferError):
            pass  # the connection is gone; the local error is what matters
        if isinstance(e, OSError):
            raise TransferError(f"cannot write: {e.strerror}") from None
        raise
    finally:
        if open_into is not None:
            open_into(None)
        workers.stop()


async def _receive_offer(channel: RecordChannel,
                         limits: ReceiveLimits) -> tuple[list[dict[str, Any]], str | None]:
    entries: list[dict[str, Any]] = []
    text = None
    while True:
        offer = await expect(channel, "offer")
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


async def _receive(channel: RecordChannel, workers: FileWorkers, buffers: AlignedBuffers,
                   root: Path, limits: ReceiveLimits,
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
        raise Refused("declined")
    known_bytes = sum(size for _, _, size, is_stream in shapes if not is_stream)
    stream_limit = min(limits.max_file_bytes, limits.max_total_bytes - known_bytes)
    wanted = []
    for parts, (_name, is_dir, size, is_stream), raw in zip(all_parts, shapes, raw_entries,
                                                            strict=True):
        target = target_path(root, parts, create_parents=False)
        wanted.append(_Wanted(parts, is_dir, size or 0, raw["mode"] & 0o777, target,
                              is_stream, stream_limit if is_stream else size or 0))
    offsets = []
    prefixes: list[str | None] = []
    for item in wanted:
        if item.is_dir:
            if os.path.lexists(item.target) and not os.path.isdir(item.target):
                raise Refused(f"{item.name} exists here and is not a folder")
            offsets.append(0)
            prefixes.append(None)
            continue
        if stdout is not None:
            offsets.append(0)  # nothing is kept between runs: never resumed
            prefixes.append(None)
            continue
        if os.path.isdir(item.target):
            raise Refused(f"{item.name} is a folder here; a file cannot replace it")
        if not may_write(item.target, overwrite, ask):
            raise Refused(f"{item.name} exists here; not overwriting (the receiver can "
                          f"use --overwrite always, or ask)")
        offset = 0 if item.is_stream else _resume_offset(item)
        offsets.append(offset)
        # Resume by content: the sender compares this with its own file's first bytes.
        prefixes.append(await workers.disk.submit(_hash_partial, partial_path(item.target),
                                                  offset) if offset else None)
    # Files from offset 0 are verified by the records alone (live/protocol.py).
    await send_json(channel, {"type": "accept", "offsets": offsets, "prefixes": prefixes,
                              "sha256": SHA256_RESUMED_ONLY})

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
        header = await expect(channel, "file")
        index = int_field(header, "index", 0, len(wanted) - 1)
        if index not in pending:
            raise TransferError("protocol error: unexpected file")
        pending.discard(index)
        offset = int_field(header, "offset", 0, offsets[index])
        if offset not in (0, offsets[index]):
            raise TransferError("protocol error: bad offset")
        done -= offsets[index] - offset  # 0: the sender's file differs; start over
        if stdout is not None:
            got = await _receive_to_output(channel, workers, buffers, stdout, wanted[index],
                                           index, done, total, progress)
        else:
            got = await _receive_one(channel, workers, buffers, root, wanted[index], index,
                                     offset, done, total, progress)
            files.append(wanted[index].target)
        done += got
        received += got
    await expect(channel, "done")
    if await channel.receive() is not None:
        raise TransferError("protocol error: data after done")
    folders = [item.target for item in wanted if item.is_dir]
    # Modes of the folders made here (existing ones are the user's), last and deepest
    # first, so a read-only folder does not block its own contents.
    for item in sorted(created_folders, key=lambda w: -len(w.parts)):
        os.chmod(item.target, item.mode)
    await send_json(channel, {"type": "ok"})
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
        what, message = decode(await channel.receive())
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


async def _receive_one(channel: RecordChannel, workers: FileWorkers,
                       buffers: AlignedBuffers, root: Path, item: _Wanted, index: int,
                       offset: int, done: int, total: int,
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
            # Only a resumed prefix needs the whole-file hash (live/protocol.py).
            hashing = BackgroundHash(workers.hash, digest) if offset else NO_HASH
            writer = WriteBehind(workers.disk, fd, hashing, direct=not offset,
                                 buffers=buffers)
            try:
                written, end = await _receive_data(channel, writer, item, index, offset,
                                                   offset, done, total, progress)
            except BaseException:
                await writer.settle()  # no write may outlive the file
                raise
            if not _check_end(item, written, end) \
                    or (offset and end.get("sha256") != await hashing.hexdigest()):
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


async def _receive_to_output(channel: RecordChannel, workers: FileWorkers,
                             buffers: AlignedBuffers, out: Any, item: _Wanted, index: int,
                             done: int, total: int, progress: Progress | None) -> int:
    """One file written to out as its records arrive. What is written cannot be taken
    back: a failure after the first byte says that the output is incomplete or wrong."""
    # No hash: the records verify it all.
    writer = StreamWriteBehind(workers.disk, out, NO_HASH, buffers=buffers)
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
    if not complete:
        raise VerificationError(f"{item.name}: the stream's size does not match; the "
                                f"{written} bytes already written to stdout are not what was "
                                f"sent")
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


def _hash_partial(path: Path, size: int) -> str:  # worker thread
    """SHA-256 of the first size bytes of a partial file ("" if it shrank meanwhile)."""
    digest = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        while size:
            block = f.read(min(_READ_SIZE, size))
            if not block:
                return ""
            digest.update(block)
            size -= len(block)
    return digest.hexdigest()
