"""An HTTP request and site that cap bodies while they arrive, not after."""

from __future__ import annotations

import ipaddress
from io import BytesIO
from typing import Any

import attrs
from twisted.internet.address import IPv6Address
from twisted.web import http, server

from relay.config import HTTPConfig
from relay.web.channel import ChannelLimits, RelayChannel, canned
from relay.web.guard import BodyBudget, ConnectionGuard, DescriptorGuard, RefusalLog

# canned(): with the CORS headers, so a browser page can read the status and the details.
_TOO_LARGE = canned(413, "Request Entity Too Large", "request body too large")


def canonical_address(address: Any) -> Any:
    """`address` with its IPv6 host in RFC 5952 form ("::1"), as the kernel gives peers.

    Twisted's PROXY v2 parser writes IPv6 addresses uncompressed ("0:0:0:0:0:0:0:1"): a
    client behind it would never match its own address on the staple port (the rendezvous's
    exact-address rule), and /join would name "[0:0:0:0:0:0:0:1]" as the staple host."""
    if not isinstance(address, IPv6Address):
        return address
    try:
        host = str(ipaddress.IPv6Address(address.host))
    except ValueError:
        return address
    return address if host == address.host else attrs.evolve(address, host=host)


class CappedRequest(server.Request):
    """Refuses a body over the site's cap as soon as its length is known or exceeded.

    Twisted would otherwise buffer any body whole, spilling large ones to a temporary file;
    the cap keeps every body in memory and bounded.
    """

    max_body: int = 1024 * 1024
    _received = 0
    _refused = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.client = canonical_address(self.client)
        self.host = canonical_address(self.host)

    def gotLength(self, length: int | None) -> None:
        self.content = BytesIO()
        if length is not None and length > self.max_body:
            self._refuse()

    def handleContentChunk(self, data: bytes) -> None:
        if self._refused:
            return
        self._received += len(data)
        if self._received > self.max_body:
            self._refuse()
            return
        self.content.write(data)

    def _refuse(self) -> None:
        self._refused = True
        self.content = BytesIO()
        channel = self.channel
        if isinstance(channel, RelayChannel):
            channel.close_with(_TOO_LARGE)
        elif channel is not None and channel.transport is not None:
            channel.transport.write(_TOO_LARGE)
            channel.transport.loseConnection()

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if self._refused:
            return
        super().requestReceived(command, path, version)


class RelaySite(server.Site):
    """A Site with capped bodies, RelayChannel's deadlines and bounded output, admission
    caps (relay.web.guard), and no access log of its own (the resources log each request's
    outcome without anything secret)."""

    protocol = RelayChannel

    def __init__(self, resource, config: HTTPConfig, reactor=None,
                 guard: ConnectionGuard | None = None) -> None:
        # No Twisted timeout: RelayChannel keeps its own (see relay.web.channel).
        super().__init__(resource, timeout=None, reactor=reactor)
        self.config = config
        self.limits = ChannelLimits.from_config(config)
        if guard is None:
            guard = ConnectionGuard(
                config.max_connections, config.max_connections_per_client,
                DescriptorGuard.for_this_process(config.descriptor_reserve),
                RefusalLog(self.reactor, "HTTP"))
        self.guard = guard
        self.cuts = RefusalLog(self.reactor, "HTTP")  # requests cut short
        self.bodies = BodyBudget(config.max_buffered_bodies)
        # Bodies are base64 lines or JSON, never forms: skip Twisted's Content-Type parsing
        # (through the email package: a tenth of a handshake request's cost). Twisted reads
        # this per request; older versions have no such parsing to skip.
        self._parsePOSTFormSubmission = False
        cap = config.max_command_body

        class _Request(CappedRequest):
            max_body = cap

        self.requestFactory = _Request

    def buildProtocol(self, addr: Any) -> RelayChannel:
        channel: RelayChannel = super().buildProtocol(addr)  # type: ignore[assignment]
        channel.limits = self.limits
        channel.clock = self.reactor
        channel.guard = self.guard
        channel.client_key = self.config.client_key
        channel.cuts = self.cuts
        channel.bodies = self.bodies
        return channel

    def stopFactory(self) -> None:
        self.guard.refusals.stop()
        self.cuts.stop()
        super().stopFactory()

    def log(self, request: http.Request) -> None:
        pass
