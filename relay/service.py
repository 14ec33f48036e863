"""The twistd service: the relay's MultiService with its listening endpoints."""

from __future__ import annotations

from functools import partial
from typing import Any

from twisted.application.service import MultiService
from twisted.logger import Logger

from relay import __version__
from relay.app import build_relay
from relay.config import RelayConfig
from relay.web.guard import DescriptorGuardedFactory, RefusalLog
from relay.web.listen import ListenError, ListeningService, report_in_one_line
from relay.web.request import RelaySite

log = Logger(namespace="relay")


class RelayService(MultiService):
    def __init__(self, config: RelayConfig, reactor: Any) -> None:
        super().__init__()
        self.config = config
        self.app = build_relay(config, reactor)
        for service in self.app.services:
            service.setServiceParent(self)
        self.site = RelaySite(self.app.root, config.http, reactor=reactor)
        self.http = ListeningService("HTTP", config.http.endpoint, self.site, reactor)
        self.http.setServiceParent(self)
        self._guard_staple_listener(reactor)
        self.app.usage.add("http", lambda: {"connections": self.site.guard.total})
        self.admin: ListeningService | None = None
        if config.admin.endpoint:
            self._add_admin(reactor)

    def listeners(self) -> list[ListeningService]:
        """The API's listeners (HTTP, staple) that must be bound for the relay to be ready."""
        found = [self.http]
        for service in self.app.services:
            staple = getattr(service, "staple", None)
            if isinstance(staple, ListeningService):
                found.append(staple)
        return found

    def _add_admin(self, reactor: Any) -> None:
        """Metrics and health on their own endpoint; requests and connection refusals are
        counted from now on (relay.admin.requests)."""
        from relay.admin.requests import RequestStats
        from relay.admin.service import make_admin_service

        stats = RequestStats()
        self.site.request_stats = stats  # read by relay.web.respond.serve
        _count_refusals(self.site.guard.refusals, stats, "http")
        bytes_relayed = None
        for service in self.app.services:
            staple = getattr(service, "staple", None)
            if staple is not None and isinstance(staple.factory, DescriptorGuardedFactory):
                _count_refusals(staple.factory.refusals, stats, "staple")
            if staple is not None:
                bytes_relayed = partial(_bytes_relayed, staple.listener)
        self.admin = make_admin_service(self.config.admin.endpoint, stats, self.app.usage,
                                        self.app.store, self.listeners, reactor, bytes_relayed)
        self.admin.setServiceParent(self)

    def _guard_staple_listener(self, reactor: Any) -> None:
        """Staple connections take descriptors too: near the limit they are closed at once,
        sharing the HTTP site's reserve, so neither listener can starve the other (or the
        store) of descriptors."""
        for service in self.app.services:
            staple = getattr(service, "staple", None)
            if staple is not None:
                staple.factory = DescriptorGuardedFactory(
                    staple.factory, self.site.guard.descriptors, RefusalLog(reactor, "staple"))

    def privilegedStartService(self) -> None:
        # Listeners bind here, before twistd's --uid drops root; one that cannot bind stops
        # the relay with one line.
        try:
            super().privilegedStartService()
        except ListenError as e:
            report_in_one_line(e)
            raise

    def startService(self) -> None:
        c = self.config
        log.info("relay {version} starting: http {http}, store {store}, difficulty {d}, "
                 "files {files}, rendezvous {rdv}", version=__version__, http=c.http.endpoint,
                 store=c.store.url.split("@")[-1], d=c.mailbox.difficulty,
                 files="on" if c.files.enabled else "off",
                 rdv=c.rendezvous.staple_endpoint if c.rendezvous.enabled else "off")
        if self.admin is not None:
            log.info("metrics and health on {admin} (/metrics, /healthz, /readyz)",
                     admin=c.admin.endpoint)
        descriptors = self.site.guard.descriptors
        if descriptors.threshold is not None:
            log.info("file descriptor limit {limit}: HTTP connections are refused from "
                     "descriptor {threshold} on, and beyond max_connections {cap}",
                     limit=descriptors.limit, threshold=descriptors.threshold,
                     cap=c.http.max_connections)
            if descriptors.threshold < c.http.max_connections:
                log.warn("the file descriptor limit ({limit}) is below what max_connections "
                         "needs: raise it (LimitNOFILE, ulimit -n)", limit=descriptors.limit)
        super().startService()


def _bytes_relayed(listener: Any) -> int:
    """Bytes moved by the staple listener's pairs: those that ended and those still live."""
    return listener.bytes_relayed + sum(pair.moved for pair in listener.pairs)


def _count_refusals(refusals: RefusalLog, stats: Any, listener: str) -> None:
    """Count each connection `refusals` logs (by reason) in stats as well."""
    log_refusal = refusals.refused

    def refused(reason: str) -> None:
        stats.connection_refused(listener, reason)
        log_refusal(reason)

    refusals.refused = refused  # type: ignore[method-assign]


def make_relay_service(config: RelayConfig, reactor: Any) -> MultiService:
    return RelayService(config, reactor)
