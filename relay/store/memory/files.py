"""File metadata (and, for chunk_store = "store", chunks) in process memory.

The charging model is the interface's (relay.store.interfaces.files): three ledgers per
file (its sender, its client, everyone), each summing stored charges and open reservations.
Two heaps of deadlines release what expires: files (their whole charge) and reservations.
"""

from __future__ import annotations

import heapq
from collections.abc import Awaitable, Callable, Hashable

import attrs

from relay.store.errors import StoreFull
from relay.store.interfaces.files import (
    COMPLETE,
    FileCaps,
    FileRecord,
    PartInfo,
    PutOutcome,
    PutRequest,
)
from relay.store.memory.budget import ByteBudget

# Bookkeeping bytes per record and per part, counted against the memory store's budget.
_RECORD_OVERHEAD = 300
_PART_OVERHEAD = 100
_EVERYONE = ("all",)


@attrs.define
class _Entry:
    record: FileRecord  # its .parts is unused: the parts live in `parts` below
    deadline: float
    parts: dict[int, PartInfo] = attrs.field(factory=dict)
    # What each stored part is charged.
    charges: dict[int, int] = attrs.field(factory=dict)


@attrs.define
class _Ledger:
    charged: int = 0
    reserved: int = 0


def _ledger_keys(record: FileRecord) -> list[Hashable]:
    return [("sender", record.sender), ("client", record.client), _EVERYONE]


def _over_caps(ledgers: list[_Ledger], grow: int, grow_reserved: int,
               caps: FileCaps) -> str | None:
    """Why growing these ledgers (sender, client, everyone) is refused, or None."""
    sender, client, everyone = ledgers
    if grow > 0:
        if sender.charged + sender.reserved + grow > caps.sender_bytes:
            return "this identity's file storage quota is used up"
        if client.charged + client.reserved + grow > caps.client_bytes:
            return "this client's file storage quota is used up"
        if everyone.charged + everyone.reserved + grow > caps.total_bytes:
            return "the relay's file storage is full"
    if grow_reserved > 0:
        if sender.reserved + grow_reserved > caps.sender_reserved:
            return "this identity has too many uploads open"
        if client.reserved + grow_reserved > caps.client_reserved:
            return "this client has too many uploads open"
        if everyone.reserved + grow_reserved > caps.total_reserved:
            return "the relay has too many uploads open"
    return None


