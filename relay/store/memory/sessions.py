"""Handshakes, sessions and the nonce replay cache, in process memory."""

from __future__ import annotations

from collections.abc import Callable

from relay.store.errors import StoreFull
from relay.store.interfaces.sessions import Handshake, Session
from relay.store.memory.expiring import ExpiringMap

# Default cap on handshakes in progress (StoreConfig.memory_max_handshakes).
MAX_HANDSHAKES = 200_000


class MemorySessionStore:
    def __init__(self, seconds: Callable[[], float], max_handshakes: int = MAX_HANDSHAKES
                 ) -> None:
        self.max_handshakes = max_handshakes
        self.handshakes: ExpiringMap[bytes, Handshake] = ExpiringMap(seconds)
        self.sessions: ExpiringMap[bytes, Session] = ExpiringMap(seconds)
        self.nonces: ExpiringMap[bytes, bool] = ExpiringMap(seconds)

    async def put_handshake(self, key: bytes, handshake: Handshake, ttl: float) -> None:
        if len(self.handshakes) >= self.max_handshakes and self.handshakes.get(key) is None:
            self.handshakes.sweep()  # expired entries count until swept
            if len(self.handshakes) >= self.max_handshakes:
                raise StoreFull("too many handshakes in progress")
        self.handshakes.put(key, handshake, ttl)

    async def get_handshake(self, key: bytes) -> Handshake | None:
        return self.handshakes.get(key)

    async def finish_handshake(self, key: bytes, hpk: bytes, session: Session,
                               ttl: float) -> bool:
        if self.handshakes.pop(key) is None:
            return False
        self.sessions.put(hpk, session, ttl)
        return True

    async def put_session(self, hpk: bytes, session: Session, ttl: float) -> None:
        self.sessions.put(hpk, session, ttl)

    async def get_session(self, hpk: bytes) -> Session | None:
        return self.sessions.get(hpk)

    async def get_session_claiming_nonce(self, hpk: bytes, nonce: bytes,
                                         nonce_ttl: float) -> tuple[Session | None, bool]:
        session = self.sessions.get(hpk)
        if session is None:
            return None, False
        return session, self.nonces.add_if_absent(nonce, True, nonce_ttl)

    async def claim_nonce(self, nonce: bytes, ttl: float) -> bool:
        return self.nonces.add_if_absent(nonce, True, ttl)

    def sweep(self) -> None:
        for table in (self.handshakes, self.sessions, self.nonces):
            table.sweep()
