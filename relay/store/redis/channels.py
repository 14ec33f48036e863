"""Rendezvous channels in Redis, each key in its owner's hash slot (relay.store.redis.keys):

    relay:channel:<name>             HASH {v: version, d: record}, expiring with the channel
    relay:{all}:channels             ZSET name -> deadline (ms): the open channels, for the cap
    relay:{c.<client>}:channels      ZSET name -> deadline: those a client created, for its
                                     share
    relay:channel-hits:<key>:<window>  per-client join counters
and a pub/sub topic (not a key: relay.channel-changes:db<n>) that carries the name of every
changed channel (relay.store.redis.pubsub subscribes to it).

Every script touches one owner's keys (Redis Cluster runs nothing else), so a change that
involves several is a few steps, in order, each undone when a later one refuses:
- create: the name is counted in the client's set and in the index (their caps checked;
  one round trip for the two), then the channel is created; a refusal, a name that is open
  already or a channel that exists removes what was counted (2 round trips, 3 undoing).
- replace: the channel's compare-and-set, then the index and the client's set follow its
  new deadline, or drop it when deleted (2 round trips); the index's step publishes the
  notice, so that it never overtakes the writer's own answer (the rendezvous registry
  hands its own change to this node's waiters without a read, and reads for notices of
  versions it does not know yet). A crash between the steps loses the notice: other nodes'
  long-polls then answer at their timeout.
The sets are trimmed by deadline whenever they are counted, so a step left undone by a
crash lapses with the channel's TTL.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.logger import Logger

from relay.store.errors import StoreError, StoreFull
from relay.store.interfaces.channels import ClientChannelsFull
from relay.store.redis.keys import PREFIX, KeyNames
from relay.store.redis.pubsub import RedisChangeFeed
from relay.store.redis.scripting import PRELUDE

log = Logger(namespace="relay.store.redis")

# KEYS: a set (the index or a client's). ARGV: name, ttl ms, cap (0: none).
# Returns {1, deadline} (counted), {0} (counted already) or {-1} (the cap is reached).
_COUNT = PRELUDE + """
local now = now_ms()
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then return {0} end
local cap = tonumber(ARGV[3])
if cap > 0 and redis.call('ZCARD', KEYS[1]) >= cap then return {-1} end
local ttl = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
if redis.call('PTTL', KEYS[1]) < ttl then redis.call('PEXPIRE', KEYS[1], ttl) end
return {1, now + ttl}
"""

# KEYS: the channel. ARGV: record, deadline (ms). Returns 1 (created) or 0 (it exists).
_CREATE = PRELUDE + """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'v', 1, 'd', ARGV[1])
redis.call('PEXPIREAT', KEYS[1], math.max(tonumber(ARGV[2]), now_ms() + 1))
return 1
"""

# KEYS: the channel. ARGV: version, record, ttl ms (<= 0: delete). Returns {1, the new
# deadline (0: deleted)} or {0} (another version).
_REPLACE = PRELUDE + """
local v = redis.call('HGET', KEYS[1], 'v')
if not v or tonumber(v) ~= tonumber(ARGV[1]) then return {0} end
local ttl = tonumber(ARGV[3])
if ttl <= 0 then
  redis.call('DEL', KEYS[1])
  return {1, 0}
