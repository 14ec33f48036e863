"""Long-polls of /channel on this node: bounded, at most one per role per channel, and
sharing one wake-up and one store read per channel.

A `_Watch` per channel holds its waiters (one per role: a newer wait of the same role ends
the older one at once, which answers the current state) and is the only thing that reads
the store for them: a change made through this node is handed to it directly; a change
made through another node (shared store) arrives as a notice from the store's change feed
(Redis pub/sub), upon which the watch reads the channel once for all its waiters. Only
while the feed is down does every watch re-read its channel, every FALLBACK_POLL seconds.
Every wait keeps its own timeout and answers the latest state it knows when it runs out.

Limits: `max_waits_per_client` outstanding waits per client key (429 beyond) and
`max_waits` on this node (503 beyond). A refused wait changes nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from relay.config import RendezvousConfig
from relay.rendezvous import channel as sm
from relay.rendezvous.channel import Channel
from relay.rendezvous.errors import Busy, ChannelError, TooMany, UnknownChannel
from relay.store.errors import StoreError

if TYPE_CHECKING:
    from relay.rendezvous.registry import ChannelRegistry

log = Logger(namespace="relay.rendezvous")

# How often waiters re-read a shared store while its change feed is down (reconnecting).
FALLBACK_POLL = 1.5
# A deletion's notice carries no version: newer than any.
DELETED = 2**63


class _Watch:
    """The waits of one channel on this node."""

    __slots__ = ("name", "waiters", "interest", "newest", "loading", "again")

    def __init__(self, name: str) -> None:
        self.name = name
        self.waiters: dict[str, _Waiter] = {}
        # Requests that may add a waiter once their own read of the channel returns.
        self.interest = 0
        # The newest version the feed announced while this watch existed (DELETED for a
        # deletion): a request whose read returned an older one reads again.
        self.newest = 0
        self.loading = False
        self.again = False


class Interest:
    """A request's claim on a watch, taken before it reads the channel."""

    __slots__ = ("watch",)

    def __init__(self, watch: _Watch) -> None:
        self.watch = watch


class _Waiter:
    __slots__ = ("watch", "role", "client", "uuid", "address", "baseline", "channel",
                 "deferred", "timer")

    def __init__(self, watch: _Watch, role: str, client: str, uuid: bytes, address: str,
                 baseline: int, channel: Channel) -> None:
        self.watch = watch
        self.role = role
        self.client = client
        self.uuid = uuid
        self.address = address
        self.baseline = baseline
        # The latest state this waiter knows (answered on timeout).
        self.channel = channel
        self.deferred: Deferred[Channel] | None = None
        self.timer: IDelayedCall | None = None


