"""The HTTP resources POST /join and POST /channel: JSON in, JSON out, CORS on everything.

Errors are `{"error": "..."}` with the design's status codes. Bodies over
config.http.max_small_body are refused (413) before they are parsed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from relay.config import RelayConfig
from relay.crypto import b64encode
from relay.rendezvous.channel import ChannelError
from relay.rendezvous.registry import ChannelRegistry
from relay.rendezvous.requests import parse_channel, parse_join
from relay.web.respond import error_status, set_common_headers

log = Logger(namespace="relay.rendezvous")


def _json_response(request: Request, status: int, payload: dict[str, Any]) -> None:
    body = json.dumps(payload, separators=(",", ":")).encode()
    request.setResponseCode(status)
    set_common_headers(request)
    request.setHeader(b"Content-Type", b"application/json")
    request.setHeader(b"Cache-Control", b"no-store")
    request.setHeader(b"Content-Length", str(len(body)).encode())
    request.write(body)
    request.finish()


def _read_body(request: Request, cap: int) -> bytes:
    content = request.content
    if content is None:
        return b""
    content.seek(0)
    body = content.read(cap + 1)
    if len(body) > cap:
        raise ChannelError(413, "request body too large")
    return body


# What an endpoint does with a request: (request, body, client address) -> the JSON answer.
Handler = Callable[[Request, bytes, str], Awaitable[dict[str, Any]]]


class _JSONResource(Resource):
    """POST-only JSON endpoint: the shared framing; `handle` is the endpoint's own work."""

    isLeaf = True
    endpoint = ""
    handle: Handler

    def __init__(self, config: RelayConfig, registry: ChannelRegistry) -> None:
        super().__init__()
        self.config = config
        self.registry = registry

    def render_OPTIONS(self, request: Request) -> bytes:
        set_common_headers(request)
        request.setHeader(b"Access-Control-Allow-Methods", b"POST, OPTIONS")
        request.setHeader(b"Access-Control-Allow-Headers", b"Content-Type")
        request.setHeader(b"Access-Control-Max-Age", b"86400")
        request.setResponseCode(204)
        return b""

    def render_GET(self, request: Request) -> bytes:
        request.setResponseCode(405)
        set_common_headers(request)
        request.setHeader(b"Allow", b"POST, OPTIONS")
        request.setHeader(b"Content-Type", b"application/json")
        return b'{"error":"use POST"}'

    def render_POST(self, request: Request) -> object:
        started = time.monotonic()
        finished: list = []
        request.notifyFinish().addBoth(finished.append)
        address = request.getClientAddress().host

        async def work() -> dict[str, Any]:
            body = _read_body(request, self.config.http.max_small_body)
            return await self.handle(request, body, address)

        d = Deferred.fromCoroutine(work())
        # A client that goes away cancels its long-poll (and its timers) at once.
        request.notifyFinish().addErrback(lambda _: d.cancel())

        def succeeded(payload: dict[str, Any]) -> None:
            if not finished:
                _json_response(request, 200, payload)
            self._log(200, "ok", started)

        def failed(failure: Failure) -> None:
            if failure.check(CancelledError):
                self._log(499, "client went away", started)
                return
            status, detail = error_status(failure)
            if not finished:
                _json_response(request, status, {"error": detail})
            self._log(status, detail, started)

        d.addCallbacks(succeeded, failed)
        return NOT_DONE_YET

    def _log(self, status: int, detail: str, started: float) -> None:
        log.info("{endpoint} {status} {detail} {ms:.1f}ms", endpoint=self.endpoint,
                  status=status, detail=detail, ms=1000 * (time.monotonic() - started))


class JoinResource(_JSONResource):
    endpoint = "/join"

    def __init__(self, config: RelayConfig, registry: ChannelRegistry,
                 staple_port: Callable[[], int | None]) -> None:
        super().__init__(config, registry)
        self.staple_port = staple_port

    def staple_address(self, request: Request) -> str:
        if self.config.rendezvous.staple_address:
            return self.config.rendezvous.staple_address
        host = request.getRequestHostname().decode("ascii", "replace")
        if ":" in host:
            host = f"[{host}]"
        port = self.staple_port()
        if port is None:
            raise ChannelError(503, "the staple listener is not running")
        return f"{host}:{port}"

    async def handle(self, request: Request, body: bytes, address: str) -> dict[str, Any]:
        join = parse_join(body)
        channel, uuid = await self.registry.join(join, address, self.staple_address(request))
        return {"channel": channel.name, "uuid": b64encode(uuid), "staple": channel.staple,
                "expires_in": int(channel.ttl(self.registry.clock.seconds())),
                "curve": channel.curve}


class ChannelResource(_JSONResource):
    endpoint = "/channel"

    async def handle(self, request: Request, body: bytes, address: str) -> dict[str, Any]:
        parsed = parse_channel(body, self.config.rendezvous.max_wait)
        channel = await self.registry.act(parsed, address)
        return channel.public_state()


def make_resources(config: RelayConfig, registry: ChannelRegistry,
                   staple_port: Callable[[], int | None]) -> dict[bytes, Resource]:
    return {b"join": JoinResource(config, registry, staple_port),
            b"channel": ChannelResource(config, registry)}

