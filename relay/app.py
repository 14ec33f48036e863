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
from relay.web.root import RelayRoot


@attrs.define
class RelayApp:
    config: RelayConfig
    store: Store
    root: Resource
    processor: CommandProcessor
    # Background services (store sweeps and connections, file cleanup, staple listener).
    services: list[IService]


def build_relay(config: RelayConfig, reactor: Any, store: Store | None = None) -> RelayApp:
    store = store or open_store(config, reactor)
    children, processor = build_mailbox(config, store, reactor)
    services: list[IService] = [store.service]
    if config.files.enabled:
        from relay.files import install_file_api

        services += install_file_api(config, store, processor, reactor)
    if config.rendezvous.enabled:
        from relay.rendezvous.service import make_rendezvous

        rendezvous_children, rendezvous_service = make_rendezvous(config, store, reactor)
        children.update(rendezvous_children)
        services.append(rendezvous_service)
    return RelayApp(config, store, RelayRoot(children), processor, services)
