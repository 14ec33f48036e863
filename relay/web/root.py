"""The root resource: the API's children; anything else is refused with 503 as Zax does.

Browsers preflight a cross-origin POST that is not "simple" (a JSON content type, a custom
header) with OPTIONS and send the POST only after a 2xx that allows it. glow.ts sends simple
requests, other Zax clients may not: the root answers every endpoint's preflight the same way.
"""

from __future__ import annotations

from twisted.web.resource import Resource
from twisted.web.server import Request

from relay.web.respond import set_common_headers


def refuse(request: Request) -> bytes:
    """Zax answers an unknown path or method with 503 and an empty body."""
    request.setResponseCode(503)
    set_common_headers(request)
    request.setHeader(b"Content-Type", b"text/plain")
    return b""


def _count_unknown_path(request: Request) -> None:
    # Counted for metrics (relay.admin.requests) as the endpoint "other", never by its path.
    stats = getattr(getattr(request, "site", None), "request_stats", None)
    if stats is not None:
        stats.observe("other", 503, 0.0, "")


def preflight(request: Request) -> bytes:
    """Any origin may POST with any headers: the API uses no cookies or credentials, so "*"
    (allowed for requests without credentials) opens nothing a script could not do anyway."""
    request.setResponseCode(204)
    set_common_headers(request)
    request.setHeader(b"Access-Control-Allow-Methods", b"POST, OPTIONS")
    request.setHeader(b"Access-Control-Allow-Headers", b"*")
    request.setHeader(b"Access-Control-Max-Age", b"86400")
    return b""


class Preflight(Resource):
    isLeaf = True

    def render(self, request: Request) -> bytes:
        return preflight(request)


class Refused(Resource):
    isLeaf = True

    def render(self, request: Request) -> bytes:
        _count_unknown_path(request)
        return refuse(request)


class RelayRoot(Resource):
    def __init__(self, children: dict[bytes, Resource]) -> None:
        super().__init__()
        for name, child in children.items():
            self.putChild(name, child)

    def getChild(self, path: bytes, request: Request) -> Resource:
        return Refused()

    def getChildWithDefault(self, path: bytes, request: Request) -> Resource:
        if request.method == b"OPTIONS" and path in self.children:
            return Preflight()
        return super().getChildWithDefault(path, request)

    def render(self, request: Request) -> bytes:
        _count_unknown_path(request)
        return refuse(request)
