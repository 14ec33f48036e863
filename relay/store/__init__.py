"""The relay's storage: one interface per domain, a memory and a Redis implementation of each.

`open_store(config, reactor)` picks the implementation from the store URL and returns a
`Store` holding one object per domain plus a service that runs the store's background work
(memory sweeps, Redis connections); add that service to the application.
"""

from __future__ import annotations

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


def open_store(config: RelayConfig, reactor: Any) -> Store:
    if config.store.url == "memory":
        from relay.store.memory import MemoryBackend, open_memory_tables

        backend = MemoryBackend(config.store, reactor)
        tables = open_memory_tables(backend)
        return Store(service=backend.make_service(), kind="memory", **tables)
    from relay.store.redis import RedisBackend, open_redis_tables

    backend = RedisBackend(config.store, reactor)
    tables = open_redis_tables(backend)
    return Store(service=backend.make_service(), kind="redis", **tables)
