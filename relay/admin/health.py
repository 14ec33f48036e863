"""Readiness: the store answers (a cheap ping, cached briefly) and the listeners are bound.

A load balancer or orchestrator polls /readyz every second or so, maybe from several
places: the store is pinged at most once per CACHE_FOR seconds however often it is asked,
and a ping that takes longer than PING_TIMEOUT counts as no answer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred

from relay.store import Store

CACHE_FOR = 1.0
PING_TIMEOUT = 1.0


async def ping_store(store: Store) -> None:
    """Returns if the store answers; raises otherwise. The memory store always answers."""
    backend = getattr(store.service, "backend", None)
    if store.kind == "redis" and backend is not None:
        await backend.run(lambda redis: redis.execute_command("PING"))


class Readiness:
    """`check()` -> (ready, one line saying why not)."""

    def __init__(self, store: Store, listeners: Callable[[], list[Any]], clock: Any) -> None:
        self.store = store
        self.listeners = listeners  # ListeningServices that must be bound
        self.clock = clock
        self._store_answered: tuple[float, str | None] | None = None
        self._waiting: list[Deferred] = []

    async def check(self) -> tuple[bool, str]:
        for listener in self.listeners():
            if listener.port is None:
                return False, f"not listening for {listener.what}"
        problem = await self._store_problem()
        if problem is not None:
            return False, problem
        return True, "ready"

    async def _store_problem(self) -> str | None:
        now = self.clock.seconds()
        if self._store_answered is not None and now - self._store_answered[0] < CACHE_FOR:
            return self._store_answered[1]
        waiter: Deferred = Deferred()
        self._waiting.append(waiter)
        if len(self._waiting) == 1:  # concurrent checks share one ping
            Deferred.fromCoroutine(self._ping())
        return await waiter

    async def _ping(self) -> None:
        ping = Deferred.fromCoroutine(ping_store(self.store))
        ping.addTimeout(PING_TIMEOUT, self.clock)
        try:
            await ping
            problem = None
        except Exception as e:  # noqa: BLE001 - any failure means "not ready"
            problem = f"the store does not answer ({type(e).__name__})"
        self._store_answered = (self.clock.seconds(), problem)
        waiting, self._waiting = self._waiting, []
        for waiter in waiting:
            waiter.callback(problem)
