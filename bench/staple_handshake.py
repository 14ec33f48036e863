"""Bench-kit handshake plug-in for the relay's live rendezvous (HANDSHAKE=staple_handshake:Staple).

The kit gives both sides the same random token. Each side joins the channel named after the
token over HTTP (STAPLE_HTTP, default http://127.0.0.1:4100): the first to arrive becomes the
sender, the other gets 409 and joins as the recipient. Then it sends the staple line on the
kit's socket and `wait` reads the relay's "ok". The PAKE is skipped: the relay does not take
part in it (it only relays the messages), so it does not change what the relay does per byte.

The /join requests share one keep-alive HTTP connection per process (the kit forks its
clients, so a child makes its own), so the setup rate measures the relay, not a TCP
handshake per request.
"""

from __future__ import annotations

import http.client
import json
import os
import urllib.parse

HTTP = os.environ.get("STAPLE_HTTP", "http://127.0.0.1:4100")
_TARGET = urllib.parse.urlsplit(HTTP)
# (pid, connection): a forked child must not share its parent's socket.
_connection: tuple[int, http.client.HTTPConnection] | None = None


def _http() -> http.client.HTTPConnection:
    global _connection
    if _connection is None or _connection[0] != os.getpid():
        _connection = (os.getpid(), http.client.HTTPConnection(
            _TARGET.hostname, _TARGET.port or 80, timeout=30))
    return _connection[1]


def _post(path: str, body: bytes) -> tuple[int, bytes]:
    global _connection
    headers = {"Content-Type": "application/json"}
    for attempt in (1, 2):
        connection = _http()
        try:
            connection.request("POST", path, body, headers)
            response = connection.getresponse()
            return response.status, response.read()
        except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
            # The relay closed the idle keep-alive connection before this request reached
            # it: once more on a new connection.
            connection.close()
            _connection = None
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def _join(role: str, channel: str) -> dict | None:
    status, body = _post("/join", json.dumps({"role": role, "channel": channel}).encode())
    if status == 409:
        return None
    if status != 200:
        raise ConnectionError(f"/join answered {status}: {body[:200]!r}")
    return json.loads(body)


class Staple:
    def send(self, sock, token: bytes, side: bytes) -> None:
        channel = "b" + token.hex()[:40]
        joined = _join("sender", channel)
        role = "sender"
        if joined is None:
            joined, role = _join("recipient", channel), "recipient"
        sock.sendall(f"staple {channel} {role} {joined['uuid']}\n".encode())

    def wait(self, sock) -> bytes:
        buffer = b""
        while b"\n" not in buffer:
            chunk = sock.recv(256)
            if not chunk:
                raise ConnectionError(f"relay closed the connection ({buffer!r})")
            buffer += chunk
        line, _, rest = buffer.partition(b"\n")
        if line != b"ok":
            raise ConnectionError(f"relay said {line!r}")
        return rest
