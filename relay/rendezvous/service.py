"""Wiring: the HTTP children (/join, /channel) and the staple listener service."""

from __future__ import annotations

from typing import Any

from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger
from twisted.web.resource import Resource

from relay.config import RelayConfig
from relay.rendezvous.http import make_resources
from relay.rendezvous.registry import ChannelRegistry
from relay.rendezvous.staple import StapleListener
from relay.store import Store

log = Logger(namespace="relay.staple")


class StapleService(Service):
    """Listens on config.rendezvous.staple_endpoint; knows its port once listening."""

    def __init__(self, endpoint: str, listener: StapleListener, reactor: Any) -> None:
        self.endpoint = endpoint
        self.listener = listener
        self.reactor = reactor
        self.port: Any = None
        self._listening: list[Deferred] = []

    def port_number(self) -> int | None:
        return None if self.port is None else self.port.getHost().port

    def when_listening(self) -> Deferred:
        """Fires with the listening port (at once if listening already)."""
        if self.port is not None:
            return succeed(self.port)
        d: Deferred = Deferred()
        self._listening.append(d)
        return d

    def startService(self) -> None:
        super().startService()
        d = serverFromString(self.reactor, self.endpoint).listen(self.listener)

        def listening(port: Any) -> None:
            self.port = port
            waiting, self._listening = self._listening, []
            for waiter in waiting:
                waiter.callback(port)

        def failed(failure: Any) -> None:
            waiting, self._listening = self._listening, []
            for waiter in waiting:
                waiter.errback(failure)
            if not waiting:
                log.failure("the staple listener could not start", failure)

        d.addCallbacks(listening, failed)

    def stopService(self) -> Deferred | None:
        super().stopService()
        self.listener.drop_all()
        port, self.port = self.port, None
        return port.stopListening() if port is not None else None


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
