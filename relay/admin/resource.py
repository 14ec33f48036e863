"""The admin endpoint's pages: /metrics, /healthz, /readyz. GET only; anything else 404."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.web.resource import NoResource, Resource
from twisted.web.server import NOT_DONE_YET, Request

from relay.admin.collector import RelayCollector
from relay.admin.health import Readiness

log = Logger(namespace="relay.admin")

# A scrape waits at most this long for the figures that need the store (Redis), then
# answers without them rather than letting Prometheus's scrape time out.
REFRESH_TIMEOUT = 5.0


def _answer(request: Request, status: int, content_type: bytes, body: bytes) -> None:
    if request.finished or getattr(request, "_disconnected", False):  # gone meanwhile
        return
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", content_type)
    request.setHeader(b"Cache-Control", b"no-store")
    request.setHeader(b"Content-Length", str(len(body)).encode())
    request.write(body)
    request.finish()


def _serve_async(request: Request, work: Callable[[], Awaitable[tuple[int, bytes, bytes]]]
                 ) -> object:
    def failed(failure: object) -> None:
        log.failure("admin request failed", failure)
        _answer(request, 500, b"text/plain; charset=utf-8", b"internal error\n")

    d = Deferred.fromCoroutine(work())
    d.addCallbacks(lambda answer: _answer(request, *answer), failed)
    return NOT_DONE_YET


class MetricsPage(Resource):
    isLeaf = True

    def __init__(self, collector: RelayCollector, registry: CollectorRegistry,
                 clock: object) -> None:
        super().__init__()
        self.collector = collector
        self.registry = registry
        self.clock = clock

    def render_GET(self, request: Request) -> object:
        async def work() -> tuple[int, bytes, bytes]:
            refresh = Deferred.fromCoroutine(self.collector.refresh())
            refresh.addTimeout(REFRESH_TIMEOUT, self.clock)
            try:
                await refresh
            except Exception:  # noqa: BLE001, S110 - the last figures are exposed instead
                pass
            # In the reactor's thread (not prometheus_client's WSGI resource, which runs in
            # a thread pool): the collector reads the relay's state without locks.
            return 200, CONTENT_TYPE_LATEST.encode(), generate_latest(self.registry)

        return _serve_async(request, work)


class HealthPage(Resource):
    """/healthz: the process runs its reactor and answers."""

    isLeaf = True

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        request.setHeader(b"Cache-Control", b"no-store")
        return b"ok\n"


class ReadyPage(Resource):
    """/readyz: 200 "ready" once the store answers and the listeners are bound, else 503
    with the reason."""

    isLeaf = True

    def __init__(self, readiness: Readiness) -> None:
        super().__init__()
        self.readiness = readiness

    def render_GET(self, request: Request) -> object:
        async def work() -> tuple[int, bytes, bytes]:
            ready, why = await self.readiness.check()
            return 200 if ready else 503, b"text/plain; charset=utf-8", why.encode() + b"\n"

        return _serve_async(request, work)


class AdminRoot(Resource):
    def __init__(self, metrics: MetricsPage, readiness: Readiness) -> None:
        super().__init__()
        self.putChild(b"metrics", metrics)
        self.putChild(b"healthz", HealthPage())
        self.putChild(b"readyz", ReadyPage(readiness))

    def getChild(self, path: bytes, request: Request) -> Resource:
        return NoResource()

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        return b"relay admin: /metrics /healthz /readyz\n"
