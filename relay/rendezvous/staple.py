"""The staple listener: peers identify themselves in one line, the relay pairs the two
connections of a channel and from then on only moves bytes between them.

Identification: `staple <channel> <role> <uuid in base64>\\n`, at most MAX_LINE bytes, within
config.ident_timeout seconds. The relay answers `ok\\n` to both once both are present and
checked, or `error <reason>\\n` and closes. A connection whose partner does not come before
the channel expires is closed.

Live pairs are bounded: per client key (`max_pairs_per_client`), by an idle timeout (no
byte either way) and an optional lifetime, checked by one sweep over the pairs every few
seconds (no timer per pair). A live pair keeps its channel open, so it counts against
`max_channels` (and its sender's share) for its whole life: stapling gives the channel a
lease of PAIR_LEASE seconds that the sweep renews while the pair lives; when the pair ends
the channel is closed, and if this node dies the lease simply runs out.
"""

from __future__ import annotations

import binascii
from collections import deque
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from relay.config import RendezvousConfig
from relay.rendezvous.channel import ROLES, UUID_LEN, valid_name
from relay.rendezvous.errors import ChannelError, OutOfTurn
from relay.rendezvous.pipe import CopyPair, link
from relay.rendezvous.registry import ChannelRegistry
from relay.rendezvous.splice import PipePool, SplicePair
from relay.store.errors import StoreError
from relay.web.clients import canonical_host

log = Logger(namespace="relay.staple")

MAX_LINE = 160
# Bytes a peer may send after its line but before the relay's "ok" (a correct client sends
# none); they are forwarded once linked. Reading continues so a hang-up is noticed.
MAX_EARLY_DATA = 64 * 1024
PREFIX = "staple"
# A stapled channel's record lives this long past its last renewal: a crashed node's pairs
# stop counting as open channels after at most this long.
PAIR_LEASE = 600.0
# A live pair's lease is renewed once it is this old (two more tries before it runs out).
RENEW_AFTER = 240.0
# Renewals in flight at once (they are spread out, not a burst of store calls).
RENEW_CONCURRENCY = 16
# The longest pause between two sweeps over the pairs (idle timeout, lifetime, leases);
# shorter when a timeout is short, so it is enforced within a quarter of itself.
MAX_SWEEP_INTERVAL = 15.0
MIN_SWEEP_INTERVAL = 0.05

Pair = SplicePair | CopyPair


class IdentError(ValueError):
    pass


def parse_line(line: bytes) -> tuple[str, str, bytes]:
    """(channel, role, uuid) from an identification line (without its newline)."""
    parts = line.rstrip(b"\r").split(b" ")
    if len(parts) != 4 or parts[0] != PREFIX.encode():
        raise IdentError("expected: staple <channel> <role> <uuid>")
    try:
        name, role = parts[1].decode("ascii"), parts[2].decode("ascii")
        uuid = binascii.a2b_base64(parts[3], strict_mode=True)
    except (UnicodeDecodeError, binascii.Error):
        raise IdentError("malformed identification line") from None
    if not valid_name(name) or role not in ROLES or len(uuid) != UUID_LEN:
        raise IdentError("malformed identification line")
    return name, role, uuid


