"""Rendezvous channels: small versioned records with a TTL, and per-address join counters.

The store treats a channel record as opaque bytes; the rendezvous state machine owns their
meaning. Updates are compare-and-set on a version the store keeps, so several relay nodes
sharing one store never lose a write: read, compute the new state, `replace` if the version
is unchanged, otherwise read again.
"""

from __future__ import annotations

from typing import Protocol


class ChannelStore(Protocol):
    # True when the store is shared with other relay processes (Redis): long-polls must then
    # also look at the store, since a change may arrive through another node.
    shared: bool

    async def create(self, name: str, record: bytes, ttl: float, max_channels: int) -> bool:
        """Store a new channel at version 1 for ttl seconds; False if the name is taken.

        Raises StoreFull, storing nothing, when max_channels live channels already exist.
        """

    async def load(self, name: str) -> tuple[bytes, int] | None:
        """(record, version) of a live channel, or None."""

    async def replace(self, name: str, version: int, record: bytes, ttl: float) -> bool:
        """Store record at version + 1 with a new ttl if the channel is still at version;
        False (nothing stored) if it changed or vanished meanwhile."""

    async def count_hit(self, key: str, window: float) -> int:
        """Count one more event for key in the current window of that many seconds; return
        the count so far in this window (the counter expires with the window)."""
