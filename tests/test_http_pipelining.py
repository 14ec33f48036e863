"""A client that pipelines large requests and never reads costs the relay about one answer,
not one per request; when it reads, it gets every answer, in order (a real twistd relay)."""

from __future__ import annotations

import base64
import json
import os
import socket
import time

import pytest

from tests.relay_process import RelayProcess
from tests.zax import ZaxClient

PIPELINED = 150
SIZE = 400_000  # each answer ~710 KB: all of them would be ~100 MB


@pytest.fixture(scope="module")
def relay(tmp_path_factory):
    process = RelayProcess(tmp_path_factory.mktemp("relay"), ["--no-files"])
    process.start()
    yield process
    process.kill()


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def post_request(body: bytes) -> bytes:
    return (b"POST /command HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body))


def read_answers(s: socket.socket, count: int) -> list[tuple[int, bytes]]:
    answers: list[tuple[int, bytes]] = []
    buffer = b""
    while len(answers) < count:
        end = buffer.find(b"\r\n\r\n")
        if end >= 0:
            head = buffer[:end].decode("latin-1").split("\r\n")
            length = int(next(h.split(":", 1)[1] for h in head
                              if h.lower().startswith("content-length:")))
            if len(buffer) >= end + 4 + length:
                answers.append((int(head[0].split()[1]), buffer[end + 4:end + 4 + length]))
                buffer = buffer[end + 4 + length:]
                continue
        chunk = s.recv(1 << 20)
        assert chunk, f"closed after {len(answers)} answers"
        buffer += chunk
    return answers


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="measures RSS in /proc")
def test_pipelined_entropy_requests_cost_one_answer_until_read(relay):
    client = ZaxClient(relay.post, time.time)
    client.connect()
    requests = b"".join(
        post_request(client.command_body({"cmd": "getEntropy", "size": SIZE + i}))
        for i in range(PIPELINED))
    pid = relay.process.pid
    before = rss(pid)
    with socket.create_connection(("127.0.0.1", relay.port), timeout=20) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        s.sendall(requests)
        time.sleep(2.0)  # the relay does what it will with the pipeline
        grown = rss(pid) - before
        # Unbounded, the relay would build and buffer ~100 MB of answers here.
        assert grown < 30 * 1024 * 1024, grown
        answers = read_answers(s, PIPELINED)
    assert [status for status, _ in answers] == [200] * PIPELINED
    sizes = [len(base64.b64decode(json.loads(base64.b64decode(body))["entropy"]))
             for _, body in answers]
    assert sizes == [SIZE + i for i in range(PIPELINED)]
    # The relay serves others meanwhile and afterwards.
    assert relay.post("start_session", b"x")[0] == 401
