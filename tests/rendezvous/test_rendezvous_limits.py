"""The registry's limits on an injected clock and the memory store: one wait per role per
channel, wait caps, name probes and the per-client channel share, stapled-channel leases."""

from __future__ import annotations

import pytest
import pytest_twisted
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock

from relay.config import HTTPConfig, RendezvousConfig
from relay.rendezvous import channel as sm
from relay.rendezvous.channel import Write
from relay.rendezvous.errors import ChannelError
from relay.rendezvous.http import http_status
from relay.rendezvous.registry import ChannelRegistry
from relay.rendezvous.requests import ChannelRequest, JoinRequest
from relay.rendezvous.waits import FALLBACK_POLL
from relay.store.errors import StoreFull
from relay.store.memory.channels import MemoryChannelStore

A, B, C = "127.0.0.2", "127.0.0.3", "127.0.0.4"
# Two addresses of one IPv6 /64: one client.
V6A, V6B = "2001:db8:1:2::a", "2001:db8:1:2:ffff::b"
X = b"x" * 33
SENDER = JoinRequest("sender", None, "ed25519")
NO_WRITE = Write()


def make_registry(**settings) -> tuple[ChannelRegistry, Clock, MemoryChannelStore]:
    clock = Clock()
    clock.advance(1000)
    store = MemoryChannelStore(clock.seconds)
    registry = ChannelRegistry(RendezvousConfig(**settings), store, clock, node_id="node",
                               client_key=HTTPConfig().client_key)
    return registry, clock, store


def request(channel, uuid, write=NO_WRITE, wait=0.0, since=None) -> ChannelRequest:
    return ChannelRequest(channel=channel.name, uuid=uuid, write=write, wait=wait, since=since)


async def pair(registry, sender=A, recipient=B):
    ch, s = await registry.join(SENDER, sender, "h:1")
    _, r = await registry.join(JoinRequest("recipient", ch.name, "ed25519"), recipient, "h:1")
    return ch, s, r


def wait(registry, ch, uuid, address, seconds=30.0, since=None) -> Deferred:
    d = Deferred.fromCoroutine(registry.act(request(ch, uuid, wait=seconds, since=since),
                                            address))
    return d


async def status(coroutine) -> int:
    with pytest.raises(ChannelError) as e:
        await coroutine
    return http_status(e.value)


def counts_consistent(registry) -> None:
    waits = registry.waits
    live = [w for watch in waits.watches.values() for w in watch.waiters.values()]
    assert waits.total == len(live) == sum(waits.by_client.values())
    assert all(count > 0 for count in waits.by_client.values())
    for watch in waits.watches.values():
        assert watch.waiters or watch.interest or watch.loading


# -- one wait per role per channel ------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_a_new_wait_ends_the_old_one_of_its_role():
    registry, clock, _ = make_registry()
    ch, s, r = await pair(registry)
    first = wait(registry, ch, r, B)
    other_role = wait(registry, ch, s, A)
    assert registry.waiting() == 2
    second = wait(registry, ch, r, B)
    # the first answers at once with the current state; the sender's wait is untouched
    assert first.called and (await first).version == 2
    assert not second.called and not other_role.called and registry.waiting() == 2
    await registry.act(request(ch, s, Write(x=X)), A)
    assert (await second).x == X
    assert (await other_role).x == X  # any change wakes it, its own role's too
    assert registry.waiting() == 0 and not clock.getDelayedCalls()
    counts_consistent(registry)


@pytest_twisted.ensureDeferred
async def test_many_waits_on_one_channel_hold_one_slot_per_role():
    registry, clock, _ = make_registry(max_waits_per_client=4)
    ch, s, r = await pair(registry, A, A)  # both peers behind one address
    waits = [wait(registry, ch, r, A) for _ in range(5000)]
    assert registry.waiting() == 1 and sum(not d.called for d in waits) == 1
    assert len(clock.getDelayedCalls()) == 1
    clock.advance(30)
    assert all(d.called for d in waits) and registry.waiting() == 0