class StapleProtocol(Protocol):
    """One peer connection: identifying, then waiting for its partner, then linked."""

    def __init__(self, listener: StapleListener) -> None:
        self.listener = listener
        self.buffer = b""
        self.leftover = b""
        self.channel_name: str | None = None
        self.role: str | None = None
        self.partner: StapleProtocol | None = None
        self.pair: CopyPair | None = None
        self.timer: IDelayedCall | None = None
        self.gone = False

    # -- identification -----------------------------------------------------------------
    def connectionMade(self) -> None:
        self.listener.unpaired.add(self)
        if len(self.listener.unpaired) > self.listener.max_unpaired:
            self.refuse("too many unpaired connections")
            return
        self.timer = self.listener.clock.callLater(self.listener.config.ident_timeout,
                                                   self.refuse, "identification timeout")

    def dataReceived(self, data: bytes) -> None:
        # Only used before linking: afterwards pipe.link replaces it on the instance.
        if self.channel_name is not None:
            self.leftover += data
            if len(self.leftover) > MAX_EARLY_DATA:
                self.refuse("too much data before ok")
            return
        self.buffer += data
        line, newline, rest = self.buffer.partition(b"\n")
        if not newline:
            if len(self.buffer) > MAX_LINE:
                self.refuse("identification line too long")
            return
        self.buffer = b""
        self.leftover = rest
        try:
            name, role, uuid = parse_line(line)
        except IdentError as e:
            self.refuse(str(e))
            return
        self.channel_name, self.role = name, role
        self.cancel_timer()
        Deferred.fromCoroutine(self.listener.arrive(self, uuid)).addErrback(self._failed)

    def _failed(self, failure: Failure) -> None:
        if failure.check(ChannelError):
            self.refuse(failure.value.message)
        elif failure.check(StoreError):
            self.refuse("storage back end unavailable")
        else:
            log.failure("staple identification failed", failure)
            self.refuse("internal error")

    # -- ending -------------------------------------------------------------------------
    def cancel_timer(self) -> None:
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None

    def refuse(self, reason: str) -> None:
        if self.gone:
            return
        self.transport.write(b"error " + reason.encode("ascii", "replace") + b"\n")
        self.transport.loseConnection()
        self.forget()

    def forget(self) -> None:
        self.cancel_timer()
        self.listener.unpaired.discard(self)
        self.listener.leave(self)

    def connectionLost(self, reason: Failure = None) -> None:
        self.gone = True
        self.forget()
        partner, pair = self.partner, self.pair
        if partner is not None:
            self.partner = partner.partner = None
            self.pair = partner.pair = None
            if pair is not None:
                self.listener.pair_ended(pair)
            # The partner's transport flushes what is in flight, then closes.
            partner.cancel_timer()
            partner.transport.loseConnection()


