"""Bench-kit handshake plug-in for the relay's live rendezvous (HANDSHAKE=staple_handshake:Staple).

The kit gives both sides the same random token. Each side joins the channel named after the
token over HTTP (STAPLE_HTTP, default http://127.0.0.1:4100): the first to arrive becomes the
sender, the other gets 409 and joins as the recipient. Then it sends the staple line on the
kit's socket and `wait` reads the relay's "ok". The PAKE is skipped: the relay does not take
part in it (it only relays the messages), so it does not change what the relay does per byte.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request

HTTP = os.environ.get("STAPLE_HTTP", "http://127.0.0.1:4100")


def _join(role: str, channel: str) -> dict | None:
    body = json.dumps({"role": role, "channel": channel}).encode()
    request = urllib.request.Request(HTTP + "/join", body,
                                     {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as e:
        if e.code == 409:
            return None
        raise


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
