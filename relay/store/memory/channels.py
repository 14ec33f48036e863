"""Rendezvous channels and join counters in process memory."""

from __future__ import annotations

from collections.abc import Callable

from relay.store.errors import StoreFull
from relay.store.memory.expiring import ExpiringMap


class MemoryChannelStore:
    shared = False

    def __init__(self, seconds: Callable[[], float]) -> None:
        self._seconds = seconds
        self.channels: ExpiringMap[str, tuple[bytes, int]] = ExpiringMap(seconds)
        self.hits: ExpiringMap[tuple[str, int], int] = ExpiringMap(seconds)

    async def create(self, name: str, record: bytes, ttl: float, max_channels: int) -> bool:
        if self.channels.get(name) is not None:
            return False
        if len(self.channels) >= max_channels:
            self.channels.sweep()  # expired entries still count until swept
            if len(self.channels) >= max_channels:
                raise StoreFull("too many open channels")
        self.channels.put(name, (record, 1), ttl)
        return True

    async def load(self, name: str) -> tuple[bytes, int] | None:
        return self.channels.get(name)

    async def replace(self, name: str, version: int, record: bytes, ttl: float) -> bool:
        current = self.channels.get(name)
        if current is None or current[1] != version:
            return False
        if ttl <= 0:
            self.channels.pop(name)
        else:
            self.channels.put(name, (record, version + 1), ttl)
        return True

    async def count_hit(self, key: str, window: float) -> int:
        now = self._seconds()
        index = int(now // window)
        slot = (key, index)
        count = (self.hits.get(slot) or 0) + 1
        self.hits.put(slot, count, (index + 1) * window - now)
        return count

    def sweep(self) -> None:
        self.channels.sweep()
        self.hits.sweep()
