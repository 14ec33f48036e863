"""Long-polls on a shared Redis: two registries ("nodes") on one real redis-server. A change
through node A wakes a waiter on node B at once (pub/sub, not polling); many waiters cost
one subscription and no reads while nothing changes; with the feed down, waits fall back to
a slow poll and the feed comes back by itself."""

from __future__ import annotations

import time

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import deferLater

from relay.config import RendezvousConfig, StoreConfig
from relay.rendezvous.channel import Write
from relay.rendezvous.registry import ChannelRegistry
from relay.rendezvous.requests import ChannelRequest, JoinRequest
from relay.rendezvous.waits import FALLBACK_POLL
from relay.store.redis import RedisBackend
from relay.store.redis.channels import RedisChannelStore

A, B = "127.0.0.2", "127.0.0.3"
X = b"x" * 33


def sleep(seconds: float) -> Deferred:
    return deferLater(reactor, seconds, lambda: None)


async def eventually(check, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not check() and time.monotonic() < deadline:
        await sleep(0.01)
    assert check()


class Node:
    def __init__(self, url: str, node_id: str, **settings) -> None:
        self.backend = RedisBackend(StoreConfig(url=url), reactor)
        self.service = self.backend.make_service()
        config = RendezvousConfig(**{"joins_per_ip_per_minute": 10**6, **settings})
        self.registry = ChannelRegistry(config, RedisChannelStore(self.backend), reactor,
                                        node_id=node_id)

    async def start(self) -> None:
        self.service.startService()
        self.registry.start()
        await eventually(lambda: self.registry.waits.feed.live)

    async def stop(self) -> None:
        stopped = self.registry.stop()
        if stopped is not None:
            await stopped
        await self.service.stopService()


async def two_nodes(redis_server, **settings) -> tuple[Node, Node]:
    redis_server.flush()
    a, b = Node(redis_server.url, "a", **settings), Node(redis_server.url, "b", **settings)
    await gatherResults([Deferred.fromCoroutine(n.start()) for n in (a, b)])
    return a, b


async def channel_pair(a: Node, b: Node):
    ch, s = await a.registry.join(JoinRequest("sender", None, "ed25519"), A, "h:1")
    _, r = await b.registry.join(JoinRequest("recipient", ch.name, "ed25519"), B, "h:1")
    return ch, s, r


def wait(node: Node, ch, uuid, address, seconds=30.0) -> Deferred:
    return Deferred.fromCoroutine(node.registry.act(
        ChannelRequest(ch.name, uuid, Write(), seconds, None), address))


def subscribers(redis_server) -> int:
    return int(redis_server.command("PUBSUB", "NUMPAT")) + sum(
        int(n) for n in redis_server.command("PUBSUB", "NUMSUB", *[
            c for c in redis_server.command("PUBSUB", "CHANNELS")])[1::2])


@pytest_twisted.ensureDeferred
async def test_a_write_on_one_node_wakes_a_waiter_on_another_at_once(redis_server):
    a, b = await two_nodes(redis_server)
    try:
        ch, s, r = await channel_pair(a, b)
        waiting = wait(b, ch, r, B)
        await eventually(lambda: b.registry.waiting() == 1)
        woken: list[float] = []
        waiting.addCallback(lambda channel: woken.append(time.monotonic()) or channel)
        started = time.monotonic()
        await a.registry.act(ChannelRequest(ch.name, s, Write(x=X), 0, None), A)
        await eventually(lambda: woken, seconds=2)
        latency = woken[0] - started
        print(f"cross-node wake-up: {latency * 1000:.1f} ms")
        assert latency < 0.1
        assert (await waiting).x == X
        assert b.registry.waits.loads == 1  # one read for the wake-up, no polling
    finally:
        await a.stop()
        await b.stop()


@pytest_twisted.ensureDeferred
async def test_many_waiters_cost_one_subscription_and_no_reads(redis_server):
    a, b = await two_nodes(redis_server, max_waits_per_client=100)
    try:
        pairs = [await channel_pair(a, b) for _ in range(50)]
        waiting = [wait(b, ch, r, B) for ch, _, r in pairs]
        waiting += [wait(a, ch, s, A) for ch, s, _ in pairs]
        await eventually(lambda: b.registry.waiting() == 50 and a.registry.waiting() == 50)
        assert subscribers(redis_server) == 2  # one connection per node
        await sleep(1.0)  # idle waiters read nothing
        assert b.registry.waits.loads == 0 and a.registry.waits.loads == 0
        assert not any(d.called for d in waiting)
        # one change per channel through node A: node B reads each channel once; node A's
        # own waiters get the new state without any read
        for ch, s, _ in pairs:
            await a.registry.act(ChannelRequest(ch.name, s, Write(x=X), 0, None), A)
        results = await gatherResults(waiting)
        assert all(channel.x == X for channel in results)
        assert b.registry.waits.loads == 50 and a.registry.waits.loads == 0
    finally:
        await a.stop()
        await b.stop()


@pytest_twisted.ensureDeferred
async def test_feed_down_falls_back_to_a_slow_poll_and_comes_back(redis_server):
    a, b = await two_nodes(redis_server)
    try:
        ch, s, r = await channel_pair(a, b)
        redis_server.command("CLIENT", "KILL", "TYPE", "pubsub")
        await eventually(lambda: not b.registry.waits.feed.live, seconds=2)
        waiting = wait(b, ch, r, B)
        await sleep(0.05)
        await a.registry.act(ChannelRequest(ch.name, s, Write(x=X), 0, None), A)
        started = time.monotonic()
        await eventually(lambda: waiting.called or b.registry.waits.feed.live,
                         seconds=FALLBACK_POLL + 2)
        assert (await waiting).x == X
        assert time.monotonic() - started < FALLBACK_POLL + 1
        await eventually(lambda: a.registry.waits.feed.live and b.registry.waits.feed.live)
        # live again: a timeout still answers on time with the unchanged state
        started = time.monotonic()
        state = await wait(b, ch, r, B, seconds=0.5)
        assert state.x == X and 0.45 < time.monotonic() - started < 1.5
    finally:
        await a.stop()
        await b.stop()


@pytest_twisted.ensureDeferred
async def test_two_thousand_idle_waiters_cost_almost_no_cpu(redis_server):
    import resource

    def cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    a, b = await two_nodes(redis_server, max_waits_per_client=10**4, max_waits=10**4,
                           max_channels_per_client=10**4)
    try:
        pairs = [await channel_pair(a, a) for _ in range(1000)]
        waiting = [wait(a, ch, s, A) for ch, s, _ in pairs]
        waiting += [wait(a, ch, r, B) for ch, _, r in pairs]
        await eventually(lambda: a.registry.waiting() == 2000)
        started, used = time.monotonic(), cpu()
        await sleep(3.0)
        share = (cpu() - used) / (time.monotonic() - started)
        print(f"2,000 idle waiters: {100 * share:.1f}% of a core")
        assert share < 0.10 and a.registry.waits.loads == 0
        # a change through the other node wakes exactly its channel's two waiters
        ch, s, _ = pairs[0]
        await b.registry.act(ChannelRequest(ch.name, s, Write(x=X), 0, None), A)
        await eventually(lambda: a.registry.waiting() == 1998)
        assert a.registry.waits.loads == 1
        for d in waiting:
            d.cancel()
            d.addErrback(lambda f: None)
    finally:
        await a.stop()
        await b.stop()
