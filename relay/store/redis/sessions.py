"""Handshakes, sessions and the nonce replay cache in Redis: one key each, all with a TTL."""

from __future__ import annotations

import math

from relay.store.errors import StoreUnavailable
from relay.store.interfaces.sessions import Handshake, Session
from relay.store.redis import RedisBackend
from relay.store.redis.codec import (
    CorruptRecord,
    decode_handshake,
    decode_session,
    encode_handshake,
    encode_session,
)

# GET and DEL in one step, so two concurrent /prove calls cannot both get the handshake.
# (GETDEL would do, but needs Redis 6.2; this runs on any Redis with Lua.)
_TAKE = """
local value = redis.call('GET', KEYS[1])
if value then redis.call('DEL', KEYS[1]) end
return value
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
        self._backend = backend

    def _handshake_key(self, key: bytes) -> str:
        return self._backend.key("handshake", key)

    def _session_key(self, hpk: bytes) -> str:
        return self._backend.key("session", hpk)

    async def put_handshake(self, key: bytes, handshake: Handshake, ttl: float) -> None:
        name, value = self._handshake_key(key), encode_handshake(handshake)
        await self._backend.run(lambda redis: redis.set(name, value, pexpire=ttl_ms(ttl)))

    async def get_handshake(self, key: bytes) -> Handshake | None:
        name = self._handshake_key(key)
        return _decoded(decode_handshake, await self._backend.run(lambda redis: redis.get(name)))

    async def take_handshake(self, key: bytes) -> Handshake | None:
        data = await self._backend.script(_TAKE, [self._handshake_key(key)], [])
        return _decoded(decode_handshake, data)

    async def put_session(self, hpk: bytes, session: Session, ttl: float) -> None:
        name, value = self._session_key(hpk), encode_session(session)
        await self._backend.run(lambda redis: redis.set(name, value, pexpire=ttl_ms(ttl)))

    async def get_session(self, hpk: bytes) -> Session | None:
        name = self._session_key(hpk)
        return _decoded(decode_session, await self._backend.run(lambda redis: redis.get(name)))

    async def claim_nonce(self, nonce: bytes, ttl: float) -> bool:
        name = self._backend.key("nonce", nonce)
        reply = await self._backend.run(
            lambda redis: redis.set(name, b"1", pexpire=ttl_ms(ttl), only_if_not_exists=True))
        return reply == "OK"
