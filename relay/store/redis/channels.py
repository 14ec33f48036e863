"""Rendezvous channels in Redis: a hash {v: version, d: record} per channel, an index of open
channels (a sorted set by deadline) for the cap, one such set per creating client for its
share, per-client join counters, and a pub/sub topic that carries the name of every changed
channel (relay.store.redis.pubsub subscribes to it).

Creation and compare-and-set are Lua scripts, so nodes sharing the Redis never race.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from relay.store.errors import StoreFull
from relay.store.interfaces.channels import ClientChannelsFull
from relay.store.redis.pubsub import RedisChangeFeed
from relay.store.redis.scripting import PRELUDE

# KEYS: channel, index, the client's set. ARGV: name, record, ttl ms, max channels,
# max per client (0: none), "1" if the channel is counted for a client.
_CREATE = PRELUDE + """
local now = now_ms()
local ttl = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local per_client = tonumber(ARGV[5])
if ARGV[6] == '1' and per_client > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
  if redis.call('ZCARD', KEYS[3]) >= per_client then return -2 end
end
if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[4]) then return -1 end
redis.call('HSET', KEYS[1], 'v', 1, 'd', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('ZADD', KEYS[2], now + ttl, ARGV[1])
if redis.call('PTTL', KEYS[2]) < ttl then redis.call('PEXPIRE', KEYS[2], ttl) end
if ARGV[6] == '1' then
  redis.call('ZADD', KEYS[3], now + ttl, ARGV[1])
  if redis.call('PTTL', KEYS[3]) < ttl then redis.call('PEXPIRE', KEYS[3], ttl) end
end
return 1
"""

# KEYS: channel, index, the client's set, the change topic. ARGV: name, version, record,
# ttl ms (<= 0: delete), "1" if the channel is counted for a client. Publishes
# "<name> <new version>", or "<name>" when deleted.
_REPLACE = PRELUDE + """
local v = redis.call('HGET', KEYS[1], 'v')
if not v or tonumber(v) ~= tonumber(ARGV[2]) then return 0 end
local ttl = tonumber(ARGV[4])
local counted = ARGV[5] == '1'
if ttl <= 0 then
  redis.call('DEL', KEYS[1])
  redis.call('ZREM', KEYS[2], ARGV[1])
  if counted then redis.call('ZREM', KEYS[3], ARGV[1]) end
  redis.call('PUBLISH', KEYS[4], ARGV[1])
  return 1
end
redis.call('HSET', KEYS[1], 'v', tonumber(ARGV[2]) + 1, 'd', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ttl)
local deadline = now_ms() + ttl
redis.call('ZADD', KEYS[2], 'XX', deadline, ARGV[1])
if redis.call('PTTL', KEYS[2]) < ttl then redis.call('PEXPIRE', KEYS[2], ttl) end
if counted then
  redis.call('ZADD', KEYS[3], 'XX', deadline, ARGV[1])
  if redis.call('PTTL', KEYS[3]) < ttl then redis.call('PEXPIRE', KEYS[3], ttl) end
end
redis.call('PUBLISH', KEYS[4], ARGV[1] .. ' ' .. (tonumber(ARGV[2]) + 1))
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
        # Pub/sub topics are not per database: the topic names the database too.
        self.topic = backend.key("channel-changes", f"db{backend.address.db or 0}")

    def _key(self, name: str) -> str:
        return self.backend.key("channel", name)

    def _client_key(self, client: str) -> str:
        return self.backend.key("channels-of", client.encode())

    async def create(self, name: str, record: bytes, ttl: float, max_channels: int,
                     client: str = "", max_per_client: int = 0) -> bool:
        keys = [self._key(name), self.index, self._client_key(client)]
        args = [name, record, max(1, _ms(ttl)), max_channels, max_per_client,
                "1" if client else "0"]
        result = await self.backend.script(_CREATE, keys, args)
        if result == -1:
            raise StoreFull("too many open channels")
        if result == -2:
            raise ClientChannelsFull("this client holds too many open channels")
        return result == 1

    async def load(self, name: str) -> tuple[bytes, int] | None:
        key = self._key(name)
        version, record = await self.backend.run(lambda redis: redis.hmget(key, ["v", "d"]))
        if version is None or record is None:
            return None
        return record, int(version)

    async def replace(self, name: str, version: int, record: bytes, ttl: float,
                      client: str = "") -> bool:
        keys = [self._key(name), self.index, self._client_key(client), self.topic]
        args = [name, version, record, _ms(ttl), "1" if client else "0"]
        return await self.backend.script(_REPLACE, keys, args) == 1

    async def count_hit(self, key: str, window: float) -> int:
        now = self.backend.clock.seconds()
        index = int(now // window)
        left = (index + 1) * window - now
        redis_key = self.backend.key("channel-hits", key.encode(), str(index))
        return int(await self.backend.script(_HIT, [redis_key], [max(1, _ms(left))]))

    def change_feed(self, on_change: Callable[[str, int | None], None],
                    on_live: Callable[[bool], None]) -> RedisChangeFeed:
        return RedisChangeFeed(self.backend, self.topic, on_change, on_live)
