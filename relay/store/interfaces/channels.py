"""Rendezvous channels: small versioned records with a TTL, and per-client join counters.

The store treats a channel record as opaque bytes; the rendezvous state machine owns their
meaning. Updates are compare-and-set on a version the store keeps, so several relay nodes
sharing one store never lose a write: read, compute the new state, `replace` if the version
is unchanged, otherwise read again.

Each channel is counted against the client that created it (its sender's client key): the
store refuses a creation beyond `max_per_client` open channels of that client, atomically,
so nodes sharing the store cannot race past the cap.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from relay.store.errors import StoreError


class ClientChannelsFull(StoreError):
    """The creating client already holds its share of open channels (the registry answers
    429). Nothing was stored."""


class ChangeFeed(Protocol):
    """Names of channels changed by any node sharing the store, as they change."""

    # True while notices flow; while False (connecting, reconnecting) a change may be missed
    # and whoever waits for one must look at the store itself now and then.
    live: bool

    def start(self) -> None: ...

    def stop(self) -> object: ...


class ChannelStore(Protocol):
    # True when the store is shared with other relay processes (Redis): long-polls must then
    # also learn of changes made through other nodes (`change_feed`).
    shared: bool

    async def create(self, name: str, record: bytes, ttl: float, max_channels: int,
                     client: str = "", max_per_client: int = 0) -> bool:
        """Store a new channel at version 1 for ttl seconds; False if the name is taken.

        Raises StoreFull, storing nothing, when max_channels live channels already exist,
        and ClientChannelsFull when `client` already holds max_per_client live channels
        (0: no per-client cap).
        """

    async def load(self, name: str) -> tuple[bytes, int] | None:
        """(record, version) of a live channel, or None."""

    async def replace(self, name: str, version: int, record: bytes, ttl: float,
                      client: str = "") -> bool:
        """Store record at version + 1 with a new ttl if the channel is still at version;
        False (nothing stored) if it changed or vanished meanwhile. ttl <= 0 deletes it.
        `client` is the one it was created for: its count follows the new ttl."""

    async def count_hit(self, key: str, window: float) -> int:
        """Count one more event for key in the current window of that many seconds; return
        the count so far in this window (the counter expires with the window)."""

    def change_feed(self, on_change: Callable[[str, int | None], None],
                    on_live: Callable[[bool], None]) -> ChangeFeed | None:
        """For a shared store: a feed calling on_change(name, new version, or None when
        deleted) for every stored change by any node, and on_live(state) when it goes up or
        down. None for a store only this process uses (its changes all go through this
        process's registry)."""
