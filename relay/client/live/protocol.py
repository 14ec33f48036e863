"""The live transfer protocol, over encrypted records (relay/client/live/records.py): what both
ends share (the messages, the entries, the partial file's name). The ends are
relay/client/live/send.py and relay/client/live/receive.py.

Every record's kind (relay/client/live/records.py) says what it carries: KIND_JSON ("J") a JSON
control message, KIND_DATA ("D") file bytes. The exchange:

  sender    -> offer {entries: [{name, dir, size, mode, stream?}], text?, more?}
                                                              (split when large)
  recipient -> accept {offsets: [...], prefixes?: [...], sha256?: "resumed"}
                                                   or   refuse {reason}
  sender    -> for each file: file {index, offset}, D records, end {index, sha256?, size?}
  sender    -> done, then its final record
  recipient -> ok (or error {reason}), then its final record

The recipient checks every name (relay/client/safe_paths.py) before anything touches the
disk, writes each file to a hidden ".<name>.relay-partial" beside its target, verifies the
SHA-256 of the whole file, then renames it into place. A partial file left by an interrupted
transfer is the resume offset the next time the same offer arrives; the hash at the end
covers the resumed prefix too, so a stale partial cannot slip through.

The whole-file SHA-256 is needed only there: the bytes sent in this run arrive in
authenticated records (counter nonces, a final record), so they are exactly the bytes the
sender read, in order and complete. A recipient that says `"sha256": "resumed"` in its
accept verifies files sent from offset 0 by the records alone and gets `end` without a
`sha256` for them (the hash costs each end about as much CPU as the AES-GCM and the kernel's
copies together); resumed files (offset > 0) still carry it, prefix included. Without the
field (an older recipient) the sender hashes every file, as before; an older sender's
`sha256` is simply not needed by a newer recipient for files from offset 0.

A stream (stdin) is an entry of unknown length: `"size": null, "stream": true`, at most one
per offer. Its bytes go out as they are read; the `end` message marks the end of the
stream in-band and carries its `size` (and its SHA-256 for an older recipient). It is never resumed (offset 0; a
cut stream's partial file is deleted), and the recipient enforces its byte caps while it
writes. With `stdout=` the recipient writes the one offered file to a stream (stdout) as
the records arrive instead of to disk, and checks the size at the end: it cannot take back
what it already wrote, so a mismatch or a cut after the first byte is a VerificationError
that says so.

File reads and writes and the SHA-256 run in worker threads (relay/client/live/file_io.py), a few
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

from relay.client.errors import PeerCancelled, TransferError
from relay.client.live.records import Record
from relay.client.safe_paths import printable_name

PROTOCOL_VERSION = 1
# accept's "sha256": the recipient needs the whole-file SHA-256 only for resumed files.
SHA256_RESUMED_ONLY = "resumed"
KIND_JSON = ord("J")
KIND_DATA = ord("D")
DEFAULT_CHUNK_SIZE = 64 * 1024
MAX_TEXT = 64 * 1024
PARTIAL_PREFIX = "."
PARTIAL_SUFFIX = ".relay-partial"
MAX_NAME_BYTES = 255  # NAME_MAX of common file systems
_READ_SIZE = 1024 * 1024
# Offer entries per record, so one JSON record stays far under the record cap.
_ENTRIES_PER_RECORD = 500
_REASON_CHARS = 300
# The progress total of a transfer that includes a stream (its size is not known).
UNKNOWN_TOTAL = -1
# While a stream's producer is silent, an empty data record this often keeps the
# recipient's read timeout (relay/client/live/session.py: 120 s) from cutting the transfer.
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

async def send_json(channel: RecordChannel, message: dict[str, Any]) -> None:
    await channel.send(KIND_JSON, json.dumps(message, separators=(",", ":")).encode("utf-8"))


def decode(record: Record | None) -> tuple[str, Any]:
    """("json", dict) or ("data", bytes or a lent memoryview: see RecordStream.open_into);
    TransferError for anything else."""
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
        if message["type"] == "cancel":
            by = message.get("by")
            who = f"the {by}" if by in ("sender", "receiver") else "the other side"
            raise PeerCancelled(f"{who} cancelled the transfer (interrupted)")
        if message["type"] in ("error", "refuse"):
            # Only the receiver sends these (its reason for refusing, or for stopping).
            reason = message.get("reason")
            reason = printable_name(reason[:_REASON_CHARS]) if isinstance(reason, str) else "?"
            verb = "refused the transfer" if message["type"] == "refuse" else "stopped"
            raise TransferError(f"the receiver {verb}: {reason}")
        return "json", message
    raise TransferError("the peer sent an unknown record")


async def expect(channel: RecordChannel, kind: str) -> dict[str, Any]:
    what, message = decode(await channel.receive())
    if what != "json" or message["type"] != kind:
        raise TransferError(f"protocol error: expected {kind}")
    return message


def int_field(message: dict[str, Any], key: str, low: int, high: int) -> int:
    value = message.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise TransferError(f"protocol error: bad {key}")
    return value


def default_reactor(reactor: Any) -> Any:
    if reactor is None:
        from twisted.internet import reactor as global_reactor
        reactor = global_reactor
    return reactor


def partial_path(target: Path) -> Path:
    """The hidden partial file beside target: `.NAME.relay-partial`, or for a name too long
    for that (a file name has at most MAX_NAME_BYTES bytes) the name cut short plus a hash
    of the whole name, so that two long names sharing a beginning never share a partial."""
    name = f"{PARTIAL_PREFIX}{target.name}{PARTIAL_SUFFIX}"
    if len(os.fsencode(name)) <= MAX_NAME_BYTES:
        return target.with_name(name)
    raw = os.fsencode(target.name)
    tag = "~" + hashlib.sha256(raw).hexdigest()[:12]
    room = MAX_NAME_BYTES - len(PARTIAL_PREFIX) - len(tag) - len(PARTIAL_SUFFIX)
    short = raw[:room].decode("utf-8", "ignore") if _utf8(raw) else os.fsdecode(raw[:room])
    return target.with_name(f"{PARTIAL_PREFIX}{short}{tag}{PARTIAL_SUFFIX}")


def _utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


async def tell_cancelled(channel: RecordChannel, by: str) -> None:
    """Tell the peer that this side (by: "sender" or "receiver") was interrupted: a
    `cancel` message, then the final record and the connection closed."""
    await send_json(channel, {"type": "cancel", "by": by})
    await channel.finish()
    close = getattr(channel, "close", None)
    if close is not None:
        close()  # flushes what is written, then closes: the peer reads the cancel first
