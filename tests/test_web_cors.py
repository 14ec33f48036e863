"""CORS preflights: the root answers OPTIONS for every endpoint of the API the same way, so
a browser page on another origin may POST with any content type and headers (glow.ts sends
simple requests; other Zax clients may not). tests/browser runs this in a real Chromium."""

from __future__ import annotations

from twisted.web.resource import Resource, getChildForRequest
from twisted.web.test.requesthelper import DummyRequest

from relay.web.root import RelayRoot


class Endpoint(Resource):
    isLeaf = True

    def render_POST(self, request: DummyRequest) -> bytes:
        return b"posted"

    def render_OPTIONS(self, request: DummyRequest) -> bytes:  # shadowed by the root's answer
        request.setResponseCode(204)
        return b""


def render(method: bytes, path: bytes, headers: dict[bytes, bytes] | None = None
           ) -> DummyRequest:
    root = RelayRoot({b"command": Endpoint(), b"join": Endpoint()})
    request = DummyRequest(path.strip(b"/").split(b"/"))
    request.method = method
    for name, value in (headers or {}).items():
        request.requestHeaders.setRawHeaders(name, [value])
    body = getChildForRequest(root, request).render(request)
    if body:
        request.write(body)
    return request


def header(request: DummyRequest, name: bytes) -> bytes | None:
    values = request.responseHeaders.getRawHeaders(name)
    return values[0] if values else None


def test_preflight_of_every_endpoint_allows_post_with_any_headers() -> None:
    for path in (b"/command", b"/join"):
        request = render(b"OPTIONS", path, {
            b"Origin": b"http://page.example", b"Access-Control-Request-Method": b"POST",
            b"Access-Control-Request-Headers": b"content-type,x-client-probe"})
        assert request.responseCode == 204
        assert header(request, b"Access-Control-Allow-Origin") == b"*"
        assert b"POST" in header(request, b"Access-Control-Allow-Methods")
        assert header(request, b"Access-Control-Allow-Headers") == b"*"
        assert int(header(request, b"Access-Control-Max-Age")) > 0
        assert b"".join(request.written) == b""


def test_unknown_path_and_other_methods_are_refused_as_before() -> None:
    request = render(b"OPTIONS", b"/nothing-here")
    assert request.responseCode == 503
    assert header(request, b"Access-Control-Allow-Origin") == b"*"
    request = render(b"POST", b"/command")
    assert b"".join(request.written) == b"posted"


def test_canned_refusals_expose_their_details_to_pages() -> None:
    from relay.web.channel import REFUSALS, TIMED_OUT
    from relay.web.request import _TOO_LARGE

    for canned in (_TOO_LARGE, TIMED_OUT, *REFUSALS.values()):
        assert b"\r\nAccess-Control-Allow-Origin: *\r\n" in canned
        assert b"\r\nAccess-Control-Expose-Headers: X-Error-Details\r\n" in canned
