"""What to do when the user interrupts (Ctrl-C): tell the peer, then stop.

The command registers a hook for each stage that has someone to tell (a sender waiting on
the relay's channel closes it; a live transfer sends the peer a `cancel` record); `fire()`
runs the hooks that are registered right then, each bounded by HOOK_TIMEOUT, and
`settled` fires when they are done (or given up), so the process can exit 130.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from twisted.internet.defer import Deferred, DeferredList, maybeDeferred

# How long telling the peer may take before `relay` exits anyway.
HOOK_TIMEOUT = 3.0

Hook = Callable[[], Any]  # returns None, a Deferred or a coroutine


class Interruption:
    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self.fired = False
        self.settled: Deferred[None] = Deferred()
        self._hooks: list[Hook] = []

    @contextmanager
    def telling_peer(self, hook: Hook) -> Iterator[None]:
        """While inside, an interruption runs hook (to tell the peer that we are leaving)."""
        self._hooks.append(hook)
        try:
            yield
        finally:
            if hook in self._hooks:
                self._hooks.remove(hook)

    def fire(self) -> Deferred[None]:
        """Run the registered hooks once (later calls return the same `settled`)."""
        if self.fired:
            return self.settled
        self.fired = True
        hooks, self._hooks = self._hooks, []
        calls = []
        for hook in hooks:
            call = maybeDeferred(_run, hook)
            call.addTimeout(HOOK_TIMEOUT, self.reactor)
            calls.append(call)
        done = DeferredList(calls, consumeErrors=True)
        done.addBoth(lambda _: self.settled.callback(None))
        return self.settled


def _run(hook: Hook) -> Any:
    result = hook()
    if hasattr(result, "__await__") and not isinstance(result, Deferred):
        return Deferred.fromCoroutine(result)
    return result
