"""Nonce checks shared by /prove and /command: a time window and a replay cache.

A stale or replayed nonce is bad input, 400, as Zax answers it (not 401: clients take 401
for an expired session and handshake again, which would hide the error)."""

from __future__ import annotations

from twisted.internet.interfaces import IReactorTime

from relay.config import MailboxConfig
from relay.crypto import nonce_is_fresh
from relay.store import Store
from relay.web.errors import bad_request


class NonceGuard:
    def __init__(self, config: MailboxConfig, store: Store, clock: IReactorTime) -> None:
        self.config = config
        self.store = store
        self.clock = clock
        # A nonce is only accepted while its timestamp is within max_nonce_diff of now, so
        # remembering it for twice that (plus a second) catches every replay, while
        # nonce_timeout (Zax's 10 minutes) caps the cache's lifetime from above.
        self.remember_for = min(config.nonce_timeout, 2 * config.max_nonce_diff + 1)

    def check_time(self, nonce: bytes) -> None:
        if not nonce_is_fresh(nonce, self.clock.seconds(), self.config.max_nonce_diff):
            raise bad_request("nonce timestamp outside the accepted window")