# -- caps ---------------------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_per_client_and_node_wait_caps():
    registry, clock, _ = make_registry(max_waits_per_client=3, max_waits=5,
                                       joins_per_ip_per_minute=100)
    channels = [await pair(registry, A, B) for _ in range(4)]
    held = [wait(registry, ch, s, A) for ch, s, _ in channels[:3]]
    ch4, s4, r4 = channels[3]
    assert await status(registry.act(request(ch4, s4, wait=30), A)) == 429
    assert registry.waiting() == 3
    # a refused wait changed nothing: its write-less request stored nothing either
    assert (await registry.load(ch4.name)).version == 2
    # replacing one's own wait is not a new wait
    held[0] = wait(registry, channels[0][0], channels[0][1], A)
    assert registry.waiting() == 3
    # another client may wait, up to the node's cap
    b_waits = [wait(registry, ch, r, B) for ch, _, r in channels[:2]]
    assert registry.waiting() == 5
    assert await status(registry.act(request(ch4, r4, wait=30), B)) == 503
    b_waits[0].cancel()
    b_waits[0].addErrback(lambda f: f.trap(CancelledError))
    assert registry.waiting() == 4
    b_waits.append(wait(registry, ch4, r4, B))
    assert registry.waiting() == 5
    counts_consistent(registry)
    clock.advance(30)
    assert registry.waiting() == 0 and not registry.waits.by_client
    assert not registry.waits.watches


@settings(max_examples=60)
@given(st.lists(st.tuples(st.sampled_from(["wait", "cancel", "write", "tick"]),
                          st.integers(0, 3), st.sampled_from([0, 1])), max_size=40))
def test_wait_bookkeeping_stays_consistent(steps):
    """Random waits, cancellations, writes and clock ticks: the counts always match the
    waiters, nothing is left behind, and the caps hold."""
    registry, clock, _ = make_registry(max_waits_per_client=3, max_waits=4,
                                       joins_per_ip_per_minute=1000)
    channels = []
    for _ in range(4):
        d = Deferred.fromCoroutine(pair(registry, A, B))
        channels.append(d.result)
    pending: list[Deferred] = []
    for action, index, role in steps:
        ch, s, r = channels[index]
        uuid, address = (s, A) if role == 0 else (r, B)
        if action == "wait":
            d = wait(registry, ch, uuid, address, seconds=5)
            d.addErrback(lambda f: f.trap(ChannelError, CancelledError))
            pending.append(d)
        elif action == "cancel" and pending:
            pending.pop(index % len(pending)).cancel()
        elif action == "write":
            Deferred.fromCoroutine(registry.act(request(ch, uuid, Write(close=True)), address))
        else:
            clock.advance(2)
        counts_consistent(registry)
        assert registry.waiting() <= 4
        assert all(n <= 3 for n in registry.waits.by_client.values())
    clock.advance(10)
    assert registry.waiting() == 0 and not registry.waits.watches
    assert not clock.getDelayedCalls()


# -- name probes --------------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_channel_probes_spend_the_join_budget():
    registry, clock, _ = make_registry(joins_per_ip_per_minute=5)
    ch, s, r = await pair(registry, A, B)  # two joins, one from each of A and B
    probe = sm.Channel(name="nope1234", curve="ed25519", expires_at=0, owner="", staple="",
                       sender_uuid=b"")
    answers = [await status(registry.act(request(probe, b"u" * 32), C)) for _ in range(3)]
    answers += [await status(registry.act(request(ch, s, wait=0), C)) for _ in range(2)]
    assert answers == [404, 404, 404, 403, 403]
    # budget spent: probes are refused, however they would have been answered
    assert await status(registry.act(request(probe, b"u" * 32), C)) == 429
    assert await status(registry.act(request(ch, s), C)) == 429
    assert await status(registry.join(SENDER, C, "h:1")) == 429
    # a client's requests on its own channels are not probes and never run out
    for _ in range(20):
        await registry.act(request(ch, s), A)
    # a wrong uuid from a joined address is not a probe either (the uuid is 256 bits)
    for _ in range(10):
        assert await status(registry.act(request(ch, b"w" * 32), B)) == 401
    clock.advance(60)
    assert await status(registry.act(request(probe, b"u" * 32), C)) == 404


@pytest_twisted.ensureDeferred
async def test_budget_counts_a_whole_ipv6_64():
    registry, clock, _ = make_registry(joins_per_ip_per_minute=3)
    for address in (V6A, V6B, V6A):
        await registry.join(SENDER, address, "h:1")
    assert await status(registry.join(SENDER, V6B, "h:1")) == 429
    await registry.join(SENDER, "2001:db8:1:3::a", "h:1")  # the next /64 is another client


