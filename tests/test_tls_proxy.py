"""The HTTP endpoint behind TLS and behind the PROXY protocol, on a real `twistd relay`.

TLS: an `ssl:` endpoint with a certificate made here (a throwaway CA, the server's cert for
127.0.0.1) serves the mailbox API to treq (which trusts only that CA) and to glow.ts in Node
(NODE_EXTRA_CA_CERTS; tests/interop's scenario runner).

PROXY: a `haproxy:` endpoint behind a small forwarding proxy written here, which prefixes
each connection with a PROXY v1 (text) or v2 (binary) header naming a client address of its
own. The relay must see those addresses: the rendezvous's two-address rule and the
per-client limits (HTTP connections, joins) count them, not the proxy's.

The staple listener stays plain TCP in both (its bytes are end-to-end encrypted already).
"""

from __future__ import annotations

import contextlib
import datetime
import http.client
import ipaddress
import json
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import treq
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from twisted.internet import reactor, ssl
from twisted.internet.defer import Deferred
from twisted.internet.threads import blockingCallFromThread, deferToThread
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS

from relay.crypto import b64encode
from tests.relay_process import RelayProcess, free_port
from tests.test_interop_glow import node, run_scenario  # noqa: F401 - node is a fixture
from tests.zax import ZaxClient

# ---- TLS ----------------------------------------------------------------------------------


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_certificates(directory: Path) -> dict[str, Path]:
    """A CA and a server certificate it signed, for 127.0.0.1 and localhost (one day)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder().subject_name(_name("relay test CA"))
        .issuer_name(_name("relay test CA")).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=False, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder().subject_name(_name("127.0.0.1"))
        .issuer_name(ca_cert.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
            critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256()))
    paths = {"ca": directory / "ca.pem", "cert": directory / "server.pem",
             "key": directory / "server.key"}
    paths["ca"].write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    paths["cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths["key"].write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return paths


class TLSRelay(RelayProcess):
    """A relay whose HTTP API listens on `ssl:` (the staple listener on plain TCP)."""

    def __init__(self, workdir: Path, difficulty: int = 0) -> None:
        super().__init__(workdir, [], staple=True)
        self.difficulty = difficulty
        self.certificates = make_certificates(workdir)
        self.port, self.staple_port = free_port(), free_port()
        self.args = [
            "--port", f"ssl:{self.port}:interface=127.0.0.1"
                      f":privateKey={self.certificates['key']}"
                      f":certKey={self.certificates['cert']}",
            "--difficulty", str(difficulty), "--files-dir", str(workdir / "files")]

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"


@pytest.fixture
def tls_relay(tmp_path: Path) -> Iterator[TLSRelay]:
    relay = TLSRelay(tmp_path)
    try:
        relay.start()
        yield relay
    finally:
        relay.stop()


def _https_client(ca_pem: bytes | None) -> treq.client.HTTPClient:
    trust = None if ca_pem is None else ssl.Certificate.loadPEM(ca_pem)
    policy = BrowserLikePolicyForHTTPS(trustRoot=trust)
    return treq.client.HTTPClient(Agent(reactor, contextFactory=policy))


@pytest_twisted.ensureDeferred
async def test_mailbox_api_over_tls_to_treq(tls_relay: TLSRelay) -> None:
    """Handshake, upload, count and download over https, the client trusting only the test
    CA; a client without it is refused by its own verification, and plain HTTP gets nothing."""
    client = _https_client(tls_relay.certificates["ca"].read_bytes())

    async def post(path: str, body: bytes) -> tuple[int, bytes]:
        response = await client.post(f"{tls_relay.url}/{path}", data=body,
                                     headers={"Content-Type": "text/plain"}, timeout=30)
        return response.code, await response.content()

    def blocking_post(path: str, body: bytes) -> tuple[int, bytes]:
        return blockingCallFromThread(reactor, lambda: Deferred.fromCoroutine(post(path, body)))

    # ZaxClient speaks synchronously: it runs in a thread, each request on the reactor.
    alice = ZaxClient(post=blocking_post, now=time.time)
    bob = ZaxClient(post=blocking_post, now=time.time)
    assert await deferToThread(alice.connect) == 0
    assert await deferToThread(bob.connect) == 0
    status, _, _ = await deferToThread(alice.upload, bob, b"over tls")
    assert status == 200
    status, body = await deferToThread(bob.command, {"cmd": "count"})
    assert status == 200 and bob.open(body) == 1
    status, body = await deferToThread(bob.command, {"cmd": "download"})
    assert status == 200 and [m["data"] for m in bob.open(body)] == [b64encode(b"over tls")]

    # The rendezvous over TLS names the staple listener, plain TCP on its own port.
    response = await client.post(f"{tls_relay.url}/join", data=b'{"role":"sender"}',
                                 timeout=30)
    joined = json.loads(await response.content())
    assert response.code == 200 and joined["staple"] == f"127.0.0.1:{tls_relay.staple_port}"

    untrusting = _https_client(None)  # the system's roots only
    with pytest.raises(Exception, match="(?i)certificate|SSL|TLS"):
        await untrusting.post(f"{tls_relay.url}/start_session", data=b"x", timeout=30)
    plain = await deferToThread(_plain_http_attempt, tls_relay.port)
    assert not plain.startswith(b"HTTP/1.1 200"), plain


def _plain_http_attempt(port: int) -> bytes:
    """What a plain-HTTP client gets from the TLS port: no HTTP answer (a TLS alert, or
    nothing)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"POST /start_session HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx")
        try:
            return s.recv(200)
        except (TimeoutError, ConnectionResetError):
            return b""


