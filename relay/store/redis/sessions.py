"""Handshakes, sessions and the nonce replay cache in Redis: one key each, all with a TTL.

A handshake is a key of its own (by token hash: the identity is not known yet); the session
and the nonces of an identity's boxes live in its slot (relay.store.redis.keys), so /command
checks the session, claims the nonce and runs its mailbox op in one script. /prove takes the
handshake, then claims the nonces, stores the session and counts the mailbox in the
identity's slot (two round trips)."""

from __future__ import annotations

import math
from typing import Any

from relay.store.errors import StoreUnavailable
from relay.store.interfaces.mailbox import MailboxOp
from relay.store.interfaces.sessions import Claim, Handshake, Session
from relay.store.redis import RedisBackend
from relay.store.redis.codec import (
    CorruptRecord,
    decode_handshake,
    decode_session,
    encode_handshake,
    encode_session,
)
from relay.store.redis.keys import KeyNames

# Take a handshake (the one expected, if ARGV[1] is not empty): {1, record, ms it had left}
# and it is gone, or {0}. Two concurrent /prove calls cannot both take it. KEYS: handshake.
_TAKE = """
local record = redis.call('GET', KEYS[1])
if not record or (ARGV[1] ~= '' and record ~= ARGV[1]) then return {0} end
local left = redis.call('PTTL', KEYS[1])
redis.call('DEL', KEYS[1])
return {1, record, left}
"""

# Put a taken handshake back (a /prove refused after taking it). KEYS: handshake; ARGV:
# record, ms left.
_PUT_BACK = "return redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2], 'NX')"

# /command's first step in one round trip: the session, and the nonce claimed if there is
# one. KEYS: session, nonce (one identity's slot); ARGV: nonce TTL in ms. Returns
# {session or false, 1 or 0}.
_SESSION_AND_NONCE = """
local session = redis.call('GET', KEYS[1])
if not session then return {false, 0} end
if redis.call('EXISTS', KEYS[2]) == 1 then return {session, 0} end
-- At maxmemory Redis refuses only a script's first write: this PEXPIRE of the absent key
-- changes nothing but is that first write, so the claim always lands and a full Redis still
-- serves delete and download, which free memory (an upload then fails at its own write).
redis.call('PEXPIRE', KEYS[2], ARGV[1])
redis.call('SET', KEYS[2], '1', 'PX', ARGV[1])
return {session, 1}
"""

# /prove's identity step, once the handshake is taken (composed with the mailbox's count by
# relay.store.redis.mailbox): claim the nonces, store the session. KEYS: the session, the
# nonces; ARGV: session record, its TTL in ms, the nonces' TTL in ms, how many nonces.
# {2} if a nonce was seen (nothing claimed).
PROVE_STEP = """
do
  local a = take_args(4)
  local K = take_keys(1 + tonumber(a[4]))
  for i = 2, #K do
    if redis.call('EXISTS', K[i]) == 1 then return {2} end
  end
  for i = 2, #K do redis.call('SET', K[i], '1', 'PX', a[3]) end
  redis.call('SET', K[1], a[1], 'PX', a[2])
end
"""

