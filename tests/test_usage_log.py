"""The usage log: one line of figures at intervals, no key or address in it."""

from __future__ import annotations

import pytest_twisted
from twisted.logger import capturedLogs

from relay.usage import UsageLog
from tests.mailbox_harness import MemoryRelay


@pytest_twisted.ensureDeferred
async def test_the_relay_logs_its_usage_without_secrets():
    relay = MemoryRelay(store={"usage_log_interval": 60.0})
    with capturedLogs() as events:
        await relay.app.usage.log_once()
    lines = [e for e in events if e.get("log_namespace") == "relay.usage"]
    assert len(lines) == 1
    figures = lines[0]["figures"]
    for key in ("store.kind=memory", "store.used_bytes=", "pow.difficulty=0", "files.bytes=0",
                "files.reserved=0", "rendezvous.waits=0", "rendezvous.pairs=0"):
        assert key in figures, figures


@pytest_twisted.ensureDeferred
async def test_a_failing_source_does_not_hide_the_others():
    usage = UsageLog()

    def broken() -> dict:
        raise ConnectionError("redis gone")

    async def fine() -> dict:
        return {"count": 3}

    usage.add("broken", broken)
    usage.add("fine", fine)
    assert await usage.snapshot() == {"broken": "unavailable (ConnectionError)",
                                      "fine.count": 3}


def test_the_usage_service_runs_at_its_interval():
    relay = MemoryRelay(store={"usage_log_interval": 60.0})
    timers = [s for s in relay.app.services if getattr(s, "call", (None,))[0]
              == relay.app.usage.log_once]
    assert len(timers) == 1
    with capturedLogs() as events:
        timers[0].startService()
        relay.clock.advance(60.0)
        relay.clock.advance(60.0)
        timers[0].stopService()
    assert len([e for e in events if e.get("log_namespace") == "relay.usage"]) == 3


def test_no_usage_service_at_interval_zero():
    relay = MemoryRelay(store={"usage_log_interval": 0})
    assert not [s for s in relay.app.services if getattr(s, "call", (None,))[0]
                == relay.app.usage.log_once]
