"""Handshakes are stored before any proof of work, so their number is bounded: per client
network by rate (429), and in the memory store in total (507)."""

from __future__ import annotations

import pytest_twisted
from twisted.internet.task import Clock

from relay.mailbox.handshake import SessionHandshake
from relay.store.errors import StoreFull
from relay.store.interfaces.sessions import Handshake
from relay.store.memory.sessions import MemorySessionStore
from relay.web.errors import HTTPError
from tests.mailbox_harness import MemoryRelay

LIMITED = {"mailbox": {"handshake_rate_per_client": 2.0, "difficulty_window": 1.0,
                       "max_difficulty": 0}}


def test_a_client_over_its_handshake_rate_gets_429_and_nothing_is_stored():
    relay = MemoryRelay(**LIMITED)
    sessions = relay.app.store.sessions
    statuses = [relay.client().start()[0] for _ in range(10)]
    assert statuses[:2] == [200, 200]
    assert statuses[-1] == 429
    stored = len(sessions.handshakes)
    assert stored == statuses.count(200)


def test_the_limit_lifts_once_the_client_slows_down():
    relay = MemoryRelay(**LIMITED)
    for _ in range(10):
        relay.client().start()
    relay.clock.advance(3.0)
    client = relay.client()
    assert client.connect() == 0  # a whole handshake: start, verify, prove


@pytest_twisted.ensureDeferred
async def test_another_network_is_not_limited_by_a_flooder():
    relay = MemoryRelay(**LIMITED)
    handshake = SessionHandshake(relay.config.mailbox, relay.app.store, relay.clock)
    refused = 0
    for _ in range(10):
        try:
            await handshake.start_session(relay.client().start_body(), client="192.0.2.1/32")
        except HTTPError as e:
            assert e.status == 429
            refused += 1
    assert refused >= 7
    _, lines = await handshake.start_session(relay.client().start_body(),
                                             client="2001:db8:1:2::/64")
    assert len(lines) == 2


@pytest_twisted.ensureDeferred
async def test_the_memory_store_caps_handshakes_in_progress():
    clock = Clock()
    store = MemorySessionStore(clock.seconds, max_handshakes=3)
    handshake = Handshake(b"c" * 32, b"r" * 32)
    for i in range(3):
        await store.put_handshake(bytes([i]) * 32, handshake, 10.0)
    await store.put_handshake(bytes([1]) * 32, handshake, 10.0)  # replacing one is fine
    try:
        await store.put_handshake(b"x" * 32, handshake, 10.0)
    except StoreFull:
        pass
    else:
        raise AssertionError("a fourth handshake was stored")
    clock.advance(11.0)  # the three expire: room again
    await store.put_handshake(b"x" * 32, handshake, 10.0)
