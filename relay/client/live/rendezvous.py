"""The client side of the live rendezvous: join, the PAKE over /channel, then the staple.

    start = await start_live_send(reactor, "http://relay:8080")   # relay/client/live/session.py
    print(start.code)                          # tell the recipient, out of band
    stapled = await start.connect(timeout=300)
    # elsewhere
    stapled = await connect_recipient(reactor, "http://relay:8080", code)

A `Stapled` holds the TCP connection the relay stapled to the peer and the two traffic keys;
`hand_off(protocol)` gives the connection to the protocol that speaks the encrypted records.
"""

from __future__ import annotations

import base64
import json
from contextlib import nullcontext
from typing import Any

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectError
from twisted.internet.interfaces import IProtocol
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure

from relay.client.errors import ChannelClosed, RelayError, RelayTimeout
from relay.client.http import post_bounded
from relay.client.interrupt import Interruption
from relay.client.live.pake import RECIPIENT, SENDER, Exchange, TrafficKeys, WrongCode
from relay.client.plain_http import PlainHTTP
from relay.client.tcp_connect import connect_tcp

# A peer's response (and so the whole PAKE) must come within this by default.
DEFAULT_TIMEOUT = 300.0
# Slack on each HTTP request beyond its long-poll: the whole answer (headers and body) must
# come within its long-poll plus this (relay/client/http.py).
REQUEST_SLACK = 15.0
# The relay's answers to /join and /channel are small JSON objects (a few hundred bytes).
MAX_ANSWER = 64 * 1024
# The relay's answer to the staple line is one short line.
MAX_STAPLE_ANSWER = 256
# Bytes the peer may send before hand_off() before this side stops reading.
MAX_EARLY_BYTES = 1024 * 1024


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: Any, length: int) -> bytes:
    if not isinstance(text, str):
        raise RelayError("the relay's channel state is malformed")
    try:
        data = base64.b64decode(text, validate=True)
    except ValueError:
        raise RelayError("the relay's channel state is malformed") from None
    if len(data) != length:
        raise RelayError("the relay's channel state is malformed")
    return data


@attrs.frozen
class Joined:
    channel: str
    uuid: bytes
    staple: str
    role: str
    expires_in: int


def _http_client(reactor: Any, url: str, bind_host: str | None) -> Any:
    """PlainHTTP for an http:// relay; treq (imported only then: it pulls in pyOpenSSL)
    for https://."""
    if url.startswith("http://"):
        return PlainHTTP(reactor, bind_host)
    from treq.client import HTTPClient
    from twisted.web.client import Agent, HTTPConnectionPool

    pool = HTTPConnectionPool(reactor, persistent=False)
    bind = (bind_host, 0) if bind_host else None
    return HTTPClient(Agent(reactor, pool=pool, bindAddress=bind))


class ChannelAPI:
    """POST /join and /channel (relay/client/http.py bounds each call); errors become
    RelayError with the relay's text."""

    def __init__(self, reactor: Any, relay_url: str, bind_host: str | None = None) -> None:
        self.reactor = reactor
        self.url = relay_url.rstrip("/")
        self.bind_host = bind_host
        self.http = _http_client(reactor, self.url, bind_host)

    async def post(self, path: str, payload: dict[str, Any], timeout: float) -> dict[str, Any]:
        answer = await post_bounded(
            self.http, self.url + path, json.dumps(payload).encode(),
            {b"Content-Type": [b"application/json"]}, timeout=timeout,
            max_bytes=MAX_ANSWER, clock=self.reactor, what=path)
        body = answer.body
        try:
            data = json.loads(body)
        except ValueError:
            data = None
        if answer.code != 200:
            detail = data.get("error", "") if isinstance(data, dict) else ""
            raise RelayError(f"the relay refused {path}", answer.code, str(detail)[:200])
        if not isinstance(data, dict):
            raise RelayError(f"the relay's answer to {path} is not a JSON object")
        return data

    async def join(self, role: str, channel: str | None = None) -> Joined:
        payload: dict[str, Any] = {"role": role, "curve": "ed25519"}
        if channel is not None:
            payload["channel"] = channel
        data = await self.post("/join", payload, REQUEST_SLACK)
        try:
            return Joined(channel=str(data["channel"]), uuid=_unb64(data["uuid"], 32),
                          staple=str(data["staple"]), role=role,
                          expires_in=int(data["expires_in"]))
        except (KeyError, TypeError, ValueError):
            raise RelayError("the relay's answer to /join is malformed") from None

    async def channel(self, joined: Joined, wait: float = 0, since: int | None = None,
                      **write: Any) -> dict[str, Any]:
        payload: dict[str, Any] = {"channel": joined.channel, "uuid": _b64(joined.uuid)}
        for key, value in write.items():
            payload[key] = _b64(value) if isinstance(value, bytes) else value
        if wait > 0:
            payload["wait"] = wait
            if since is not None:
                payload["since"] = since
        return await self.post("/channel", payload, wait + REQUEST_SLACK)

    async def close(self, joined: Joined) -> None:
        try:
            await self.channel(joined, close=True)
        except RelayError:
            pass  # the channel may already be gone; closing is best effort

    async def wait_for(self, joined: Joined, field: str, deadline: float,
                       state: dict[str, Any]) -> dict[str, Any]:
        """Long-poll until state[field] is set; ChannelClosed or RelayTimeout otherwise."""
        while state.get(field) is None:
            if state.get("closed"):
                raise ChannelClosed("the channel was closed before the peer answered")
            left = deadline - self.reactor.seconds()
            if left <= 0:
                await self.close(joined)
                raise RelayTimeout("the peer did not answer in time")
            state = await self.channel(joined, wait=left, since=state.get("version", 0))
        return state


