"""/command's store work in one round trip: the session check, the nonce claim and the
command's first mailbox call go to the store together (SessionStore.run_command_claiming_nonce).

That needs the session before the store is asked (the command is inside the session's box),
so each node remembers the sessions it has seen (`SessionsSeen`): a command whose box opens
with the remembered session runs on the fast path, and the store confirms in the same call
that it is still hpk's session. Anything else (not remembered, replaced by a newer /prove on
another node, expired) takes the old path: fetch the session and claim the nonce, then the
command, two round trips.
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar

from relay.store import Store
from relay.store.interfaces.mailbox import (
    CountOp,
    DeleteOp,
    MailboxOp,
    MessageTTLOp,
    ReadOp,
    StoreMessageOp,
)
from relay.store.interfaces.sessions import Claim, Session
from relay.store.quota import MessageQuota
from relay.web.errors import bad_request

# Sessions a node remembers; a forgotten one costs its next command one more round trip.
SESSIONS_SEEN = 16_384


V = TypeVar("V")


class Seen(Generic[V]):
    """What this node last saw under a key: a hint (the store has the last word), bounded
    (the oldest is dropped). hpk -> Session for /command, handshake key -> Handshake for
    /verify_session and /prove."""

    def __init__(self, size: int = SESSIONS_SEEN) -> None:
        self.size = size
        self._seen: dict[bytes, V] = {}

    def get(self, key: bytes) -> V | None:
        return self._seen.get(key)

    def remember(self, key: bytes, value: V) -> None:
        seen = self._seen
        seen.pop(key, None)
        if len(seen) >= self.size:
            del seen[next(iter(seen))]  # the oldest remembered
        seen[key] = value

    def forget(self, key: bytes) -> None:
        self._seen.pop(key, None)


SessionsSeen = Seen[Session]


class SessionChanged(Exception):
    """The store has no session for hpk, or another one than the command opened with."""


class ClaimingMailbox:
    """The MailboxStore methods a command handler calls (as `ctx.mailbox`); the first call
    also checks the session and claims the nonce, in the same store call. `settle()` claims
    the nonce if the handler made no call. Raises SessionChanged (the caller retries on the
    old path) or 400 for a replayed nonce, before the call has any effect."""

    def __init__(self, store: Store, hpk: bytes, session: Session, nonce: bytes,
                 nonce_ttl: float) -> None:
        self._store = store
        self._claim: tuple[bytes, Session, bytes, float] | None = (hpk, session, nonce,
                                                                   nonce_ttl)

    async def _run(self, op: MailboxOp | None) -> Any:
        claim = self._claim
        if claim is None:
            raise RuntimeError("the nonce is claimed: call the store")
        self._claim = None
        hpk, session, nonce, nonce_ttl = claim
        outcome, result = await self._store.sessions.run_command_claiming_nonce(
            hpk, session, nonce, nonce_ttl, op)
        if outcome is Claim.NO_SESSION:
            raise SessionChanged()
        if outcome is not Claim.DONE:
            raise bad_request("nonce replayed")  # 400 as in Zax
        return result

    async def settle(self) -> None:
        if self._claim is not None:
            await self._run(None)

    async def store_message(self, hpk: bytes, msg_id: bytes, record: bytes,
                            token: bytes, ttl: float, quota: MessageQuota | int,
                            sender: bytes = b"", client: str = "") -> None:
        if self._claim is None:
            return await self._store.mailbox.store_message(
                hpk, msg_id, record, token, ttl, quota, sender=sender, client=client)
        return await self._run(StoreMessageOp(hpk, msg_id, record, token, ttl, quota,
                                              sender, client))

    async def count(self, hpk: bytes) -> int:
        if self._claim is None:
            return await self._store.mailbox.count(hpk)
        return await self._run(CountOp(hpk))

    async def read(self, hpk: bytes, start: int, count: int) -> list[bytes]:
        if self._claim is None:
            return await self._store.mailbox.read(hpk, start, count)
        return await self._run(ReadOp(hpk, start, count))

    async def delete(self, hpk: bytes, msg_ids: list[bytes]) -> int:
        if self._claim is None:
            return await self._store.mailbox.delete(hpk, msg_ids)
        return await self._run(DeleteOp(hpk, msg_ids))

    async def message_ttl(self, token: bytes) -> int:
        if self._claim is None:
            return await self._store.mailbox.message_ttl(token)
        return await self._run(MessageTTLOp(token))
