"""Live stapled pairs are bounded: idle timeout and lifetime on both data paths (real
sockets), a per-client cap, and a live pair keeps its channel counted as open (its lease is
renewed by the listener's sweep, driven here by a Clock)."""

from __future__ import annotations

import time

import pytest
import pytest_twisted
from hypothesis import given, settings
from hypothesis import strategies as st
from rendezvous_node import node_config, start_node
from staple_peer import Caller, connect_peer, staple_line
from test_rendezvous_staple import A, B, C, eventually, joined, sleep
from twisted.internet import reactor
from twisted.internet.task import Clock

from relay.config import RendezvousConfig
from relay.rendezvous import staple
from relay.rendezvous.registry import ChannelRegistry
from relay.rendezvous.requests import JoinRequest
from relay.rendezvous.staple import RENEW_AFTER, StapleListener
from relay.store.memory.channels import MemoryChannelStore

PATHS = ["splice", "copy"]
TOTAL = 64 << 20


async def stapled(node):
    sender, recipient = await joined(node)
    ch = sender["channel"]
    s = await connect_peer(reactor, node.staple_port, A, staple_line(ch, "sender",
                                                                     sender["uuid"]))
    r = await connect_peer(reactor, node.staple_port, B, staple_line(ch, "recipient",
                                                                     recipient["uuid"]))
    return ch, s, r


@pytest.mark.parametrize("data_path", PATHS)
@pytest_twisted.ensureDeferred
async def test_idle_timeout_on_both_paths(data_path):
    node = await start_node(reactor, node_config(data_path=data_path, idle_timeout=0.4))
    try:
        ch, s, r = await stapled(node)
        assert await s.got_ok == b"ok" and await r.got_ok == b"ok"
        started = time.monotonic()
        for i in range(6):  # bytes either way keep it open past the timeout
            (s if i % 2 else r).transport.write(b"ping")
            await sleep(0.15)
        assert not r.lost.called and not s.lost.called
        await r.lost
        await s.lost
        quiet = time.monotonic() - started - 0.9
        assert 0.3 < quiet < 1.5, quiet
        await eventually(lambda: not node.listener.pairs)
        assert not node.listener.pairs_by_client
        record, _ = await node.store.channels.load(ch)
        assert b'"closed":true' in record
    finally:
        await node.stop()


@pytest.mark.parametrize("data_path", PATHS)
@pytest_twisted.ensureDeferred
async def test_slow_reader_is_not_idle(data_path):
    """A full pipe drained slowly by its reader is activity, though the source is paused."""
    node = await start_node(reactor, node_config(data_path=data_path, idle_timeout=0.5))
    try:
        ch, s, r = await stapled(node)
        await r.got_ok
        r.transport.pauseProducing()
        s.transport.write(b"\0" * TOTAL)  # far more than the kernel and the relay hold
        for _ in range(8):  # 1.6 s of a reader taking a bit every 0.2 s
            r.transport.resumeProducing()
            await sleep(0.01)
            r.transport.pauseProducing()
            await sleep(0.19)
        assert not r.lost.called
        r.transport.resumeProducing()
        await eventually(lambda: len(r.received) >= 3 + TOTAL)
        await r.lost  # then it falls quiet and the timeout ends it
    finally:
        await node.stop()


@pytest.mark.parametrize("data_path", PATHS)
@pytest_twisted.ensureDeferred
async def test_max_pair_lifetime_on_both_paths(data_path):
    node = await start_node(reactor, node_config(data_path=data_path, idle_timeout=0,
                                                 max_pair_lifetime=0.5))
    try:
        ch, s, r = await stapled(node)
        await s.got_ok
        started = time.monotonic()
        while not r.lost.called and time.monotonic() - started < 3:
            s.transport.write(b"busy")
            await sleep(0.05)
        await r.lost
        await s.lost
        assert 0.45 < time.monotonic() - started < 1.5
        await eventually(lambda: not node.listener.pairs)
    finally:
        await node.stop()


@pytest_twisted.ensureDeferred
async def test_per_client_pair_cap():
    node = await start_node(reactor, node_config(max_pairs_per_client=1))
    try:
        ch, s, r = await stapled(node)
        assert await s.got_ok == b"ok"
        assert node.listener.pairs_by_client == {"127.0.0.2/32": 1, "127.0.0.3/32": 1}
        ch2, s2, r2 = await stapled(node)
        assert await s2.got_ok == b"error too many stapled pairs from this network"
        assert await r2.got_ok == b"error too many stapled pairs from this network"
        await s2.lost
        record, _ = await node.store.channels.load(ch2)
        assert b'"closed":true' in record and b'"stapled"' not in record
        s.transport.loseConnection()
        await r.lost
        await eventually(lambda: not node.listener.pairs_by_client)
        ch3, s3, r3 = await stapled(node)
        assert await s3.got_ok == b"ok" and await r3.got_ok == b"ok"
    finally:
        await node.stop()


