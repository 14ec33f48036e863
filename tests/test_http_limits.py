"""Body caps and slow clients on a real socket: a body over the cap is refused as soon as
the relay knows, without waiting for (or buffering) the rest; idle clients are dropped by the
idle timeout, dripping ones by the request deadline and the minimum body rate (408)."""

from __future__ import annotations

import socket
import time

import pytest

from tests.relay_process import RelayProcess


@pytest.fixture(scope="module")
def relay(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("relay")
    config = workdir / "relay.toml"
    config.write_text("[http]\nrequest_timeout = 2.0\nrequest_deadline = 3.0\n"
                      "body_rate_grace = 1.0\nmin_body_rate = 1000\nkeepalive_timeout = 1.0\n")
    process = RelayProcess(workdir, ["--config", str(config), "--no-files"])
    process.start()
    yield process
    process.kill()


def exchange(relay: RelayProcess, request: bytes, *, wait: float = 5.0) -> bytes:
    with socket.create_connection(("127.0.0.1", relay.port), timeout=wait) as s:
        s.sendall(request)
        answer = b""
        try:
            while chunk := s.recv(65536):
                answer += chunk
        except TimeoutError:
            pass
        return answer


def test_announced_oversized_body_is_refused_before_it_is_sent(relay):
    started = time.monotonic()
    answer = exchange(relay, b"POST /command HTTP/1.1\r\nHost: x\r\n"
                             b"Content-Length: 50000000\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 413")
    assert b"Access-Control-Allow-Origin: *" in answer
    assert time.monotonic() - started < 2.0  # answered and closed, not timed out


def test_chunked_body_over_the_cap_is_cut_off(relay):
    chunk = b"A" * 65536
    request = b"POST /command HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    with socket.create_connection(("127.0.0.1", relay.port), timeout=5) as s:
        s.sendall(request)
        sent = 0
        answer = b""
        try:
            while sent < 8 * 1024 * 1024:
                s.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        try:
            answer = s.recv(65536)
        except (ConnectionResetError, TimeoutError):
            pass
    # The relay stopped reading just past the 1 MiB cap; what it answered (if the client
    # saw it before the reset) was a 413.
    assert sent < 8 * 1024 * 1024
    assert answer == b"" or answer.startswith(b"HTTP/1.1 413")


def test_small_endpoint_body_cap(relay):
    body = b"A" * 5000
    answer = exchange(relay, b"POST /start_session HTTP/1.1\r\nHost: x\r\nContent-Length: "
                      + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)
    assert answer.startswith(b"HTTP/1.1 413")


def test_idle_client_is_dropped(relay):
    started = time.monotonic()
    answer = exchange(relay, b"POST /command HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n",
                      wait=10)
    assert time.monotonic() - started < 6
    assert answer.startswith(b"HTTP/1.1 408")


def drip(relay: RelayProcess, first: bytes, pieces: list[bytes], every: float
         ) -> tuple[bytes, float]:
    """Send `first`, then a piece every `every` seconds until the relay answers or closes;
    the answer and when it came."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", relay.port), timeout=10) as s:
        s.sendall(first)
        s.settimeout(every)
        answer = b""
        for piece in pieces:
            try:
                chunk = s.recv(65536)
            except TimeoutError:
                try:
                    s.sendall(piece)
                except (BrokenPipeError, ConnectionResetError):
                    break
                continue
            answer += chunk
            if not chunk:
                break
        return answer, time.monotonic() - started


def test_header_lines_dripped_within_the_idle_timeout_hit_the_deadline(relay):
    answer, took = drip(relay, b"POST /command HTTP/1.1\r\n", [b"X-Drip: 1\r\n"] * 20, 0.5)
    assert answer.startswith(b"HTTP/1.1 408")
    assert 2.5 < took < 5


def test_a_dripped_body_is_cut_soon_after_the_grace_period(relay):
    answer, took = drip(relay, b"POST /command HTTP/1.1\r\nHost: x\r\n"
                               b"Content-Length: 100000\r\n\r\n", [b"A" * 10] * 20, 0.3)
    assert answer.startswith(b"HTTP/1.1 408")
    assert took < 2.5  # before the 3 s deadline


def test_a_kept_alive_connection_idle_between_requests_is_closed(relay):
    with socket.create_connection(("127.0.0.1", relay.port), timeout=5) as s:
        s.sendall(b"POST /start_session HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nA")
        first = s.recv(65536)
        started = time.monotonic()
        rest = b""
        while chunk := s.recv(65536):
            rest += chunk
    assert first.startswith(b"HTTP/1.1 4")  # a bad handshake, answered
    assert rest == b""  # closed quietly, no 408 for a request that never began
    assert time.monotonic() - started < 2
