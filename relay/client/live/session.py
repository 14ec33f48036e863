"""Live transfers: the rendezvous (PAKE, staple) joined to the encrypted records and the
transfer protocol.

    start = await start_live_send(reactor, url)        # start.code: tell the recipient
    await run_live_send(reactor, start, entries, wait=300)
    # elsewhere
    result = await live_receive(reactor, url, code, root)

The sender waits at most `wait` seconds for the recipient, and never past the life of the
relay's channel (`expires_in` from /join): `NobodyCame` after that, so the caller can fall
back to a dead drop. Resuming is the transfer protocol's: the recipient keeps a partial file
and asks for the rest when the same offer comes again.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater

from relay.client import codes
from relay.client.errors import ChannelClosed, NobodyCame, PeerCancelled, RelayTimeout
from relay.client.interrupt import Interruption
from relay.client.live.pake import SENDER
from relay.client.live.protocol import (
    KIND_DATA,
    Progress,
    ReceiveResult,
    SourceEntry,
    tell_cancelled,
)
from relay.client.live.receive import receive_files
from relay.client.live.records import (
    DEFAULT_MAX_PAYLOAD,
    Allocator,
    Record,
    RecordStream,
    directions_for,
)
from relay.client.live.rendezvous import (
    ChannelAPI,
    Joined,
    SenderStart,
    Stapled,
    connect_recipient,
)
from relay.client.live.send import send_files
from relay.client.safe_paths import DEFAULT_LIMITS, Overwrite, ReceiveLimits

DEFAULT_WAIT = 300.0
# Long enough for a slow disk on the other side to catch up; a dead peer is found this late.
RECORD_TIMEOUT = 120.0
CLOSE_TIMEOUT = 10.0
# File bytes per record: the largest the receiver's default record cap allows. Fewer,
# bigger records cost less Python per byte.
CHUNK_SIZE = DEFAULT_MAX_PAYLOAD
# The sender stops waiting this long before the relay's channel expires, so that it gives up
# (and can fall back to a dead drop) before a recipient would find the channel gone.
EXPIRY_MARGIN = 5.0


def open_stream(stapled: Stapled, reactor: Any) -> RecordStream:
    send_dir, receive_dir = directions_for(stapled.role)
    stream = RecordStream(send_key=stapled.keys.send_key, send_direction=send_dir,
                          receive_key=stapled.keys.receive_key, receive_direction=receive_dir,
                          clock=reactor, read_timeout=RECORD_TIMEOUT,
                          write_timeout=RECORD_TIMEOUT)
    stapled.hand_off(stream)
    return stream


async def close_stream(stream: RecordStream, reactor: Any) -> None:
    stream.close()
    closed = stream.closed_d
    if not closed.called:
        waiter: Deferred[None] = Deferred()
        closed.addBoth(lambda _: waiter.called or waiter.callback(None))
        waiter.addTimeout(CLOSE_TIMEOUT, reactor)
        try:
            await waiter
        except Exception:  # noqa: BLE001 - the transfer already succeeded; just stop
            stream.transport.abortConnection()


class Throttled:
    """A record channel that sends at most `rate` payload bytes per second (--limit-rate)."""

    def __init__(self, inner: RecordStream, rate: float, reactor: Any) -> None:
        self.inner = inner
        self.rate = rate
        self.reactor = reactor
        self.started: float | None = None
        self.sent = 0

    async def send(self, kind: int, payload: bytes) -> None:
        if kind != KIND_DATA:
            # Only file bytes count, and the clock starts with the first of them: the time
            # the recipient took to accept is not credit to send faster afterwards.
            await self.inner.send(kind, payload)
            return
        now = self.reactor.seconds()
        if self.started is None:
            self.started = now
        self.sent += len(payload)
        ahead = self.started + self.sent / self.rate - now
        if ahead > 0:
            await deferLater(self.reactor, ahead)
        await self.inner.send(kind, payload)

    async def receive(self) -> Record | None:
        return await self.inner.receive()

    def open_into(self, allocate: Allocator | None) -> None:
        self.inner.open_into(allocate)

    async def finish(self) -> None:
        await self.inner.finish()


@attrs.frozen
class LiveStart:
    """A sender's joined channel: the code phrase to show, and until when the relay keeps
    the channel (reactor seconds)."""

    sender: SenderStart
    channel_expires_at: float

    @property
    def code(self) -> str:
        return self.sender.code

    @property
    def joined(self) -> Joined:
        return self.sender.joined

    def time_left(self, reactor: Any) -> float:
        """Seconds a recipient may still come (the channel's life, less a margin)."""
        return max(0.0, self.channel_expires_at - EXPIRY_MARGIN - reactor.seconds())

    async def connect(self, timeout: float) -> Stapled:
        return await self.sender.connect(timeout=timeout)


async def start_live_send(reactor: Any, relay_url: str,
                          bind_host: str | None = None) -> LiveStart:
    """Join a fresh channel as the sender (the one way to start a live send); the code
    phrase uses our word list (relay/client/codes.py)."""
    api = ChannelAPI(reactor, relay_url, bind_host)
    joined_at = reactor.seconds()
    joined = await api.join(SENDER)
    sender = SenderStart(api=api, joined=joined, code=codes.make_code(joined.channel))
    return LiveStart(sender, joined_at + joined.expires_in)


def effective_wait(reactor: Any, start: LiveStart, wait: float) -> float:
    """How long the sender will wait: `wait`, cut to what is left of the channel's life."""
    return min(wait, start.time_left(reactor))


def _telling(interruption: Interruption | None, hook: Callable[[], Any]) -> Any:
    return interruption.telling_peer(hook) if interruption is not None else nullcontext()


async def run_live_send(reactor: Any, start: LiveStart, entries: list[SourceEntry], *,
                        text: str | None = None, wait: float = DEFAULT_WAIT,
                        progress: Progress | None = None,
                        limit_rate: float | None = None,
                        on_connected: Callable[[], None] | None = None,
                        interruption: Interruption | None = None) -> None:
    """Wait for the recipient (see effective_wait), then send. NobodyCame when nobody did,
    PeerCancelled when the recipient left first. An interruption closes the channel (while
    waiting) or tells the recipient (once connected)."""
    wait = effective_wait(reactor, start, wait)
    if wait <= 0:
        raise NobodyCame("the relay's channel expired before anyone came")
    deadline = reactor.seconds() + wait
    try:
        with _telling(interruption, lambda: start.sender.api.close(start.joined)):
            stapled = await start.connect(timeout=wait)
    except RelayTimeout:
        if reactor.seconds() >= deadline - 1:
            raise NobodyCame(f"nobody received it within {wait:g} s") from None
        raise
    except ChannelClosed:
        raise PeerCancelled("the receiver cancelled before the transfer began") from None
    if on_connected is not None:
        on_connected()
    stream = open_stream(stapled, reactor)
    channel: Any = stream if not limit_rate else Throttled(stream, limit_rate, reactor)
    try:
        with _telling(interruption, lambda: tell_cancelled(stream, "sender")):
            await send_files(channel, entries, text=text, progress=progress,
                             chunk_size=CHUNK_SIZE, reactor=reactor)
    finally:
        await close_stream(stream, reactor)


async def live_receive(reactor: Any, relay_url: str, code: str, root: Path, *,
                       limits: ReceiveLimits = DEFAULT_LIMITS,
                       overwrite: Overwrite = Overwrite.NEVER,
                       ask: Callable[[str], bool] | None = None,
                       confirm_offer: Any = None, progress: Progress | None = None,
                       timeout: float = DEFAULT_WAIT, stdout: Any = None,
                       interruption: Interruption | None = None) -> ReceiveResult:
    """Receive into root, or with stdout (a binary writer) the offer's one file into it as
    it arrives (see receive_files). An interruption closes the channel (during the key
    exchange) or tells the sender (once connected)."""
    stapled = await connect_recipient(reactor, relay_url, codes.check_code(code),
                                      timeout=timeout, interruption=interruption)
    stream = open_stream(stapled, reactor)
    try:
        with _telling(interruption, lambda: tell_cancelled(stream, "receiver")):
            return await receive_files(stream, root, limits=limits, overwrite=overwrite,
                                       ask=ask, confirm_offer=confirm_offer,
                                       progress=progress, reactor=reactor, stdout=stdout)
    finally:
        await close_stream(stream, reactor)
