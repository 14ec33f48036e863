"""File metadata (and, for chunk_store = "store", chunks) in Redis.

Keys (every one with a TTL):
    file:<file_id>            HASH, expiring with the file. Fields: sender, recipient, size,
                              charge, expires (Unix s), bytes, count, max, last (once known),
                              ledger (the sender's ledger key prefix), and per part n:
                              s<n> (chunk size) and p<n> (8-byte blob id + chunk nonce).
    fledger:all:{exp,charge,total}        the relay-wide quota ledger
    fledger:<sender>:{exp,charge,total}   one per sender
A ledger is a ZSET file_id -> expiry (ms, Redis clock), a HASH file_id -> charge and a
counter of the charges; a script touching a ledger first reaps what has expired, so an
expired file's charge is released without any background job. The ledger keys expire with
their last file. A file's sender ledger is named in its hash, so scripts that find the file
by id reach the ledger in one round trip (single Redis, not Redis Cluster, like mailboxes).

    chunk:<file_id>:<part>:<blob>   STRING, the chunk, expiring with its file at the latest.
"""

from __future__ import annotations

from base64 import urlsafe_b64decode
from collections.abc import Awaitable, Callable

from relay.store.errors import StoreFull, StoreUnavailable
from relay.store.interfaces.files import FileRecord, PartInfo, PutRequest
from relay.store.redis import RedisBackend
from relay.store.redis.scripting import PRELUDE
from relay.store.redis.sessions import ttl_ms

BLOB_BYTES = 8
_SUMMARY_FIELDS = [b"sender", b"recipient", b"size", b"charge", b"expires", b"bytes",
                   b"count", b"max", b"last"]

_LEDGER_LUA = PRELUDE + """
-- A ledger is the prefix of its three keys.
local function reap(ledger, now)
  local exp, charge, total = ledger .. ':exp', ledger .. ':charge', ledger .. ':total'
  local expired = redis.call('ZRANGEBYSCORE', exp, '-inf', now, 'LIMIT', 0, 1000)
  for _, id in ipairs(expired) do
    local c = redis.call('HGET', charge, id)
    if c then redis.call('DECRBY', total, c) end
    redis.call('HDEL', charge, id)
    redis.call('ZREM', exp, id)
  end
end

local function refresh(ledger)
  local exp, charge, total = ledger .. ':exp', ledger .. ':charge', ledger .. ':total'
  local last = redis.call('ZRANGE', exp, -1, -1, 'WITHSCORES')
  if #last == 0 then
    redis.call('DEL', exp, charge, total)
    return
  end
  for _, key in ipairs({exp, charge, total}) do redis.call('PEXPIREAT', key, last[2]) end
end

local function used(ledger)
  return tonumber(redis.call('GET', ledger .. ':total') or '0')
end

local function add(ledger, id, charge, expiry)
  redis.call('ZADD', ledger .. ':exp', expiry, id)
  redis.call('HSET', ledger .. ':charge', id, charge)
  redis.call('INCRBY', ledger .. ':total', charge)
  refresh(ledger)
end

local function touch(ledger, id, expiry)
  redis.call('ZADD', ledger .. ':exp', 'XX', expiry, id)
  refresh(ledger)
end

local function remove(ledger, id)
  local c = redis.call('HGET', ledger .. ':charge', id)
  if c then redis.call('DECRBY', ledger .. ':total', c) end
  redis.call('HDEL', ledger .. ':charge', id)
  redis.call('ZREM', ledger .. ':exp', id)
  refresh(ledger)
end
"""

# KEYS: file. ARGV: file_id, the global ledger, the sender's ledger, ttl_ms, sender_cap,
# total_cap, then field/value pairs. Returns 1 (created), 0 (exists), -1 / -2 (sender's /
# relay's quota used up).
_CREATE = _LEDGER_LUA + """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local now = now_ms()
local id, everyone, sender = ARGV[1], ARGV[2], ARGV[3]
local ttl = tonumber(ARGV[4])
local charge = 0
local fields = {}
for i = 7, #ARGV, 2 do
  if ARGV[i] == 'charge' then charge = tonumber(ARGV[i + 1]) end
  table.insert(fields, ARGV[i])
  table.insert(fields, ARGV[i + 1])
end
reap(sender, now)
reap(everyone, now)
if used(sender) + charge > tonumber(ARGV[5]) then return -1 end
if used(everyone) + charge > tonumber(ARGV[6]) then return -2 end
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('PEXPIRE', KEYS[1], ttl)
add(sender, id, charge, now + ttl)
add(everyone, id, charge, now + ttl)
return 1
"""

