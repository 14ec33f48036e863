"""Handshake and session state, and the nonce replay cache."""

from __future__ import annotations

from typing import Protocol

import attrs


@attrs.frozen
class Handshake:
    """One client's handshake, stored under h2(client_token)."""

    client_token: bytes
    relay_token: bytes
    # The relay's session secret key, set by /verify_session.
    session_sk: bytes | None = None
    # The proof-of-work difficulty /start_session announced (it moves with load, and another
    # node may verify). None: a record from before it was kept; the configured floor applies.
    difficulty: int | None = None


@attrs.frozen
class Session:
    """A proven session, stored under the identity's hpk."""

    relay_sk: bytes
    client_pk: bytes


class SessionStore(Protocol):
    async def put_handshake(self, key: bytes, handshake: Handshake, ttl: float) -> None:
        """Store (or replace) the handshake under key for ttl seconds."""

    async def get_handshake(self, key: bytes) -> Handshake | None: ...

    async def finish_handshake(self, key: bytes, hpk: bytes, session: Session,
                               ttl: float) -> bool:
        """Atomically delete the handshake under key and store session under hpk for ttl
        (replacing any earlier session of hpk). False, storing nothing, if the handshake was
        already gone: two concurrent /prove calls cannot both succeed."""

    async def put_session(self, hpk: bytes, session: Session, ttl: float) -> None:
        """Store the session, replacing any earlier session of hpk."""

    async def get_session(self, hpk: bytes) -> Session | None: ...

    async def get_session_claiming_nonce(self, hpk: bytes, nonce: bytes,
                                         nonce_ttl: float) -> tuple[Session | None, bool]:
        """hpk's session, and whether nonce was fresh (it is claimed now, as claim_nonce
        does, but only when there is a session). One round trip: /command's hot path."""

    async def claim_nonce(self, nonce: bytes, ttl: float) -> bool:
        """True if nonce was not seen within ttl (and remember it); False for a replay."""
