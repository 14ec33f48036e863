"""A dict whose entries expire, with O(log n) bookkeeping so sweeps touch only what expired."""

from __future__ import annotations

import heapq
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class ExpiringMap(Generic[K, V]):
    """Entries vanish at their deadline: reads check it, `sweep()` frees the memory."""

    def __init__(self, seconds: Callable[[], float]) -> None:
        self._seconds = seconds
        self._entries: dict[K, tuple[float, V]] = {}
        # (deadline, sequence, key); stale rows (replaced or deleted keys) are skipped.
        self._deadlines: list[tuple[float, int, K]] = []
        self._sequence = 0

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, key: K, value: V, ttl: float) -> None:
        deadline = self._seconds() + ttl
        self._entries[key] = (deadline, value)
        self._sequence += 1
        heapq.heappush(self._deadlines, (deadline, self._sequence, key))

    def add_if_absent(self, key: K, value: V, ttl: float) -> bool:
        if self.get(key) is not None:
            return False
        self.put(key, value, ttl)
        return True

    def get(self, key: K) -> V | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[0] <= self._seconds():
            del self._entries[key]
            return None
        return entry[1]

    def pop(self, key: K) -> V | None:
        value = self.get(key)
        if value is not None:
            del self._entries[key]
        return value

    def sweep(self) -> int:
        """Drop every expired entry; return how many."""
        now = self._seconds()
        dropped = 0
        while self._deadlines and self._deadlines[0][0] <= now:
            deadline, _, key = heapq.heappop(self._deadlines)
            entry = self._entries.get(key)
            if entry is not None and entry[0] == deadline:
                del self._entries[key]
                dropped += 1
        # Replaced keys leave stale heap rows behind; rebuild when they dominate.
        if len(self._deadlines) > 2 * len(self._entries) + 1024:
            self._deadlines = [(d, i, k) for i, (k, (d, _)) in enumerate(self._entries.items())]
            heapq.heapify(self._deadlines)
        return dropped
