"""Handshake and session state, and the nonce replay cache."""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Any, Protocol

import attrs

if TYPE_CHECKING:
    from relay.store.interfaces.mailbox import MailboxOp


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


class Claim(enum.Enum):
    """How a combined session check and nonce claim went."""

    DONE = "done"  # the session matched, the nonce was fresh (now claimed), the op ran
    NO_SESSION = "no session"  # hpk has no session, or another one: nothing was done
    REPLAYED = "replayed"  # the nonce was seen before: the op did not run
    GONE = "gone"  # finish_handshake_claiming_nonces: the handshake was already used


class SessionStore(Protocol):
    async def put_handshake(self, key: bytes, handshake: Handshake, ttl: float) -> None:
        """Store (or replace) the handshake under key for ttl seconds."""

    async def get_handshake(self, key: bytes) -> Handshake | None: ...

    async def finish_handshake(self, key: bytes, hpk: bytes, session: Session,
                               ttl: float) -> bool:
        """Atomically delete the handshake under key and store session under hpk for ttl
        (replacing any earlier session of hpk). False, storing nothing, if the handshake was
        already gone: two concurrent /prove calls cannot both succeed."""

    async def replace_handshake(self, key: bytes, expected: Handshake, handshake: Handshake,
                                ttl: float) -> bool:
        """Store handshake under key for ttl if `expected` is what is stored there now (one
        round trip: /verify_session with the handshake its node remembers); else False,
        changing nothing."""

    async def put_session(self, hpk: bytes, session: Session, ttl: float) -> None:
        """Store the session, replacing any earlier session of hpk."""

    async def get_session(self, hpk: bytes) -> Session | None: ...

    async def get_session_claiming_nonce(self, hpk: bytes, nonce: bytes,
                                         nonce_ttl: float) -> tuple[Session | None, bool]:
        """hpk's session, and whether nonce was fresh (it is claimed now, as claim_nonce
        does, but only when there is a session). One round trip: /command's hot path."""

    async def claim_nonce(self, hpk: bytes, nonce: bytes, ttl: float) -> bool:
        """True if nonce was not seen within ttl in a box of hpk's (and remember it); False
        for a replay. Nonces are remembered per identity: a box opens only with keys of the
        identity it was made for (its session's or its own), so it can be replayed only to
        that identity, and its nonces live with the identity's other keys (one Redis
        Cluster slot)."""

    async def run_command_claiming_nonce(self, hpk: bytes, session: Session, nonce: bytes,
                                         nonce_ttl: float, op: MailboxOp | None
                                         ) -> tuple[Claim, Any]:
        """/command's store work in one round trip: if hpk's session is `session` (the one the
        command box opened with), claim nonce (as claim_nonce does) and, if it was fresh, run
        op (a relay.store.interfaces.mailbox op, or None for none) and return (DONE, what the
        op returns). (NO_SESSION, None) if hpk has no session or another one (nothing done);
        (REPLAYED, None) if the nonce was seen (the op not run). The op raises what its
        MailboxStore method raises; then the nonce may or may not stay claimed."""

    async def finish_handshake_claiming_nonces(self, key: bytes, hpk: bytes, session: Session,
                                               ttl: float, nonces: list[bytes],
                                               nonce_ttl: float,
                                               expected: Handshake | None = None
                                               ) -> tuple[Claim, int]:
        """/prove's store work: claim every nonce (hpk's); if all were fresh,
        finish_handshake(key, hpk, session, ttl) and return (DONE, messages in hpk's
        mailbox). (REPLAYED, 0) if a nonce was seen (the handshake is kept, no nonce claimed);
        (GONE, 0) if the
        handshake was already used, or, with `expected`, is not that one (then nothing is
        done, no nonce claimed)."""
