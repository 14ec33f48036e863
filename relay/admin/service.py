"""Building the admin listener for one relay service: its own registry, collector, pages."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry
from twisted.web.server import Site

from relay.admin.collector import RelayCollector
from relay.admin.health import Readiness
from relay.admin.requests import RequestStats
from relay.admin.resource import AdminRoot, MetricsPage
from relay.store import Store
from relay.usage import UsageLog
from relay.web.listen import ListeningService


class AdminSite(Site):
    """No access log: Prometheus and health checks poll every few seconds."""

    def log(self, request: Any) -> None:
        pass


def make_admin_service(endpoint: str, stats: RequestStats, usage: UsageLog, store: Store,
                       listeners: Callable[[], list[Any]], reactor: Any,
                       bytes_relayed: Callable[[], int] | None = None) -> ListeningService:
    """A listener on `endpoint` serving /metrics, /healthz and /readyz. A registry of its
    own (not prometheus_client's global one): several relays may run in one process."""
    registry = CollectorRegistry(auto_describe=False)
    collector = RelayCollector(stats, usage, store, bytes_relayed)
    registry.register(collector)
    readiness = Readiness(store, listeners, reactor)
    # Idle connections are closed after a minute (Twisted's default is 12 hours).
    site = AdminSite(AdminRoot(MetricsPage(collector, registry, reactor), readiness),
                     timeout=60, reactor=reactor)
    service = ListeningService("metrics and health", endpoint, site, reactor)
    service.registry = registry  # type: ignore[attr-defined]  # for tests and tools
    service.readiness = readiness  # type: ignore[attr-defined]
    return service
