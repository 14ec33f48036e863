"""The channel store's per-client share and change feed, on every store kind (memory, Redis):
the `store_factory` fixture of tests/conftest.py runs each test once per kind."""

from __future__ import annotations

import os

import pytest
import pytest_twisted
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater

from relay.store.errors import StoreFull
from relay.store.interfaces.channels import ClientChannelsFull

SHORT_TTL = 0.3
PAST_SHORT_TTL = 0.45
LONG = 3600.0


@pytest_twisted.ensureDeferred
async def test_per_client_share_is_enforced_and_freed(store_factory, store_sleep):
    channels = store_factory.channels
    assert await channels.create("aaaa0001", b"r", LONG, 100, "10.0.0.1/32", 2)
    assert await channels.create("aaaa0002", b"r", SHORT_TTL, 100, "10.0.0.1/32", 2)
    with pytest.raises(ClientChannelsFull):
        await channels.create("aaaa0003", b"r", LONG, 100, "10.0.0.1/32", 2)
    assert await channels.load("aaaa0003") is None  # a refusal stores nothing
    # a taken name is answered as taken, whoever asks
    assert not await channels.create("aaaa0001", b"r", LONG, 100, "10.0.0.1/32", 2)
    # another client is not affected; no cap (0) means none
    assert await channels.create("bbbb0001", b"r", LONG, 100, "10.0.0.2/32", 2)
    assert await channels.create("cccc0001", b"r", LONG, 100, "10.0.0.1/32", 0)
    # expiry frees a slot
    await store_sleep(PAST_SHORT_TTL)
    assert await channels.create("aaaa0003", b"r", LONG, 100, "10.0.0.1/32", 3)
    with pytest.raises(ClientChannelsFull):
        await channels.create("aaaa0004", b"r", LONG, 100, "10.0.0.1/32", 3)
    # deleting (ttl 0) frees one at once
    assert await channels.replace("aaaa0003", 1, b"", 0, "10.0.0.1/32")
    assert await channels.create("aaaa0004", b"r", LONG, 100, "10.0.0.1/32", 3)


@pytest_twisted.ensureDeferred
async def test_share_follows_replaced_ttl(store_factory, store_sleep):
    channels = store_factory.channels
    client = "2001:db8:1:2::/64"
    assert await channels.create("dddd0001", b"r", SHORT_TTL, 100, client, 1)
    # a renewed channel (a stapled pair's lease) keeps counting past its first TTL
    assert await channels.replace("dddd0001", 1, b"r2", LONG, client)
    await store_sleep(PAST_SHORT_TTL)
    assert await channels.load("dddd0001") == (b"r2", 2)
    with pytest.raises(ClientChannelsFull):
        await channels.create("dddd0002", b"r", LONG, 100, client, 1)
    # and a shortened one (a close) stops counting when it expires
    assert await channels.replace("dddd0001", 2, b"r3", SHORT_TTL, client)
    await store_sleep(PAST_SHORT_TTL)
    assert await channels.create("dddd0002", b"r", LONG, 100, client, 1)


@pytest_twisted.ensureDeferred
async def test_global_cap_counts_renewed_channels(store_factory, store_sleep):
    channels = store_factory.channels
    assert await channels.create("eeee0001", b"r", SHORT_TTL, 1, "a", 5)
    assert await channels.replace("eeee0001", 1, b"r", LONG, "a")
    await store_sleep(PAST_SHORT_TTL)
    with pytest.raises(StoreFull):
        await channels.create("eeee0002", b"r", LONG, 1, "b", 5)


def _share_test(kind: str):
    # hypothesis wraps the test function in place: one function per store kind.
    @pytest.mark.parametrize("store_kind", [kind])
    @settings(max_examples=15, suppress_health_check=list(HealthCheck))
    @given(clients=st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=12),
           share=st.integers(1, 4))
    @pytest_twisted.ensureDeferred
    async def test(store_factory, clients, share):
        channels = store_factory.channels
        run = os.urandom(4).hex()
        held: dict[str, int] = {}
        for i, client in enumerate(clients):
            name = f"z{run}x{i}"
            try:
                assert await channels.create(name, b"r", LONG, 1000, f"{run}-{client}", share)
                held[client] = held.get(client, 0) + 1
            except ClientChannelsFull:
                assert held.get(client, 0) == share
        assert held == {c: min(clients.count(c), share) for c in set(clients)}

    return test


test_memory_no_client_exceeds_its_share = _share_test("memory")
test_redis_no_client_exceeds_its_share = _share_test("redis")


@pytest_twisted.ensureDeferred
async def test_change_feed(store_factory, store_kind):
    channels = store_factory.channels
    notices: list = []
    states: list = []
    feed = channels.change_feed(lambda name, version: notices.append((name, version)),
                                states.append)
    if store_kind == "memory":
        assert feed is None  # every change goes through this process's registry
        return
    feed.start()
    try:
        for _ in range(200):
            if feed.live:
                break
            await deferLater(reactor, 0.01, lambda: None)
        assert feed.live and states == [True]
        assert await channels.create("ffff0001", b"r", LONG, 100, "a", 5)
        assert await channels.replace("ffff0001", 1, b"r2", LONG, "a")
        assert not await channels.replace("ffff0001", 1, b"r3", LONG, "a")  # no change
        assert await channels.replace("ffff0001", 2, b"", 0, "a")
        for _ in range(200):
            if len(notices) >= 2:
                break
            await deferLater(reactor, 0.01, lambda: None)
        assert notices == [("ffff0001", 2), ("ffff0001", None)]
    finally:
        await Deferred.fromCoroutine(_stop(feed))
    assert states == [True, False]


async def _stop(feed) -> None:
    result = feed.stop()
    if result is not None:
        await result


# -- the memory store: one expiry row per channel, however often it is renewed -------------
@settings(max_examples=40)
@given(st.lists(st.tuples(st.integers(0, 5), st.sampled_from(["renew", "close", "tick"]),
                          st.floats(1, 50)), max_size=60))
def test_memory_renewals_keep_one_row_and_expire_right(steps):
    from twisted.internet.task import Clock

    from relay.store.memory.channels import MemoryChannelStore

    clock = Clock()
    clock.advance(1000)
    store = MemoryChannelStore(clock.seconds)
    deadlines: dict[str, float] = {}
    versions: dict[str, int] = {}
    for i in range(6):
        name = f"gggg000{i}"
        Deferred.fromCoroutine(store.create(name, b"r", 30, 100, "c", 0))
        deadlines[name], versions[name] = clock.seconds() + 30, 1
    for index, action, seconds in steps:
        name = f"gggg000{index}"
        alive = deadlines.get(name, 0) > clock.seconds()
        if action == "tick":
            clock.advance(seconds)
            store.sweep()
        elif alive:
            left = deadlines[name] - clock.seconds()
            ttl = left + seconds if action == "renew" else min(seconds, 1.0, left / 2)
            done = Deferred.fromCoroutine(store.replace(name, versions[name], b"r", ttl, "c"))
            assert done.result is True
            versions[name] += 1
            deadlines[name] = clock.seconds() + ttl
        for other, deadline in deadlines.items():
            found = Deferred.fromCoroutine(store.load(other)).result
            assert (found is not None) == (deadline > clock.seconds()), other
        # pushed-back deadlines never add rows: at most one per channel plus closes
        assert len(store.channels._deadlines) <= 6 + sum(a == "close" for _, a, _ in steps)
    # past the last deadline (renewals push deadlines out by up to 50 s each)
    clock.advance(max(deadlines.values()) - clock.seconds() + 1)
    store.sweep()
    assert len(store.channels) == 0