# KEYS: file. ARGV: file_id, global ledger, part, size, blob+nonce, last (0/1), max_parts,
# max_bytes, ttl_ms, complete_ttl_ms. Returns {outcome, replaced blob+nonce or false,
# replaced size}.
_PUT_PART = _LEDGER_LUA + """
if redis.call('EXISTS', KEYS[1]) == 0 then return {'NOT_FOUND', false, 0} end
local part, size, last = tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[6] == '1'
local f = redis.call('HMGET', KEYS[1], 'bytes', 'count', 'max', 'last', 'ledger')
local stored, count, max_part = tonumber(f[1]), tonumber(f[2]), tonumber(f[3])
local last_part = f[4] and tonumber(f[4])
if part >= tonumber(ARGV[7]) then return {'BAD_PART', false, 0} end
if last_part and (part > last_part or (last and part ~= last_part)) then
  return {'BAD_PART', false, 0}
end
if last and max_part > part then return {'BAD_PART', false, 0} end
local old_size = redis.call('HGET', KEYS[1], 's' .. part)
local old = false
if old_size then old = redis.call('HGET', KEYS[1], 'p' .. part) end
stored = stored - tonumber(old_size or '0') + size
if stored > tonumber(ARGV[8]) then return {'TOO_MANY_BYTES', false, 0} end
if not old_size then count = count + 1 end
if part > max_part then max_part = part end
if last then last_part = part end
redis.call('HSET', KEYS[1], 's' .. part, size, 'p' .. part, ARGV[5], 'bytes', stored,
           'count', count, 'max', max_part)
if last then redis.call('HSET', KEYS[1], 'last', part) end
local ttl = tonumber(ARGV[9])
if last_part and count == last_part + 1 then ttl = tonumber(ARGV[10]) end
redis.call('PEXPIRE', KEYS[1], ttl)
local expiry = now_ms() + ttl
touch(ARGV[2], ARGV[1], expiry)
touch(f[5], ARGV[1], expiry)
return {'OK', old, tonumber(old_size or '0')}
"""

# KEYS: file. ARGV: file_id, global ledger. Returns the removed hash (HGETALL) or {}.
_DELETE = _LEDGER_LUA + """
local all = redis.call('HGETALL', KEYS[1])
if #all == 0 then return all end
remove(ARGV[2], ARGV[1])
remove(redis.call('HGET', KEYS[1], 'ledger'), ARGV[1])
redis.call('DEL', KEYS[1])
return all
"""

# ARGV: a ledger. Returns its total after reaping.
_USAGE = _LEDGER_LUA + """
reap(ARGV[1], now_ms())
refresh(ARGV[1])
return used(ARGV[1])
"""


def _int(value: bytes | None, default: int = 0) -> int:
    return default if value is None else int(value)


def _record(file_id: bytes, fields: dict[bytes, bytes]) -> FileRecord:
    """A record from the hash's fields (summary fields and any s<n>/p<n> present)."""
    try:
        parts = {}
        for name, value in fields.items():
            if name.startswith(b"p") and value is not None:
                part = int(name[1:])
                size = fields.get(b"s%d" % part)
                if size is None or len(value) < BLOB_BYTES:
                    raise ValueError("part without size or blob")
                parts[part] = PartInfo(int(size), value[BLOB_BYTES:], value[:BLOB_BYTES])
        last = fields.get(b"last")
        return FileRecord(
            file_id=file_id, sender=fields[b"sender"], recipient=fields[b"recipient"],
            file_size=int(fields[b"size"]), charge=int(fields[b"charge"]),
            expires_at=float(fields[b"expires"]), bytes_stored=_int(fields.get(b"bytes")),
            part_count=_int(fields.get(b"count")), max_part=_int(fields.get(b"max"), -1),
            last_part=None if last is None else int(last), parts=parts)
    except (KeyError, TypeError, ValueError) as e:
        raise StoreUnavailable(f"a stored file record is corrupt: {e}") from None


def _pairs(flat: list) -> dict[bytes, bytes]:
    return dict(zip(flat[::2], flat[1::2], strict=True))


