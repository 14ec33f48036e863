"""The staple listener over real loopback sockets from 127.0.0.2/.3/.4 (the two-IP rule)."""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from rendezvous_node import node_config, start_node
from staple_peer import Caller, b64, connect_peer, staple_line
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater

from relay.rendezvous.pipe import READ_SIZE
from relay.rendezvous.splice import SplicePair

A, B, C = "127.0.0.2", "127.0.0.3", "127.0.0.4"


def sleep(seconds: float) -> Deferred:
    return deferLater(reactor, seconds, lambda: None)


async def joined(node):
    a, b = Caller(reactor, node.url, A), Caller(reactor, node.url, B)
    _, sender, _ = await a.post("/join", {"role": "sender"})
    _, recipient, _ = await b.post("/join", {"role": "recipient", "channel": sender["channel"]})
    return sender, recipient


async def eventually(check, seconds: float = 5.0) -> None:
    for _ in range(int(seconds / 0.01)):
        if check():
            return
        await sleep(0.01)
    assert check()


@pytest.mark.parametrize("data_path", ["splice", "copy"])
@pytest_twisted.ensureDeferred
async def test_staple_pairs_and_moves_bytes_both_ways(data_path):
    node = await start_node(reactor, node_config(data_path=data_path))
    try:
        sender, recipient = await joined(node)
        ch = sender["channel"]
        s = await connect_peer(reactor, node.staple_port, A,
                               staple_line(ch, "sender", sender["uuid"]))
        await sleep(0.05)
        assert not s.received  # no answer until both are present
        r = await connect_peer(reactor, node.staple_port, B,
                               staple_line(ch, "recipient", recipient["uuid"]))
        assert await s.got_ok == b"ok" and await r.got_ok == b"ok"
        state = await Caller(reactor, node.url, A).post(
            "/channel", {"channel": ch, "uuid": sender["uuid"]})
        assert state[1]["stapled"] is True
        s.transport.write(b"hello recipient")
        r.transport.write(b"hello sender")
        await eventually(lambda: r.received.endswith(b"hello recipient")
                         and s.received.endswith(b"hello sender"))
        # one side closes: the other gets what is in flight, then is closed
        s.transport.write(b"last words" * 1000)
        s.transport.loseConnection()
        await r.lost
        assert r.received.endswith(b"last words" * 1000)
        await eventually(lambda: not node.listener.pairs)
    finally:
        await node.stop()


@pytest_twisted.ensureDeferred
async def test_staple_refusals():
    node = await start_node(reactor, node_config())
    try:
        sender, recipient = await joined(node)
        ch = sender["channel"]
        cases = [
            (C, staple_line(ch, "sender", sender["uuid"])),          # a third address
            (A, staple_line(ch, "sender", b64(bytes(32)))),          # wrong uuid
            (A, staple_line(ch, "recipient", sender["uuid"])),       # uuid of the other role
            (A, staple_line("zzzz9999", "sender", sender["uuid"])),  # unknown channel
            (A, b"hello there\n"),                                   # not a staple line
            (A, b"x" * 500),                                         # no newline, too long
        ]
        for source, line in cases:
            peer = await connect_peer(reactor, node.staple_port, source, line)
            answer = await peer.got_ok
            await peer.lost
            assert answer.startswith(b"error "), (source, line, answer)
        # the channel is still usable afterwards
        s = await connect_peer(reactor, node.staple_port, A,
                               staple_line(ch, "sender", sender["uuid"]))
        twin = await connect_peer(reactor, node.staple_port, A,
                                  staple_line(ch, "sender", sender["uuid"]))
        assert (await twin.got_ok).startswith(b"error")  # a role connects once
        r = await connect_peer(reactor, node.staple_port, B,
                               staple_line(ch, "recipient", recipient["uuid"]))
        assert await s.got_ok == b"ok" and await r.got_ok == b"ok"
        # stapled once only
        again = await connect_peer(reactor, node.staple_port, A,
                                   staple_line(ch, "sender", sender["uuid"]))
        assert (await again.got_ok).startswith(b"error")
        s.transport.loseConnection()
        await r.lost
    finally:
        await node.stop()


@pytest_twisted.ensureDeferred
async def test_identification_and_partner_timeouts():
    node = await start_node(reactor, node_config(ident_timeout=0.3, channel_ttl=1.5))
    try:
        silent = await connect_peer(reactor, node.staple_port, A, None)
        started = reactor.seconds()
        assert (await silent.got_ok) == b"error identification timeout"
        await silent.lost
        assert reactor.seconds() - started < 2
        sender, _ = await joined(node)
        lonely = await connect_peer(reactor, node.staple_port, A,
                                    staple_line(sender["channel"], "sender", sender["uuid"]))
        assert (await lonely.got_ok) == b"error the partner never came"
        await lonely.lost
        assert not node.listener.unpaired and not node.listener.waiting
    finally:
        await node.stop()


