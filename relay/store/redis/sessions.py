"""Handshakes, sessions and the nonce replay cache in Redis: one key each, all with a TTL."""

from __future__ import annotations

import math
from typing import Any

from relay.store.errors import StoreUnavailable
from relay.store.interfaces.mailbox import CountOp, MailboxOp
from relay.store.interfaces.sessions import Claim, Handshake, Session
from relay.store.redis import RedisBackend
from relay.store.redis.codec import (
    CorruptRecord,
    decode_handshake,
    decode_session,
    encode_handshake,
    encode_session,
)

# Delete the handshake and store the session in one step, so two concurrent /prove calls
# cannot both succeed. KEYS: handshake, session; ARGV: session record, TTL in ms.
_FINISH = """
if redis.call('DEL', KEYS[1]) == 0 then return 0 end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
return 1
"""

# /command's first step in one round trip: the session, and the nonce claimed if there is
# one. KEYS: session, nonce; ARGV: nonce TTL in ms. Returns {session or false, 1 or 0}.
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

# /prove's store work in one round trip (finish_handshake_claiming_nonces), prepended by the
# mailbox's Lua and followed by the count's body. KEYS: hpk's five mailbox keys, the
# handshake, the session, then the nonces; ARGV: session record, its TTL in ms, the nonces'
# TTL in ms, the handshake record expected (empty: any). Returns {0, count} (done), {2} (a nonce replayed) or {3} (handshake gone).
_PROVE = """
if ARGV[4] ~= '' and redis.call('GET', KEYS[6]) ~= ARGV[4] then return {3} end
local replayed = false
for i = 8, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    replayed = true
  else
    redis.call('SET', KEYS[i], '1', 'PX', ARGV[3])
  end
end
if replayed then return {2} end
if redis.call('DEL', KEYS[6]) == 0 then return {3} end
redis.call('SET', KEYS[7], ARGV[1], 'PX', ARGV[2])
local function op()
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
        # The mailbox's scripts: run_command_claiming_nonce runs their bodies.
        from relay.store.redis.mailbox import RedisMailboxStore, prove_script

        self._backend = backend
        self._mailbox = RedisMailboxStore(backend)
        self._prove = prove_script(_PROVE)
        # Session records as sent to Redis, by session (encoding one costs a few µs).
        self._records: dict[Session, bytes] = {}
        self._session_keys: dict[bytes, str] = {}

    def _handshake_key(self, key: bytes) -> str:
        return self._backend.key("handshake", key)

    def _session_key(self, hpk: bytes) -> str:
        name = self._session_keys.get(hpk)
        if name is None:
            if len(self._session_keys) >= 16_384:
                self._session_keys.clear()
            name = self._session_keys[hpk] = self._backend.key("session", hpk)
        return name

    async def put_handshake(self, key: bytes, handshake: Handshake, ttl: float) -> None:
        name, value = self._handshake_key(key), encode_handshake(handshake)
        await self._backend.run(lambda redis: redis.set(name, value, pexpire=ttl_ms(ttl)))

    async def get_handshake(self, key: bytes) -> Handshake | None:
        name = self._handshake_key(key)
        return _decoded(decode_handshake, await self._backend.run(lambda redis: redis.get(name)))

    async def finish_handshake(self, key: bytes, hpk: bytes, session: Session,
                               ttl: float) -> bool:
        keys = [self._handshake_key(key), self._session_key(hpk)]
        done = await self._backend.script(_FINISH, keys, [encode_session(session), ttl_ms(ttl)],
                                          replicate=True)
        return done == 1

    async def replace_handshake(self, key: bytes, expected: Handshake, handshake: Handshake,
                                ttl: float) -> bool:
        done = await self._backend.script(
            _REPLACE, [self._handshake_key(key)],
            [encode_handshake(expected), encode_handshake(handshake), ttl_ms(ttl)])
        return done == 1

    async def put_session(self, hpk: bytes, session: Session, ttl: float) -> None:
        name, value = self._session_key(hpk), encode_session(session)
        await self._backend.run(lambda redis: redis.set(name, value, pexpire=ttl_ms(ttl)))

    async def get_session(self, hpk: bytes) -> Session | None:
        name = self._session_key(hpk)
        return _decoded(decode_session, await self._backend.run(lambda redis: redis.get(name)))

    async def get_session_claiming_nonce(self, hpk: bytes, nonce: bytes,
                                         nonce_ttl: float) -> tuple[Session | None, bool]:
        keys = [self._session_key(hpk), self._backend.key("nonce", nonce)]
        data, claimed = await self._backend.script(_SESSION_AND_NONCE, keys,
                                                   [ttl_ms(nonce_ttl)])
        return _decoded(decode_session, data), claimed == 1

    async def claim_nonce(self, nonce: bytes, ttl: float) -> bool:
        name = self._backend.key("nonce", nonce)
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
        plan = None if op is None else self._mailbox.plan(op)
        return await self._mailbox.run_claiming(
            plan, self._session_key(hpk), self._backend.key("nonce", nonce),
            self._record(session), nonce_ttl)

    async def finish_handshake_claiming_nonces(self, key: bytes, hpk: bytes, session: Session,
                                               ttl: float, nonces: list[bytes],
                                               nonce_ttl: float,
                                               expected: Handshake | None = None
                                               ) -> tuple[Claim, int]:
        count = self._mailbox.plan(CountOp(hpk))
        keys = [*count.keys, self._handshake_key(key), self._session_key(hpk),
                *(self._backend.key("nonce", nonce) for nonce in nonces)]
        reply = await self._backend.script(
            self._prove, keys, [encode_session(session), ttl_ms(ttl), ttl_ms(nonce_ttl),
             b"" if expected is None else encode_handshake(expected)],
            replicate=True)  # the session is what later commands rely on
        if reply[0] == 2:
            return Claim.REPLAYED, 0
        if reply[0] == 3:
            return Claim.GONE, 0
        return Claim.DONE, int(reply[1])
