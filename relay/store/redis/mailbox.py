"""Mailboxes in Redis, every change one Lua script so a mailbox is never seen half-updated.

Per mailbox (hpk) four keys, all expiring when the mailbox's longest-lived message does:
    mailbox:<hpk>:order    ZSET msg_id -> upload sequence (download order, oldest first)
    mailbox:<hpk>:expiry   ZSET msg_id -> deadline, ms on Redis's clock
    mailbox:<hpk>:records  HASH msg_id -> record (opaque bytes)
    mailbox:<hpk>:tokens   HASH msg_id -> name of the message's token key
and per message a token key, token:<token> (PX = the message's TTL), that messageStatus reads
with PTTL. Expired messages are purged by the next script touching the mailbox, before it
counts, reads or checks the cap. The token keys are named inside the scripts (not in KEYS),
so this layout needs a single Redis, not Redis Cluster.
"""

from __future__ import annotations

from relay.store.errors import StoreFull
from relay.store.redis import RedisBackend
from relay.store.redis.scripting import PRELUDE
from relay.store.redis.sessions import ttl_ms

# KEYS[1..4] are always the mailbox's order, expiry, records and tokens keys.
_MAILBOX_LUA = PRELUDE + """
local function remove(id)
  if redis.call('ZREM', KEYS[1], id) == 0 then return 0 end
  redis.call('ZREM', KEYS[2], id)
  redis.call('HDEL', KEYS[3], id)
  local token_key = redis.call('HGET', KEYS[4], id)
  if token_key then
    redis.call('DEL', token_key)
    redis.call('HDEL', KEYS[4], id)
  end
  return 1
end

-- Every mailbox key lives as long as the mailbox's longest-lived message; none when empty.
local function refresh_ttl()
  local last = redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')
  if #last == 0 then
    redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4])
    return
  end
  for i = 1, 4 do redis.call('PEXPIREAT', KEYS[i], last[2]) end
end

-- Drop messages whose deadline has passed; true if there were any.
local function purge(now)
  local first = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
  if #first == 0 or tonumber(first[2]) > now then return false end
  local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)
  for _, id in ipairs(expired) do remove(id) end
  return true
end
"""

# KEYS[5]: the new message's token key. ARGV: msg_id, record, ttl_ms, max_messages.
# Returns 1 if stored, 0 if the mailbox is full (nothing written but the purge).
_STORE = _MAILBOX_LUA + """
local now = now_ms()
if purge(now) then refresh_ttl() end
local id = ARGV[1]
local replacing = redis.call('ZSCORE', KEYS[1], id)
if not replacing and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[4]) then return 0 end
if replacing then
  local old_token_key = redis.call('HGET', KEYS[4], id)
  if old_token_key and old_token_key ~= KEYS[5] then redis.call('DEL', old_token_key) end
end
-- A replaced message moves to the end, as a new upload.
local newest = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
local sequence = 1
if #newest > 0 then sequence = tonumber(newest[2]) + 1 end
local deadline = now + tonumber(ARGV[3])
redis.call('ZADD', KEYS[1], sequence, id)
redis.call('ZADD', KEYS[2], deadline, id)
redis.call('HSET', KEYS[3], id, ARGV[2])
redis.call('HSET', KEYS[4], id, KEYS[5])
redis.call('SET', KEYS[5], '1', 'PX', ARGV[3])
refresh_ttl()
return 1
"""

_COUNT = _MAILBOX_LUA + """
if purge(now_ms()) then refresh_ttl() end
return redis.call('ZCARD', KEYS[1])
"""

# ARGV: first and last index (0-based, inclusive) in upload order.
_READ = _MAILBOX_LUA + """
if purge(now_ms()) then refresh_ttl() end
local ids = redis.call('ZRANGE', KEYS[1], ARGV[1], ARGV[2])
local records = {}
for i, id in ipairs(ids) do records[i] = redis.call('HGET', KEYS[3], id) end
return records
"""

# ARGV: the ids to delete. Returns how many messages are left.
_DELETE = _MAILBOX_LUA + """
local now = now_ms()
purge(now)
for _, id in ipairs(ARGV) do remove(id) end
refresh_ttl()
return redis.call('ZCARD', KEYS[1])
"""


class RedisMailboxStore:
    def __init__(self, backend: RedisBackend) -> None:
        self._backend = backend

    def _keys(self, hpk: bytes) -> list[str]:
        key = self._backend.key
        return [key("mailbox", hpk, "order"), key("mailbox", hpk, "expiry"),
                key("mailbox", hpk, "records"), key("mailbox", hpk, "tokens")]

    def _token_key(self, token: bytes) -> str:
        return self._backend.key("token", token)

    async def store_message(self, hpk: bytes, msg_id: bytes, record: bytes,
                            token: bytes, ttl: float, max_messages: int) -> None:
        stored = await self._backend.script(
            _STORE, [*self._keys(hpk), self._token_key(token)],
            [msg_id, record, ttl_ms(ttl), max_messages])
        if stored != 1:
            raise StoreFull("the mailbox is full")

    async def count(self, hpk: bytes) -> int:
        return await self._backend.script(_COUNT, self._keys(hpk), [])

    async def read(self, hpk: bytes, start: int, count: int) -> list[bytes]:
        # Indexes start..start+count-1 that exist; a negative start only shortens the page.
        first, last = max(start, 0), start + count - 1
        if count <= 0 or last < first:
            return []
        records = await self._backend.script(_READ, self._keys(hpk), [first, last])
        # A record is missing only if the mailbox was damaged outside the relay; skip it.
        return [record for record in records if isinstance(record, bytes)]

    async def delete(self, hpk: bytes, msg_ids: list[bytes]) -> int:
        if not msg_ids:
            return await self.count(hpk)
        return await self._backend.script(_DELETE, self._keys(hpk), list(msg_ids))

    async def message_ttl(self, token: bytes) -> int:
        name = self._token_key(token)
        left_ms = await self._backend.run(lambda redis: redis.execute_command("PTTL", name))
        # -2: no such key; -1 (a key without TTL) cannot happen here, and reads as gone.
        if left_ms < 0:
            return -2
        return left_ms // 1000