class MemoryFileStore:
    def __init__(self, seconds: Callable[[], float], budget: ByteBudget) -> None:
        self._seconds = seconds
        self._budget = budget
        self._entries: dict[bytes, _Entry] = {}
        # (deadline, file_id); rows whose deadline no longer matches the entry are stale.
        self._deadlines: list[tuple[float, bytes]] = []
        # (reserved_until, file_id), stale the same way.
        self._reservations: list[tuple[float, bytes]] = []
        self._ledgers: dict[Hashable, _Ledger] = {}
        self.chunks = MemoryChunkStore(seconds, budget)

    # -- expiry and accounting ------------------------------------------------------------

    def _ledgers_of(self, record: FileRecord) -> list[_Ledger]:
        return [self._ledgers.get(key) or _Ledger() for key in _ledger_keys(record)]

    def _charge(self, record: FileRecord, charged: int, reserved: int) -> None:
        """Add (or with negative amounts, release) to the record's three ledgers."""
        for key in _ledger_keys(record):
            ledger = self._ledgers.setdefault(key, _Ledger())
            ledger.charged += charged
            ledger.reserved += reserved
            if not (ledger.charged or ledger.reserved):
                del self._ledgers[key]

    def _set_deadline(self, file_id: bytes, entry: _Entry, ttl: float) -> None:
        entry.deadline = self._seconds() + ttl
        heapq.heappush(self._deadlines, (entry.deadline, file_id))

    def _reserve(self, file_id: bytes, entry: _Entry, reserved: int, until: float) -> None:
        entry.record = attrs.evolve(entry.record, reserved=reserved, reserved_until=until)
        if reserved:
            heapq.heappush(self._reservations, (until, file_id))

    def _drop(self, file_id: bytes) -> _Entry:
        entry = self._entries.pop(file_id)
        record = entry.record
        self._charge(record, -record.charged, -record.reserved)
        self._budget.release(_RECORD_OVERHEAD + _PART_OVERHEAD * len(entry.parts))
        return entry

    def _lapse(self, entry: _Entry) -> None:
        record = entry.record
        self._charge(record, 0, -record.reserved)
        entry.record = attrs.evolve(record, reserved=0)

    def _live(self, file_id: bytes) -> _Entry | None:
        entry = self._entries.get(file_id)
        if entry is not None and entry.deadline <= self._seconds():
            self._drop(file_id)
            return None
        return entry

    def sweep(self) -> None:
        now = self._seconds()
        while self._deadlines and self._deadlines[0][0] <= now:
            deadline, file_id = heapq.heappop(self._deadlines)
            entry = self._entries.get(file_id)
            if entry is not None and entry.deadline == deadline:
                self._drop(file_id)
        while self._reservations and self._reservations[0][0] <= now:
            until, file_id = heapq.heappop(self._reservations)
            entry = self._entries.get(file_id)
            if entry is not None and entry.record.reserved and \
                    entry.record.reserved_until == until:
                self._lapse(entry)
        if len(self._deadlines) > 2 * len(self._entries) + 1024:
            self._deadlines = [(e.deadline, i) for i, e in self._entries.items()]
            heapq.heapify(self._deadlines)
        if len(self._reservations) > 2 * len(self._entries) + 1024:
            self._reservations = [(e.record.reserved_until, i)
                                  for i, e in self._entries.items() if e.record.reserved]
            heapq.heapify(self._reservations)

    # -- the FileStore interface ----------------------------------------------------------

    async def create(self, record: FileRecord, ttl: float, stall_ttl: float,
                     caps: FileCaps) -> tuple[FileRecord, bool]:
        existing = self._live(record.file_id)
        if existing is not None:
            return existing.record, False
        self.sweep()  # expired files and lapsed reservations must not hold their charge
        why = _over_caps(self._ledgers_of(record), record.reserved, record.reserved, caps)
        if why:
            raise StoreFull(why)
        self._budget.reserve(_RECORD_OVERHEAD)
        now = self._seconds()
        record = attrs.evolve(record, charged=0, bytes_stored=0, part_count=0, max_part=-1,
                              last_part=None, parts={}, reserved_until=0.0)
        entry = _Entry(record, 0.0)
        self._entries[record.file_id] = entry
        self._set_deadline(record.file_id, entry, ttl)
        self._reserve(record.file_id, entry, record.reserved, now + min(stall_ttl, ttl))
        self._charge(record, 0, record.reserved)
        return entry.record, True

    async def get(self, file_id: bytes, part: int | None = None,
                  all_parts: bool = False) -> FileRecord | None:
        entry = self._live(file_id)
        if entry is None:
            return None
        if all_parts:
            parts = dict(entry.parts)
        elif part is not None and part in entry.parts:
            parts = {part: entry.parts[part]}
        else:
            parts = {}
        return attrs.evolve(entry.record, parts=parts)

    async def put_part(self, file_id: bytes, request: PutRequest
                       ) -> tuple[str, PartInfo | None]:
        self.sweep()
        entry = self._live(file_id)
        if entry is None:
            return PutOutcome.NOT_FOUND, None
        record = entry.record
        part = request.part
        if part >= request.max_parts:
            return PutOutcome.BAD_PART, None
        if record.last_part is not None and (part > record.last_part or
                                             (request.last and part != record.last_part)):
            return PutOutcome.BAD_PART, None
        if request.last and record.max_part > part:
            return PutOutcome.BAD_PART, None
        old = entry.parts.get(part)
        if old is None and len(entry.parts) >= request.max_parts:
            return PutOutcome.BAD_PART, None
        stored = record.bytes_stored + request.info.size - (old.size if old else 0)
        count = len(entry.parts) + (old is None)
        if stored > request.max_bytes + request.part_overhead * count:
            return PutOutcome.TOO_MANY_BYTES, None
        charged = record.charged + request.charge - entry.charges.get(part, 0)
        updated = attrs.evolve(
            record, bytes_stored=stored, charged=charged,
            part_count=count, max_part=max(record.max_part, part),
            last_part=part if request.last else record.last_part)
        complete = updated.status == COMPLETE
        now = self._seconds()
        # A new part (progress) renews the reservation; a re-sent one only shrinks it.
        room = max(0, record.max_charge - charged)
        if complete:
            reserved, until = 0, 0.0
        elif old is None:
            reserved = min(request.caps.window, room)
            until = now + min(request.stall_ttl, request.ttl)
        else:
            reserved, until = min(record.reserved, room), record.reserved_until
        grow_reserved = reserved - record.reserved
        grow = charged - record.charged + grow_reserved
        why = _over_caps(self._ledgers_of(record), grow, grow_reserved, request.caps)
        if why:
            return PutOutcome.FULL, None
        if old is None:
            self._budget.reserve(_PART_OVERHEAD)
        entry.parts[part] = request.info
        entry.charges[part] = request.charge
        self._charge(record, charged - record.charged, grow_reserved)
        entry.record = updated
        self._reserve(file_id, entry, reserved, until if reserved else 0.0)
        self._set_deadline(file_id, entry, request.complete_ttl if complete else request.ttl)
        return PutOutcome.OK, old

    async def delete(self, file_id: bytes) -> FileRecord | None:
        entry = self._live(file_id)
        if entry is None:
            return None
        self._drop(file_id)
        return attrs.evolve(entry.record, parts=entry.parts)

    def _ledger(self, sender: bytes | None, client: str | None) -> _Ledger:
        if sender is not None and client is not None:
            raise ValueError("usage of a sender or of a client, not both")
        self.sweep()
        key: Hashable = _EVERYONE if sender is None and client is None else \
            ("sender", sender) if sender is not None else ("client", client)
        return self._ledgers.get(key) or _Ledger()

    async def usage(self, sender: bytes | None = None, client: str | None = None) -> int:
        ledger = self._ledger(sender, client)
        return ledger.charged + ledger.reserved

    async def reserved(self, sender: bytes | None = None, client: str | None = None) -> int:
        return self._ledger(sender, client).reserved


