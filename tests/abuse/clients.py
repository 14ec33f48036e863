"""Blocking loopback clients for the abuse suite: raw HTTP/1.1, a Zax mailbox session, the
rendezvous calls, crowds of raw sockets, and what a relay process costs (/proc).

Plain sockets, no reactor: an attack is many sockets driven from one thread, and a client
that never reads is just a socket nobody reads. Every socket has a timeout; every crowd is
closed by its owner. Source addresses are distinct loopback addresses (127.0.0.0/8 is all
local on Linux), so one machine plays many clients.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections import Counter
from pathlib import Path
from typing import Any

import attrs
from nacl.secret import SecretBox

from relay.crypto import b64encode, make_nonce
from tests.zax import ZaxClient

RELAY_HOST = "127.0.0.1"
ATTACKER = "127.0.0.1"
BYSTANDER = "127.0.0.2"


def address(group: int, index: int) -> str:
    """The index-th client address of a group: 127.<group>.x.y (group 0 is 127.0.0.x, where
    the attacker .1 and the bystander .2 live)."""
    return f"127.{group}.{index // 250}.{index % 250 + 1}"


# -- the relay process ---------------------------------------------------------------------


class Probe:
    """What a process holds and has used: RSS, open fds, CPU seconds (Linux /proc)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def rss(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def cpu(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- HTTP over one socket ------------------------------------------------------------------


def http_request(path: str, body: bytes, host: str = "relay.test",
                 content_type: str = "text/plain") -> bytes:
    return (f"POST /{path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def connect(port: int, source: str, timeout: float = 5.0) -> socket.socket:
    return socket.create_connection((RELAY_HOST, port), timeout=timeout,
                                    source_address=(source, 0))


class Http:
    """A keep-alive HTTP/1.1 connection from `source`; post() returns (status, headers, body)."""

    def __init__(self, port: int, source: str = ATTACKER, timeout: float = 10.0) -> None:
        self.sock = connect(port, source, timeout)
        self.buffer = b""

    def post(self, path: str, body: bytes, host: str = "relay.test",
             content_type: str = "text/plain") -> tuple[int, dict[str, str], bytes]:
        self.sock.sendall(http_request(path, body, host, content_type))
        return self.response()

    def response(self) -> tuple[int, dict[str, str], bytes]:
        while b"\r\n\r\n" not in self.buffer:
            self._fill()
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        while len(self.buffer) < length:
            self._fill()
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return status, headers, body

    def _fill(self) -> None:
        data = self.sock.recv(1 << 20)
        if not data:
            raise ConnectionError("the relay closed the connection")
        self.buffer += data

    def close(self) -> None:
        self.sock.close()


# -- the mailbox API -------------------------------------------------------------------------


class Mailbox:
    """One identity's Zax session over one connection (tests/zax.py builds the bodies)."""

    def __init__(self, port: int, source: str = ATTACKER, timeout: float = 10.0) -> None:
        self.http = Http(port, source, timeout)
        self.zax = ZaxClient(post=self._post, now=time.time)

    def _post(self, path: str, body: bytes) -> tuple[int, bytes]:
        status, _, data = self.http.post(path, body)
        return status, data

    @property
    def hpk(self) -> bytes:
        return self.zax.hpk

    def connect(self) -> Mailbox:
        """start_session, verify_session and prove; AssertionError if a step is refused."""
        self.zax.connect()
        return self

    def command(self, command: dict[str, Any], extra: bytes | None = None) -> tuple[int, bytes]:
        return self.zax.command(command, extra)

    def command_body(self, command: dict[str, Any]) -> bytes:
        return self.zax.command_body(command)

    def open(self, body: bytes) -> Any:
        return self.zax.open(body)

    def upload(self, to: bytes, size: int) -> int:
        """Upload `size` bytes of ciphertext to mailbox `to`; the status."""
        status, _ = self.command({"cmd": "upload", "to": b64encode(to),
                                  "payload": {"nonce": b64encode(make_nonce(time.time())),
                                              "ctext": b64encode(os.urandom(size))}})
        return status

    def start_file(self, to: bytes, size: int) -> tuple[int, Any]:
        status, body = self.command({
            "cmd": "startFileUpload", "to": b64encode(to), "file_size": size,
            "metadata": {"nonce": b64encode(make_nonce(time.time())),
                         "ctext": b64encode(b"encrypted metadata")}})
        return status, (self.open(body) if status == 200 else None)

    def send_file(self, to: bytes, data: bytes) -> tuple[int, Any]:
        """startFileUpload then one uploadFileChunk; (status, answer) of the step that
        failed, or of the chunk."""
        status, answer = self.start_file(to, len(data))
        if status != 200:
            return status, answer
        nonce = os.urandom(24)
        chunk = SecretBox(os.urandom(32)).encrypt(data, nonce).ciphertext
        status, body = self.command({"cmd": "uploadFileChunk", "uploadID": answer["uploadID"],
                                     "part": 0, "nonce": b64encode(nonce), "last_chunk": True},
                                    b64encode(chunk).encode())
        return status, (self.open(body) if status == 200 else None)

    def close(self) -> None:
        self.http.close()


# -- the rendezvous --------------------------------------------------------------------------


def post_json(port: int, path: str, payload: dict[str, Any], source: str,
              host: str = "relay.test", timeout: float = 10.0, http: Http | None = None
              ) -> tuple[int, Any]:
    """POST JSON on http (a keep-alive connection) or on a connection of its own."""
    own = http is None
    if http is None:
        http = Http(port, source, timeout)
    try:
        status, _, body = http.post(path, json.dumps(payload).encode(), host,
                                    "application/json")
    finally:
        if own:
            http.close()
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body


def join(port: int, source: str, role: str = "sender", channel: str | None = None,
         host: str = "relay.test", http: Http | None = None) -> tuple[int, Any]:
    payload: dict[str, Any] = {"role": role}
    if channel:
        payload["channel"] = channel
    return post_json(port, "join", payload, source, host, http=http)


def staple(staple_port: int, source: str, channel: str, role: str, uuid: str
           ) -> socket.socket:
    """A staple connection that sent its identification line (not yet answered)."""
    sock = socket.create_connection((RELAY_HOST, staple_port), timeout=5,
                                    source_address=(source, 0))
    sock.sendall(f"staple {channel} {role} {uuid}\n".encode())
    return sock


def read_line(sock: socket.socket, timeout: float = 3.0) -> bytes:
    sock.settimeout(timeout)
    data = b""
    try:
        while b"\n" not in data:
            chunk = sock.recv(256)
            if not chunk:
                break
            data += chunk
    except OSError:
        pass
    return data.split(b"\n")[0]


def pair(port: int, staple_port: int, source: str) -> tuple[list[socket.socket] | None, str]:
    """A stapled pair from source (both roles): the two sockets, or None and why not."""
    status, sender = join(port, source)
    if status != 200:
        return None, f"join {status}"
    status, recipient = join(port, source, "recipient", sender["channel"])
    if status != 200:
        return None, f"join {status}"
    a = staple(staple_port, source, sender["channel"], "sender", sender["uuid"])
    b = staple(staple_port, source, sender["channel"], "recipient", recipient["uuid"])
    answers = read_line(a), read_line(b)
    if answers != (b"ok", b"ok"):
        a.close()
        b.close()
        return None, "staple " + answers[0].decode(errors="replace")[:40]
    return [a, b], "ok"


# -- a bystander -------------------------------------------------------------------------------


@attrs.define
class Bystander:
    ok: bool
    seconds: float
    detail: str

    def __str__(self) -> str:
        return f"{'ok' if self.ok else 'FAILED'} {self.seconds:.2f}s {self.detail}".strip()


def bystander(port: int, source: str = BYSTANDER, rendezvous: bool = True) -> Bystander:
    """A fresh client from another address: a full mailbox handshake, then a /join."""
    started = time.monotonic()
    mailbox = None
    try:
        mailbox = Mailbox(port, source, timeout=5.0).connect()
        if rendezvous:
            status, answer = join(port, source)
            if status != 200:
                return Bystander(False, time.monotonic() - started, f"/join {status} {answer}")
        return Bystander(True, time.monotonic() - started, "")
    except (OSError, AssertionError, ValueError) as e:
        return Bystander(False, time.monotonic() - started, f"{type(e).__name__} {e}")
    finally:
        if mailbox is not None:
            mailbox.close()


# -- crowds of raw sockets -----------------------------------------------------------------------


class Crowd:
    """Many raw connections to one port. `states()` tells, without blocking, which the relay
    closed, which it answered (with the status of the first answer) and which are pending."""

    def __init__(self) -> None:
        self.socks: list[socket.socket] = []
        self.received: dict[int, bytes] = {}
        self.ended: set[int] = set()
        self.refused = 0

    def open(self, port: int, sources: list[str], count: int, first: bytes = b"",
             timeout: float = 2.0) -> int:
        """Open count connections round-robin over sources, each sending `first`; the
        number the kernel accepted (a refused or timed-out connect counts in `refused`)."""
        opened = 0
        for i in range(count):
            try:
                sock = connect(port, sources[i % len(sources)], timeout)
            except OSError:
                self.refused += 1
                continue
            try:
                if first:
                    sock.sendall(first)
            except OSError:
                self.ended.add(len(self.socks))
            sock.setblocking(False)
            self.socks.append(sock)
            opened += 1
        return opened

    def send(self, data: bytes) -> int:
        """Send data on every live socket (what fits without blocking); how many took it."""
        took = 0
        for i, sock in enumerate(self.socks):
            if i in self.ended:
                continue
            try:
                sock.send(data)
                took += 1
            except BlockingIOError:
                pass
            except OSError:
                self.ended.add(i)
        return took

    def poll(self) -> None:
        for i, sock in enumerate(self.socks):
            if i in self.ended:
                continue
            try:
                while True:
                    data = sock.recv(65536)
                    if not data:
                        self.ended.add(i)
                        break
                    # The first answer is all that is looked at; keep a bounded prefix.
                    previous = self.received.get(i, b"")
                    if len(previous) < 4096:
                        self.received[i] = (previous + data)[:4096]
            except BlockingIOError:
                pass
            except OSError:
                self.ended.add(i)

    def statuses(self) -> Counter:
        """How many connections got each first status ("closed" if closed unanswered,
        "pending" if neither)."""
        self.poll()
        counts: Counter = Counter()
        for i in range(len(self.socks)):
            data = self.received.get(i, b"")
            if data.startswith(b"HTTP/1.1 ") and len(data) >= 12:
                counts[int(data[9:12])] += 1
            elif i in self.ended:
                counts["closed"] += 1
            else:
                counts["pending"] += 1
        return counts

    def open_count(self) -> int:
        """Connections the relay has neither closed nor answered."""
        return self.statuses()["pending"]

    def close(self) -> None:
        for sock in self.socks:
            sock.close()
        self.socks = []


def pause(seconds: float) -> None:
    time.sleep(max(0.0, seconds))
