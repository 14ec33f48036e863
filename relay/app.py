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
    return RelayApp(config, store, RelayRoot(children), processor, services)
