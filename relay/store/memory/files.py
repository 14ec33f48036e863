"""File metadata (and, for chunk_store = "store", chunks) in process memory."""

from __future__ import annotations

import heapq
from collections.abc import Awaitable, Callable

import attrs

from relay.store.errors import StoreFull
from relay.store.interfaces.files import FileRecord, PartInfo, PutOutcome, PutRequest
from relay.store.memory.budget import ByteBudget

# Bookkeeping bytes per record and per part, counted against the memory store's budget.
_RECORD_OVERHEAD = 300
_PART_OVERHEAD = 100


@attrs.define
class _Entry:
    record: FileRecord  # its .parts is unused: the parts live in `parts` below
    deadline: float
    parts: dict[int, PartInfo] = attrs.field(factory=dict)


class MemoryFileStore:
    def __init__(self, seconds: Callable[[], float], budget: ByteBudget) -> None:
        self._seconds = seconds
        self._budget = budget
        self._entries: dict[bytes, _Entry] = {}
        # (deadline, file_id); rows whose deadline no longer matches the entry are stale.
        self._deadlines: list[tuple[float, bytes]] = []
        self._charged: dict[bytes, int] = {}
        self._charged_total = 0
        self.chunks = MemoryChunkStore(seconds, budget)

    # -- expiry and accounting ------------------------------------------------------------

    def _set_deadline(self, file_id: bytes, entry: _Entry, ttl: float) -> None:
        entry.deadline = self._seconds() + ttl
        heapq.heappush(self._deadlines, (entry.deadline, file_id))

    def _drop(self, file_id: bytes) -> _Entry:
        entry = self._entries.pop(file_id)
        record = entry.record
        self._charged_total -= record.charge
        left = self._charged[record.sender] - record.charge
        if left:
            self._charged[record.sender] = left
        else:
            del self._charged[record.sender]
        self._budget.release(_RECORD_OVERHEAD + _PART_OVERHEAD * len(entry.parts))
        return entry

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
        if len(self._deadlines) > 2 * len(self._entries) + 1024:
            self._deadlines = [(e.deadline, i) for i, e in self._entries.items()]
            heapq.heapify(self._deadlines)

    # -- the FileStore interface ----------------------------------------------------------

    async def create(self, record: FileRecord, ttl: float, sender_cap: int,
                     total_cap: int) -> tuple[FileRecord, bool]:
        existing = self._live(record.file_id)
        if existing is not None:
            return existing.record, False
        self.sweep()  # expired files must not hold their charge
        if self._charged.get(record.sender, 0) + record.charge > sender_cap:
            raise StoreFull("this identity's file storage quota is used up")
        if self._charged_total + record.charge > total_cap:
            raise StoreFull("the relay's file storage is full")
        self._budget.reserve(_RECORD_OVERHEAD)
        record = attrs.evolve(record, bytes_stored=0, part_count=0, max_part=-1,
                              last_part=None, parts={})
        entry = _Entry(record, 0.0)
        self._entries[record.file_id] = entry
        self._set_deadline(record.file_id, entry, ttl)
        self._charged[record.sender] = self._charged.get(record.sender, 0) + record.charge
        self._charged_total += record.charge
        return record, True

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
        stored = record.bytes_stored + request.info.size - (old.size if old else 0)
        if stored > request.max_bytes:
            return PutOutcome.TOO_MANY_BYTES, None
        if old is None:
            self._budget.reserve(_PART_OVERHEAD)
        entry.parts[part] = request.info
        entry.record = attrs.evolve(
            record, bytes_stored=stored, part_count=len(entry.parts),
            max_part=max(record.max_part, part),
            last_part=part if request.last else record.last_part)
        complete = entry.record.status == "COMPLETE"
        self._set_deadline(file_id, entry, request.complete_ttl if complete else request.ttl)
        return PutOutcome.OK, old

    async def delete(self, file_id: bytes) -> FileRecord | None:
        entry = self._live(file_id)
        if entry is None:
            return None
        self._drop(file_id)
        return attrs.evolve(entry.record, parts=entry.parts)

    async def usage(self, sender: bytes | None = None) -> int:
        self.sweep()
        return self._charged_total if sender is None else self._charged.get(sender, 0)


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
