"""The relay's storage: one interface per domain, a memory and a Redis implementation of each.

`open_store(config, reactor)` picks the implementation from the store URL and returns a
`Store` holding one object per domain plus a service that runs the store's background work
(memory sweeps, Redis connections); add that service to the application.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
from twisted.application.service import IService

from relay.config import RelayConfig
from relay.store.interfaces.mailbox import MailboxStore
from relay.store.interfaces.sessions import SessionStore


@attrs.define
class Store:
    sessions: SessionStore
    mailbox: MailboxStore
    service: IService
    kind: str
    # File metadata and rendezvous channels; typed by their own interface modules.
    files: Any = None
    channels: Any = None
    # What the store holds and may hold, for a periodic log line (see `Store.usage`).
    usage_source: Callable[[], dict[str, Any]] | None = None

    def usage(self) -> dict[str, Any]:
        """Bytes used and the limit uploads are refused at, plus what the kind knows more.

        Memory: {"kind", "used_bytes" (messages and file data), "limit_bytes",
        "message_bytes", "messages"}. Redis: {"kind", "used_bytes" (Redis's used_memory at
        the last reading, None before one), "limit_bytes" (None: no limit known),
        "maxmemory", "policy"}. Cheap: reads counters, sends nothing to Redis.
        """
        return self.usage_source() if self.usage_source is not None else {"kind": self.kind}


def open_store(config: RelayConfig, reactor: Any) -> Store:
    if config.store.url == "memory":
        from relay.store.memory import MemoryBackend, open_memory_tables

        backend = MemoryBackend(config.store, reactor)
        tables = open_memory_tables(backend)
        return Store(service=backend.make_service(), kind="memory", usage_source=backend.usage,
                     **tables)
    from relay.store.redis import RedisBackend, open_redis_tables

    backend = RedisBackend(config.store, reactor)
    tables = open_redis_tables(backend)
    return Store(service=backend.make_service(), kind="redis", usage_source=backend.usage,
                 **tables)