# Replace a handshake if it is the one expected. KEYS: handshake; ARGV: the expected record,
# the new one, TTL in ms. Returns 1 (replaced) or 0.
_REPLACE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
"""


def ttl_ms(ttl: float) -> int:
    """A TTL in whole milliseconds for PX/PEXPIRE: rounded up, at least 1 (Redis needs > 0)."""
    return max(1, math.ceil(ttl * 1000))


def _decoded(decode, data: bytes | None):
    if data is None:
        return None
    try:
        return decode(data)
    except CorruptRecord as e:
        raise StoreUnavailable(f"a stored session record is corrupt: {e}") from None


class RedisSessionStore:
    def __init__(self, backend: RedisBackend) -> None:
        # The mailbox's scripts: run_command_claiming_nonce runs their ops.
        from relay.store.redis.mailbox import RedisMailboxStore, prove_script

        self._backend = backend
        self.names = KeyNames()
        self._mailbox = RedisMailboxStore(backend, self.names)
        self._prove = prove_script(PROVE_STEP)
        # Session records as sent to Redis, by session (encoding one costs a few µs).
        self._records: dict[Session, bytes] = {}

    async def put_handshake(self, key: bytes, handshake: Handshake, ttl: float) -> None:
        name, value = self.names.handshake(key), encode_handshake(handshake)
        await self._backend.run(lambda redis: redis.set(name, value, pexpire=ttl_ms(ttl)))

    async def get_handshake(self, key: bytes) -> Handshake | None:
        name = self.names.handshake(key)
        return _decoded(decode_handshake, await self._backend.run(lambda redis: redis.get(name)))

    async def _take_handshake(self, key: bytes, expected: Handshake | None
                              ) -> tuple[bytes, int] | None:
        reply = await self._backend.script(
            _TAKE, [self.names.handshake(key)],
            [b"" if expected is None else encode_handshake(expected)])
        return (reply[1], int(reply[2])) if reply[0] == 1 else None

    async def finish_handshake(self, key: bytes, hpk: bytes, session: Session,
                               ttl: float) -> bool:
        if await self._take_handshake(key, None) is None:
            return False
        name, value = self.names.session(hpk), encode_session(session)
        await self._backend.run(lambda redis: redis.set(name, value, pexpire=ttl_ms(ttl)),
                                replicate=True)
        return True

    async def replace_handshake(self, key: bytes, expected: Handshake, handshake: Handshake,
                                ttl: float) -> bool:
        done = await self._backend.script(
            _REPLACE, [self.names.handshake(key)],
            [encode_handshake(expected), encode_handshake(handshake), ttl_ms(ttl)])
        return done == 1

    async def put_session(self, hpk: bytes, session: Session, ttl: float) -> None:
        name, value = self.names.session(hpk), encode_session(session)
        await self._backend.run(lambda redis: redis.set(name, value, pexpire=ttl_ms(ttl)))

    async def get_session(self, hpk: bytes) -> Session | None:
        name = self.names.session(hpk)
        return _decoded(decode_session, await self._backend.run(lambda redis: redis.get(name)))

    async def get_session_claiming_nonce(self, hpk: bytes, nonce: bytes,
                                         nonce_ttl: float) -> tuple[Session | None, bool]:
        keys = [self.names.session(hpk), self.names.nonce(hpk, nonce)]
        data, claimed = await self._backend.script(_SESSION_AND_NONCE, keys,
                                                   [ttl_ms(nonce_ttl)])
        return _decoded(decode_session, data), claimed == 1

    async def claim_nonce(self, hpk: bytes, nonce: bytes, ttl: float) -> bool:
        name = self.names.nonce(hpk, nonce)
        reply = await self._backend.run(
            lambda redis: redis.set(name, b"1", pexpire=ttl_ms(ttl), only_if_not_exists=True))
        # A status reply: str from txredisapi's own parser, bytes from hiredis's.
        return reply in ("OK", b"OK")

    def _record(self, session: Session) -> bytes:
        record = self._records.get(session)
        if record is None:
            if len(self._records) >= 4096:
                self._records.clear()
            record = self._records[session] = encode_session(session)
        return record

    async def run_command_claiming_nonce(self, hpk: bytes, session: Session, nonce: bytes,
                                         nonce_ttl: float, op: MailboxOp | None
                                         ) -> tuple[Claim, Any]:
        from relay.store.redis.mailbox import ClaimArgs

        return await self._mailbox.run(op, ClaimArgs(
            self.names.session(hpk), self.names.nonce(hpk, nonce), self._record(session),
            nonce_ttl))

    async def finish_handshake_claiming_nonces(self, key: bytes, hpk: bytes, session: Session,
                                               ttl: float, nonces: list[bytes],
                                               nonce_ttl: float,
                                               expected: Handshake | None = None
                                               ) -> tuple[Claim, int]:
        # The handshake (its own key) first, then hpk's slot: nonces, session, the count.
        taken = await self._take_handshake(key, expected)
        if taken is None:
            return Claim.GONE, 0
        keys = [self.names.session(hpk), *(self.names.nonce(hpk, n) for n in nonces),
                *self.names.mailbox(hpk)]
        reply = await self._backend.script(
            self._prove, keys, [encode_session(session), ttl_ms(ttl), ttl_ms(nonce_ttl),
                                len(nonces)],
            replicate=True)  # the session is what later commands rely on
        if reply[0] == 2:
            # A replayed /prove changes nothing: the handshake goes back for a proper one.
            record, left = taken
            if left > 0:
                await self._backend.script(_PUT_BACK, [self.names.handshake(key)],
                                           [record, left])
            return Claim.REPLAYED, 0
        return Claim.DONE, int(reply[1])
