"""The relay's live rendezvous as a benchmark client does it: blocking sockets, no Twisted.

`StapleClient(http_url).open_pair()` makes one stapled pair the way two real peers do:
`/join` as sender (the relay names the channel), `/join` as recipient, the three `/channel`
writes of the PAKE (`x`, then `y` with `hh_k`, then `h_k`), then both connect to the staple
address the relay answered and send their staple line, and both read the relay's `ok`.
The PAKE messages are random bytes of the right sizes: the relay stores and serves them but
cannot check them, so what it does per pair is the same as with a real PAKE, without the
clients' elliptic-curve work.

The `/join` and `/channel` requests share one keep-alive HTTP connection per process, so a
setup rate measures the relay, not a TCP handshake per request.

`Staple` is the older plug-in form (HANDSHAKE=staple_handshake:Staple, relay URL from
STAPLE_HTTP): `send(sock, token, side)` joins by a channel named after the token, `wait(sock)`
reads the `ok`.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import socket
import urllib.parse
from typing import Any

UUID_LEN = 32
PAKE_MESSAGE_LEN = 33
TAG_LEN = 32
TIMEOUT = 30.0


class RelayRefused(ConnectionError):
    pass


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def open_greeted_pair(address: tuple[str, int], greeting_a: str, greeting_b: str
                      ) -> tuple[socket.socket, socket.socket]:
    """Two connections to address, each sending its greeting line and reading "ok" (the
    staple and the transit relay handshake alike); both closed on any failure."""
    a = socket.create_connection(address, timeout=TIMEOUT)
    try:
        b = socket.create_connection(address, timeout=TIMEOUT)
    except OSError:
        a.close()
        raise
    try:
        a.sendall(greeting_a.encode())
        b.sendall(greeting_b.encode())
        if read_ok(b) or read_ok(a):
            raise RelayRefused("the relay sent bytes after ok")
    except BaseException:
        a.close()
        b.close()
        raise
    return a, b


def read_ok(sock: socket.socket) -> bytes:
    """Block until the relay's answer line to a staple line; the bytes read past it."""
    buffer = b""
    while b"\n" not in buffer:
        chunk = sock.recv(256)
        if not chunk:
            raise RelayRefused(f"relay closed the staple connection ({buffer!r})")
        buffer += chunk
        if len(buffer) > 1024:
            raise RelayRefused("relay's staple answer is too long")
    line, _, rest = buffer.partition(b"\n")
    if line != b"ok":
        raise RelayRefused(f"relay said {line[:200]!r}")
    return rest


def _address(staple: str) -> tuple[str, int]:
    host, _, port = staple.rpartition(":")
    return host.strip("[]"), int(port)


class StapleClient:
    """One process's view of a relay: a keep-alive HTTP connection and the staple address."""

    def __init__(self, http_url: str, *, pake: bool = True) -> None:
        # pake=False: /join twice and staple, without the /channel writes (how the pairs of
        # earlier measurements were made; a real client always does them).
        self.pake_writes = pake
        target = urllib.parse.urlsplit(http_url)
        self.host, self.port = target.hostname or "127.0.0.1", target.port or 80
        self._connection: tuple[int, http.client.HTTPConnection] | None = None

    def _http(self) -> http.client.HTTPConnection:
        # Keyed by pid: a forked child must not share its parent's socket.
        if self._connection is None or self._connection[0] != os.getpid():
            self._connection = (os.getpid(), http.client.HTTPConnection(
                self.host, self.port, timeout=TIMEOUT))
        return self._connection[1]

    def post(self, path: str, payload: dict[str, Any]) -> tuple[int, bytes]:
        body = json.dumps(payload).encode()
        for attempt in (1, 2):
            connection = self._http()
            try:
                connection.request("POST", path, body, {"Content-Type": "application/json"})
                response = connection.getresponse()
                return response.status, response.read()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                # The relay closed the idle keep-alive connection before this request
                # reached it: once more on a new connection.
                connection.close()
                self._connection = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def call(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        status, body = self.post(path, payload)
        if status != 200:
            raise RelayRefused(f"{path} answered {status}: {body[:200]!r}")
        return json.loads(body)

    def join(self, role: str, channel: str | None = None) -> dict[str, Any]:
        payload: dict[str, Any] = {"role": role}
        if channel is not None:
            payload["channel"] = channel
        return self.call("/join", payload)

    def pake(self, channel: str, sender_uuid: str, recipient_uuid: str) -> None:
        """The three writes of the exchange, each by its role, in order."""
        self.call("/channel", {"channel": channel, "uuid": sender_uuid,
                               "x": _b64(os.urandom(PAKE_MESSAGE_LEN))})
        self.call("/channel", {"channel": channel, "uuid": recipient_uuid,
                               "y": _b64(os.urandom(PAKE_MESSAGE_LEN)),
                               "hh_k": _b64(os.urandom(TAG_LEN))})
        self.call("/channel", {"channel": channel, "uuid": sender_uuid,
                               "h_k": _b64(os.urandom(TAG_LEN))})

    def open_pair(self) -> tuple[socket.socket, socket.socket]:
        """(sender's socket, recipient's socket), stapled by the relay."""
        sender = self.join("sender")
        channel = sender["channel"]
        recipient = self.join("recipient", channel)
        if self.pake_writes:
            self.pake(channel, sender["uuid"], recipient["uuid"])
        address = _address(sender["staple"])
        return open_greeted_pair(address, f"staple {channel} sender {sender['uuid']}\n",
                                 f"staple {channel} recipient {recipient['uuid']}\n")


class Staple:
    """Plug-in form: both sides are given the same token and join the channel named after it
    (the first to arrive becomes the sender, the other gets 409 and joins as recipient)."""

    def __init__(self) -> None:
        self.client = StapleClient(os.environ.get("STAPLE_HTTP", "http://127.0.0.1:4100"))

    def send(self, sock: socket.socket, token: bytes, side: bytes) -> None:
        channel = "b" + token.hex()[:40]
        status, body = self.client.post("/join", {"role": "sender", "channel": channel})
        role = "sender"
        if status == 409:
            status, body = self.client.post("/join", {"role": "recipient", "channel": channel})
            role = "recipient"
        if status != 200:
            raise RelayRefused(f"/join answered {status}: {body[:200]!r}")
        uuid = json.loads(body)["uuid"]
        sock.sendall(f"staple {channel} {role} {uuid}\n".encode())

    def wait(self, sock: socket.socket) -> bytes:
        return read_ok(sock)
