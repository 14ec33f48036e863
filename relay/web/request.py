"""An HTTP request and site that cap bodies while they arrive, not after."""

from __future__ import annotations

from io import BytesIO

from twisted.web import http, server

from relay.config import HTTPConfig

_TOO_LARGE = (b"HTTP/1.1 413 Request Entity Too Large\r\n"
              b"Content-Length: 0\r\nAccess-Control-Allow-Origin: *\r\n"
              b"X-Error-Details: request body too large\r\nConnection: close\r\n\r\n")


class CappedRequest(server.Request):
    """Refuses a body over the site's cap as soon as its length is known or exceeded.

    Twisted would otherwise buffer any body whole, spilling large ones to a temporary file;
    the cap keeps every body in memory and bounded.
    """

    max_body: int = 1024 * 1024
    _received = 0
    _refused = False

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
        transport = self.channel.transport if self.channel else None
        if transport is not None:
            transport.write(_TOO_LARGE)
            transport.loseConnection()

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if self._refused:
            return
        super().requestReceived(command, path, version)


class RelaySite(server.Site):
    """A Site with capped bodies, an idle timeout, and no access log of its own (the
    resources log each request's outcome without anything secret)."""

    def __init__(self, resource, config: HTTPConfig, reactor=None) -> None:
        super().__init__(resource, timeout=config.request_timeout, reactor=reactor)
        # Bodies are base64 lines or JSON, never forms: skip Twisted's Content-Type parsing
        # (through the email package: a tenth of a handshake request's cost). Twisted reads
        # this per request; older versions have no such parsing to skip.
        self._parsePOSTFormSubmission = False
        cap = config.max_command_body

        class _Request(CappedRequest):
            max_body = cap

        self.requestFactory = _Request

    def log(self, request: http.Request) -> None:
        pass
