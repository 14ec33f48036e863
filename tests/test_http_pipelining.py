"""A client that pipelines large requests and never reads costs the relay about one answer,
not one per request; when it reads, it gets every answer, in order (a real twistd relay,
over plain TCP and over TLS, whose transport applies backpressure its own way)."""

from __future__ import annotations

import base64
import datetime
import http.client
import json
import os
import socket
import ssl
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.relay_process import RelayProcess, free_port
from tests.zax import ZaxClient

PIPELINED = 150
SIZE = 400_000  # each answer ~710 KB: all of them would be ~100 MB


def self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    key_path, cert_path = directory / "key.pem", directory / "cert.pem"
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


class TLSRelay(RelayProcess):
    """The relay's HTTP endpoint over TLS (the option given last wins over RelayProcess's)."""

    tls_context = ssl._create_unverified_context()

    def start(self) -> None:
        key, cert = self_signed(self.workdir)
        self.port = free_port()
        self.args = self.args + ["--port", f"ssl:{self.port}:privateKey={key}:certKey={cert}"
                                           ":interface=127.0.0.1"]
        super().start()

    def post(self, path: str, body: bytes, timeout: float = 30.0) -> tuple[int, bytes]:
        connection = http.client.HTTPSConnection("127.0.0.1", self.port, timeout=timeout,
                                                 context=self.tls_context)
        try:
            connection.request("POST", "/" + path, body, {"Content-Type": "text/plain"})
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    def connect(self) -> socket.socket:
        raw = socket.create_connection(("127.0.0.1", self.port), timeout=20)
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        return self.tls_context.wrap_socket(raw)


class PlainRelay(RelayProcess):
    def connect(self) -> socket.socket:
        s = socket.create_connection(("127.0.0.1", self.port), timeout=20)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        return s


@pytest.fixture(scope="module", params=["tcp", "tls"])
def relay(request, tmp_path_factory):
    kind = TLSRelay if request.param == "tls" else PlainRelay
    process = kind(tmp_path_factory.mktemp("relay"), ["--no-files"])
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
    with relay.connect() as s:
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
