"""Rendezvous channels in Redis: a hash {v: version, d: record} per channel, an index of open
channels (a sorted set by deadline) for the cap, and per-address join counters.

Creation and compare-and-set are Lua scripts, so nodes sharing the Redis never race.
"""

from __future__ import annotations

from typing import Any

from relay.store.errors import StoreFull
from relay.store.redis.scripting import PRELUDE

_CREATE = PRELUDE + """
local now = now_ms()
local ttl = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[4]) then return -1 end
redis.call('HSET', KEYS[1], 'v', 1, 'd', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('ZADD', KEYS[2], now + ttl, ARGV[1])
if redis.call('PTTL', KEYS[2]) < ttl then redis.call('PEXPIRE', KEYS[2], ttl) end
return 1
"""

_REPLACE = PRELUDE + """
local v = redis.call('HGET', KEYS[1], 'v')
if not v or tonumber(v) ~= tonumber(ARGV[2]) then return 0 end
local ttl = tonumber(ARGV[4])
if ttl <= 0 then
  redis.call('DEL', KEYS[1])
  redis.call('ZREM', KEYS[2], ARGV[1])
  return 1
end
redis.call('HSET', KEYS[1], 'v', tonumber(ARGV[2]) + 1, 'd', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('ZADD', KEYS[2], 'XX', now_ms() + ttl, ARGV[1])
return 1
"""

_HIT = """
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return n
"""


def _ms(seconds: float) -> int:
    return max(0, int(seconds * 1000))


class RedisChannelStore:
    shared = True

    def __init__(self, backend: Any) -> None:
        self.backend = backend
        self.index = backend.key("channels-open")

    def _key(self, name: str) -> str:
        return self.backend.key("channel", name)

    async def create(self, name: str, record: bytes, ttl: float, max_channels: int) -> bool:
        result = await self.backend.script(_CREATE, [self._key(name), self.index],
                                           [name, record, max(1, _ms(ttl)), max_channels])
        if result == -1:
            raise StoreFull("too many open channels")
        return result == 1

    async def load(self, name: str) -> tuple[bytes, int] | None:
        key = self._key(name)
        version, record = await self.backend.run(lambda redis: redis.hmget(key, ["v", "d"]))
        if version is None or record is None:
            return None
        return record, int(version)

    async def replace(self, name: str, version: int, record: bytes, ttl: float) -> bool:
        ms = _ms(ttl)
        result = await self.backend.script(_REPLACE, [self._key(name), self.index],
                                           [name, version, record, ms])
        return result == 1

    async def count_hit(self, key: str, window: float) -> int:
        now = self.backend.clock.seconds()
        index = int(now // window)
        left = (index + 1) * window - now
        redis_key = self.backend.key("channel-hits", key.encode(), str(index))
        return int(await self.backend.script(_HIT, [redis_key], [max(1, _ms(left))]))
