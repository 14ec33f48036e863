"""The memory store's byte budget, shared by every table that holds client data."""

from __future__ import annotations

from relay.store.errors import StoreFull


class ByteBudget:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def reserve(self, size: int, freeing: int = 0) -> None:
        """Account for size more bytes, or raise StoreFull and account for nothing.

        `freeing` is what the caller is about to release for this (a replaced record): the
        check counts only the difference, the caller still releases it itself.
        """
        if self.used - freeing + size > self.limit:
            raise StoreFull("the relay's memory store is full")
        self.used += size

    def release(self, size: int) -> None:
        self.used -= size
