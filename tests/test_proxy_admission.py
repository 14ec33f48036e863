"""Connection caps behind the PROXY protocol, on a real `twistd relay` (haproxy: endpoint).

Twisted's PROXY wrapper connects the HTTP channel before the header names the client. A
connection must still count from the moment it exists: against max_connections and the
descriptor reserve while its header is awaited (whoever reaches the port directly), and
against its client's max_connections_per_client as soon as the header has named it, whether
or not a request follows (an idle client behind the proxy holds what it opened).
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.protocols.haproxy._wrapper import HAProxyWrappingFactory
from twisted.web.resource import Resource

from relay.config import HTTPConfig
from relay.web.guard import ConnectionGuard, DescriptorGuard, RefusalLog
from relay.web.request import RelaySite
from tests.relay_process import RelayProcess, free_port
from tests.test_tls_proxy import ProxySender, proxy_header

LIMITS = """
[http]
max_connections = 4
max_connections_per_client = 2
"""


@pytest.fixture
def relay(tmp_path: Path) -> Iterator[RelayProcess]:
    config = tmp_path / "relay.toml"
    config.write_text(LIMITS)
    relay = RelayProcess(tmp_path, [], staple=False)
    relay.port = free_port()
    relay.args = ["--port", f"haproxy:tcp:{relay.port}:interface=127.0.0.1",
                  "--config", str(config)]
    try:
        relay.start()
        yield relay
    finally:
        relay.stop()


def _eventually(probe: Callable[[], bytes], wanted: bytes, within: float = 10.0) -> bytes:
    """Probe (each time on a new connection) until its answer starts with `wanted`."""
    deadline = time.monotonic() + within
    while True:
        head = probe()
        if head.startswith(wanted) or time.monotonic() > deadline:
            return head
        time.sleep(0.1)


def _probe(proxy: ProxySender) -> bytes:
    """The head of an answer on a new connection through `proxy` (a preflight: no rate
    limit of the API counts it, only the connection caps)."""
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=30) as s:
        s.sendall(b"OPTIONS /command HTTP/1.1\r\nHost: relay\r\n\r\n")
        return s.recv(4096)


ADMITTED, PER_CLIENT, BUSY = b"HTTP/1.1 204", b"HTTP/1.1 429", b"HTTP/1.1 503"


def test_idle_and_headerless_connections_count(relay: RelayProcess) -> None:
    a = ProxySender(relay.port, 1, "198.51.100.7")
    b = ProxySender(relay.port, 2, "2001:db8:9:9::9")
    held: list[socket.socket] = []
    try:
        # Two connections of one client through the proxy that never send a request: the
        # proxy sends their header, and that is enough to count them.
        held += [socket.create_connection(("127.0.0.1", a.port), timeout=10) for _ in range(2)]
        head = _eventually(lambda: _probe(a), PER_CLIENT)
        assert head.startswith(PER_CLIENT + b" Too Many Requests"), head
        assert _probe(b).startswith(ADMITTED)  # another client is not affected
        for s in held:
            s.close()
        held.clear()
        assert _eventually(lambda: _probe(a), ADMITTED).startswith(ADMITTED)

        # Connections straight to the PROXY port that send no header fill max_connections
        # (and would run the process out of descriptors if they did not count).
        # (One of them may itself be refused while the relay still counts the connections
        # closed above: then another is opened.)
        for _ in range(8):
            held.append(socket.create_connection(("127.0.0.1", relay.port), timeout=10))
            if len(held) < 4:
                continue
            head = _eventually(lambda: _probe(b), BUSY, within=2.0)
            if head.startswith(BUSY):
                break
        assert head.startswith(BUSY), head
    finally:
        for s in held:
            with contextlib.suppress(OSError):
                s.close()
        a.close()
        b.close()
    assert "Traceback" not in relay.log()


# ---- the same on a StringTransport ----------------------------------------------------------


class _Ok(Resource):
    isLeaf = True

    def render(self, request: object) -> bytes:
        return b"ok"


def _site(max_connections: int, per_client: int) -> tuple[HAProxyWrappingFactory,
                                                          ConnectionGuard]:
    clock = Clock()
    guard = ConnectionGuard(max_connections, per_client, DescriptorGuard(None, 0),
                            RefusalLog(clock, "HTTP"))
    return HAProxyWrappingFactory(RelaySite(_Ok(), HTTPConfig(), reactor=clock,
                                            guard=guard)), guard


_PROXY = IPv4Address("TCP", "127.0.0.1", 50000)


def _connect(factory: HAProxyWrappingFactory) -> tuple[object, StringTransport]:
    protocol = factory.buildProtocol(_PROXY)
    transport = StringTransport(peerAddress=_PROXY,
                                hostAddress=IPv4Address("TCP", "127.0.0.1", 8080))
    protocol.makeConnection(transport)
    return protocol, transport


def test_a_connection_counts_in_all_before_its_header_and_per_client_with_it() -> None:
    factory, guard = _site(max_connections=3, per_client=1)
    first, _ = _connect(factory)
    assert guard.total == 1 and guard.per_client == {}
    # The header alone (split in two reads, no request after it) names the client.
    header = proxy_header(1, ("198.51.100.7", 40000), ("192.0.2.1", 443))
    first.dataReceived(header[:10])  # type: ignore[attr-defined]
    assert guard.per_client == {}
    first.dataReceived(header[10:])  # type: ignore[attr-defined]
    assert guard.total == 1 and guard.per_client == {"198.51.100.7/32": 1}

    second, transport = _connect(factory)
    assert guard.total == 2
    second.dataReceived(header)  # type: ignore[attr-defined]
    assert transport.value().startswith(b"HTTP/1.1 429") and transport.disconnecting
    second.connectionLost(None)  # type: ignore[attr-defined]
    assert guard.total == 1

    waiting = [_connect(factory) for _ in range(2)]
    assert guard.total == 3
    _, refused = _connect(factory)
    assert refused.value().startswith(b"HTTP/1.1 503") and refused.disconnecting
    for protocol, _ in waiting:  # closed before their header: nothing stays counted
        protocol.connectionLost(None)  # type: ignore[attr-defined]
    first.connectionLost(None)  # type: ignore[attr-defined]
    assert guard.total == 0 and guard.per_client == {}