class StapleListener(Factory):
    """Pairs identified connections per channel; the TCP side of the rendezvous."""

    protocol = StapleProtocol

    def __init__(self, config: RendezvousConfig, registry: ChannelRegistry,
                 clock: IReactorTime) -> None:
        self.config = config
        self.registry = registry
        self.clock = clock
        self.unpaired: set[StapleProtocol] = set()
        self.waiting: dict[str, dict[str, StapleProtocol]] = {}
        # Linked pairs: a SplicePair per pair on the splice path (the protocols and their
        # transports are gone), a CopyPair holding both StapleProtocols on the copy path.
        self.pairs: set[Pair] = set()
        # Live pairs per client key (a pair counts for each of its peers' keys).
        self.pairs_by_client: dict[str, int] = {}
        self.pipes = PipePool()
        # Unidentified and waiting connections together (each channel has two peers).
        self.max_unpaired = 2 * config.max_channels + 64
        self._sweep: IDelayedCall | None = None
        self._renewals: deque[Pair] = deque()
        self.bytes_relayed = 0  # by pairs that ended (live pairs keep their own `moved`)
        self._renewing = 0

    def buildProtocol(self, addr: Any) -> StapleProtocol:
        return StapleProtocol(self)

    async def arrive(self, conn: StapleProtocol, uuid: bytes) -> None:
        name, role = conn.channel_name, conn.role
        assert name is not None and role is not None
        address = canonical_host(conn.transport.getPeer().host)
        channel = await self.registry.staple_check(name, role, uuid, address)
        if conn.gone:
            return
        here = self.waiting.setdefault(name, {})
        if role in here:
            raise OutOfTurn("this role is already connected")
        here[role] = conn
        partner = here.get("recipient" if role == "sender" else "sender")
        if partner is None:
            # The partner must come within the channel's lifetime.
            conn.timer = self.clock.callLater(channel.ttl(self.clock.seconds()),
                                              conn.refuse, "the partner never came")
            return
        del self.waiting[name]
        partner.cancel_timer()
        keys = tuple({self.registry.client_key(address),
                      self.registry.client_key(partner.transport.getPeer().host)})
        if any(self.pairs_by_client.get(key, 0) >= self.config.max_pairs_per_client
               for key in keys):
            for peer in (conn, partner):
                peer.refuse("too many stapled pairs from this network")
            await self.registry.close(name)
            return
        # Counted from now on, so pairs stapling at the same moment cannot pass the cap.
        self._count(keys, +1)
        try:
            await self.registry.mark_stapled(name, PAIR_LEASE)
        except Exception:
            self._count(keys, -1)
            partner.refuse("the channel could not be stapled")
            raise
        if conn.gone or partner.gone:
            self._count(keys, -1)
            for peer in (conn, partner):
                peer.refuse("the partner went away")
            await self.registry.close(name)
            return
        for peer in (conn, partner):
            self.unpaired.discard(peer)
        log.info("stapled a pair")
        pair = link(conn, partner, self.clock, self.config.data_path, self,
                    track=self.config.idle_timeout > 0)
        if isinstance(pair, SplicePair) and pair.closed:
            self._count(keys, -1)
            return  # failed at once (out of descriptors); splice_ended has run
        pair.keys = keys
        self.pairs.add(pair)
        self._schedule_sweep()

    def _count(self, keys: tuple[str, ...], change: int) -> None:
        for key in keys:
            count = self.pairs_by_client.get(key, 0) + change
            if count:
                self.pairs_by_client[key] = count
            else:
                del self.pairs_by_client[key]

    def leave(self, conn: StapleProtocol) -> None:
        name = conn.channel_name
        if name is None:
            return
        here = self.waiting.get(name)
        if here is not None and here.get(conn.role or "") is conn:
            del here[conn.role]  # type: ignore[arg-type]
            if not here:
                del self.waiting[name]

    # -- pairs ending -------------------------------------------------------------------
    def pair_ended(self, pair: Pair) -> None:
        if pair not in self.pairs:
            return
        self.pairs.discard(pair)
        self.bytes_relayed += pair.moved
        self._count(pair.keys, -1)
        log.info("a stapled pair ended after {seconds:.1f}s",
                 seconds=self.clock.seconds() - pair.started)
        self._close_channel(pair.name)

    def splice_ended(self, pair: SplicePair) -> None:
        if pair in self.pairs:
            self.pair_ended(pair)
        else:
            self._close_channel(pair.name)  # it failed before it was counted

    def _close_channel(self, name: str) -> None:
        Deferred.fromCoroutine(self.registry.close(name)).addErrback(
            lambda f: log.warn("closing a finished channel failed: {e}", e=f.value))

    # -- the sweep: idle timeout, lifetime, leases --------------------------------------
    def sweep_interval(self) -> float:
        limits = [t / 4 for t in (self.config.idle_timeout, self.config.max_pair_lifetime)
                  if t > 0]
        return max(MIN_SWEEP_INTERVAL, min([MAX_SWEEP_INTERVAL, *limits]))

    def _schedule_sweep(self) -> None:
        if self._sweep is None and self.pairs:
            self._sweep = self.clock.callLater(self.sweep_interval(), self.sweep)

    def sweep(self) -> None:
        """Close pairs idle or old past their limits; queue lease renewals that are due."""
        self._sweep = None
        now = self.clock.seconds()
        idle, lifetime = self.config.idle_timeout, self.config.max_pair_lifetime
        for pair in list(self.pairs):
            if idle > 0 and now - pair.last >= idle:
                log.info("closing a stapled pair idle for {seconds:.0f}s",
                         seconds=now - pair.last)
                pair.close()
            elif lifetime > 0 and now - pair.started >= lifetime:
                log.info("closing a stapled pair at its maximum lifetime")
                pair.close()
            elif now - pair.renewed >= RENEW_AFTER:
                pair.renewed = now
                self._renewals.append(pair)
        while self._renewals and self._renewing < RENEW_CONCURRENCY:
            self._renewing += 1
            Deferred.fromCoroutine(self._renew()).addErrback(
                lambda f: log.failure("renewing a stapled channel failed", f))
        self._schedule_sweep()

    async def _renew(self) -> None:
        try:
            while self._renewals:
                pair = self._renewals.popleft()
                if pair not in self.pairs:
                    continue
                try:
                    await self.registry.renew_lease(pair.name, PAIR_LEASE)
                except ChannelError:
                    pass  # the channel is gone or closed: nothing to keep open
                except StoreError as e:
                    log.warn("renewing a stapled channel failed: {e}", e=e)
                    pair.renewed -= RENEW_AFTER  # due again at the next sweep
        finally:
            self._renewing -= 1

    def drop_all(self) -> None:
        """Shutdown: close every connection this listener holds."""
        if self._sweep is not None and self._sweep.active():
            self._sweep.cancel()
        self._sweep = None
        self._renewals.clear()
        for conn in list(self.unpaired):
            conn.cancel_timer()
            if conn.transport is not None:
                conn.transport.abortConnection()
        for pair in list(self.pairs):
            pair.close(abort=True)
        self.pipes.close()
