"""What the relay holds and how loaded it is, logged at intervals for operators.

One line every `[store] usage_log_interval` seconds: store bytes against their limit, file
bytes and open reservations, the proof-of-work difficulty and handshake rate, long-polls and
stapled pairs, open HTTP connections. Counts and sizes only: no key, token or address. Each
part of the relay adds a source (a function returning a dict, or a coroutine function); a
source that fails is reported as such and the others still are.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from twisted.application.internet import TimerService
from twisted.internet.defer import Deferred
from twisted.logger import Logger

log = Logger(namespace="relay.usage")

Source = Callable[[], Any]


class UsageLog:
    def __init__(self) -> None:
        self.sources: list[tuple[str, Source]] = []

    def add(self, name: str, source: Source) -> None:
        self.sources.append((name, source))

    async def snapshot(self) -> dict[str, Any]:
        """Every source's figures, flattened to "source.figure" keys."""
        figures: dict[str, Any] = {}
        for name, source in self.sources:
            try:
                value = source()
                if inspect.isawaitable(value):
                    value = await value
            except Exception as e:  # noqa: BLE001 - one failing source must not hide the rest
                figures[name] = f"unavailable ({e.__class__.__name__})"
                continue
            if isinstance(value, dict):
                figures.update({f"{name}.{key}": v for key, v in value.items()})
            else:
                figures[name] = value
        return figures

    def log_once(self) -> Deferred:
        async def run() -> None:
            figures = await self.snapshot()
            text = " ".join(f"{key}={_show(value)}" for key, value in figures.items())
            log.info("usage: {figures}", figures=text)

        return Deferred.fromCoroutine(run())

    def make_service(self, interval: float, clock: Any) -> TimerService:
        service = TimerService(interval, self.log_once)
        service.clock = clock
        return service


def _show(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)
