"""Test-side helpers: raw HTTP calls from a chosen loopback address, and a raw staple peer."""

from __future__ import annotations

import base64
import json
from typing import Any

import treq
from treq.client import HTTPClient
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.web.client import Agent, HTTPConnectionPool


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class Caller:
    """POSTs JSON from one source address; returns (status, decoded body, headers)."""

    def __init__(self, reactor: Any, url: str, source: str) -> None:
        self.url = url
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.http = HTTPClient(Agent(reactor, pool=pool, bindAddress=(source, 0)))

    async def post(self, path: str, payload: Any, raw: bytes | None = None) -> tuple[int, Any,
                                                                                     Any]:
        body = raw if raw is not None else json.dumps(payload).encode()
        response = await self.http.post(self.url + path, data=body, timeout=60)
        content = await treq.content(response)
        try:
            decoded = json.loads(content)
        except ValueError:
            decoded = content
        return response.code, decoded, response.headers


class RawPeer(Protocol):
    """Sends a staple line; collects everything it receives; optionally never reads."""

    def __init__(self, line: bytes | None) -> None:
        self.line = line
        self.received = bytearray()
        self.lost: Deferred[None] = Deferred()
        self.got_ok: Deferred[None] = Deferred()
        self.reading = True

    def connectionMade(self) -> None:
        if self.line:
            self.transport.write(self.line)

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if not self.got_ok.called and b"\n" in self.received:
            self.got_ok.callback(bytes(self.received.split(b"\n")[0]))

    def connectionLost(self, reason: Any = None) -> None:
        if not self.got_ok.called:
            self.got_ok.callback(bytes(self.received.split(b"\n")[0]))
        self.lost.callback(None)


async def connect_peer(reactor: Any, port: int, source: str, line: bytes | None) -> RawPeer:
    peer = RawPeer(line)
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, bindAddress=(source, 0))
    await endpoint.connect(Factory.forProtocol(lambda: peer))
    return peer


def staple_line(channel: str, role: str, uuid_b64: str) -> bytes:
    return f"staple {channel} {role} {uuid_b64}\n".encode()
