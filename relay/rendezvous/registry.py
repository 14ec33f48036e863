"""Channel operations over the store: join, write, long-poll, staple marking.

Every change is a compare-and-set on the channel's stored version (several nodes may share
one store). Long-polls wake at once for changes made through this node and, when the store
is shared, also re-read the store every POLL_INTERVAL seconds.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

from relay.config import RendezvousConfig
from relay.rendezvous import channel as sm
from relay.rendezvous.channel import Channel, ChannelError
from relay.rendezvous.requests import ChannelRequest, JoinRequest
from relay.store.errors import StoreUnavailable
from relay.store.interfaces.channels import ChannelStore

# How often a long-poll re-reads a shared store for changes made through other nodes.
POLL_INTERVAL = 0.25
# Compare-and-set attempts before giving up (only concurrent writers on one channel race).
CAS_ATTEMPTS = 16
# Attempts at a fresh random name before concluding the name space is congested.
NAME_ATTEMPTS = 8
RATE_WINDOW = 60.0


class ChannelRegistry:
    def __init__(self, config: RendezvousConfig, store: ChannelStore, clock: IReactorTime,
                 node_id: str | None = None) -> None:
        self.config = config
        self.store = store
        self.clock = clock
        self.node_id = node_id or os.urandom(8).hex()
        self._waiters: dict[str, list[Deferred]] = {}

    # -- reading and writing ------------------------------------------------------------
    async def load(self, name: str) -> Channel | None:
        found = await self.store.load(name)
        if found is None:
            return None
        channel = Channel.from_record(*found)
        return None if channel.expired(self.clock.seconds()) else channel

    async def update(self, name: str, change: Callable[[Channel | None, float], Channel | None]
                     ) -> Channel:
        """Apply change (which may raise ChannelError) atomically; the resulting channel."""
        for _ in range(CAS_ATTEMPTS):
            current = await self.load(name)
            now = self.clock.seconds()
            new = change(current, now)
            if new is None or current is None:
                if current is None:
                    raise ChannelError(404, "unknown channel")
                return current
            if await self.store.replace(name, current.version, new.to_record(), new.ttl(now)):
                self._wake(name)
                return attrs.evolve(new, version=current.version + 1)
        raise StoreUnavailable("channel update contention")

    # -- /join --------------------------------------------------------------------------
    async def join(self, request: JoinRequest, address: str,
                   staple: str) -> tuple[Channel, bytes]:
        """The channel joined and this role's uuid."""
        hits = await self.store.count_hit(f"join:{address}", RATE_WINDOW)
        if hits > self.config.joins_per_ip_per_minute:
            raise ChannelError(429, "too many joins from this address; try again in a minute")
        uuid = os.urandom(sm.UUID_LEN)
        if request.role == sm.RECIPIENT:
            assert request.channel is not None

            def join(current: Channel | None, now: float) -> Channel:
                return sm.join_recipient(current, uuid, address, now)

            return await self.update(request.channel, join), uuid
        names = [request.channel] if request.channel else [sm.random_name()
                                                           for _ in range(NAME_ATTEMPTS)]
        now = self.clock.seconds()
        ttl = self.config.channel_ttl
        for name in names:
            channel = sm.new_channel(name, request.curve, self.node_id, staple, uuid, address,
                                     now, ttl)
            if await self.store.create(name, channel.to_record(), ttl,
                                       self.config.max_channels):
                return Channel.from_record(channel.to_record(), 1), uuid
        if request.channel:
            raise ChannelError(409, "the sender role is already taken")
        raise StoreUnavailable("no free channel name found")

    # -- /channel -----------------------------------------------------------------------
    async def act(self, request: ChannelRequest, address: str) -> Channel:
        """Authenticate, apply the request's write, then long-poll if asked."""
        def write(current: Channel | None, now: float) -> Channel | None:
            role = sm.authenticate(current, request.uuid, address, now)
            assert current is not None
            return sm.apply_write(current, role, request.write, now)

        channel = await self.update(request.channel, write)
        if request.wait <= 0:
            return channel
        baseline = channel.version if request.since is None else request.since
        return await self._wait(request.channel, baseline, request.wait, request.uuid, address,
                                channel)

    async def _wait(self, name: str, baseline: int, seconds: float, uuid: bytes, address: str,
                    channel: Channel) -> Channel:
        deadline = self.clock.seconds() + seconds
        while channel.version <= baseline and not channel.closed:
            left = deadline - self.clock.seconds()
            if left <= 0:
                break
            step = min(left, POLL_INTERVAL) if self.store.shared else left
            await self._change_or_timeout(name, step)
            current = await self.load(name)
            if current is None:
                raise ChannelError(404, "unknown channel")
            sm.authenticate(current, uuid, address, self.clock.seconds())
            channel = current
        return channel

    def _change_or_timeout(self, name: str, seconds: float) -> Deferred:
        """Fires on a local change of the channel or after seconds; cancellable."""
        waiters = self._waiters.setdefault(name, [])

        def cancel(d: Deferred) -> None:
            if timer.active():
                timer.cancel()
            self._forget(name, waiter)

        waiter: Deferred[Any] = Deferred(cancel)

        def timed_out() -> None:
            self._forget(name, waiter)
            waiter.callback(None)

        timer = self.clock.callLater(seconds, timed_out)

        def done(result: Any) -> Any:
            if timer.active():
                timer.cancel()
            return result

        waiter.addBoth(done)
        waiters.append(waiter)
        return waiter

    def _forget(self, name: str, waiter: Deferred) -> None:
        waiters = self._waiters.get(name)
        if waiters and waiter in waiters:
            waiters.remove(waiter)
            if not waiters:
                del self._waiters[name]

    def _wake(self, name: str) -> None:
        for waiter in self._waiters.pop(name, []):
            if not waiter.called:
                waiter.callback(None)

    def waiting(self) -> int:
        return sum(len(w) for w in self._waiters.values())

    # -- stapling -----------------------------------------------------------------------
    async def staple_check(self, name: str, role: str, uuid: bytes, address: str) -> Channel:
        channel = await self.load(name)
        return sm.staple_check(channel, role, uuid, address, self.node_id,
                               self.clock.seconds())

    async def mark_stapled(self, name: str) -> Channel:
        return await self.update(name, sm.mark_stapled)

    async def close(self, name: str) -> None:
        """Close the channel if it still exists (after a stapled pair ends, for example)."""
        def close(current: Channel | None, now: float) -> Channel | None:
            if current is None or current.expired(now):
                return None
            return sm.apply_write(current, sm.SENDER, sm.Write(close=True), now)

        try:
            await self.update(name, close)
        except ChannelError:
            pass
