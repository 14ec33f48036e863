"""File drops: per-file metadata (who, how big, which parts) and the chunk bytes.

A file is keyed by its `file_id`, a relay-side hash of the upload id; nothing a client sends
is ever used as a key or a path without first being matched to a stored record. Each stored
part names its chunk by a fresh relay-made `blob` id, so re-sending a part writes a new
chunk and switches the record to it in one atomic step: a crash at any moment leaves the
record pointing at a complete chunk (the other one is an orphan the cleanup removes).

What a file is charged, against three ledgers (its sender identity, the client network that
started it, the whole relay), is two amounts:

- `charged`: what its stored parts take, each part its size rounded up to whole blocks
  (relay.files.limits.part_charge), so many tiny parts cost the disk blocks they use;
- `reserved`: an open reservation for what it may still write, at most one window
  (relay.files.limits.initial_reservation), not its declared size. A new part resets it
  to min(window, max_charge - charged); a complete file reserves nothing. A reservation
  lapses `stall_ttl` after the file's last new part (an upload that makes no progress
  holds nothing it did not write); the next new part reserves again.

Every write is checked against FileCaps: per ledger, charged + reserved under the byte cap
and the sum of reservations under the reservation cap. A refused write changes nothing
(StoreFull, or PutOutcome.FULL). The record's expiry (or delete) releases all it held.
Caps are checked only where a write makes a ledger grow, so lowering a cap never strands
a file that shrinks.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

import attrs

START = "START"
UPLOADING = "UPLOADING"
COMPLETE = "COMPLETE"


@attrs.frozen
class PartInfo:
    size: int
    # The secretbox nonce the sender attached to this chunk (opaque to the relay).
    nonce: bytes
    # Relay-made id of this part's chunk (8 random bytes).
    blob: bytes


@attrs.frozen
class FileRecord:
    file_id: bytes
    sender: bytes
    recipient: bytes
    # As declared at startFileUpload (the original file's size).
    file_size: int
    # When the file expires at the latest (Unix seconds, file_ttl after its start).
    expires_at: float
    # The client network that started the upload (HTTPConfig.client_key); its ledger pays.
    client: str = ""
    # The most its reservation covers (relay.files.limits.max_charge).
    max_charge: int = 0
    # The open reservation; create() takes the wanted one. Lapses at reserved_until.
    reserved: int = 0
    reserved_until: float = 0.0
    # What the stored parts are charged (block-rounded sizes).
    charged: int = 0
    bytes_stored: int = 0
    # How many parts are stored, and the highest part index stored (-1: none).
    part_count: int = 0
    max_part: int = -1
    # Index of the part sent with last_chunk, once one was.
    last_part: int | None = None
    # Only the parts the reader asked for (FileStore.get), not necessarily all of them.
    parts: dict[int, PartInfo] = attrs.field(factory=dict)

    @property
    def status(self) -> str:
        # COMPLETE once the last part came and so did every part before it (parts beyond
        # the last are refused), so a COMPLETE file never has a hole a download could miss.
        if self.last_part is not None and self.part_count == self.last_part + 1:
            return COMPLETE
        return UPLOADING if self.part_count else START


class PutOutcome:
    OK = "OK"
    NOT_FOUND = "NOT_FOUND"
    # The part index is beyond what the file may have (or beyond its announced last part),
    # or the file has max_parts parts already.
    BAD_PART = "BAD_PART"
    # The part would take the file past its declared size (plus per-part overhead).
    TOO_MANY_BYTES = "TOO_MANY_BYTES"
    # The charge or the reservation would exceed one of FileCaps.
    FULL = "FULL"


@attrs.frozen
class FileCaps:
    """Per ledger: charged + reserved at most *_bytes, reservations at most *_reserved."""

    sender_bytes: int
    client_bytes: int
    total_bytes: int
    sender_reserved: int
    client_reserved: int
    total_reserved: int
    # The most a file reserves at a time.
    window: int


@attrs.frozen
class PutRequest:
    part: int
    info: PartInfo
    # What this part is charged (relay.files.limits.part_charge of its size).
    charge: int
    last: bool
    # Parts are numbered by the client, 0..max_parts-1, at most max_parts of them; all parts
    # together at most max_bytes + part_overhead per part stored (after this write).
    max_parts: int
    max_bytes: int
    # The file's time to live after this write (shorter while the upload is incomplete).
    ttl: float
    # ttl to apply instead when this write completes the file.
    complete_ttl: float
    # A new part keeps the file's reservation open this long (at most the file's ttl).
    stall_ttl: float
    caps: FileCaps
    # Bytes each stored part may add beyond max_bytes (the secretbox MAC and some slack).
    part_overhead: int = 0


class FileStore(Protocol):
    # Where chunks go when [files] chunk_store = "store".
    chunks: ChunkStore

    async def create(self, record: FileRecord, ttl: float, stall_ttl: float,
                     caps: FileCaps) -> tuple[FileRecord, bool]:
        """Store a new record for ttl seconds (nothing stored, record.reserved reserved for
        stall_ttl) and charge it to its sender, its client and the total; return (the
        stored record, True). If a live record with this file_id exists, change nothing and
        return (that record, False).

        Raises StoreFull, storing nothing, if a ledger would go over caps.
        """

    async def get(self, file_id: bytes, part: int | None = None,
                  all_parts: bool = False) -> FileRecord | None:
        """The live record with, in .parts, that one part (if stored), every part
        (all_parts), or none (the default: cheap for files of many parts)."""

    async def put_part(self, file_id: bytes, request: PutRequest
                       ) -> tuple[str, PartInfo | None]:
        """Atomically check the bounds and the caps and record (or replace) one part,
        updating the file's charge and reservation (see the module docstring); return the
        PutOutcome and the replaced part (whose chunk the caller deletes), if any.
        On any outcome but OK nothing changes."""

    async def delete(self, file_id: bytes) -> FileRecord | None:
        """Remove the record, releasing its charge; the removed record, or None."""

    async def usage(self, sender: bytes | None = None, client: str | None = None) -> int:
        """Bytes charged plus reserved for the live files of sender, of client, or (neither
        given) of everyone."""

    async def reserved(self, sender: bytes | None = None, client: str | None = None) -> int:
        """The open reservations of sender, of client, or of everyone."""


class ChunkStore(Protocol):
    async def write(self, file_id: bytes, part: int, blob: bytes, data: bytes,
                    ttl: float) -> None:
        """Store a chunk completely or not at all. StoreFull when out of space."""

    async def read(self, file_id: bytes, part: int, blob: bytes) -> bytes | None: ...

    async def remove(self, file_id: bytes, part: int, blob: bytes) -> None:
        """Delete one chunk (gone already is fine)."""

    async def remove_file(self, file_id: bytes, record: FileRecord | None) -> None:
        """Delete every chunk of a file."""

    async def sweep(self, lookup: Callable[[bytes], Awaitable[FileRecord | None]],
                    older_than: float) -> int:
        """Delete chunks that no live record refers to and that were written before
        older_than (Unix seconds); return how many were deleted."""
