"""Proof of work for /verify_session, off the reactor thread and cancellable.

Zax raises the difficulty when it is busy; at 20+ bits a search takes seconds, which must not
freeze the reactor. The search runs in the reactor's thread pool and checks a stop flag
between batches, so a timeout (Deferred cancellation) really stops it.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.threads import deferToThreadPool

from relay.crypto import h2, meets_difficulty

_BATCH = 4096


def search_pow(client_token: bytes, relay_token: bytes, difficulty: int,
               stop: threading.Event) -> bytes:
    """A 32-byte nonce n with h2(client_token || relay_token || n) meeting the difficulty."""
    prefix = client_token + relay_token
    while not stop.is_set():
        for _ in range(_BATCH):
            candidate = os.urandom(32)
            if meets_difficulty(h2(prefix + candidate), difficulty):
                return candidate
    raise CancelledError("proof of work stopped")


def solve_pow_in_thread(reactor: Any, client_token: bytes, relay_token: bytes,
                        difficulty: int) -> Deferred[bytes]:
    """Run search_pow in the reactor's thread pool; cancelling the Deferred stops the search."""
    stop = threading.Event()
    result: Deferred[bytes] = Deferred(lambda _d: stop.set())
    work = deferToThreadPool(reactor, reactor.getThreadPool(), search_pow,
                             client_token, relay_token, difficulty, stop)

    def deliver(outcome: Any) -> None:
        if not result.called:  # not after a cancellation
            result.callback(outcome)

    def fail(failure: Any) -> None:
        if not result.called:
            result.errback(failure)

    work.addCallbacks(deliver, fail)
    return result
