"""Listeners and admission on a real `twistd relay`: a port that cannot be bound stops the
relay with one line; connection caps and the descriptor reserve refuse new connections with
a short answer (logged once an interval), never touching those already open; the staple
address never comes from a request header."""

from __future__ import annotations

import json
import os
import resource
import select
import socket
import subprocess
import time
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet.address import IPv4Address, IPv6Address

from relay.config import RelayConfig, RendezvousConfig
from relay.rendezvous.http import JoinResource
from tests.relay_process import RelayProcess, free_port, twistd_command


def run_relay(workdir: Path, args: list[str], *, nofile: int | None = None,
              wait_for: int | None = None, twistd: list[str] = ()) -> subprocess.Popen:
    """`twistd -n relay ARGS`, optionally with a lower descriptor limit; waits until
    `wait_for` (a port) accepts connections."""

    def limit() -> None:
        if nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    command = twistd_command() + ["-n", "--pidfile=", "--logfile", str(workdir / "relay.log"),
                                  *twistd, "relay", "--no-files"] + args
    out = open(workdir / "relay.out", "wb")  # noqa: SIM115 - closed with the process
    process = subprocess.Popen(command, cwd=workdir, stdin=subprocess.DEVNULL, stdout=out,
                               stderr=subprocess.STDOUT, preexec_fn=limit)
    out.close()
    if wait_for is not None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert process.poll() is None, (workdir / "relay.log").read_text()
            try:
                socket.create_connection(("127.0.0.1", wait_for), timeout=0.5).close()
                break
            except OSError:
                time.sleep(0.05)
    return process


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.kill()
    process.wait(timeout=15)


def output_of(workdir: Path) -> str:
    return "".join(p.read_text(errors="replace") for p in
                   (workdir / "relay.out", workdir / "relay.log") if p.exists())


@pytest.mark.parametrize("taken", ["staple", "http"])
def test_a_port_that_cannot_be_bound_stops_the_relay_with_one_line(tmp_path, taken):
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        busy = blocker.getsockname()[1]
        http_port = busy if taken == "http" else free_port()
        staple_port = busy if taken == "staple" else free_port()
        process = run_relay(tmp_path, ["--port", f"tcp:{http_port}:interface=127.0.0.1",
                                       "--staple", f"tcp:{staple_port}:interface=127.0.0.1"])
        try:
            code = process.wait(timeout=30)
        finally:
            stop(process)
    output = output_of(tmp_path)
    assert code != 0
    what = "staple connections" if taken == "staple" else "HTTP"
    lines = [line for line in output.splitlines() if "cannot listen" in line]
    assert len(lines) == 1, output
    assert f"cannot listen for {what} on tcp:{busy}" in lines[0]
    assert "Address already in use" in lines[0]
    assert "Traceback" not in output


def raw_join(port: int, host_header: bytes) -> dict:
    body = json.dumps({"role": "sender"}).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"POST /join HTTP/1.1\r\nHost: " + host_header + b"\r\nConnection: close\r\n"
                  b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                  % (len(body), body))
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200"), answer
    return json.loads(answer.split(b"\r\n\r\n", 1)[1])


def test_the_host_header_cannot_move_the_staple_address(tmp_path):
    relay = RelayProcess(tmp_path, ["--no-files"], staple=True)
    relay.start()
    try:
        for host in (b"evil.example:9009", b"[2001:db8::1]:80", b"127.0.0.1"):
            assert raw_join(relay.port, host)["staple"] == f"127.0.0.1:{relay.staple_port}"
    finally:
        relay.kill()


class _Request:
    def __init__(self, address) -> None:
        self.address = address

    def getHost(self):
        return self.address