@pytest.mark.slow
def test_glow_over_tls_in_node(node: str, tmp_path: Path,  # noqa: F811 - the fixture
                               monkeypatch: pytest.MonkeyPatch) -> None:
    """glow.ts in Node, trusting the test CA through NODE_EXTRA_CA_CERTS, runs the interop
    messages scenario over https."""
    relay = TLSRelay(tmp_path)
    monkeypatch.setenv("NODE_EXTRA_CA_CERTS", str(relay.certificates["ca"]))
    try:
        relay.start()
        result = run_scenario(node, relay, "messages")  # type: ignore[arg-type]
    finally:
        relay.stop()
    assert result["ok"] is True and result["downloaded"] == 4
    assert "Traceback" not in relay.log()


# ---- PROXY protocol -----------------------------------------------------------------------

_V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


def proxy_header(version: int, source: tuple[str, int], destination: tuple[str, int]) -> bytes:
    """The PROXY protocol header a proxy sends first on each connection to the backend."""
    src, dst = ipaddress.ip_address(source[0]), ipaddress.ip_address(destination[0])
    assert src.version == dst.version
    if version == 1:
        family = "TCP4" if src.version == 4 else "TCP6"
        return (f"PROXY {family} {src} {dst} {source[1]} {destination[1]}\r\n").encode()
    addresses = src.packed + dst.packed + struct.pack("!HH", source[1], destination[1])
    family = 0x11 if src.version == 4 else 0x21  # TCP over IPv4 / IPv6
    return _V2_SIGNATURE + struct.pack("!BBH", 0x21, family, len(addresses)) + addresses