class _StapleClient(Protocol):
    """Sends the staple line, waits for "ok", then holds early bytes until hand_off."""

    def __init__(self, line: bytes) -> None:
        self.line = line
        self.answer = b""
        self.ready: Deferred[None] = Deferred()
        self.early = b""
        self.target: IProtocol | None = None
        self.stapled = False

    def connectionMade(self) -> None:
        self.transport.write(self.line)

    def dataReceived(self, data: bytes) -> None:
        if self.target is not None:
            self.target.dataReceived(data)
            return
        if self.stapled:
            self.early += data
            if len(self.early) > MAX_EARLY_BYTES:
                self.transport.pauseProducing()
            return
        self.answer += data
        line, newline, rest = self.answer.partition(b"\n")
        if not newline:
            if len(self.answer) > MAX_STAPLE_ANSWER:
                self._fail(RelayError("the relay's staple answer is malformed"))
            return
        if line == b"ok":
            self.stapled = True
            self.early = rest
            self.ready.callback(None)
        else:
            text = line[:MAX_STAPLE_ANSWER].decode("ascii", "replace")
            self._fail(RelayError(f"the relay refused the staple: {text}"))

    def _fail(self, error: Exception) -> None:
        self.transport.abortConnection()
        if not self.ready.called:
            self.ready.errback(error)

    def connectionLost(self, reason: Failure = None) -> None:
        if not self.ready.called:
            self.ready.errback(RelayError("the relay closed the staple connection"))
        if self.target is not None:
            self.target.connectionLost(reason)


@attrs.define
class Stapled:
    """A stapled connection to the peer and this side's traffic keys."""

    channel: str
    role: str
    keys: TrafficKeys
    _protocol: _StapleClient

    @property
    def transport(self) -> Any:
        return self._protocol.transport

    def hand_off(self, protocol: IProtocol) -> None:
        """Make protocol the owner of the connection (it gets makeConnection, then the bytes
        that already arrived, then everything else)."""
        client = self._protocol
        client.target = protocol
        protocol.makeConnection(client.transport)
        early, client.early = client.early, b""
        if early:
            protocol.dataReceived(early)
        client.transport.resumeProducing()


def _split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise RelayError("the relay's staple address is malformed")
    return host.strip("[]"), int(port)


async def staple(reactor: Any, joined: Joined, keys: TrafficKeys, timeout: float,
                 bind_host: str | None = None) -> Stapled:
    host, port = _split_address(joined.staple)
    line = b"staple %s %s %s\n" % (joined.channel.encode(), joined.role.encode(),
                                   _b64(joined.uuid).encode())
    client = _StapleClient(line)
    try:
        await connect_tcp(reactor, host, port, client, timeout=timeout + 1,
                          bind_host=bind_host)
    except ConnectError as e:
        raise RelayError(f"cannot reach the relay's staple at {joined.staple} "
                         f"({e.__class__.__name__})") from None
    timer = reactor.callLater(timeout, client._fail, RelayTimeout("the peer never stapled"))
    try:
        await client.ready
    finally:
        if timer.active():
            timer.cancel()
    return Stapled(channel=joined.channel, role=joined.role, keys=keys, protocol=client)


@attrs.define
class SenderStart:
    """A sender's joined channel and its code phrase (show it to the user)."""

    api: ChannelAPI
    joined: Joined
    code: str

    async def connect(self, timeout: float = DEFAULT_TIMEOUT) -> Stapled:
        return await _run_sender(self.api, self.joined, self.code, timeout)


async def _run_sender(api: ChannelAPI, joined: Joined, code: str, timeout: float) -> Stapled:
    deadline = api.reactor.seconds() + timeout
    exchange = Exchange(SENDER, code)
    if exchange.channel != joined.channel:
        raise ValueError("the code does not name the joined channel")
    state = await api.channel(joined, x=exchange.message())
    state = await api.wait_for(joined, "hh_k", deadline, state)
    try:
        exchange.finish(_unb64(state["y"], 33))
        exchange.check_peer_tag(_unb64(state["hh_k"], 32))
    except WrongCode:
        await api.close(joined)  # one guess per code: the channel is finished
        raise
    await api.channel(joined, h_k=exchange.own_tag())
    return await staple(api.reactor, joined, exchange.traffic_keys(),
                        max(1.0, deadline - api.reactor.seconds()), api.bind_host)


async def connect_recipient(reactor: Any, relay_url: str, code: str,
                            timeout: float = DEFAULT_TIMEOUT,
                            bind_host: str | None = None,
                            interruption: Interruption | None = None) -> Stapled:
    api = ChannelAPI(reactor, relay_url, bind_host)
    deadline = reactor.seconds() + timeout
    exchange = Exchange(RECIPIENT, code)
    joined = await api.join(RECIPIENT, exchange.channel)
    # Interrupted from here on: close the channel, so that the sender stops waiting.
    leaving = interruption.telling_peer(lambda: api.close(joined)) if interruption \
        else nullcontext()
    with leaving:
        state = await api.wait_for(joined, "x", deadline, await api.channel(joined))
        exchange.finish(_unb64(state["x"], 33))
        state = await api.channel(joined, y=exchange.message(), hh_k=exchange.own_tag())
        state = await api.wait_for(joined, "h_k", deadline, state)
        try:
            exchange.check_peer_tag(_unb64(state["h_k"], 32))
        except WrongCode:
            await api.close(joined)
            raise
        return await staple(reactor, joined, exchange.traffic_keys(),
                            max(1.0, deadline - reactor.seconds()), bind_host)
