"""Wiring: the HTTP children (/join, /channel) and the staple listener service."""

from __future__ import annotations

from typing import Any

from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import Deferred
from twisted.web.resource import Resource

from relay.config import RelayConfig
from relay.rendezvous.http import make_resources
from relay.rendezvous.registry import ChannelRegistry
from relay.rendezvous.staple import StapleListener
from relay.store import Store
from relay.web.listen import ListeningService


class StapleService(ListeningService):
    """Listens on config.rendezvous.staple_endpoint; knows its port once listening. Binds
    in privilegedStartService; a port that cannot be bound stops the relay at start."""

    def __init__(self, endpoint: str, listener: StapleListener, reactor: Any) -> None:
        super().__init__("staple connections", endpoint, listener, reactor)
        self.listener = listener

    def stopService(self) -> Deferred | None:
        self.listener.drop_all()
        return super().stopService()


class RegistryService(Service):
    """Runs the registry's background part: the shared store's change feed."""

    def __init__(self, registry: ChannelRegistry) -> None:
        self.registry = registry

    def startService(self) -> None:
        super().startService()
        self.registry.start()

    def stopService(self) -> Any:
        super().stopService()
        return self.registry.stop()


def make_rendezvous(config: RelayConfig, store: Store,
                    reactor: Any) -> tuple[dict[bytes, Resource], IService]:
    """The HTTP children to put at the root and a MultiService with the staple listener."""
    registry = ChannelRegistry(config.rendezvous, store.channels, reactor,
                               client_key=config.http.client_key)
    listener = StapleListener(config.rendezvous, registry, reactor)
    staple = StapleService(config.rendezvous.staple_endpoint, listener, reactor)
    service = MultiService()
    RegistryService(registry).setServiceParent(service)
    staple.setServiceParent(service)
    # For tests and tools: reach the pieces from the service.
    service.registry = registry  # type: ignore[attr-defined]
    service.staple = staple  # type: ignore[attr-defined]
    return make_resources(config, registry, staple.port_number), service
