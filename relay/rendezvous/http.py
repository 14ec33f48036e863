"""The HTTP resources POST /join and POST /channel: JSON in, JSON out, CORS on everything.

Errors are `{"error": "..."}` with the design's status codes. Bodies over
config.http.max_small_body are refused (413) before they are parsed.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import Request

from relay.config import RelayConfig
from relay.crypto import b64encode
from relay.rendezvous.errors import (
    Busy,
    ChannelError,
    Malformed,
    NotOwner,
    NotPermitted,
    OutOfTurn,
    TooMany,
    UnknownChannel,
    WrongUUID,
)
from relay.rendezvous.registry import ChannelRegistry
from relay.rendezvous.requests import parse_channel, parse_join
from relay.web.clients import canonical_host
from relay.web.errors import HTTPError
from relay.web.respond import Replies, serve, set_common_headers

log = Logger(namespace="relay.rendezvous")


def _json_body(request: Request, payload: dict[str, Any]) -> bytes:
    request.setHeader(b"Content-Type", b"application/json")
    request.setHeader(b"Cache-Control", b"no-store")
    return json.dumps(payload, separators=(",", ":")).encode()


def _json_ok(request: Request, payload: dict[str, Any]) -> bytes:
    request.setResponseCode(200)
    return _json_body(request, payload)


def _json_error(request: Request, status: int, detail: str) -> bytes:
    return _json_body(request, {"error": detail})


# The design's status code for each kind of refusal.
HTTP_STATUS: dict[type[ChannelError], int] = {
    Malformed: 400, WrongUUID: 401, NotPermitted: 403, UnknownChannel: 404, OutOfTurn: 409,
    NotOwner: 421, TooMany: 429, Busy: 503,
}


def http_status(error: ChannelError) -> int:
    for kind in type(error).__mro__:
        if kind in HTTP_STATUS:
            return HTTP_STATUS[kind]
    return 400


_REPLIES: Replies[dict[str, Any]] = Replies(_json_ok, _json_error)

# What an endpoint does with a request: (request, body, client address) -> the JSON answer.
Handler = Callable[[Request, bytes, str], Awaitable[dict[str, Any]]]


class _JSONResource(Resource):
    """POST-only JSON endpoint on the shared request path (relay.web.respond.serve);
    `handle` is the endpoint's own work."""

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
        # The rendezvous's two-address rule counts exact addresses, not client keys.
        address = canonical_host(request.getClientAddress().host)

        async def work(body: bytes) -> tuple[dict[str, Any], str]:
            try:
                return await self.handle(request, body, address), "ok"
            except ChannelError as refusal:
                raise HTTPError(http_status(refusal), refusal.message) from None

        # A client that goes away cancels its long-poll (and its timers) at once.
        return serve(request, work, endpoint=self.endpoint,
                     max_body=self.config.http.max_small_body, replies=_REPLIES,
                     logger=log, cancel_on_disconnect=True)


class JoinResource(_JSONResource):
    endpoint = "/join"

    def __init__(self, config: RelayConfig, registry: ChannelRegistry,
                 staple_port: Callable[[], int | None]) -> None:
        super().__init__(config, registry)
        self.staple_port = staple_port

    def staple_address(self, request: Request) -> str:
        """`staple_address` if set, else the local address this HTTP connection arrived on
        with the staple port; never a request header (a sender could name any host in its
        Host header, and the relay would send the recipient there)."""
        if self.config.rendezvous.staple_address:
            return self.config.rendezvous.staple_address
        host = request.getHost().host.split("%", 1)[0]
        if ":" in host:
            host = f"[{host}]"
        port = self.staple_port()
        if port is None:
            raise Busy("the staple listener is not running")
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