@pytest.mark.parametrize("local, configured, expected", [
    (IPv4Address("TCP", "198.51.100.1", 443), "", "198.51.100.1:9009"),
    (IPv6Address("TCP", "2001:db8::5", 443), "", "[2001:db8::5]:9009"),
    (IPv6Address("TCP", "fe80::1%eth0", 443), "", "[fe80::1]:9009"),
    (IPv4Address("TCP", "10.0.0.5", 443), "relay.example:443", "relay.example:443"),
])
def test_staple_address_is_configured_or_the_local_address(local, configured, expected):
    config = RelayConfig(rendezvous=RendezvousConfig(staple_address=configured))
    join = JoinResource(config, None, lambda: 9009)  # type: ignore[arg-type]
    assert join.staple_address(_Request(local)) == expected


def hold(port: int, count: int, source: str = "127.0.0.1") -> tuple[list, list[bytes]]:
    """Open `count` connections; those the relay refuses answer at once and close."""
    held, refusals = [], []
    for _ in range(count):
        s = socket.socket()
        s.bind((source, 0))
        s.connect(("127.0.0.1", port))
        held.append(s)
    time.sleep(0.5)
    readable, _, _ = select.select(held, [], [], 0)
    for s in readable:
        s.settimeout(1)
        try:
            refusals.append(s.recv(4096))
        except ConnectionResetError:  # closed at once (the staple listener's refusal)
            refusals.append(b"")
        held.remove(s)
        s.close()
    return held, refusals