end
redis.call('HSET', KEYS[1], 'v', tonumber(ARGV[1]) + 1, 'd', ARGV[2])
local deadline = now_ms() + ttl
redis.call('PEXPIREAT', KEYS[1], deadline)
return {1, deadline}
"""

# KEYS: a set. ARGV: name, its deadline (0: drop it), then optionally a topic and the notice
# to publish on it. The name's deadline follows its channel's (if it is there). The first
# write is one Redis never refuses at maxmemory (PEXPIRE to the TTL the key has), so this
# runs on a full Redis too.
_FOLLOW = PRELUDE + """
if ARGV[3] then redis.call('PUBLISH', ARGV[3], ARGV[4]) end
local ttl = redis.call('PTTL', KEYS[1])
if ttl == -2 then return 0 end
if ttl == -1 then redis.call('PERSIST', KEYS[1]) else redis.call('PEXPIRE', KEYS[1], ttl) end
local deadline = tonumber(ARGV[2])
if deadline == 0 then return redis.call('ZREM', KEYS[1], ARGV[1]) end
redis.call('ZADD', KEYS[1], 'XX', deadline, ARGV[1])
local left = deadline - now_ms()
if ttl >= 0 and ttl < left then redis.call('PEXPIRE', KEYS[1], left) end
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
        self.names = KeyNames()
        self.index = self.names.channel_index
        # Pub/sub topics are not per database: the topic names the database too. Not a key
        # (nothing to hash; a script may publish on any topic).
        self.topic = f"{PREFIX}.channel-changes:db{backend.address.db or 0}"

    async def create(self, name: str, record: bytes, ttl: float, max_channels: int,
                     client: str = "", max_per_client: int = 0) -> bool:
        ttl_ms = max(1, _ms(ttl))
        sets = [self.index]
        caps = [max_channels]
        if client:
            sets.append(self.names.client_channels(client))
            caps.append(max_per_client)
        counted = await self.backend.scripts([(_COUNT, [key], [name, ttl_ms, cap])
                                              for key, cap in zip(sets, caps, strict=True)])
        mine = [key for key, result in zip(sets, counted, strict=True)
                if isinstance(result, list) and result[0] == 1]
        index, *share = counted
        error = next((r for r in counted if isinstance(r, StoreError)), None)
        # As one script answered: a name that is open is taken, whoever asks; then the
        # client's share; then the relay's cap.
        if error is None and index[0] == 0:
            await self._uncount(name, mine)
            return False
        if error is None and share and share[0][0] == -1:
            error = ClientChannelsFull("this client holds too many open channels")
        elif error is None and index[0] == -1:
            error = StoreFull("too many open channels")
        if error is not None:
            await self._uncount(name, mine)
            raise error
        deadline = min(result[1] for result in counted if result[0] == 1)
        try:
            created = await self.backend.script(_CREATE, [self.names.channel(name)],
                                                [record, deadline])
        except StoreError:
            await self._uncount(name, mine)
            raise
        if created != 1:
            await self._uncount(name, mine)
        return created == 1

    async def _uncount(self, name: str, sets: list[str]) -> None:
        if sets:
            await self.backend.scripts([(_FOLLOW, [key], [name, 0]) for key in sets])

    async def load(self, name: str) -> tuple[bytes, int] | None:
        key = self.names.channel(name)
        version, record = await self.backend.run(lambda redis: redis.hmget(key, ["v", "d"]))
        if version is None or record is None:
            return None
        return record, int(version)

    async def replace(self, name: str, version: int, record: bytes, ttl: float,
                      client: str = "") -> bool:
        result = await self.backend.script(
            _REPLACE, [self.names.channel(name)], [version, record, _ms(ttl)])
        if result[0] != 1:
            return False
        deadline = result[1]
        notice = name if deadline == 0 else f"{name} {version + 1}"
        steps = [(_FOLLOW, [self.index], [name, deadline, self.topic, notice])]
        if client:
            steps.append((_FOLLOW, [self.names.client_channels(client)], [name, deadline]))
        # The change is stored; the counts follow (left undone by a crash, they lapse with
        # the TTL they had).
        try:
            outcomes = await self.backend.scripts(steps)
        except StoreError as e:
            outcomes = [e]
        for outcome in outcomes:
            if isinstance(outcome, StoreError):
                log.warn("a channel's count did not follow its change: {error}", error=outcome)
        return True

    async def count_hit(self, key: str, window: float) -> int:
        now = self.backend.clock.seconds()
        index = int(now // window)
        left = (index + 1) * window - now
        redis_key = self.names.channel_hits(key, index)
        return int(await self.backend.script(_HIT, [redis_key], [max(1, _ms(left))]))

    def change_feed(self, on_change: Callable[[str, int | None], None],
                    on_live: Callable[[bool], None]) -> RedisChangeFeed:
        return RedisChangeFeed(self.backend, self.topic, on_change, on_live)
