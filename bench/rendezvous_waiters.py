#!/usr/bin/env python3
"""What idle long-polls cost a Redis-backed relay: N waiters on one registry, one process.

    python bench/rendezvous_waiters.py [--waiters 2000] [--seconds 30] [--redis URL]

Without --redis a redis-server is started (and stopped) in a temporary directory. The
waiters are /channel long-polls with `wait` = max_wait (30 s) on N/2 channels (both roles
of each), made directly on the registry (no HTTP: this measures the registry and its store
traffic); a waiter that answers polls again at once, as a client does. Half-way, a second
registry on the same Redis (another "node") writes to one channel per second, so wake-ups
through the change feed are part of the figure. Reports the relay process's CPU (user +
system) over the window, the store reads made for waiters, and Redis's own CPU.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from twisted.internet import task  # noqa: E402
from twisted.internet.defer import Deferred, gatherResults  # noqa: E402

from bench.processes import cpu_seconds, store_url  # noqa: E402
from relay.config import RendezvousConfig, StoreConfig  # noqa: E402
from relay.rendezvous.channel import Write  # noqa: E402
from relay.rendezvous.registry import ChannelRegistry  # noqa: E402
from relay.rendezvous.requests import ChannelRequest, JoinRequest  # noqa: E402
from relay.store.redis import RedisBackend  # noqa: E402
from relay.store.redis.channels import RedisChannelStore  # noqa: E402


def cpu_self() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def node(reactor: Any, url: str, node_id: str, waiters: int) -> tuple[Any, ChannelRegistry]:
    backend = RedisBackend(StoreConfig(url=url), reactor)
    config = RendezvousConfig(joins_per_ip_per_minute=10**9, max_channels=10 * waiters,
                              max_channels_per_client=10 * waiters, channel_ttl=3600.0,
                              max_waits=10 * waiters, max_waits_per_client=10 * waiters)
    return backend, ChannelRegistry(config, RedisChannelStore(backend), reactor,
                                    node_id=node_id)


async def run(reactor: Any, args: argparse.Namespace, url: str) -> None:
    backend, registry = node(reactor, url, "measured", args.waiters)
    other_backend, other = node(reactor, url, "other", args.waiters)
    for b, r in ((backend, registry), (other_backend, other)):
        b.make_service().startService()
        r.start()
    while not (registry.waits.feed.live and other.waits.feed.live):
        await task.deferLater(reactor, 0.05, lambda: None)
    channels = []
    for _ in range(args.waiters // 2):
        ch, s = await registry.join(JoinRequest("sender", None, "ed25519"), "10.0.0.1", "h:1")
        _, r = await registry.join(JoinRequest("recipient", ch.name, "ed25519"), "10.0.0.2",
                                   "h:1")
        channels.append((ch, s, r))
    running = True
    answers = [0]

    async def poll_forever(name: str, uuid: bytes, address: str) -> None:
        while running:
            await registry.act(ChannelRequest(name, uuid, Write(), 30.0, None), address)
            answers[0] += 1

    for ch, s, r in channels:
        for uuid, address in ((s, "10.0.0.1"), (r, "10.0.0.2")):
            Deferred.fromCoroutine(poll_forever(ch.name, uuid, address)).addErrback(
                lambda f: print("a waiter failed:", f.value))
    while registry.waiting() < 2 * len(channels):
        await task.deferLater(reactor, 0.05, lambda: None)
    redis_pid = int(dict(line.split(":", 1) for line in (await backend.run(
        lambda redis: redis.execute_command("INFO", "server"))).decode().split("\r\n")
        if ":" in line)["process_id"])
    loads_before, cpu_before, redis_before = registry.waits.loads, cpu_self(), \
        cpu_seconds(redis_pid)
    started = time.monotonic()
    closed = 0
    while time.monotonic() - started < args.seconds:
        await task.deferLater(reactor, 1.0, lambda: None)
        if time.monotonic() - started > args.seconds / 2 and closed < len(channels):
            ch, s, _ = channels[closed]  # a change through the other node
            await other.act(ChannelRequest(ch.name, s, Write(x=b"x" * 33), 0, None),
                            "10.0.0.1")
            closed += 1
    elapsed = time.monotonic() - started
    cpu = cpu_self() - cpu_before
    redis_cpu = cpu_seconds(redis_pid) - redis_before
    running = False
    print(f"waiters={registry.waiting()} channels={len(channels)} window={elapsed:.1f}s "
          f"changes-through-other-node={closed} answers={answers[0]}")
    print(f"relay CPU {cpu:.2f}s = {100 * cpu / elapsed:.1f}% of a core; "
          f"store reads for waiters {registry.waits.loads - loads_before}; "
          f"redis CPU {redis_cpu:.2f}s = {100 * redis_cpu / elapsed:.1f}%")
    await gatherResults([Deferred.fromCoroutine(_stop(r)) for r in (registry, other)])


async def _stop(registry: ChannelRegistry) -> None:
    stopped = registry.stop()
    if stopped is not None:
        await stopped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--waiters", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--redis", help="redis:// URL (default: start a redis-server)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        if args.redis:
            task.react(lambda reactor: Deferred.fromCoroutine(run(reactor, args, args.redis)))
            return
        with store_url("redis", Path(workdir)) as url:
            task.react(lambda reactor: Deferred.fromCoroutine(run(reactor, args, url)))


if __name__ == "__main__":
    main()