def served(port: int, source: str = "127.0.0.1") -> bytes:
    with socket.socket() as s:
        s.bind((source, 0))
        s.settimeout(10)
        s.connect(("127.0.0.1", port))
        s.sendall(b"POST /start_session HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                  b"Content-Length: 1\r\n\r\nA")
        return s.recv(4096)


@pytest.mark.skipif(not hasattr(resource, "RLIMIT_NOFILE"), reason="POSIX only")
def test_near_the_descriptor_limit_new_connections_are_refused_and_logged_once(tmp_path):
    config = tmp_path / "relay.toml"
    config.write_text("[http]\ndescriptor_reserve = 64\nmax_connections_per_client = 1000\n")
    port = free_port()
    process = run_relay(tmp_path, ["--config", str(config), "--no-rendezvous",
                                   "--port", f"tcp:{port}:interface=127.0.0.1"],
                        nofile=256, wait_for=port)
    held: list = []
    try:
        held, refusals = hold(port, 300)
        # 256 descriptors, 64 kept in reserve: about 190 connections minus the relay's own.
        assert 150 < len(held) <= 192
        assert len(refusals) == 300 - len(held)
        assert all(r.startswith(b"HTTP/1.1 503 ") and b"relay busy" in r for r in refusals), \
            (len(held), refusals[:3], [r for r in refusals if not r.startswith(b"HTTP/1.1 503")][:3])
        for s in held[:10]:  # connections already open are served as ever
            s.sendall(b"POST /start_session HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nA")
            assert s.recv(4096).startswith(b"HTTP/1.1 401")
        for s in held:
            s.close()
        held = []
        time.sleep(0.3)
        assert served(port).startswith(b"HTTP/1.1 401")  # a bystander gets in again
    finally:
        for s in held:
            s.close()
        stop(process)
    log = output_of(tmp_path)
    assert log.count("closing HTTP connections") == 1
    assert log.count("HTTP connections in the last") <= 1  # one summary line per 10 s
    assert "EMFILE" not in log


def test_per_client_cap_answers_429_and_other_clients_get_in(tmp_path):
    config = tmp_path / "relay.toml"
    config.write_text("[http]\nmax_connections_per_client = 5\n")
    port = free_port()
    process = run_relay(tmp_path, ["--config", str(config), "--no-rendezvous",
                                   "--port", f"tcp:{port}:interface=127.0.0.1"], wait_for=port)
    held: list = []
    try:
        time.sleep(0.2)  # the readiness probe's connection is gone
        held, refusals = hold(port, 8, source="127.0.0.2")
        assert len(held) == 5
        assert len(refusals) == 3 and all(r.startswith(b"HTTP/1.1 429 ") for r in refusals)
        assert served(port, source="127.0.0.3").startswith(b"HTTP/1.1 401")
    finally:
        for s in held:
            s.close()
        stop(process)


@pytest.mark.skipif(not hasattr(resource, "RLIMIT_NOFILE"), reason="POSIX only")
def test_staple_connections_share_the_descriptor_reserve(tmp_path):
    """A flood of staple connections is closed near the limit too (no EMFILE), and once it
    ends HTTP clients are served again."""
    config = tmp_path / "relay.toml"
    config.write_text("[http]\ndescriptor_reserve = 64\n")
    port, staple_port = free_port(), free_port()
    process = run_relay(tmp_path, ["--port", f"tcp:{port}:interface=127.0.0.1",
                                   "--staple", f"tcp:{staple_port}:interface=127.0.0.1",
                                   "--config", str(config)],
                        nofile=256, wait_for=staple_port)
    held: list = []
    try:
        held, refusals = hold(staple_port, 300)
        # Refused staple connections are closed without a word (they speak no HTTP).
        assert 150 < len(held) <= 192 and all(r == b"" for r in refusals)
        for s in held:
            s.close()
        held = []
        time.sleep(0.3)
        assert served(port).startswith(b"HTTP/1.1 401")
    finally:
        for s in held:
            s.close()
        stop(process)
    log = output_of(tmp_path)
    assert log.count("closing staple connections") == 1
    assert "EMFILE" not in log


def test_descriptor_guarded_factory_closes_connections_near_the_limit():
    """The guard other listeners (the staple listener) can wrap themselves in."""
    from twisted.internet.protocol import Factory, Protocol
    from twisted.internet.task import Clock

    from relay.web.guard import DescriptorGuard, DescriptorGuardedFactory, RefusalLog

    made: list = []

    class Echo(Protocol):
        def connectionMade(self) -> None:
            made.append(self)

    class Transport:
        def __init__(self, fileno: int) -> None:
            self._fileno = fileno
            self.aborted = False

        def fileno(self) -> int:
            return self._fileno

        def abortConnection(self) -> None:
            self.aborted = True

        def getPeer(self):
            return IPv4Address("TCP", "192.0.2.1", 1)

        def getHost(self):
            return IPv4Address("TCP", "192.0.2.2", 2)

    factory = DescriptorGuardedFactory(Factory.forProtocol(Echo), DescriptorGuard(100, 10),
                                       RefusalLog(Clock(), "staple"))
    near, fine = Transport(95), Transport(5)
    factory.buildProtocol(None).makeConnection(near)
    wrapper = factory.buildProtocol(None)
    wrapper.makeConnection(fine)
    assert near.aborted and not fine.aborted
    assert len(made) == 1


@pytest_twisted.ensureDeferred
async def test_listeners_bind_in_privileged_start_service(tmp_path):
    """Bound before twistd's --uid drops root: both ports listen before startService."""
    from twisted.internet import reactor

    from relay.config import load_config
    from relay.service import RelayService

    config = load_config(overrides={
        "http": {"endpoint": "tcp:0:interface=127.0.0.1"},
        "files": {"enabled": False},
        "rendezvous": {"staple_endpoint": "tcp:0:interface=127.0.0.1"}})
    service = RelayService(config, reactor)
    rendezvous = next(s for s in service.app.services if hasattr(s, "staple"))
    service.privilegedStartService()
    try:
        assert service.http.port_number()
        assert rendezvous.staple.port_number()
    finally:
        await service.http.stopService()
        await rendezvous.staple.stopService()


def free_low_port() -> int | None:
    for port in range(900, 1024):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    return None


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root")
def test_twistd_uid_binds_a_low_port_then_serves_unprivileged(tmp_path):
    port = free_low_port()
    assert port is not None
    process = run_relay(tmp_path, ["--no-rendezvous", "--port", f"tcp:{port}:interface=127.0.0.1"],
                        twistd=["--uid=65534", "--gid=65534"], wait_for=port)
    try:
        assert served(port).startswith(b"HTTP/1.1 401")
        with open(f"/proc/{process.pid}/status") as f:
            uids = next(line for line in f if line.startswith("Uid:")).split()[1:]
        assert uids == ["65534"] * 4
    finally:
        stop(process)
