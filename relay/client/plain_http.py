"""A small HTTP/1.1 client for the rendezvous calls to an http:// relay: one POST per
connection, the answer's body by Content-Length, chunked encoding or the connection's end.

    http = PlainHTTP(reactor)
    answer = await post_bounded(http, "http://relay:8080/join", body, headers, ...)

It speaks the part of treq's interface that relay/client/http.py uses (`post` and
`collect`), so the deadline and the size cap stay there, in one place. Why not treq: treq
and twisted.web.client import pyOpenSSL and much of twisted.web, about a third of the
`relay` command's start-up CPU, for three small JSON calls per transfer. https:// URLs (and
the mailbox client) still go through treq.

Bounds of its own, whatever the caller's cap: the status line and headers at most
MAX_HEAD bytes, a chunk-size line at most MAX_LINE bytes, and body bytes that arrive before
`collect()` is called make the connection pause (they are not read further) beyond
MAX_EARLY_BODY bytes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure

from relay.client.tcp_connect import connect_tcp

MAX_HEAD = 64 * 1024
MAX_LINE = 1024
MAX_EARLY_BODY = 1024 * 1024
CONNECT_TIMEOUT = 30.0


class BadAnswer(Exception):
    """The answer is not HTTP/1.x as this client reads it."""


class AnswerCut(Exception):
    """The connection ended before the answer's body did."""


class PlainHeaders:
    """The answer's headers, read as twisted.web.http_headers.Headers are."""

    def __init__(self, raw: dict[bytes, list[bytes]]) -> None:
        self._raw = raw

    def getRawHeaders(self, name: bytes | str, default: Any = None) -> list[bytes] | Any:
        key = name.encode("latin-1") if isinstance(name, str) else name
        return self._raw.get(key.lower(), default)


@attrs.define(eq=False)
class PlainResponse:
    code: int
    headers: PlainHeaders
    length: int | None  # Content-Length, None when not announced
    _exchange: _Exchange


class PlainHTTP:
    """POSTs to http:// URLs, each on its own connection."""

    def __init__(self, reactor: Any, bind_host: str | None = None,
                 connect_timeout: float = CONNECT_TIMEOUT) -> None:
        self.reactor = reactor
        self.bind_host = bind_host
        self.connect_timeout = connect_timeout

    def post(self, url: str, data: bytes,
             headers: dict[bytes, list[bytes]] | None = None) -> Deferred[PlainResponse]:
        """The answer's status and headers; its body comes through `collect()`. Cancelling
        closes the connection."""
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"PlainHTTP takes http:// URLs only, not {url[:50]!r}")
        host, port = parts.hostname, parts.port or 80
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        host_header = f"[{host}]" if ":" in host else host
        if parts.port:
            host_header += f":{parts.port}"
        lines = [f"POST {target} HTTP/1.1".encode("ascii"),
                 b"Host: " + host_header.encode("idna"),
                 b"Connection: close",
                 b"Content-Length: %d" % len(data)]
        for name, values in (headers or {}).items():
            lines += [name + b": " + value for value in values]
        exchange = _Exchange(b"\r\n".join(lines) + b"\r\n\r\n" + data)
        connecting = Deferred.fromCoroutine(connect_tcp(
            self.reactor, host, port, exchange, timeout=self.connect_timeout,
            bind_host=self.bind_host))
        connecting.addErrback(exchange.connect_failed)

        def cancel(_: Deferred[PlainResponse]) -> None:
            connecting.cancel()
            exchange.abort()

        answer: Deferred[PlainResponse] = Deferred(cancel)
        exchange.answer.chainDeferred(answer)
        return answer

    def collect(self, response: PlainResponse,
                collector: Callable[[bytes], None]) -> Deferred[None]:
        """Give each part of the body to collector as it arrives; fires at the body's end.
        An exception from collector closes the connection and fails the Deferred."""
        return response._exchange.collect(collector)


