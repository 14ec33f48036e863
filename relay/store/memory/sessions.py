"""Handshakes, sessions and the nonce replay cache, in process memory."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from relay.store.errors import StoreFull
from relay.store.interfaces.mailbox import (
    CountOp,
    DeleteOp,
    MailboxOp,
    MessageTTLOp,
    ReadOp,
    StoreMessageOp,
)
from relay.store.interfaces.sessions import Claim, Handshake, Session
from relay.store.memory.expiring import ExpiringMap
from relay.store.memory.mailbox import MemoryMailboxStore

# Default cap on handshakes in progress (StoreConfig.memory_max_handshakes).
MAX_HANDSHAKES = 200_000


class MemorySessionStore:
    def __init__(self, seconds: Callable[[], float], max_handshakes: int = MAX_HANDSHAKES,
                 mailbox: MemoryMailboxStore | None = None) -> None:
        # The mailbox table the combined calls (run_command_claiming_nonce, ...) run ops on.
        self.mailbox = mailbox
        self.max_handshakes = max_handshakes
        self.handshakes: ExpiringMap[bytes, Handshake] = ExpiringMap(seconds)
        self.sessions: ExpiringMap[bytes, Session] = ExpiringMap(seconds)
        self.nonces: ExpiringMap[tuple[bytes, bytes], bool] = ExpiringMap(seconds)

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

    async def replace_handshake(self, key: bytes, expected: Handshake, handshake: Handshake,
                                ttl: float) -> bool:
        if self.handshakes.get(key) != expected:
            return False
        self.handshakes.put(key, handshake, ttl)
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
        return session, self.nonces.add_if_absent((hpk, nonce), True, nonce_ttl)

    async def claim_nonce(self, hpk: bytes, nonce: bytes, ttl: float) -> bool:
        return self.nonces.add_if_absent((hpk, nonce), True, ttl)

    async def run_command_claiming_nonce(self, hpk: bytes, session: Session, nonce: bytes,
                                         nonce_ttl: float, op: MailboxOp | None
                                         ) -> tuple[Claim, Any]:
        if self.sessions.get(hpk) != session:
            return Claim.NO_SESSION, None
        if not self.nonces.add_if_absent((hpk, nonce), True, nonce_ttl):
            return Claim.REPLAYED, None
        return Claim.DONE, await self._run(op)

    async def _run(self, op: MailboxOp | None) -> Any:
        mailbox = self.mailbox
        if op is None:
            return None
        assert mailbox is not None, "a mailbox op needs the mailbox table"
        match op:
            case CountOp(hpk):
                return await mailbox.count(hpk)
            case ReadOp(hpk, start, count):
                return await mailbox.read(hpk, start, count)
            case DeleteOp(hpk, msg_ids):
                return await mailbox.delete(hpk, msg_ids)
            case StoreMessageOp():
                return await mailbox.store_message(
                    op.hpk, op.msg_id, op.record, op.token, op.ttl, op.quota,
                    sender=op.sender, client=op.client)
            case MessageTTLOp(token):
                return await mailbox.message_ttl(token)
        raise TypeError(f"not a mailbox op: {op!r}")

    async def finish_handshake_claiming_nonces(self, key: bytes, hpk: bytes, session: Session,
                                               ttl: float, nonces: list[bytes],
                                               nonce_ttl: float,
                                               expected: Handshake | None = None
                                               ) -> tuple[Claim, int]:
        if expected is not None and self.handshakes.get(key) != expected:
            return Claim.GONE, 0
        if any(self.nonces.get((hpk, nonce)) for nonce in nonces):
            return Claim.REPLAYED, 0  # nothing claimed
        for nonce in nonces:
            self.nonces.add_if_absent((hpk, nonce), True, nonce_ttl)
        if not await self.finish_handshake(key, hpk, session, ttl):
            return Claim.GONE, 0
        return Claim.DONE, await self._run(CountOp(hpk))

    def sweep(self) -> None:
        for table in (self.handshakes, self.sessions, self.nonces):
            table.sweep()