# -- the per-client channel share ---------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_channel_share_per_client():
    registry, clock, store = make_registry(max_channels=10, max_channels_per_client=3,
                                           channel_ttl=60, joins_per_ip_per_minute=100)
    for address in (V6A, V6B, V6A):
        await registry.join(SENDER, address, "h:1")
    assert await status(registry.join(SENDER, V6B, "h:1")) == 429
    assert len(store.channels) == 3  # the refusal stored nothing
    # recipients do not take a share: a recipient join from the full client still works
    ch, _ = await registry.join(SENDER, A, "h:1")
    await registry.join(JoinRequest("recipient", ch.name, "ed25519"), V6A, "h:1")
    # others fill the relay's cap: 507
    for address in ("10.0.0.1", "10.0.0.2", "10.0.0.3"):
        for _ in range(2):
            try:
                await registry.join(SENDER, address, "h:1")
            except StoreFull:
                pass
    assert len(store.channels) == 10
    with pytest.raises(StoreFull):
        await registry.join(SENDER, "10.0.0.9", "h:1")
    clock.advance(60)
    await registry.join(SENDER, V6B, "h:1")


# -- stapled channels: leases -----------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_stapled_channel_lives_by_its_lease():
    registry, clock, store = make_registry(max_channels=1, channel_ttl=60)
    ch, s, r = await pair(registry)
    stapled = await registry.mark_stapled(ch.name, lease=100)
    assert stapled.expires_at == clock.seconds() + 100
    clock.advance(90)  # past the channel's TTL: still open, still counted
    await registry.renew_lease(ch.name, 100)
    clock.advance(90)
    assert (await registry.load(ch.name)).stapled
    with pytest.raises(StoreFull):
        await registry.join(SENDER, C, "h:1")
    # without renewals (the node died) the lease runs out
    clock.advance(11)
    assert await registry.load(ch.name) is None
    await registry.join(SENDER, C, "h:1")


def test_renew_lease_only_extends_open_stapled_channels():
    ch = sm.new_channel("abcd1234", "ed25519", "node", "h:1", b"S" * 32, A, 0, 300)
    assert sm.renew_lease(ch, 10, 600) is None  # not stapled
    stapled = sm.mark_stapled(ch, 10, 600)
    assert stapled.expires_at == 610
    assert sm.renew_lease(stapled, 20, 600).expires_at == 620
    assert sm.renew_lease(stapled, 5, 600) is None  # already lives that long
    closed = sm.apply_write(stapled, "sender", Write(close=True), 20)
    assert sm.renew_lease(closed, 20, 600) is None
    assert sm.renew_lease(stapled, 611, 600) is None  # expired


# -- a shared store on a Clock: notices, races and the fallback poll ----------------------
class SharedMemoryStore(MemoryChannelStore):
    """The memory store posing as shared, with a feed the test drives by hand; `hold` makes
    the next load wait until released (a read in flight while another node writes)."""

    shared = True

    def __init__(self, seconds) -> None:
        super().__init__(seconds)
        self.feed = HandFeed()
        self.loads = 0
        self.hold: Deferred | None = None

    def change_feed(self, on_change, on_live):
        self.feed.on_change, self.feed.on_live = on_change, on_live
        return self.feed

    async def load(self, name):
        self.loads += 1
        found = await super().load(name)
        if self.hold is not None:
            held, self.hold = self.hold, None
            await held
        return found


class HandFeed:
    live = False

    def start(self) -> None:
        self.set_live(True)

    def stop(self) -> None:
        self.live = False

    def set_live(self, live: bool) -> None:
        self.live = live
        self.on_live(live)


def shared_registry(**settings):
    clock = Clock()
    clock.advance(1000)
    store = SharedMemoryStore(clock.seconds)
    registry = ChannelRegistry(RendezvousConfig(**settings), store, clock, node_id="n")
    registry.start()
    return registry, clock, store


async def other_node_writes(registry, store, ch, uuid, address, write) -> int:
    """Change the channel behind the registry's back (as another node would) and return
    the new version, without announcing it."""
    record, version = await MemoryChannelStore.load(store, ch.name)
    current = sm.Channel.from_record(record, version)
    role = sm.authenticate(current, uuid, address, registry.clock.seconds())
    new = sm.apply_write(current, role, write, registry.clock.seconds())
    assert await store.replace(ch.name, version, new.to_record(), new.ttl(1000))
    return version + 1