@pytest_twisted.ensureDeferred
async def test_idle_timeout_closes_quiet_pairs():
    node = await start_node(reactor, node_config(idle_timeout=0.5))
    try:
        sender, recipient = await joined(node)
        ch = sender["channel"]
        s = await connect_peer(reactor, node.staple_port, A,
                               staple_line(ch, "sender", sender["uuid"]))
        r = await connect_peer(reactor, node.staple_port, B,
                               staple_line(ch, "recipient", recipient["uuid"]))
        await s.got_ok
        for _ in range(4):  # traffic keeps it open past the timeout
            s.transport.write(b"ping")
            await sleep(0.2)
        assert not r.lost.called
        await r.lost
        await s.lost
    finally:
        await node.stop()


class Flooder(Protocol):
    """Writes as fast as the connection takes it, stopping when paused (a push producer)."""

    def __init__(self, line: bytes) -> None:
        self.line = line
        self.sent = 0
        self.paused = False
        self.ok = Deferred()
        self.block = b"\0" * (1 << 20)

    def connectionMade(self) -> None:
        self.transport.write(self.line)
        self.transport.registerProducer(self, True)

    def dataReceived(self, data: bytes) -> None:
        if not self.ok.called:
            self.ok.callback(data)
            self.resumeProducing()

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        if not self.ok.called:
            return
        while not self.paused and self.transport.connected:
            self.transport.write(self.block)
            self.sent += len(self.block)

    def stopProducing(self) -> None:
        self.paused = True


@pytest.mark.parametrize("data_path", ["splice", "copy"])
@pytest_twisted.ensureDeferred
async def test_backpressure_receiver_never_reads(data_path):
    node = await start_node(reactor, node_config(data_path=data_path))
    try:
        sender, recipient = await joined(node)
        ch = sender["channel"]
        flooder = Flooder(staple_line(ch, "sender", sender["uuid"]))
        from twisted.internet.endpoints import TCP4ClientEndpoint
        await TCP4ClientEndpoint(reactor, "127.0.0.1", node.staple_port,
                                 bindAddress=(A, 0)).connect(Factory.forProtocol(lambda: flooder))
        r = await connect_peer(reactor, node.staple_port, B,
                               staple_line(ch, "recipient", recipient["uuid"]))
        await r.got_ok
        r.transport.pauseProducing()  # the recipient never reads again
        await flooder.ok

        def relay_buffered() -> int:
            # user-space buffers of the copy path; on the splice path there are none and
            # the kernel pipes (at most PIPE_SIZE each) are all the relay holds
            def held(p: Any) -> int:
                if isinstance(p, SplicePair):
                    return p.a.pending + p.b.pending
                return max(len(c.transport.dataBuffer) - c.transport.offset
                           + c.transport._tempDataLen for c in (p.a, p.b))
            return max(held(p) for p in node.listener.pairs)

        highest = 0
        sent = []
        for _ in range(20):  # 2 s: the sender stalls, the relay holds a bounded amount
            await sleep(0.1)
            highest = max(highest, relay_buffered())
            sent.append(flooder.sent)
        assert flooder.paused
        assert sent[-1] == sent[-5], "the sender should be stalled"
        assert sent[-1] < 256 * 1024 * 1024  # kernel buffers, not an unbounded relay
        assert highest <= 2 * READ_SIZE + (1 << 20), highest
        # the recipient then reads everything intact
        r.transport.resumeProducing()
        flooder.transport.unregisterProducer()
        flooder.transport.loseConnection()
        await r.lost
        assert len(r.received) == len(b"ok\n") + flooder.sent
    finally:
        await node.stop()


@pytest_twisted.ensureDeferred
async def test_a_dual_stack_staple_listener_knows_ipv4_clients_by_their_http_address():
    # On tcp6:"::" an IPv4 client arrives as ::ffff:127.0.0.2; it joined as 127.0.0.2.
    node = await start_node(reactor, node_config(staple_endpoint="tcp6:0:interface=\\:\\:"))
    try:
        sender, recipient = await joined(node)
        ch = sender["channel"]
        s = await connect_peer(reactor, node.staple_port, A,
                               staple_line(ch, "sender", sender["uuid"]))
        r = await connect_peer(reactor, node.staple_port, B,
                               staple_line(ch, "recipient", recipient["uuid"]))
        assert await s.got_ok == b"ok" and await r.got_ok == b"ok"
    finally:
        await node.stop()


def test_canonical_host():
    from relay.web.clients import canonical_host

    assert canonical_host("::ffff:192.0.2.7") == "192.0.2.7"
    assert canonical_host("0:0:0:0:0:0:0:1") == "::1"
    assert canonical_host("2001:DB8::1") == "2001:db8::1"
    assert canonical_host("192.0.2.7") == "192.0.2.7"
    assert canonical_host("fe80::1%eth0") == "fe80::1%eth0"
    assert canonical_host("not an address") == "not an address"
