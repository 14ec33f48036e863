"""The `relay` command against a hostile relay: answers that drip a byte every few seconds,
or announce or stream 1.5 GB, to /join, /channel and a mailbox call. Every call ends in
exit 3 within its deadline (relay/client/http.py) with the client's peak RSS bounded.

The hostile relay is a small threaded HTTP server in the test, one per behaviour; all the
commands run at once, so the test lasts about as long as the longest deadline (the mailbox
client's 30 s).
"""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from relay.client import codes
from relay.client.live.rendezvous import MAX_ANSWER, REQUEST_SLACK
from relay.client.mailbox.client import DEFAULT_MAX_RESPONSE, DEFAULT_REQUEST_TIMEOUT
from tests.e2e.cli_harness import relay_command

HUGE = 1_500_000_000
DRIP_EVERY = 2.0
# Far below the 1.5 GB on offer; above the mailbox client's 64 MiB cap plus Python.
MAX_RSS = 300 * 1024 * 1024
# Beyond a call's deadline, counted from when its request reached the relay: the client's
# reaction and exit on a loaded machine.
MARGIN = 8.0
# Six Python processes starting at once on a loaded machine.
STARTUP = 30.0
CHANNEL = "4711"

Handler = Callable[[socket.socket, bytes], None]


def _join_answer() -> bytes:
    return json.dumps({"channel": CHANNEL, "uuid": base64.b64encode(bytes(32)).decode(),
                       "staple": "127.0.0.1:9", "expires_in": 300}).encode()


def _answer(conn: socket.socket, body: bytes) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (len(body), body))


class HostileRelay:
    """Answers POSTs by path: a handler per path, or the default handler."""

    def __init__(self, default: Handler, **by_path: Handler) -> None:
        self.default = default
        self.by_path = {f"/{name}": handler for name, handler in by_path.items()}
        self.stopped = threading.Event()
        self.last_request_at = 0.0  # time.monotonic() when the latest request came in
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            try:
                conn.settimeout(60)
                request = b""
                while b"\r\n\r\n" not in request:
                    data = conn.recv(65536)
                    if not data:
                        return
                    request += data
                head, _, body = request.partition(b"\r\n\r\n")
                path = head.split(b" ", 2)[1].decode()
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                while len(body) < length:
                    body += conn.recv(65536)
                self.last_request_at = time.monotonic()
                self.by_path.get(path, self.default)(conn, self.stopped)
            except OSError:
                pass  # the client gave up on us: what the test wants

    def stop(self) -> None:
        self.stopped.set()
        self.listener.close()


def answer_join(conn: socket.socket, _stopped: threading.Event) -> None:
    _answer(conn, _join_answer())


def drip_body(conn: socket.socket, stopped: threading.Event) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 1000\r\n\r\n")
    while not stopped.wait(DRIP_EVERY):
        conn.sendall(b" ")


def drip_headers(conn: socket.socket, stopped: threading.Event) -> None:
    for byte in b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n":
        if stopped.wait(DRIP_EVERY):
            return
        conn.sendall(bytes([byte]))


def announce_huge(conn: socket.socket, stopped: threading.Event) -> None:
    """Content-Length 1.5 GB, then bytes as fast as the client takes them."""
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % HUGE)
    _stream(conn, stopped, lambda block: block)


def stream_huge(conn: socket.socket, stopped: threading.Event) -> None:
    """1.5 GB in chunked encoding (no length announced)."""
    conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    _stream(conn, stopped, lambda block: b"%x\r\n%s\r\n" % (len(block), block))


def _stream(conn: socket.socket, stopped: threading.Event,
            frame: Callable[[bytes], bytes]) -> None:
    block = frame(b"A" * (1024 * 1024))
    sent = 0
    while sent < HUGE and not stopped.is_set():
        conn.sendall(block)
        sent += len(block)


@pytest.fixture
def hostile() -> Iterator[Callable[..., HostileRelay]]:
    servers: list[HostileRelay] = []

    def make(default: Handler, **by_path: Handler) -> HostileRelay:
        server = HostileRelay(default, **by_path)
        servers.append(server)
        return server

    try:
        yield make
    finally:
        for server in servers:
            server.stop()