class _Exchange(Protocol):
    """One request written at connection, one answer read: head, then body."""

    def __init__(self, request: bytes) -> None:
        self.request = request
        self.answer: Deferred[PlainResponse] = Deferred()
        self._head = b""
        self._response: PlainResponse | None = None
        # Body framing: "length" (remaining bytes), "chunked" (see _chunked), "close".
        self._framing = ""
        self._remaining = 0
        self._chunk_state = "size"  # size, data, data-end, trailer
        self._line = b""
        self._early: list[bytes] = []
        self._early_size = 0
        self._paused = False
        self._collector: Callable[[bytes], None] | None = None
        self._collected: Deferred[None] | None = None
        self._ended = False
        self._failure: Failure | None = None

    # ---- the connection ------------------------------------------------------------------

    def connectionMade(self) -> None:
        self.transport.write(self.request)

    def connect_failed(self, failure: Failure) -> None:
        self._fail(failure)

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abortConnection()

    def dataReceived(self, data: bytes) -> None:
        if self._failure is not None or self._ended:
            return
        try:
            if self._response is None:
                data = self._read_head(data)
                if self._response is None:
                    return
            if data:
                self._read_body(data)
        except Exception:  # noqa: BLE001 - a bad answer, or the collector's refusal
            self._fail(Failure())
            self.abort()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._ended or self._failure is not None:
            return
        if self._response is not None and self._framing == "close" \
                and reason.check(ConnectionDone):
            self._end()
            return
        what = "its headers" if self._response is None else "its body"
        self._fail(Failure(AnswerCut(f"the connection closed before the end of {what}")))

    def _fail(self, failure: Failure) -> None:
        if self._failure is not None or self._ended:
            return
        self._failure = failure
        if not self.answer.called:
            self.answer.errback(failure)
        elif self._collected is not None:
            collected, self._collected = self._collected, None
            collected.errback(failure)

    # ---- the head ------------------------------------------------------------------------

    def _read_head(self, data: bytes) -> bytes:
        """Take the head's bytes from data; what follows it (body bytes) is returned."""
        self._head += data
        end = self._head.find(b"\r\n\r\n")
        if end < 0:
            if len(self._head) > MAX_HEAD:
                raise BadAnswer(f"the answer's headers are over {MAX_HEAD} bytes")
            return b""
        if end > MAX_HEAD:
            raise BadAnswer(f"the answer's headers are over {MAX_HEAD} bytes")
        head, rest = self._head[:end], self._head[end + 4:]
        self._head = b""
        status, *header_lines = head.split(b"\r\n")
        version, _, code_reason = status.partition(b" ")
        code_text = code_reason[:3]
        if not version.startswith(b"HTTP/1.") or not code_text.isdigit():
            raise BadAnswer("the answer is not HTTP/1.x")
        headers: dict[bytes, list[bytes]] = {}
        for line in header_lines:
            name, colon, value = line.partition(b":")
            if not colon or not name or name != name.strip():
                raise BadAnswer("the answer has a malformed header")
            headers.setdefault(name.lower(), []).append(value.strip())
        length = self._framing_of(headers)
        self._response = PlainResponse(int(code_text), PlainHeaders(headers), length, self)
        self.answer.callback(self._response)
        if self._framing == "length" and self._remaining == 0:
            self._end()
        return rest

    def _framing_of(self, headers: dict[bytes, list[bytes]]) -> int | None:
        encodings = b",".join(headers.get(b"transfer-encoding", [])).lower()
        if encodings:
            if encodings.replace(b" ", b"") != b"chunked":
                raise BadAnswer("the answer's transfer encoding is not chunked")
            self._framing = "chunked"
            return None
        lengths = set(headers.get(b"content-length", []))
        if not lengths:
            self._framing = "close"
            return None
        if len(lengths) > 1 or not (value := lengths.pop()).isdigit():
            raise BadAnswer("the answer's Content-Length is malformed")
        self._framing = "length"
        self._remaining = int(value)
        return self._remaining

    # ---- the body ------------------------------------------------------------------------

    def _read_body(self, data: bytes) -> None:
        if self._framing == "close":
            self._deliver(data)
        elif self._framing == "length":
            part = data[:self._remaining]
            self._remaining -= len(part)
            if part:
                self._deliver(part)
            if self._remaining == 0:
                self._end()
        else:
            self._chunked(data)

    def _chunked(self, data: bytes) -> None:
        while data and not self._ended:
            if self._chunk_state == "data":
                part, data = data[:self._remaining], data[self._remaining:]
                self._remaining -= len(part)
                self._deliver(part)
                if self._remaining == 0:
                    self._chunk_state = "data-end"
                continue
            line, data = self._take_line(data)
            if line is None:
                return
            if self._chunk_state == "data-end":
                if line:
                    raise BadAnswer("a chunk of the answer does not end where it said")
                self._chunk_state = "size"
            elif self._chunk_state == "size":
                size_text = line.split(b";", 1)[0].strip()
                try:
                    self._remaining = int(size_text, 16)
                except ValueError:
                    raise BadAnswer("a chunk size of the answer is malformed") from None
                if self._remaining < 0 or not size_text:
                    raise BadAnswer("a chunk size of the answer is malformed")
                self._chunk_state = "data" if self._remaining else "trailer"
            elif not line:  # the empty line after the trailers
                self._end()

    def _take_line(self, data: bytes) -> tuple[bytes | None, bytes]:
        """(the next CRLF-ended line without its end, the rest), or (None, b"") while the
        line is incomplete (kept for the next call)."""
        self._line += data
        end = self._line.find(b"\r\n")
        if end < 0:
            if len(self._line) > MAX_LINE:
                raise BadAnswer(f"a line of the answer is over {MAX_LINE} bytes")
            return None, b""
        line, rest = self._line[:end], self._line[end + 2:]
        self._line = b""
        if len(line) > MAX_LINE:
            raise BadAnswer(f"a line of the answer is over {MAX_LINE} bytes")
        return line, rest

    def _deliver(self, part: bytes) -> None:
        if self._collector is not None:
            self._collector(part)
            return
        self._early.append(part)
        self._early_size += len(part)
        if self._early_size > MAX_EARLY_BODY and not self._paused:
            self._paused = True
            self.transport.pauseProducing()

    def _end(self) -> None:
        self._ended = True
        if self.transport is not None:
            self.transport.loseConnection()
        if self._collected is not None:
            collected, self._collected = self._collected, None
            collected.callback(None)

    def collect(self, collector: Callable[[bytes], None]) -> Deferred[None]:
        if self._collector is not None:
            raise RuntimeError("the body is already being collected")
        self._collector = collector

        def cancel(_: Deferred[None]) -> None:
            self._collected = None
            self.abort()

        collected: Deferred[None] = Deferred(cancel)
        early, self._early = self._early, []
        self._early_size = 0
        try:
            for part in early:
                collector(part)
        except Exception:  # noqa: BLE001 - the collector refused the body: stop reading it
            self.abort()
            collected.errback()
            return collected
        if self._failure is not None:
            collected.errback(self._failure)
        elif self._ended:
            collected.callback(None)
        else:
            self._collected = collected
            if self._paused:
                self._paused = False
                self.transport.resumeProducing()
        return collected
