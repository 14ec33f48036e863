"""The memory store's byte budget, shared by every table that holds client data."""

from __future__ import annotations

from relay.store.errors import StoreFull


class ByteBudget:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def reserve(self, size: int) -> None:
        """Account for size more bytes, or raise StoreFull and account for nothing."""
        if self.used + size > self.limit:
            raise StoreFull("the relay's memory store is full")
        self.used += size

    def release(self, size: int) -> None:
        self.used -= size
