"""Channel operations over the store: join, write, long-poll, staple marking.

Every change is a compare-and-set on the channel's stored version (several nodes may share
one store). Long-polls (relay.rendezvous.waits) wake at once for changes made through this
node and, when the store is shared, for changes any node made (the store's change feed); only
while that feed is down do they re-read the store, every FALLBACK_POLL seconds.

Per-client limits count a client by `client_key(address)` (its network, see
relay.web.clients); the two-address rule of a channel keeps using exact addresses.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import attrs
from twisted.internet.interfaces import IReactorTime

from relay.config import RendezvousConfig
from relay.rendezvous import channel as sm
from relay.rendezvous.channel import Channel
from relay.rendezvous.errors import (
    Busy,
    ChannelError,
    NotPermitted,
    OutOfTurn,
    TooMany,
    UnknownChannel,
)
from relay.rendezvous.requests import ChannelRequest, JoinRequest
from relay.rendezvous.waits import Waits
from relay.store.errors import StoreUnavailable
from relay.store.interfaces.channels import ChannelStore, ClientChannelsFull
from relay.web.clients import client_key as default_client_key

# Compare-and-set attempts before giving up (only concurrent writers on one channel race).
CAS_ATTEMPTS = 16
# Attempts at a fresh random name before concluding the name space is congested.
NAME_ATTEMPTS = 8
RATE_WINDOW = 60.0


class ChannelRegistry:
    def __init__(self, config: RendezvousConfig, store: ChannelStore, clock: IReactorTime,
                 node_id: str | None = None,
                 client_key: Callable[[str], str] | None = None) -> None:
        self.config = config
        self.store = store
        self.clock = clock
        self.node_id = node_id or os.urandom(8).hex()
        self.client_key = client_key or default_client_key
        self.waits = Waits(self, config, clock)
        # Requests of each client between arrival and their answer or wait (store round trips
        # under way): bounded like its waits, so that one client cannot queue thousands of
        # store calls and push everyone else past the store's pending-call cap.
        self._in_flight: dict[str, int] = {}
        self._in_flight_total = 0

    @contextmanager
    def _admitted(self, client: str) -> Iterator[None]:
        """Count one request of client in flight; 429 / 503 over the wait caps."""
        if self._in_flight.get(client, 0) >= self.config.max_waits_per_client:
            raise TooMany("too many requests in flight from this network")
        if self._in_flight_total >= self.config.max_waits:
            raise Busy("the relay is busy; try again shortly")
        self._in_flight[client] = self._in_flight.get(client, 0) + 1
        self._in_flight_total += 1
        try:
            yield
        finally:
            self._in_flight_total -= 1
            left = self._in_flight[client] - 1
            if left:
                self._in_flight[client] = left
            else:
                del self._in_flight[client]

    # -- lifecycle (the shared store's change feed) ---------------------------------------
    def start(self) -> None:
        self.waits.start()

    def stop(self) -> object:
        return self.waits.stop()

    def waiting(self) -> int:
        """Long-polls outstanding on this node."""
        return self.waits.total

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
                    raise UnknownChannel("unknown channel")
                return current
            if await self.store.replace(name, current.version, new.to_record(), new.ttl(now),
                                        self._creator(current)):
                changed = attrs.evolve(new, version=current.version + 1)
                self.waits.changed_here(name, changed)
                return changed
        raise StoreUnavailable("channel update contention")

    def _creator(self, channel: Channel) -> str:
        """The client a channel counts against: its sender's (the first address)."""
        return self.client_key(channel.addresses[0]) if channel.addresses else ""

    async def _spend_budget(self, client: str) -> None:
        """One more join (or probe) of this client this minute; 429 beyond the budget."""
        hits = await self.store.count_hit(f"join:{client}", RATE_WINDOW)
        if hits > self.config.joins_per_ip_per_minute:
            raise TooMany("too many joins from this network; try again in a minute")

    # -- /join --------------------------------------------------------------------------
    async def join(self, request: JoinRequest, address: str,
                   staple: str) -> tuple[Channel, bytes]:
        """The channel joined and this role's uuid."""
        client = self.client_key(address)
        with self._admitted(client):
            return await self._join(request, client, address, staple)

    async def _join(self, request: JoinRequest, client: str, address: str,
                    staple: str) -> tuple[Channel, bytes]:
        await self._spend_budget(client)
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
            try:
                created = await self.store.create(name, channel.to_record(), ttl,
                                                  self.config.max_channels, client,
                                                  self.config.max_channels_per_client)
            except ClientChannelsFull:
                raise TooMany("this network holds too many open channels") from None
            if created:
                return Channel.from_record(channel.to_record(), 1), uuid
        if request.channel:
            raise OutOfTurn("the sender role is already taken")
        raise StoreUnavailable("no free channel name found")

    # -- /channel -----------------------------------------------------------------------
    async def act(self, request: ChannelRequest, address: str) -> Channel:
        """Authenticate, apply the request's write, then long-poll if asked."""
        client = self.client_key(address)
        name = request.channel
        # Interest is registered before the channel is read, so a change another node makes
        # between that read and the wait being registered is not missed.
        interest = self.waits.interest(name) if request.wait > 0 else None
        roles: list[str] = []
        probe: list[bool] = []

        def write(current: Channel | None, now: float) -> Channel | None:
            try:
                role = sm.authenticate(current, request.uuid, address, now)
            except ChannelError as e:
                # Unknown channel or an address that did not join it: a possible name probe.
                probe.append(isinstance(e, (NotPermitted, UnknownChannel)))
                raise
            assert current is not None
            roles.append(role)
            return sm.apply_write(current, role, request.write, now)

        try:
            with self._admitted(client):
                try:
                    channel = await self.update(name, write)
                except ChannelError:
                    if probe and probe[-1]:
                        await self._spend_budget(client)
                    raise
            if interest is None:
                return channel
            baseline = channel.version if request.since is None else request.since
            if channel.version > baseline or channel.closed:
                return channel
            waiter = self.waits.add(interest, roles[-1], client, request.uuid, address,
                                    baseline, channel, request.wait)
        finally:
            if interest is not None:
                self.waits.release(interest)
        return await waiter

    # -- stapling -----------------------------------------------------------------------
    async def staple_check(self, name: str, role: str, uuid: bytes, address: str) -> Channel:
        channel = await self.load(name)
        return sm.staple_check(channel, role, uuid, address, self.node_id,
                               self.clock.seconds())

    async def mark_stapled(self, name: str, lease: float | None = None) -> Channel:
        def staple(current: Channel | None, now: float) -> Channel:
            return sm.mark_stapled(current, now, lease)

        return await self.update(name, staple)

    async def renew_lease(self, name: str, lease: float) -> Channel:
        """Keep a stapled channel open `lease` more seconds (its pair still lives)."""
        def renew(current: Channel | None, now: float) -> Channel | None:
            return sm.renew_lease(current, now, lease)

        return await self.update(name, renew)

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