class Waits:
    def __init__(self, registry: ChannelRegistry, config: RendezvousConfig,
                 clock: IReactorTime) -> None:
        self.registry = registry
        self.config = config
        self.clock = clock
        self.watches: dict[str, _Watch] = {}
        self.total = 0
        self.by_client: dict[str, int] = {}
        self.feed: Any = None
        self._poll: IDelayedCall | None = None
        # Store reads made for waiters (tests and benchmarks look at it).
        self.loads = 0

    # -- the change feed ------------------------------------------------------------------
    def start(self) -> None:
        store = self.registry.store
        if store.shared and self.feed is None:
            self.feed = store.change_feed(self.notice, self.feed_live)
            if self.feed is not None:
                self.feed.start()

    def stop(self) -> Any:
        if self._poll is not None and self._poll.active():
            self._poll.cancel()
        self._poll = None
        feed, self.feed = self.feed, None
        return feed.stop() if feed is not None else None

    @property
    def polling(self) -> bool:
        """Must waiters re-read the store themselves? (shared store, feed not live)"""
        return bool(self.registry.store.shared and (self.feed is None or not self.feed.live))

    def feed_live(self, live: bool) -> None:
        if self.feed is None:
            return  # stopped (shutting down)
        if live:
            log.info("the channel change feed is live")
            # Notices sent while the feed was down are lost: look at every watched channel.
            for watch in list(self.watches.values()):
                if watch.waiters:
                    self._refresh(watch)
        else:
            log.warn("the channel change feed is down; long-polls re-read the store every "
                     "{seconds} s until it is back", seconds=FALLBACK_POLL)
            self._ensure_poll()

    def notice(self, name: str, version: int | None = None) -> None:
        """Channel `name` changed (to `version`, if known) through some node."""
        watch = self.watches.get(name)
        if watch is None:
            return
        watch.newest = max(watch.newest, DELETED if version is None else version)
        if not watch.waiters:
            return
        if version is not None and all(w.channel.version >= version
                                       for w in watch.waiters.values()):
            return  # already known here (this node's own change, delivered directly)
        self._refresh(watch)

    def changed_here(self, name: str, channel: Channel) -> None:
        """A change this node stored: its waiters get the new state without a read."""
        watch = self.watches.get(name)
        if watch is not None and watch.waiters:
            self._deliver(watch, channel)

    # -- registering and ending waits ------------------------------------------------------
    def interest(self, name: str) -> Interest:
        watch = self.watches.get(name)
        if watch is None:
            watch = self.watches[name] = _Watch(name)
        watch.interest += 1
        return Interest(watch)

    def release(self, interest: Interest) -> None:
        interest.watch.interest -= 1
        self._maybe_drop(interest.watch)

    def add(self, interest: Interest, role: str, client: str, uuid: bytes, address: str,
            baseline: int, channel: Channel, seconds: float) -> Deferred[Channel]:
        """Wait until the channel's version exceeds baseline, it closes, or seconds pass;
        fires with the channel then. Raises TooMany (this client) or Busy (the node) over the caps."""
        watch = interest.watch
        old = watch.waiters.get(role)
        freed = 1 if old is not None else 0
        freed_here = 1 if old is not None and old.client == client else 0
        if self.total - freed >= self.config.max_waits:
            raise Busy("too many long-polls on this relay; try again shortly")
        if self.by_client.get(client, 0) - freed_here >= self.config.max_waits_per_client:
            raise TooMany("too many long-polls from this network")
        if old is not None:
            self._end(old, result=max(channel, old.channel, key=_version))
        waiter = _Waiter(watch, role, client, uuid, address, baseline, channel)
        waiter.deferred = Deferred(lambda _: self._end(waiter))
        waiter.timer = self.clock.callLater(seconds, self._timed_out, waiter)
        watch.waiters[role] = waiter
        self.total += 1
        self.by_client[client] = self.by_client.get(client, 0) + 1
        if watch.newest > channel.version:
            self._refresh(watch)  # a change was announced while this request read it
        self._ensure_poll()
        return waiter.deferred

    def _timed_out(self, waiter: _Waiter) -> None:
        waiter.timer = None
        self._end(waiter, result=waiter.channel)

    def _end(self, waiter: _Waiter, result: Channel | None = None,
             error: Exception | None = None) -> None:
        """Forget the waiter and fire it with result or error (neither: it was cancelled)."""
        watch = waiter.watch
        if watch.waiters.get(waiter.role) is not waiter:
            return
        del watch.waiters[waiter.role]
        if waiter.timer is not None and waiter.timer.active():
            waiter.timer.cancel()
        waiter.timer = None
        self.total -= 1
        left = self.by_client[waiter.client] - 1
        if left:
            self.by_client[waiter.client] = left
        else:
            del self.by_client[waiter.client]
        self._maybe_drop(watch)
        d = waiter.deferred
        if d is not None and not d.called:
            if error is not None:
                d.errback(error)
            elif result is not None:
                d.callback(result)

    def _maybe_drop(self, watch: _Watch) -> None:
        if (not watch.waiters and not watch.interest and not watch.loading
                and self.watches.get(watch.name) is watch):
            del self.watches[watch.name]

    # -- delivering states -------------------------------------------------------------------
    def _deliver(self, watch: _Watch, channel: Channel | None) -> None:
        now = self.clock.seconds()
        for waiter in list(watch.waiters.values()):
            if channel is None:
                self._end(waiter, error=UnknownChannel("unknown channel"))
                continue
            try:
                sm.authenticate(channel, waiter.uuid, waiter.address, now)
            except ChannelError as e:
                self._end(waiter, error=e)
                continue
            if channel.version < waiter.channel.version:
                continue  # an older state than this waiter has seen
            waiter.channel = channel
            if channel.version > waiter.baseline or channel.closed:
                self._end(waiter, result=channel)

    def _refresh(self, watch: _Watch) -> None:
        """Read the channel once for all its waiters (again after the current read, if one
        is under way: a notice may have come after it was sent)."""
        if watch.loading:
            watch.again = True
            return
        watch.loading = True
        Deferred.fromCoroutine(self._reload(watch)).addErrback(
            lambda f: log.failure("refreshing a long-polled channel failed", f))

    async def _reload(self, watch: _Watch) -> None:
        try:
            while True:
                watch.again = False
                self.loads += 1
                try:
                    channel = await self.registry.load(watch.name)
                except StoreError as e:
                    for waiter in list(watch.waiters.values()):
                        self._end(waiter, error=e)
                    return
                self._deliver(watch, channel)
                if not (watch.again and watch.waiters):
                    return
        finally:
            watch.loading = False
            self._maybe_drop(watch)

    # -- the slow poll while the feed is down ------------------------------------------------
    def _ensure_poll(self) -> None:
        if self._poll is None and self.total and self.polling:
            self._poll = self.clock.callLater(FALLBACK_POLL, self._poll_tick)

    def _poll_tick(self) -> None:
        self._poll = None
        if not self.polling:
            return
        for watch in list(self.watches.values()):
            if watch.waiters:
                self._refresh(watch)
        self._ensure_poll()


def _version(channel: Channel) -> int:
    return channel.version
