"""Body caps on a real socket: a body over the cap is refused as soon as the relay knows,
without waiting for (or buffering) the rest; slow clients are dropped by the idle timeout."""

from __future__ import annotations

import socket
import time

import pytest

from tests.relay_process import RelayProcess


@pytest.fixture(scope="module")
def relay(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("relay")
    config = workdir / "relay.toml"
    config.write_text("[http]\nrequest_timeout = 2.0\n")
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
    assert b"200" not in answer
