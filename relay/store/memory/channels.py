"""Rendezvous channels, per-client channel counts and join counters in process memory.

Sized for many long-lived channels (every stapled pair keeps one until it ends): a change
that keeps a channel's deadline, a change that pushes it back (a stapled pair's lease
renewal), and every count after a window's first, update the stored entry in place, so the
expiry heap holds one row per entry rather than one per change.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable

from relay.store.errors import StoreFull
from relay.store.interfaces.channels import ChangeFeed, ClientChannelsFull
from relay.store.memory.expiring import ExpiringMap

# Deadlines closer than this are "the same": a replace recomputes the channel's unchanged
# deadline from its ttl, a few microseconds off on a real clock.
SAME_DEADLINE = 1.0


class _Stored:
    # row: the deadline of the entry's row in the expiry heap (earlier than `deadline` once
    # the deadline was pushed back in place).
    __slots__ = ("record", "version", "deadline", "client", "row")

    def __init__(self, record: bytes, version: int, client: str) -> None:
        self.record = record
        self.version = version
        self.client = client
        self.deadline = self.row = 0.0


class _ChannelMap(ExpiringMap[str, _Stored]):
    """An ExpiringMap whose deadlines can also be pushed back in place: the entry keeps its
    heap row, and the sweep files it again under the later deadline when the row comes up."""

    def put(self, key: str, value: _Stored, ttl: float) -> None:
        super().put(key, value, ttl)
        value.deadline = value.row = self._entries[key][0]

    def extend(self, key: str, value: _Stored, deadline: float) -> None:
        self._entries[key] = (deadline, value)
        value.deadline = deadline

    def sweep(self) -> int:
        """ExpiringMap.sweep, plus filing pushed-back entries again when their row is due."""
        now = self._seconds()
        heap = self._deadlines
        dropped = 0
        while heap and heap[0][0] <= now:
            row, _, key = heapq.heappop(heap)
            entry = self._entries.get(key)
            if entry is None:
                continue
            deadline, value = entry
            if deadline <= now:
                del self._entries[key]
                dropped += 1
            elif value.row == row:  # its deadline was pushed back
                self._sequence += 1
                heapq.heappush(heap, (deadline, self._sequence, key))
                value.row = deadline
            # else: a stale row of a replaced entry
        if len(heap) > 2 * len(self._entries) + 1024:
            self._deadlines = [(d, i, k) for i, (k, (d, _)) in enumerate(self._entries.items())]
            heapq.heapify(self._deadlines)
            for deadline, value in self._entries.values():
                value.row = deadline
        return dropped


class _Count:
    __slots__ = ("hits",)

    def __init__(self) -> None:
        self.hits = 0


class MemoryChannelStore:
    shared = False

    def __init__(self, seconds: Callable[[], float]) -> None:
        self._seconds = seconds
        self.channels = _ChannelMap(seconds)
        self.hits: ExpiringMap[tuple[str, int], _Count] = ExpiringMap(seconds)
        # Names of the channels each client created; stale names (expired, deleted, or the
        # name reused by another client) are pruned when counted and on sweeps.
        self.by_client: dict[str, set[str]] = {}

    async def create(self, name: str, record: bytes, ttl: float, max_channels: int,
                     client: str = "", max_per_client: int = 0) -> bool:
        if self.channels.get(name) is not None:
            return False
        if client and max_per_client and self.client_count(client) >= max_per_client:
            raise ClientChannelsFull("this client holds too many open channels")
        if len(self.channels) >= max_channels:
            self.channels.sweep()  # expired entries still count until swept
            if len(self.channels) >= max_channels:
                raise StoreFull("too many open channels")
        self.channels.put(name, _Stored(record, 1, client), ttl)
        if client:
            self.by_client.setdefault(client, set()).add(name)
        return True

    def client_count(self, client: str) -> int:
        """Live channels created by client (pruning its stale names)."""
        names = self.by_client.get(client)
        if names is None:
            return 0
        for name in [n for n in names if not self._belongs(n, client)]:
            names.discard(name)
        if not names:
            del self.by_client[client]
        return len(names)

    def _belongs(self, name: str, client: str) -> bool:
        stored = self.channels.get(name)
        return stored is not None and stored.client == client

    async def load(self, name: str) -> tuple[bytes, int] | None:
        stored = self.channels.get(name)
        return None if stored is None else (stored.record, stored.version)

    async def replace(self, name: str, version: int, record: bytes, ttl: float,
                      client: str = "") -> bool:
        stored = self.channels.get(name)
        if stored is None or stored.version != version:
            return False
        if ttl <= 0:
            self.channels.pop(name)
            return True
        deadline = self._seconds() + ttl
        if abs(deadline - stored.deadline) < SAME_DEADLINE:
            stored.record, stored.version = record, version + 1
        elif deadline > stored.deadline:
            stored.record, stored.version = record, version + 1
            self.channels.extend(name, stored, deadline)
        else:
            self.channels.put(name, _Stored(record, version + 1, stored.client), ttl)
        return True

    async def count_hit(self, key: str, window: float) -> int:
        now = self._seconds()
        index = int(now // window)
        slot = (key, index)
        count = self.hits.get(slot)
        if count is None:
            count = _Count()
            self.hits.put(slot, count, (index + 1) * window - now)
        count.hits += 1
        return count.hits

    def change_feed(self, on_change: Callable[[str, int | None], None],
                    on_live: Callable[[bool], None]) -> ChangeFeed | None:
        return None  # only this process changes these channels

    def sweep(self) -> None:
        self.channels.sweep()
        self.hits.sweep()
        for client in list(self.by_client):
            self.client_count(client)