class RedisFileStore:
    def __init__(self, backend: RedisBackend) -> None:
        self._backend = backend
        self._everyone = backend.key("fledger", "all")
        self.chunks = RedisChunkStore(backend)

    def _file_key(self, file_id: bytes) -> str:
        return self._backend.key("file", file_id)

    def _ledger(self, sender: bytes) -> str:
        return self._backend.key("fledger", sender)

    async def create(self, record: FileRecord, ttl: float, sender_cap: int,
                     total_cap: int) -> tuple[FileRecord, bool]:
        ledger = self._ledger(record.sender)
        fields = [b"sender", record.sender, b"recipient", record.recipient,
                  b"size", record.file_size, b"charge", record.charge,
                  b"expires", repr(record.expires_at), b"bytes", 0, b"count", 0,
                  b"max", -1, b"ledger", ledger]
        outcome = await self._backend.script(
            _CREATE, [self._file_key(record.file_id)],
            [record.file_id, self._everyone, ledger, ttl_ms(ttl), sender_cap, total_cap,
             *fields])
        if outcome == -1:
            raise StoreFull("this identity's file storage quota is used up")
        if outcome == -2:
            raise StoreFull("the relay's file storage is full")
        if outcome == 1:
            return FileRecord(file_id=record.file_id, sender=record.sender,
                              recipient=record.recipient, file_size=record.file_size,
                              charge=record.charge, expires_at=record.expires_at), True
        existing = await self.get(record.file_id)
        if existing is None:  # it expired in between: a rare race; try once more
            return await self.create(record, ttl, sender_cap, total_cap)
        return existing, False

    async def get(self, file_id: bytes, part: int | None = None,
                  all_parts: bool = False) -> FileRecord | None:
        key = self._file_key(file_id)
        if all_parts:
            flat = await self._backend.run(lambda redis: redis.execute_command("HGETALL", key))
            return _record(file_id, _pairs(flat)) if flat else None
        names = list(_SUMMARY_FIELDS)
        if part is not None:
            names += [b"s%d" % part, b"p%d" % part]
        values = await self._backend.run(
            lambda redis: redis.execute_command("HMGET", key, *names))
        fields = {name: value for name, value in zip(names, values, strict=True)
                  if value is not None}
        if b"sender" not in fields:
            return None
        return _record(file_id, fields)

    async def put_part(self, file_id: bytes, request: PutRequest
                       ) -> tuple[str, PartInfo | None]:
        info = request.info
        outcome, old, old_size = await self._backend.script(
            _PUT_PART, [self._file_key(file_id)],
            [file_id, self._everyone, request.part, info.size, info.blob + info.nonce,
             1 if request.last else 0, request.max_parts, request.max_bytes,
             ttl_ms(request.ttl), ttl_ms(request.complete_ttl)])
        outcome = outcome.decode() if isinstance(outcome, bytes) else outcome
        replaced = None
        if isinstance(old, bytes) and len(old) >= BLOB_BYTES:
            replaced = PartInfo(old_size, old[BLOB_BYTES:], old[:BLOB_BYTES])
        return outcome, replaced

    async def delete(self, file_id: bytes) -> FileRecord | None:
        flat = await self._backend.script(_DELETE, [self._file_key(file_id)],
                                          [file_id, self._everyone])
        return _record(file_id, _pairs(flat)) if flat else None

    async def usage(self, sender: bytes | None = None) -> int:
        ledger = self._everyone if sender is None else self._ledger(sender)
        return await self._backend.script(_USAGE, [], [ledger])


class RedisChunkStore:
    """Chunks as Redis strings, for relay nodes that share Redis but no file system."""

    # Chunks deleted per DEL command when a file goes.
    BATCH = 256

    def __init__(self, backend: RedisBackend) -> None:
        self._backend = backend
        self._pattern = backend.key("chunk") + ":*"

    def _key(self, file_id: bytes, part: int, blob: bytes) -> str:
        return self._backend.key("chunk", file_id, str(part), blob)

    async def write(self, file_id: bytes, part: int, blob: bytes, data: bytes,
                    ttl: float) -> None:
        key = self._key(file_id, part, blob)
        await self._backend.run(lambda redis: redis.execute_command(
            "SET", key, data, "PX", ttl_ms(ttl)))

    async def read(self, file_id: bytes, part: int, blob: bytes) -> bytes | None:
        key = self._key(file_id, part, blob)
        return await self._backend.run(lambda redis: redis.execute_command("GET", key))

    async def remove(self, file_id: bytes, part: int, blob: bytes) -> None:
        await self._delete([self._key(file_id, part, blob)])

    async def _delete(self, keys: list[str]) -> None:
        for start in range(0, len(keys), self.BATCH):
            batch = keys[start:start + self.BATCH]
            await self._backend.run(lambda redis, b=batch: redis.execute_command("DEL", *b))

    async def remove_file(self, file_id: bytes, record: FileRecord | None) -> None:
        if record is not None:
            await self._delete([self._key(file_id, p, i.blob) for p, i in record.parts.items()])
        # Chunks of writes the record never got to point at expire on their own TTL.

    async def sweep(self, lookup: Callable[[bytes], Awaitable[FileRecord | None]],
                    older_than: float) -> int:
        """Delete chunks no live record points at and that no one touched since
        older_than (OBJECT IDLETIME: an orphan is never read again)."""
        min_idle = None
        removed = 0
        cursor = b"0"
        records: dict[bytes, FileRecord | None] = {}
        while True:
            cursor, keys = await self._backend.run(lambda redis, c=cursor: redis.execute_command(
                "SCAN", c, "MATCH", self._pattern, "COUNT", 1000))
            for key in keys:
                try:
                    _, _, fid_text, part_text, blob_text = key.decode().split(":")
                    fid = urlsafe_b64decode(fid_text + "=" * (-len(fid_text) % 4))
                    blob = urlsafe_b64decode(blob_text + "=" * (-len(blob_text) % 4))
                    part = int(part_text)
                except ValueError:
                    continue
                if fid not in records:
                    records[fid] = await lookup(fid)
                record = records[fid]
                info = record.parts.get(part) if record else None
                if info is not None and info.blob == blob:
                    continue
                if min_idle is None:
                    min_idle = self._backend.clock.seconds() - older_than
                idle = await self._backend.run(
                    lambda redis, k=key: redis.execute_command("OBJECT", "IDLETIME", k))
                if idle is not None and idle >= min_idle:
                    await self._backend.run(lambda redis, k=key: redis.execute_command("DEL", k))
                    removed += 1
            if cursor in (b"0", 0, "0"):
                return removed
