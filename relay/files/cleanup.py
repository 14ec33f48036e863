"""The periodic file cleanup: removes chunks of expired, deleted and stalled files, chunks
replaced by re-sent parts, and leftovers of interrupted writes. Runs at start-up, then every
cleanup_interval; an error is logged and the next round runs as planned."""

from __future__ import annotations

from twisted.application.internet import TimerService
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from relay.store.interfaces.files import ChunkStore, FileRecord, FileStore

log = Logger(namespace="relay.files")

# A chunk is written before its record points at it; only chunks older than this may be
# taken for orphans. Far above the store's operation timeout and any request's duration.
ORPHAN_GRACE = 15 * 60.0


class FileCleanup:
    def __init__(self, files: FileStore, chunks: ChunkStore, clock: IReactorTime,
                 interval: float) -> None:
        self.files = files
        self.chunks = chunks
        self.clock = clock
        self.interval = interval
        self.rounds = 0
        self.failures = 0

    async def _lookup(self, file_id: bytes) -> FileRecord | None:
        return await self.files.get(file_id, all_parts=True)

    async def run_once(self) -> int:
        """One round; returns how many chunks were removed."""
        removed = await self.chunks.sweep(self._lookup, self.clock.seconds() - ORPHAN_GRACE)
        self.rounds += 1
        if removed:
            log.info("file cleanup removed {count} chunks", count=removed)
        return removed

    def _round(self) -> Deferred:
        d = Deferred.fromCoroutine(self.run_once())

        def failed(failure) -> None:
            # Swallowed on purpose: a failure would stop the TimerService's loop for good.
            self.failures += 1
            log.failure("file cleanup failed; retrying next round", failure)

        return d.addErrback(failed)

    def make_service(self) -> TimerService:
        # TimerService calls _round as soon as it starts, then every interval.
        service = TimerService(self.interval, self._round)
        service.clock = self.clock
        service.setName("file-cleanup")
        return service
