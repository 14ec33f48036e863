"""The staple listener: peers identify themselves in one line, the relay pairs the two
connections of a channel and from then on only moves bytes between them.

Identification: `staple <channel> <role> <uuid in base64>\\n`, at most MAX_LINE bytes, within
config.ident_timeout seconds. The relay answers `ok\\n` to both once both are present and
checked, or `error <reason>\\n` and closes. A connection whose partner does not come before
the channel expires is closed.
"""

from __future__ import annotations

import binascii
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from relay.config import RendezvousConfig
from relay.rendezvous.channel import ROLES, UUID_LEN, ChannelError, valid_name
from relay.rendezvous.pipe import link
from relay.rendezvous.registry import ChannelRegistry
from relay.rendezvous.splice import PipePool, SplicePair
from relay.store.errors import StoreError

log = Logger(namespace="relay.staple")

MAX_LINE = 160
# Bytes a peer may send after its line but before the relay's "ok" (a correct client sends
# none); they are forwarded once linked. Reading continues so a hang-up is noticed.
MAX_EARLY_DATA = 64 * 1024
PREFIX = "staple"


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
        partner = self.partner
        if partner is not None:
            self.listener.pair_ended(self, partner)
            self.partner = None
            partner.partner = None
            # The partner's transport flushes what is in flight, then closes.
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
        # transports are gone), both StapleProtocols on the copy path.
        self.pairs: set[StapleProtocol | SplicePair] = set()
        self.pipes = PipePool()
        # Unidentified and waiting connections together (each channel has two peers).
        self.max_unpaired = 2 * config.max_channels + 64

    def buildProtocol(self, addr: Any) -> StapleProtocol:
        return StapleProtocol(self)

    async def arrive(self, conn: StapleProtocol, uuid: bytes) -> None:
        name, role = conn.channel_name, conn.role
        assert name is not None and role is not None
        address = conn.transport.getPeer().host
        channel = await self.registry.staple_check(name, role, uuid, address)
        if conn.gone:
            return
        here = self.waiting.setdefault(name, {})
        if role in here:
            raise ChannelError(409, "this role is already connected")
        here[role] = conn
        partner = here.get("recipient" if role == "sender" else "sender")
        if partner is None:
            # The partner must come within the channel's lifetime.
            conn.timer = self.clock.callLater(channel.ttl(self.clock.seconds()),
                                              conn.refuse, "the partner never came")
            return
        del self.waiting[name]
        partner.cancel_timer()
        try:
            await self.registry.mark_stapled(name)
        except Exception:
            partner.refuse("the channel could not be stapled")
            raise
        if conn.gone or partner.gone:
            for peer in (conn, partner):
                peer.refuse("the partner went away")
            await self.registry.close(name)
            return
        for peer in (conn, partner):
            self.unpaired.discard(peer)
        log.info("stapled a pair")
        spliced = link(conn, partner, self.config.idle_timeout, self.clock,
                       self.config.data_path, self)
        if spliced is None:
            self.pairs.update((conn, partner))
        elif not spliced.closed:
            self.pairs.add(spliced)

    def leave(self, conn: StapleProtocol) -> None:
        name = conn.channel_name
        if name is None:
            return
        here = self.waiting.get(name)
        if here is not None and here.get(conn.role or "") is conn:
            del here[conn.role]  # type: ignore[arg-type]
            if not here:
                del self.waiting[name]

    def pair_ended(self, conn: StapleProtocol, partner: StapleProtocol) -> None:
        self.pairs.discard(conn)
        self.pairs.discard(partner)
        log.info("a stapled pair ended")
        if conn.channel_name is not None:
            self._close_channel(conn.channel_name)

    def splice_ended(self, pair: SplicePair) -> None:
        self.pairs.discard(pair)
        log.info("a stapled pair ended after {seconds:.1f}s",
                 seconds=self.clock.seconds() - pair.started)
        self._close_channel(pair.name)

    def _close_channel(self, name: str) -> None:
        Deferred.fromCoroutine(self.registry.close(name)).addErrback(
            lambda f: log.warn("closing a finished channel failed: {e}", e=f.value))

    def drop_all(self) -> None:
        """Shutdown: close every connection this listener holds."""
        for item in list(self.unpaired) + list(self.pairs):
            if isinstance(item, SplicePair):
                item.close(abort=True)
                continue
            item.cancel_timer()
            if item.transport is not None:
                item.transport.abortConnection()
        self.pipes.close()