@pytest_twisted.ensureDeferred
async def test_a_live_pair_keeps_its_channel_counted():
    node = await start_node(reactor, node_config(max_channels=1, channel_ttl=1.0))
    try:
        ch, s, r = await stapled(node)
        await s.got_ok
        await sleep(1.3)  # past the channel's TTL: the pair's lease keeps it open
        record, _ = await node.store.channels.load(ch)
        assert b'"stapled":true' in record
        code, body, _ = await Caller(reactor, node.url, C).post("/join", {"role": "sender"})
        assert code == 507, body
    finally:
        await node.stop()


# -- the sweep, on a Clock ------------------------------------------------------------------
class StubPair:
    """What the sweep sees of a pair."""

    def __init__(self, name: str, now: float) -> None:
        self.name = name
        self.started = self.last = self.renewed = now
        self.keys = ("k",)
        self.closed = False

    def close(self, abort: bool = False) -> None:
        self.closed = True


def clocked_listener(**settings) -> tuple[StapleListener, ChannelRegistry, Clock]:
    clock = Clock()
    clock.advance(1000)
    registry = ChannelRegistry(RendezvousConfig(**settings), MemoryChannelStore(clock.seconds),
                               clock, node_id="node")
    return StapleListener(registry.config, registry, clock), registry, clock


@pytest_twisted.ensureDeferred
async def test_sweep_renews_leases_of_live_pairs():
    listener, registry, clock = clocked_listener(idle_timeout=0, channel_ttl=60,
                                                 joins_per_ip_per_minute=1000)
    pairs = []
    for _ in range(40):
        ch, _ = await registry.join(JoinRequest("sender", None, "ed25519"), A, "h:1")
        await registry.mark_stapled(ch.name, staple.PAIR_LEASE)
        pair = StubPair(ch.name, clock.seconds())
        listener.pairs.add(pair)
        pairs.append(pair)
    listener._schedule_sweep()
    for _ in range(int(3 * staple.PAIR_LEASE / staple.MAX_SWEEP_INTERVAL)):
        clock.advance(staple.MAX_SWEEP_INTERVAL)
    for pair in pairs:  # three leases later, every channel is still open
        channel = await registry.load(pair.name)
        assert channel is not None and channel.stapled
        assert channel.expires_at >= clock.seconds() + staple.PAIR_LEASE - RENEW_AFTER - 15
    # a pair that ends stops being renewed: its channel runs out with its lease
    listener.pairs.discard(pairs[0])
    for _ in range(int(staple.PAIR_LEASE / staple.MAX_SWEEP_INTERVAL)):
        clock.advance(staple.MAX_SWEEP_INTERVAL)
    assert await registry.load(pairs[0].name) is None
    assert await registry.load(pairs[1].name) is not None
    listener.drop_all()
    assert not clock.getDelayedCalls()


@settings(max_examples=50)
@given(st.lists(st.tuples(st.floats(0, 100), st.floats(0, 100)), max_size=30),
       st.sampled_from([0.0, 10.0, 60.0]), st.sampled_from([0.0, 50.0]))
def test_sweep_closes_exactly_the_idle_and_the_old(ages, idle_timeout, lifetime):
    listener, _, clock = clocked_listener(idle_timeout=idle_timeout,
                                          max_pair_lifetime=lifetime)
    now = clock.seconds()
    pairs = []
    for idle, age in ages:
        pair = StubPair("abcd1234", now - max(idle, age))
        pair.last, pair.started, pair.renewed = now - idle, now - max(idle, age), now
        listener.pairs.add(pair)
        pairs.append(pair)
    listener.sweep()
    for pair, (idle, age) in zip(pairs, ages, strict=True):
        expected = ((idle_timeout > 0 and idle >= idle_timeout)
                    or (lifetime > 0 and max(idle, age) >= lifetime))
        assert pair.closed == expected
    interval = listener.sweep_interval()
    assert interval <= staple.MAX_SWEEP_INTERVAL
    for limit in (idle_timeout, lifetime):
        if limit:
            assert interval <= limit / 4
    listener.drop_all()


@pytest_twisted.ensureDeferred
async def test_name_probes_over_http_run_out():
    node = await start_node(reactor, node_config(joins_per_ip_per_minute=4))
    try:
        sender, _ = await joined(node)
        prober = Caller(reactor, node.url, C)
        codes = []
        for name in ("abcd0001", "abcd0002", sender["channel"], "abcd0003", "abcd0004"):
            code, body, headers = await prober.post("/channel", {
                "channel": name, "uuid": sender["uuid"]})
            codes.append(code)
        assert codes == [404, 404, 403, 404, 429]
        # the sender's own requests are not probes
        code, _, _ = await Caller(reactor, node.url, A).post(
            "/channel", {"channel": sender["channel"], "uuid": sender["uuid"]})
        assert code == 200
    finally:
        await node.stop()
