"""PlainHTTP (relay/client/plain_http.py) under post_bounded: the request it writes, the three
body framings, and answers that are slow, huge, malformed or cut, on loopback TCP."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater

from relay.client.errors import RelayError, RelayTimeout
from relay.client.http import post_bounded
from relay.client.plain_http import MAX_HEAD, PlainHTTP
from relay.client.tcp_connect import connect_tcp

Script = Callable[[Any], Any]  # given the transport once the request is in; may be async


class _Server(Protocol):
    def __init__(self, script: Script, requests: list[bytes]) -> None:
        self.script = script
        self.requests = requests
        self.data = b""
        self.started = False

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        head, _, body = self.data.partition(b"\r\n\r\n")
        length = [int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:")]
        if self.started or not _ or len(body) < (length[0] if length else 0):
            return
        self.started = True
        self.requests.append(self.data)
        result = self.script(self.transport)
        if isinstance(result, Deferred):
            result.addErrback(lambda _: None)  # the client may close on us: that is the test


async def _serve(script: Script) -> tuple[str, list[bytes], Any]:
    requests: list[bytes] = []
    port = reactor.listenTCP(0, Factory.forProtocol(lambda: _Server(script, requests)),
                             interface="127.0.0.1")
    return f"http://127.0.0.1:{port.getHost().port}", requests, port


async def _post(url: str, *, timeout: float = 5.0, max_bytes: int = 1000) -> Any:
    return await post_bounded(PlainHTTP(reactor), url + "/join?x=1", b'{"a": 1}',
                              {b"Content-Type": [b"application/json"]}, timeout=timeout,
                              max_bytes=max_bytes, clock=reactor, what="/join")


def _answer(head: bytes, *parts: bytes) -> Script:
    def script(transport: Any) -> None:
        transport.write(head + b"".join(parts))
        transport.loseConnection()
    return script


def _drip(data: bytes, every: float) -> Script:
    async def dripping(transport: Any) -> None:
        for byte in data:
            transport.write(bytes([byte]))
            await deferLater(reactor, every)
        transport.loseConnection()
    return lambda transport: Deferred.fromCoroutine(dripping(transport))


@pytest_twisted.ensureDeferred
async def test_the_request_and_a_content_length_answer():
    url, requests, port = await _serve(_answer(
        b"HTTP/1.1 201 Created\r\nContent-Length: 5\r\nX-Error-Details: none\r\n\r\n", b"hello"))
    number = port.getHost().port
    try:
        answer = await _post(url)
    finally:
        await port.stopListening()
    assert (answer.code, answer.body) == (201, b"hello")
    assert answer.headers.getRawHeaders(b"x-error-details") == [b"none"]
    assert answer.headers.getRawHeaders("X-Error-Details") == [b"none"]
    head, _, body = requests[0].partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /join?x=1 HTTP/1.1"
    assert b"Host: 127.0.0.1:%d" % number in lines
    assert b"Content-Length: 8" in lines and b"Content-Type: application/json" in lines
    assert body == b'{"a": 1}'


@pytest_twisted.ensureDeferred
async def test_a_chunked_answer_dripped_byte_by_byte_with_trailers():
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" \
        b"3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nTrailer: x\r\n\r\n"
    url, _, port = await _serve(_drip(chunked, 0))
    try:
        answer = await _post(url)
    finally:
        await port.stopListening()
    assert (answer.code, answer.body) == (200, b"abcde")


@pytest_twisted.ensureDeferred
async def test_an_answer_that_ends_with_the_connection():
    url, _, port = await _serve(_answer(b"HTTP/1.0 200 OK\r\n\r\n", b"until close"))
    try:
        answer = await _post(url)
    finally:
        await port.stopListening()
    assert answer.body == b"until close"


@pytest_twisted.ensureDeferred
async def test_an_empty_body():
    url, _, port = await _serve(_answer(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n"))
    try:
        answer = await _post(url)
    finally:
        await port.stopListening()
    assert (answer.code, answer.body) == (204, b"")


@pytest.mark.parametrize("head", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nab",  # dripping body
    b"HTTP/1.1 200 OK\r\nContent-Type: a",  # dripping headers
])
@pytest_twisted.ensureDeferred
async def test_a_dripping_answer_ends_at_the_deadline(head):
    url, _, port = await _serve(_drip(head + b" " * 100, 0.05))
    started = reactor.seconds()
    try:
        with pytest.raises(RelayTimeout, match="within 0.5 s"):
            await _post(url, timeout=0.5)
    finally:
        await port.stopListening()
    assert reactor.seconds() - started < 2


@pytest.mark.parametrize("answer", [
    _answer(b"HTTP/1.1 200 OK\r\nContent-Length: 1500000000\r\n\r\n", b"x" * 5000),
    _answer(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"400\r\n" + b"y" * 1024 + b"\r\n", b"400\r\n" + b"y" * 1024 + b"\r\n"),
    _answer(b"HTTP/1.1 200 OK\r\n\r\n", b"z" * 5000),
])
@pytest_twisted.ensureDeferred
async def test_an_answer_over_the_cap_is_refused(answer):
    url, _, port = await _serve(answer)
    try:
        with pytest.raises(RelayError, match="over 1000 bytes"):
            await _post(url, max_bytes=1000)
    finally:
        await port.stopListening()


@pytest.mark.parametrize("answer, message", [
    (_answer(b"HTTP/1.1 200 OK\r\nX: " + b"h" * MAX_HEAD), "headers are over"),
    (_answer(b"SMTP ready\r\n\r\n"), "not HTTP"),
    (_answer(b"HTTP/1.1 200 OK\r\nContent-Length: 1, 2\r\n\r\n"), "Content-Length"),
    (_answer(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n"), "transfer encoding"),
    (_answer(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n", b"short"), "cut off"),
    (_answer(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", b"zz\r\n"), "cut off"),
    (_answer(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", b"1" * 2000), "cut off"),
    (_answer(b"HTTP/1.1 200 OK\r\nContent-"), "unusable"),
])
@pytest_twisted.ensureDeferred
async def test_a_malformed_or_cut_answer_is_a_relay_error(answer, message):
    url, _, port = await _serve(answer)
    try:
        with pytest.raises(RelayError, match=message):
            await _post(url)
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_nothing_listening_is_cannot_reach():
    url, _, port = await _serve(_answer(b""))
    await port.stopListening()
    with pytest.raises(RelayError, match="cannot reach the relay at http://127.0.0.1"):
        await _post(url)


@pytest_twisted.ensureDeferred
async def test_connect_tcp_resolves_a_name():
    connected: list[bool] = []

    class Client(Protocol):
        def connectionMade(self) -> None:
            connected.append(True)

    port = reactor.listenTCP(0, Factory.forProtocol(Protocol), interface="127.0.0.1")
    client = Client()
    try:
        await connect_tcp(reactor, "localhost", port.getHost().port, client, timeout=5)
        assert connected == [True]
        client.transport.loseConnection()
    finally:
        await port.stopListening()


def test_only_http_urls():
    with pytest.raises(ValueError, match="http:// URLs only"):
        PlainHTTP(reactor).post("https://relay.example.org/join", b"")
