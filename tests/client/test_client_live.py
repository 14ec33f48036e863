"""The sender's wait follows the relay channel's life (expires_in from /join)."""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from relay.client.errors import RelayTimeout
from relay.client.live.protocol import KIND_DATA, KIND_JSON
from relay.client.live.session import (
    EXPIRY_MARGIN,
    LiveStart,
    NobodyCame,
    Throttled,
    effective_wait,
    run_live_send,
)


class FakeSender:
    """A SenderStart stand-in: records the timeout it was given, then times out."""

    code = "abc-def"

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.timeouts: list[float] = []

    async def connect(self, timeout: float):
        self.timeouts.append(timeout)
        self.clock.advance(timeout)
        raise RelayTimeout("the peer did not answer in time")


def start_at(clock: Clock, expires_in: float) -> tuple[LiveStart, FakeSender]:
    sender = FakeSender(clock)
    return LiveStart(sender, clock.seconds() + expires_in), sender  # type: ignore[arg-type]


def test_the_wait_is_cut_to_the_channel_life():
    clock = Clock()
    start, _ = start_at(clock, 300)
    assert effective_wait(clock, start, 600) == 300 - EXPIRY_MARGIN
    assert effective_wait(clock, start, 60) == 60
    clock.advance(290)
    assert effective_wait(clock, start, 600) == 10 - EXPIRY_MARGIN
    clock.advance(100)
    assert effective_wait(clock, start, 600) == 0
    assert start.code == "abc-def"


@pytest_twisted.ensureDeferred
async def test_the_sender_never_waits_past_the_channel():
    clock = Clock()
    start, sender = start_at(clock, 300)
    with pytest.raises(NobodyCame, match=f"within {300 - EXPIRY_MARGIN:g} s"):
        await run_live_send(clock, start, [], wait=600)
    assert sender.timeouts == [300 - EXPIRY_MARGIN]


@pytest_twisted.ensureDeferred
async def test_an_expired_channel_is_nobody_came_at_once():
    clock = Clock()
    start, sender = start_at(clock, 300)
    clock.advance(400)
    with pytest.raises(NobodyCame, match="expired"):
        await run_live_send(clock, start, [], wait=600)
    assert sender.timeouts == []


class Recording:
    def __init__(self) -> None:
        self.sent: list[tuple[int, int]] = []

    async def send(self, kind: int, payload: bytes) -> None:
        self.sent.append((kind, len(payload)))


def test_limit_rate_counts_from_the_first_file_byte_not_from_the_offer():
    """A slow accept (100 s here) is no credit: the data still goes at the rate."""
    clock = Clock()
    inner = Recording()
    throttled = Throttled(inner, 100.0, clock)  # 100 bytes/s
    Deferred.fromCoroutine(throttled.send(KIND_JSON, b"{}"))  # the offer
    clock.advance(100)  # the receiver thinks it over
    first = Deferred.fromCoroutine(throttled.send(KIND_DATA, b"x" * 1000))
    second = Deferred.fromCoroutine(throttled.send(KIND_DATA, b"x" * 1000))
    assert not first.called  # 1000 bytes at 100 B/s: 10 s, counted from now
    clock.advance(10.5)
    assert first.called and not second.called
    clock.advance(10)
    assert second.called and len(inner.sent) == 3