class MemoryChunkStore:
    """Chunks in memory, counted against the memory store's byte budget."""

    def __init__(self, seconds: Callable[[], float], budget: ByteBudget) -> None:
        self._seconds = seconds
        self._budget = budget
        # file_id -> {(part, blob): (chunk, written at)}
        self._files: dict[bytes, dict[tuple[int, bytes], tuple[bytes, float]]] = {}

    async def write(self, file_id: bytes, part: int, blob: bytes, data: bytes,
                    ttl: float) -> None:
        self._budget.reserve(len(data))
        self._files.setdefault(file_id, {})[(part, blob)] = (data, self._seconds())

    async def read(self, file_id: bytes, part: int, blob: bytes) -> bytes | None:
        found = self._files.get(file_id, {}).get((part, blob))
        return found[0] if found else None

    async def remove(self, file_id: bytes, part: int, blob: bytes) -> None:
        chunks = self._files.get(file_id)
        found = chunks.pop((part, blob), None) if chunks else None
        if found:
            self._budget.release(len(found[0]))
        if chunks == {}:
            del self._files[file_id]

    async def remove_file(self, file_id: bytes, record: FileRecord | None) -> None:
        for data, _ in self._files.pop(file_id, {}).values():
            self._budget.release(len(data))

    async def sweep(self, lookup: Callable[[bytes], Awaitable[FileRecord | None]],
                    older_than: float) -> int:
        removed = 0
        for file_id in list(self._files):
            record = await lookup(file_id)
            live = {(p, i.blob) for p, i in record.parts.items()} if record else set()
            for key, (_, written) in list(self._files.get(file_id, {}).items()):
                if key not in live and written < older_than:
                    await self.remove(file_id, *key)
                    removed += 1
        return removed
