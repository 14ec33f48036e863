"""The relay assembled: store, mailbox API, file API and rendezvous, without listening.

Tests use `build_relay` directly (e.g. the root resource under treq's StubTreq);
relay.service adds the listening endpoints for twistd.
"""

from __future__ import annotations

from typing import Any

import attrs
from twisted.application.service import IService
from twisted.web.resource import Resource

from relay.config import RelayConfig
from relay.mailbox.commands import CommandProcessor
from relay.mailbox.resource import build_mailbox
from relay.store import Store, open_store
from relay.usage import UsageLog
from relay.web.root import RelayRoot


@attrs.define
class RelayApp:
    config: RelayConfig
    store: Store
    root: Resource
    processor: CommandProcessor
    # Background services (store sweeps and connections, file cleanup, staple listener).
    services: list[IService]
    # Figures logged at intervals; relay.service adds the HTTP site's.
    usage: UsageLog


def build_relay(config: RelayConfig, reactor: Any, store: Store | None = None) -> RelayApp:
    store = store or open_store(config, reactor)
    children, processor, handshake = build_mailbox(config, store, reactor)
    services: list[IService] = [store.service]
    usage = UsageLog()
    usage.add("store", store.usage)
    usage.add("pow", lambda: {"difficulty": handshake.difficulty.current(),
                              "handshakes_per_s": handshake.difficulty.rate()})
    if config.files.enabled:
        from relay.files import install_file_api

        services += install_file_api(config, store, processor, reactor)
        usage.add("files", lambda: _file_usage(store))
    if config.rendezvous.enabled:
        from relay.rendezvous.service import make_rendezvous

        rendezvous_children, rendezvous_service = make_rendezvous(config, store, reactor)
        children.update(rendezvous_children)
        services.append(rendezvous_service)
        usage.add("rendezvous", lambda: _rendezvous_usage(rendezvous_service))
    if config.store.usage_log_interval > 0:
        services.append(usage.make_service(config.store.usage_log_interval, reactor))
    return RelayApp(config, store, RelayRoot(children), processor, services, usage)


async def _file_usage(store: Store) -> dict[str, int]:
    return {"bytes": await store.files.usage(), "reserved": await store.files.reserved()}


def _rendezvous_usage(service: Any) -> dict[str, int]:
    listener = service.staple.listener
    return {"waits": service.registry.waiting(), "pairs": len(listener.pairs),
            "unpaired": len(listener.unpaired)}