class Run:
    """One `relay` command, reaped with wait4 for its peak RSS."""

    def __init__(self, label: str, args: list[str], relay: HostileRelay, deadline: float,
                 workdir: Path, extra_env: dict[str, str] | None = None) -> None:
        self.label = label
        self.relay = relay
        self.deadline = deadline
        home = workdir / f"home-{label}"
        self.err = workdir / f"{label}.err"
        env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
        env.update(RELAY_HOME=str(home), RELAY_URL=relay.url, **(extra_env or {}))
        with open(self.err, "wb") as err:
            self.process = subprocess.Popen(relay_command() + args, env=env, cwd=workdir,
                                            stdin=subprocess.DEVNULL,
                                            stdout=subprocess.DEVNULL, stderr=err)
        self.code: int | None = None
        self.after_request = 0.0  # seconds from the relay's last request to the exit
        self.peak_rss = 0

    def poll(self) -> bool:
        # The peak RSS is read from the live process (VmHWM starts again at exec): wait4's
        # ru_maxrss would count the forked copy of this test process before the exec.
        self.peak_rss = max(self.peak_rss, _high_water_mark(self.process.pid))
        pid, status, _ = os.wait4(self.process.pid, os.WNOHANG)
        if not pid:
            return False
        self.after_request = time.monotonic() - self.relay.last_request_at
        self.code = os.waitstatus_to_exitcode(status)
        self.process.returncode = self.code
        return True

    def kill(self) -> None:
        if self.code is None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def stderr(self) -> str:
        return self.err.read_text(errors="replace")


def _high_water_mark(pid: int) -> int:
    """The process's peak RSS so far in bytes (0 once it has exited)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def test_dripping_and_oversized_answers_end_in_exit_3_within_the_deadline(tmp_path, hostile):
    code = codes.make_code(CHANNEL)
    receive = ["receive"]
    by_code = {"RELAY_CODE": code}
    mailbox = ["receive", "--mailbox"]
    cases = [
        # (label, relay, command, its deadline, what stderr says)
        ("join-drip", hostile(drip_body), receive, REQUEST_SLACK, "within"),
        ("join-announced-huge", hostile(announce_huge), receive, REQUEST_SLACK, "over"),
        ("channel-drip-headers", hostile(drip_headers, join=answer_join), receive,
         REQUEST_SLACK, "within"),
        ("channel-streamed-huge", hostile(stream_huge, join=answer_join), receive,
         REQUEST_SLACK, "over"),
        ("mailbox-drip", hostile(drip_body), mailbox, DEFAULT_REQUEST_TIMEOUT, "within"),
        ("mailbox-streamed-huge", hostile(stream_huge), mailbox, DEFAULT_REQUEST_TIMEOUT,
         "over"),
    ]
    runs = [(Run(label, command, server, deadline, tmp_path,
                 by_code if command is receive else None), says)
            for label, server, command, deadline, says in cases]
    try:
        waiting = [run for run, _ in runs]
        give_up = time.monotonic() + max(run.deadline for run in waiting) + MARGIN + STARTUP
        while waiting and time.monotonic() < give_up:
            waiting = [run for run in waiting if not run.poll()]
            time.sleep(0.02)
        assert not waiting, f"still running: {[run.label for run in waiting]}"
    finally:
        for run, _ in runs:
            run.kill()
    for run, says in runs:
        stderr = run.stderr()
        assert run.code == 3, f"{run.label}: exit {run.code}\n{stderr}"
        assert run.relay.last_request_at, f"{run.label}: no request reached the relay"
        assert run.after_request < run.deadline + MARGIN, \
            f"{run.label}: exit {run.after_request:.1f} s after its request"
        assert 0 < run.peak_rss < MAX_RSS, f"{run.label}: peak RSS {run.peak_rss / 1e6:.0f} MB"
        assert says in stderr and "Traceback" not in stderr, f"{run.label}:\n{stderr}"
    assert MAX_ANSWER < DEFAULT_MAX_RESPONSE < MAX_RSS