class ProxySender:
    """A forwarding TCP proxy on a free loopback port: each connection to it is opened to the
    relay with a PROXY header naming `client` as the source, then piped both ways."""

    def __init__(self, backend_port: int, version: int, client: str) -> None:
        self.backend_port = backend_port
        self.version = version
        self.client = client
        # The address the client reached: the proxy's own, in the client's family.
        self.destination = ("127.0.0.1" if ":" not in client else "::1", 443)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = [self.listener]
        self.source_ports = iter(range(40000, 60000))
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                downstream, _ = self.listener.accept()
            except OSError:
                return  # closed
            self.sockets.append(downstream)
            header = proxy_header(self.version, (self.client, next(self.source_ports)),
                                  self.destination)
            try:
                upstream = socket.create_connection(("127.0.0.1", self.backend_port),
                                                    timeout=10)
                upstream.settimeout(None)
                self.sockets.append(upstream)
                upstream.sendall(header)
            except OSError:
                downstream.close()
                continue
            for a, b in ((downstream, upstream), (upstream, downstream)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        for s in self.sockets:
            with contextlib.suppress(OSError):
                s.close()

    def post(self, path: str, body: dict | bytes) -> tuple[int, Any]:
        """One request on a new connection through this proxy; JSON answers decoded."""
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            connection.request("POST", "/" + path, data, {"Content-Type": "text/plain"})
            response = connection.getresponse()
            answer = response.read()
            if response.getheader("Content-Type") == "application/json":
                answer = json.loads(answer)
            return response.status, answer
        finally:
            connection.close()


# Per PROXY version, client addresses of one family: v1 speaks IPv4 here, v2 IPv6 (whose
# per-client limits count a /64: the first two are one client, the third another).
CLIENTS = {1: ["198.51.100.7", "198.51.100.8", "203.0.113.9"],
           2: ["2001:db8:1:2::7", "2001:db8:1:2::8", "2001:db8:9:9::9"]}

LIMITS = """
[http]
max_connections_per_client = 2
[rendezvous]
joins_per_ip_per_minute = 3
"""


@contextlib.contextmanager
def running_proxied_relay(workdir: Path, staple: str | None = None) -> Iterator[RelayProcess]:
    """A relay whose HTTP API takes the PROXY protocol (v1 and v2 both, as Twisted's haproxy
    endpoint does), with a plain TCP staple listener (`staple`: an endpoint for its port)."""
    config = workdir / "relay.toml"
    config.write_text(LIMITS)
    relay = RelayProcess(workdir, [], staple=True)
    relay.port, relay.staple_port = free_port(), free_port()
    relay.args = ["--port", f"haproxy:tcp:{relay.port}:interface=127.0.0.1",
                  "--config", str(config)]
    if staple is not None:
        relay.args += ["--staple", staple.format(port=relay.staple_port)]
    try:
        relay.start()
        yield relay
    finally:
        relay.stop()


@pytest.fixture
def proxied_relay(tmp_path: Path) -> Iterator[RelayProcess]:
    with running_proxied_relay(tmp_path) as relay:
        yield relay


@pytest.fixture(params=[1, 2], ids=["proxy-v1", "proxy-v2"])
def proxies(request: pytest.FixtureRequest, proxied_relay: RelayProcess
            ) -> Iterator[list[ProxySender]]:
    senders = [ProxySender(proxied_relay.port, request.param, client)
               for client in CLIENTS[request.param]]
    try:
        yield senders
    finally:
        for sender in senders:
            sender.close()


def test_two_address_rule_sees_proxied_addresses(proxies: list[ProxySender],
                                                 proxied_relay: RelayProcess) -> None:
    """Sender and recipient join one channel from two proxied addresses and both use it; a
    third proxied address is refused, with the sender's own uuid."""
    a, b, c = proxies
    status, sender = a.post("join", {"role": "sender"})
    assert status == 200, sender
    # The staple address: the destination the client reached (from the PROXY header) with
    # the staple port, unless [rendezvous] staple_address says otherwise (docs/operations.md).
    host = a.destination[0] if a.version == 1 else f"[{a.destination[0]}]"
    assert sender["staple"] == f"{host}:{proxied_relay.staple_port}"
    status, recipient = b.post("join", {"role": "recipient", "channel": sender["channel"]})
    assert status == 200, recipient
    for proxy, joined in ((a, sender), (b, recipient)):
        status, state = proxy.post("channel", {"channel": sender["channel"],
                                               "uuid": joined["uuid"]})
        assert status == 200, state
    status, refused = c.post("channel", {"channel": sender["channel"], "uuid": sender["uuid"]})
    assert status == 403 and "address" in refused["error"]
    # Nor can it take the (taken) recipient role: the channel has its two addresses.
    status, refused = c.post("join", {"role": "recipient", "channel": sender["channel"]})
    assert status == 403 and "address" in refused["error"]


def _start_session(proxy: ProxySender) -> tuple[socket.socket, bytes]:
    """A connection through `proxy` with one /start_session on it: (socket, answer's head).
    Behind the PROXY protocol a connection is admitted on its first request's bytes."""
    s = socket.create_connection(("127.0.0.1", proxy.port), timeout=30)
    s.sendall(b"POST /start_session HTTP/1.1\r\nHost: relay\r\nContent-Length: 44\r\n\r\n"
              + b64encode(bytes(32)).encode())
    return s, s.recv(4096)


def _admitted(proxy: ProxySender) -> socket.socket:
    """A kept-alive connection through `proxy` that the relay answered (so it was admitted)."""
    s, head = _start_session(proxy)
    assert head.startswith(b"HTTP/1.1 200"), head
    return s


def _refused(proxy: ProxySender) -> bytes:
    s, head = _start_session(proxy)
    s.close()
    return head


def test_per_client_limits_key_on_proxied_addresses(proxies: list[ProxySender]) -> None:
    """max_connections_per_client = 2 and joins_per_ip_per_minute = 3 count each proxied
    client (an IPv6 client by its /64), though every connection comes from the proxy."""
    first, neighbour, other = proxies
    one_network = first.version == 2  # first and neighbour: one /64, so one client
    held = [_admitted(first), _admitted(neighbour if one_network else first)]
    try:
        assert _refused(first).startswith(b"HTTP/1.1 429"), "a third connection of a client"
        held.append(_admitted(other))
        if not one_network:
            held.append(_admitted(neighbour))
    finally:
        for s in held:
            s.close()

    for proxy in (first, first, neighbour):
        status, answer = proxy.post("join", {"role": "sender"})
        assert status == 200, answer
    if not one_network:  # first has one join left this minute
        status, _ = first.post("join", {"role": "sender"})
        assert status == 200
    status, refused = first.post("join", {"role": "sender"})
    assert status == 429 and "joins" in refused["error"]
    status, _ = other.post("join", {"role": "sender"})
    assert status == 200


def test_haproxy_endpoint_needs_the_header(proxied_relay: RelayProcess) -> None:
    """A client reaching the PROXY port directly (no header) gets no HTTP answer: the relay
    never takes the connection's own address for the client's."""
    answer = _plain_http_attempt(proxied_relay.port)
    assert not answer.startswith(b"HTTP/"), answer
    assert "Traceback" not in proxied_relay.log()


def _staple(address: str, source: str, line: str) -> socket.socket:
    """A direct TCP connection to the staple listener from `source`, identified by `line`."""
    host, port = address.rsplit(":", 1)
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(30)
    s.bind((source, 0))
    s.connect((host, int(port)))
    s.sendall(line.encode() + b"\n")
    return s


def _read_line(s: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        chunk = s.recv(1)
        if not chunk:
            break
        data += chunk
    return data


@pytest.mark.parametrize("version", [1, 2], ids=["proxy-v1", "proxy-v2"])
def test_staple_port_is_direct_and_matches_proxied_addresses(version: int,
                                                             tmp_path: Path) -> None:
    """Peers join through the PROXY port, then staple straight to the plain TCP staple port
    named in /join's answer: the staple listener sees their own addresses, which are the
    ones the PROXY headers named (v1: two IPv4 loopback addresses; v2: IPv6 ::1, which
    Twisted's v2 parser spells 0:0:0:0:0:0:0:1), and pipes bytes between them."""
    clients = ["127.0.0.2", "127.0.0.3"] if version == 1 else ["::1", "::1"]
    staple = None if version == 1 else "tcp6:{port}:interface=\\:\\:1"
    with running_proxied_relay(tmp_path, staple) as relay:
        senders = [ProxySender(relay.port, version, client) for client in clients]
        try:
            status, sender = senders[0].post("join", {"role": "sender"})
            assert status == 200, sender
            status, recipient = senders[1].post("join", {"role": "recipient",
                                                         "channel": sender["channel"]})
            assert status == 200, recipient
        finally:
            for proxy in senders:
                proxy.close()
        expected_host = "127.0.0.1" if version == 1 else "[::1]"
        assert sender["staple"] == f"{expected_host}:{relay.staple_port}"
        peers = [_staple(sender["staple"], clients[i],
                         f"staple {sender['channel']} {role} {joined['uuid']}")
                 for i, (role, joined) in enumerate((("sender", sender),
                                                     ("recipient", recipient)))]
        try:
            assert [_read_line(peer) for peer in peers] == [b"ok\n", b"ok\n"], relay.log()[-2000:]
            peers[0].sendall(b"end-to-end encrypted bytes")
            received = b""
            while len(received) < 26:
                received += peers[1].recv(100)
            assert received == b"end-to-end encrypted bytes"
        finally:
            for peer in peers:
                peer.close()


# ---- units: the test's PROXY sender as Twisted reads it, and the address spelling ----------

@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("client,server", [("198.51.100.7", "192.0.2.1"),
                                           ("2001:db8:1:2::7", "2001:db8::1")])
def test_proxy_header_is_what_twisted_reads(version: int, client: str, server: str) -> None:
    from twisted.protocols.haproxy._v1parser import V1Parser
    from twisted.protocols.haproxy._v2parser import V2Parser

    from relay.web.request import canonical_address

    parser = V1Parser() if version == 1 else V2Parser()
    info, rest = parser.feed(proxy_header(version, (client, 41000), (server, 443)) + b"GET")
    assert rest == b"GET"
    source, destination = canonical_address(info.source), canonical_address(info.destination)
    assert (source.host, source.port) == (client, 41000)
    assert (destination.host, destination.port) == (server, 443)


def test_canonical_address() -> None:
    from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress

    from relay.web.request import canonical_address

    assert canonical_address(IPv6Address("TCP", "0:0:0:0:0:0:0:1", 5)).host == "::1"
    assert canonical_address(IPv6Address("TCP", "2001:DB8:0:0:1:0:0:1", 5)).host == \
        "2001:db8::1:0:0:1"
    for unchanged in (IPv6Address("TCP", "::1", 5), IPv4Address("TCP", "192.0.2.1", 5),
                      IPv6Address("TCP", "not an address", 5), UNIXAddress(b"/x")):
        assert canonical_address(unchanged) is unchanged


def test_proxy_connections_are_admitted_as_the_client_their_header_names() -> None:
    """Twisted's PROXY wrapper connects the HTTP channel before the header arrives: the
    connection counts in all until then, then as the header's client (not the proxy)."""
    from twisted.internet.address import IPv4Address
    from twisted.internet.task import Clock
    from twisted.internet.testing import StringTransport
    from twisted.protocols.haproxy._wrapper import HAProxyWrappingFactory
    from twisted.web.resource import Resource

    from relay.config import HTTPConfig
    from relay.web.guard import ConnectionGuard, DescriptorGuard, RefusalLog
    from relay.web.request import RelaySite

    class Ok(Resource):
        isLeaf = True

        def render(self, request: Any) -> bytes:
            return b"ok"

    clock = Clock()
    guard = ConnectionGuard(10, 1, DescriptorGuard(None, 0), RefusalLog(clock, "HTTP"))
    factory = HAProxyWrappingFactory(RelaySite(Ok(), HTTPConfig(), reactor=clock, guard=guard))
    proxy = IPv4Address("TCP", "127.0.0.1", 50000)

    def connect(client: str) -> StringTransport:
        protocol = factory.buildProtocol(proxy)
        transport = StringTransport(peerAddress=proxy,
                                    hostAddress=IPv4Address("TCP", "127.0.0.1", 8080))
        before = guard.total
        protocol.makeConnection(transport)
        assert guard.total == before + 1  # counted in all, the client not known yet
        protocol.dataReceived(proxy_header(2, (client, 40000), ("192.0.2.1", 443)))
        protocol.dataReceived(b"GET / HTTP/1.1\r\nHost: relay\r\n\r\n")
        return transport

    first, other, again = connect("198.51.100.7"), connect("198.51.100.8"), connect("198.51.100.7")
    assert guard.per_client == {"198.51.100.7/32": 1, "198.51.100.8/32": 1}
    assert first.value().startswith(b"HTTP/1.1 200") and other.value().startswith(b"HTTP/1.1 200")
    assert again.value().startswith(b"HTTP/1.1 429") and again.disconnecting


_TREQ_AFTER_TLSLESS_IMPORT = """
import sys
from relay.client.cli import import_reactor_base_without_tls
import_reactor_base_without_tls()  # what the relay command does first
from twisted.internet import defer, ssl, task
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS
import treq.client

async def main(reactor):
    trust = ssl.Certificate.loadPEM(open(sys.argv[2], "rb").read())
    client = treq.client.HTTPClient(Agent(reactor, contextFactory=BrowserLikePolicyForHTTPS(
        trustRoot=trust)))
    response = await client.post(sys.argv[1] + "/start_session", data=b"x", timeout=30)
    print(response.code)

task.react(lambda reactor: defer.Deferred.fromCoroutine(main(reactor)))
"""


def test_https_still_works_after_the_commands_tlsless_reactor_import(
        tls_relay: TLSRelay) -> None:
    """The relay command imports Twisted's reactor without its own TLS support (start-up
    CPU); treq's TLS (a protocol over plain TCP) still reaches an https:// relay."""
    done = subprocess.run([sys.executable, "-c", _TREQ_AFTER_TLSLESS_IMPORT, tls_relay.url,
                           str(tls_relay.certificates["ca"])],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() in ("400", "401")  # the relay answered, over TLS
