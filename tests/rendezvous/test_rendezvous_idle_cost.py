"""What an idle stapled pair keeps: a shrunk channel record, one expiry row per stored entry,
on the splice path no protocol or transport and no pipe; pipes are lent only while bytes
are in flight, and running out of descriptors ends one pair, not the relay."""

from __future__ import annotations

import errno
import os

import attrs
import pytest
import pytest_twisted
from rendezvous_node import node_config, start_node
from staple_peer import connect_peer, staple_line
from test_rendezvous_staple import A, B, eventually, joined
from twisted.internet import reactor
from twisted.internet.task import Clock

from relay.rendezvous import channel as sm
from relay.rendezvous import splice
from relay.rendezvous.channel import Write
from relay.store.memory.channels import MemoryChannelStore

pytestmark = pytest.mark.skipif(not splice.AVAILABLE, reason="splice(2) is Linux-only")


def full_channel() -> sm.Channel:
    ch = sm.new_channel("abcd1234", "ed25519", "node", "h:1", b"S" * 32, A, 0, 300)
    ch = sm.join_recipient(ch, b"R" * 32, B, 1)
    ch = sm.apply_write(ch, "sender", Write(x=b"x" * 33), 1)
    ch = sm.apply_write(ch, "recipient", Write(y=b"y" * 33, hh_k=b"1" * 32), 1)
    return sm.apply_write(ch, "sender", Write(h_k=b"2" * 32), 1)


def test_stapled_record_keeps_only_what_stapled_and_closed_need():
    ch = full_channel()
    stapled = sm.mark_stapled(ch, 2)
    assert stapled.stapled and (stapled.x, stapled.y, stapled.hh_k, stapled.h_k) == (None,) * 4
    record = stapled.to_record()
    assert len(record) < len(ch.to_record()) - 150
    for left_out in (b'"x"', b'"y"', b'"hh_k"', b'"h_k"', b'"closed"', b"null"):
        assert left_out not in record
    assert sm.Channel.from_record(record, 5) == attrs.evolve(stapled, version=5)
    # authentication and closing still work on the shrunk record
    assert sm.authenticate(stapled, b"R" * 32, B, 3) == "recipient"
    closed = sm.apply_write(stapled, "recipient", Write(close=True), 3)
    assert closed.public_state()["closed"] and closed.public_state()["stapled"]


@pytest_twisted.ensureDeferred
async def test_store_keeps_one_expiry_row_per_entry():
    clock = Clock()
    store = MemoryChannelStore(clock.seconds)
    assert await store.create("abcd1234", b"v1", 300, 10)
    for version in range(1, 6):  # same deadline: updated in place
        clock.advance(1)
        assert await store.replace("abcd1234", version, b"v%d" % (version + 1), 300 - version)
    assert await store.load("abcd1234") == (b"v6", 6)
    assert len(store.channels._deadlines) == 1
    # a shorter deadline (a close) is a new row, and it is the one that counts
    assert await store.replace("abcd1234", 6, b"closed", 60)
    clock.advance(60)
    assert await store.load("abcd1234") is None
    store.sweep()
    assert len(store.channels) == 0
    # join counters: one row per address and window, however many joins
    assert [await store.count_hit("join:a", 60) for _ in range(5)] == [1, 2, 3, 4, 5]
    assert len(store.hits._deadlines) == 1
    clock.advance(60)
    assert await store.count_hit("join:a", 60) == 1


async def staple_pair(node):
    sender, recipient = await joined(node)
    ch = sender["channel"]
    s = await connect_peer(reactor, node.staple_port, A, staple_line(ch, "sender",
                                                                     sender["uuid"]))
    r = await connect_peer(reactor, node.staple_port, B, staple_line(ch, "recipient",
                                                                     recipient["uuid"]))
    assert await s.got_ok == b"ok" and await r.got_ok == b"ok"
    return ch, s, r


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest_twisted.ensureDeferred
async def test_idle_spliced_pair_holds_no_protocol_transport_or_pipe():
    node = await start_node(reactor, node_config(data_path="splice"))
    try:
        ch, s, r = await staple_pair(node)
        (pair,) = node.listener.pairs
        assert isinstance(pair, splice.SplicePair) and pair.name == ch
        assert not node.listener.unpaired and not node.listener.waiting
        assert not hasattr(pair, "__dict__") and not hasattr(pair.a, "__dict__")
        assert pair.a.pipe_r == pair.b.pipe_r == -1 and node.listener.pipes.lent == 0
        record, _ = await node.store.channels.load(ch)
        assert b'"x"' not in record and b'"stapled":true' in record
        # bytes each way borrow a pipe and give it back once delivered
        before = open_fds()
        for _ in range(3):
            s.transport.write(b"ping" * 1000)
            r.transport.write(b"pong")
            await eventually(lambda: r.received.endswith(b"ping" * 1000)
                             and s.received.endswith(b"pong"))
            s.received.clear()
            r.received.clear()
            assert node.listener.pipes.lent == 0
            assert pair.a.pipe_r == pair.b.pipe_r == -1
        assert len(node.listener.pipes.spare) <= 2
        assert open_fds() <= before + 4  # at most the two spare pipes
        s.transport.loseConnection()
        await r.lost
        await eventually(lambda: not node.listener.pairs)
        state, _ = await node.store.channels.load(ch)
        assert b'"closed":true' in state
    finally:
        await node.stop()
    assert not node.listener.pipes.spare  # shutdown closes the spare pipes


@pytest_twisted.ensureDeferred
async def test_shutdown_resets_stapled_pairs():
    node = await start_node(reactor, node_config(data_path="splice"))
    _, s, r = await staple_pair(node)
    await node.stop()
    await s.lost
    await r.lost
    assert not node.listener.pairs


@pytest_twisted.ensureDeferred
async def test_out_of_descriptors_ends_that_pair_only():
    node = await start_node(reactor, node_config(data_path="splice"))
    try:
        _, s, r = await staple_pair(node)
        _, s2, r2 = await staple_pair(node)
        pipes = node.listener.pipes
        take = pipes.take

        def exhausted() -> tuple[int, int]:
            raise OSError(errno.EMFILE, "Too many open files")

        pipes.take = exhausted  # type: ignore[method-assign]
        s.transport.write(b"doomed")
        await r.lost
        await s.lost
        pipes.take = take  # type: ignore[method-assign]
        s2.transport.write(b"still fine")
        await eventually(lambda: r2.received.endswith(b"still fine"))
        assert len(node.listener.pairs) == 1 and pipes.lent == 0
    finally:
        await node.stop()