@pytest_twisted.ensureDeferred
async def test_notice_wakes_with_one_read_and_own_changes_need_none():
    registry, clock, store = shared_registry()
    ch, s, r = await pair(registry)
    waiters = [wait(registry, ch, r, B), wait(registry, ch, s, A)]
    loads = store.loads
    version = await other_node_writes(registry, store, ch, s, A, Write(x=X))
    store.feed.on_change(ch.name, version)
    results = [await d for d in waiters]
    assert [c.x for c in results] == [X, X]
    assert store.loads == loads + 1  # one read for both waiters
    # a notice of a version the waiters already have reads nothing
    d = wait(registry, ch, r, B)
    loads = store.loads
    store.feed.on_change(ch.name, version)
    assert store.loads == loads and not d.called
    clock.advance(30)
    await d


@pytest_twisted.ensureDeferred
async def test_a_change_during_the_requests_own_read_is_not_missed():
    registry, clock, store = shared_registry()
    ch, s, r = await pair(registry)
    hold = store.hold = Deferred()
    d = wait(registry, ch, r, B)  # its read is in flight...
    assert store.hold is None and not d.called
    version = await other_node_writes(registry, store, ch, s, A, Write(x=X))
    store.feed.on_change(ch.name, version)  # ...when the notice comes
    loads = store.loads
    hold.callback(None)  # the read returns the state from before the change
    assert store.loads == loads + 1  # so the new waiter reads again at once
    assert (await d).x == X


@pytest_twisted.ensureDeferred
async def test_feed_down_polls_slowly_and_a_wait_still_times_out():
    registry, clock, store = shared_registry()
    ch, s, r = await pair(registry)
    store.feed.set_live(False)
    d = wait(registry, ch, r, B, seconds=10)
    await other_node_writes(registry, store, ch, s, A, Write(x=X))
    loads = store.loads
    clock.advance(FALLBACK_POLL - 0.01)
    assert not d.called and store.loads == loads
    clock.advance(0.02)
    assert (await d).x == X and store.loads == loads + 1
    # idle waiters with the feed down: one read per channel per FALLBACK_POLL, no more
    d = wait(registry, ch, r, B, seconds=10)
    d2 = wait(registry, ch, s, A, seconds=10)
    loads = store.loads
    for _ in range(3):
        clock.advance(FALLBACK_POLL)
    assert store.loads == loads + 3
    # the feed comes back: every watched channel is read once, then polling stops
    store.feed.set_live(True)
    assert store.loads == loads + 4
    for _ in range(8):
        clock.advance(1)
    assert store.loads == loads + 4
    assert (await d).version == (await d2).version
    assert registry.waiting() == 0 and not clock.getDelayedCalls()


# -- requests in flight -------------------------------------------------------------------
class _StalledStore(MemoryChannelStore):
    """A store whose reads hang (a slow or overloaded Redis): every call is counted."""

    def __init__(self, seconds) -> None:
        super().__init__(seconds)
        self.calls = 0
        self.stalled: list[Deferred] = []

    async def load(self, name):
        self.calls += 1
        d: Deferred = Deferred()
        self.stalled.append(d)
        return await d


@pytest_twisted.ensureDeferred
async def test_one_client_cannot_queue_store_calls_past_its_wait_cap():
    clock = Clock()
    store = _StalledStore(clock.seconds)
    registry = ChannelRegistry(RendezvousConfig(max_waits_per_client=4, max_waits=6), store,
                               clock, node_id="node", client_key=HTTPConfig().client_key)
    channel = sm.new_channel("abcdefgh", "ed25519", "node", "h:1", b"s" * 32, A, 0.0, 300.0)
    flood = [Deferred.fromCoroutine(registry.act(request(channel, b"s" * 32, wait=30.0), A))
             for _ in range(50)]
    refused = [d for d in flood if d.called]
    assert store.calls == 4 and len(refused) == 46
    for d in refused:
        with pytest.raises(ChannelError) as e:
            await d
        assert http_status(e.value) == 429
    # Another client still gets through, up to the node's cap (then 503).
    others = [Deferred.fromCoroutine(registry.act(request(channel, b"s" * 32), B))
              for _ in range(3)]
    assert store.calls == 6
    with pytest.raises(ChannelError) as e:
        await others[2]
    assert http_status(e.value) == 503
    # Once the store answers, the slots are free again.
    for d in store.stalled:
        d.callback(None)
    for d in flood[:4] + others[:2]:
        with pytest.raises(ChannelError):
            await d  # unknown channel: the stalled store held nothing
    assert registry._in_flight == {} and registry._in_flight_total == 0
