"""File metadata (and, for chunk_store = "store", chunks) in Redis.

Keys (every one with a TTL):
    file:<file_id>            HASH, expiring with the file. Fields: sender, recipient, client,
                              size, expires (Unix s), maxc (max_charge), charged, reserved,
                              runtil (when the reservation lapses, ms on Redis's clock),
                              bytes, count, max, last (once known), ledger and cledger (the
                              sender's and the client's ledger key prefixes), and per part n:
                              s<n> (chunk size), c<n> (its charge) and p<n> (8-byte blob id +
                              chunk nonce).
    fl:all:{exp,rexp,amt,sum}         the relay-wide ledger
    fl:s:<sender>:{exp,rexp,amt,sum}  one per sender identity
    fl:c:<client>:{exp,rexp,amt,sum}  one per client network
A ledger is a ZSET file_id -> file expiry and one file_id -> reservation expiry (ms, Redis
clock), a HASH of each file's charge (s<file_id>) and reservation (r<file_id>), and a HASH
of their sums (charged, reserved). A script touching a ledger first reaps what has expired,
so an expired file's charge and a lapsed reservation are released without any background
job. The ledger keys expire with their last file. A file's sender and client ledgers are
named in its hash, so scripts that find the file by id reach them in one round trip (single
Redis, not Redis Cluster, like mailboxes).

    chunk:<file_id>:<part>:<blob>   STRING, the chunk, expiring with its file at the latest.
"""

from __future__ import annotations

from base64 import urlsafe_b64decode
from collections.abc import Awaitable, Callable

from relay.store.errors import StoreFull, StoreUnavailable
from relay.store.interfaces.files import (
    FileCaps,
    FileRecord,
    PartInfo,
    PutRequest,
)
from relay.store.redis import RedisBackend
from relay.store.redis.scripting import PRELUDE
from relay.store.redis.sessions import ttl_ms

BLOB_BYTES = 8
_SUMMARY_FIELDS = [b"sender", b"recipient", b"client", b"size", b"expires", b"maxc",
                   b"charged", b"reserved", b"runtil", b"bytes", b"count", b"max", b"last"]

_LEDGER_LUA = PRELUDE + """
-- A ledger is the prefix of its four keys.
local function sum(ledger, field)
  return tonumber(redis.call('HGET', ledger .. ':sum', field) or '0')
end

local function amount(ledger, field)
  return tonumber(redis.call('HGET', ledger .. ':amt', field) or '0')
end

local function adjust(ledger, charged, reserved)
  if charged ~= 0 then redis.call('HINCRBY', ledger .. ':sum', 'charged', charged) end
  if reserved ~= 0 then redis.call('HINCRBY', ledger .. ':sum', 'reserved', reserved) end
end

-- Release a file's whole charge.
local function forget(ledger, id)
  adjust(ledger, -amount(ledger, 's' .. id), -amount(ledger, 'r' .. id))
  redis.call('HDEL', ledger .. ':amt', 's' .. id, 'r' .. id)
  redis.call('ZREM', ledger .. ':exp', id)
  redis.call('ZREM', ledger .. ':rexp', id)
end

-- Release a file's reservation only.
local function lapse(ledger, id)
  adjust(ledger, 0, -amount(ledger, 'r' .. id))
  redis.call('HDEL', ledger .. ':amt', 'r' .. id)
  redis.call('ZREM', ledger .. ':rexp', id)
end

local function reap(ledger, now)
  local gone = redis.call('ZRANGEBYSCORE', ledger .. ':exp', '-inf', now, 'LIMIT', 0, 1000)
  for _, id in ipairs(gone) do forget(ledger, id) end
  local lapsed = redis.call('ZRANGEBYSCORE', ledger .. ':rexp', '-inf', now, 'LIMIT', 0, 1000)
  for _, id in ipairs(lapsed) do lapse(ledger, id) end
end

local function refresh(ledger)
  local keys = {ledger .. ':exp', ledger .. ':rexp', ledger .. ':amt', ledger .. ':sum'}
  local last = redis.call('ZRANGE', keys[1], -1, -1, 'WITHSCORES')
  if #last == 0 then
    redis.call('DEL', unpack(keys))
    return
  end
  for _, key in ipairs(keys) do redis.call('PEXPIREAT', key, last[2]) end
end

-- Set a file's charge, reservation and deadlines in one ledger, adjusting its sums.
local function set(ledger, id, charged, reserved, expiry, reserved_until)
  adjust(ledger, charged - amount(ledger, 's' .. id), reserved - amount(ledger, 'r' .. id))
  redis.call('HSET', ledger .. ':amt', 's' .. id, charged)
  redis.call('ZADD', ledger .. ':exp', expiry, id)
  if reserved > 0 then
    redis.call('HSET', ledger .. ':amt', 'r' .. id, reserved)
    redis.call('ZADD', ledger .. ':rexp', reserved_until, id)
  else
    redis.call('HDEL', ledger .. ':amt', 'r' .. id)
    redis.call('ZREM', ledger .. ':rexp', id)
  end
  refresh(ledger)
end

local function remove(ledger, id)
  forget(ledger, id)
  refresh(ledger)
end

-- ledgers: {sender, client, everyone}; caps: their byte caps, then their reservation caps.
-- Returns why growing them is refused ('bytes1' .. 'reserved3'), or false.
local function over(ledgers, grow, grow_reserved, caps)
  if grow > 0 then
    for i, l in ipairs(ledgers) do
      if sum(l, 'charged') + sum(l, 'reserved') + grow > caps[i] then return 'bytes' .. i end
    end
  end
  if grow_reserved > 0 then
    for i, l in ipairs(ledgers) do
      if sum(l, 'reserved') + grow_reserved > caps[i + 3] then return 'reserved' .. i end
    end
  end
  return false
end

local function caps_from(first)
  local caps = {}
  for i = 0, 5 do caps[i + 1] = tonumber(ARGV[first + i]) end
  return caps
end
"""

# KEYS: file. ARGV: file_id, the global ledger, the sender's ledger, the client's ledger,
# ttl_ms, stall_ms, six caps (FileCaps order), reserved, then field/value pairs.
# Returns 1 (created), 0 (exists), or why the caps refuse it (a string).
_CREATE = _LEDGER_LUA + """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local now = now_ms()
local id = ARGV[1]
local ledgers = {ARGV[3], ARGV[4], ARGV[2]}
for _, l in ipairs(ledgers) do reap(l, now) end
local reserved = tonumber(ARGV[13])
local refused = over(ledgers, reserved, reserved, caps_from(7))
if refused then return refused end
local ttl = tonumber(ARGV[5])
local reserved_until = now + math.min(tonumber(ARGV[6]), ttl)
local fields = {}
for i = 14, #ARGV do table.insert(fields, ARGV[i]) end
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('HSET', KEYS[1], 'reserved', reserved, 'runtil', reserved_until)
redis.call('PEXPIRE', KEYS[1], ttl)
for _, l in ipairs(ledgers) do set(l, id, 0, reserved, now + ttl, reserved_until) end
return 1
"""

# KEYS: file. ARGV: file_id, global ledger, part, size, blob+nonce, last (0/1), max_parts,
# max_bytes, ttl_ms, complete_ttl_ms, stall_ms, the part's charge, window, six caps,
# part_overhead.
# Returns {outcome, replaced blob+nonce or false, replaced size}.
_PUT_PART = _LEDGER_LUA + """
if redis.call('EXISTS', KEYS[1]) == 0 then return {'NOT_FOUND', false, 0} end
local now = now_ms()
local id = ARGV[1]
local part, size, last = tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[6] == '1'
local max_parts = tonumber(ARGV[7])
local f = redis.call('HMGET', KEYS[1], 'bytes', 'count', 'max', 'last', 'ledger', 'cledger',
                     'charged', 'maxc', 'reserved', 'runtil')
local stored, count, max_part = tonumber(f[1]), tonumber(f[2]), tonumber(f[3])
local last_part = f[4] and tonumber(f[4])
if part >= max_parts then return {'BAD_PART', false, 0} end
if last_part and (part > last_part or (last and part ~= last_part)) then
  return {'BAD_PART', false, 0}
end
if last and max_part > part then return {'BAD_PART', false, 0} end
local old_size = redis.call('HGET', KEYS[1], 's' .. part)
if not old_size and count >= max_parts then return {'BAD_PART', false, 0} end
local old, old_charge = false, 0
if old_size then
  old = redis.call('HGET', KEYS[1], 'p' .. part)
  old_charge = tonumber(redis.call('HGET', KEYS[1], 'c' .. part) or '0')
end
stored = stored - tonumber(old_size or '0') + size
if not old_size then count = count + 1 end
if stored > tonumber(ARGV[8]) + tonumber(ARGV[20]) * count then
  return {'TOO_MANY_BYTES', false, 0}
end
local charged_before = tonumber(f[7] or '0')
local charged = charged_before - old_charge + tonumber(ARGV[12])
if part > max_part then max_part = part end
if last then last_part = part end
local complete = last_part and count == last_part + 1
local ttl = tonumber(ARGV[9])
if complete then ttl = tonumber(ARGV[10]) end
-- A new part (progress) renews the reservation; a re-sent one only shrinks it.
local reserved_until = tonumber(f[10] or '0')
local reserved_before = 0
if reserved_until > now then reserved_before = tonumber(f[9] or '0') end
local room = math.max(0, tonumber(f[8] or '0') - charged)
local reserved = math.min(reserved_before, room)
if complete then
  reserved = 0
elseif not old_size then
  reserved = math.min(tonumber(ARGV[13]), room)
  reserved_until = now + math.min(tonumber(ARGV[11]), ttl)
end
if reserved == 0 then reserved_until = 0 end
local ledgers = {f[5], f[6], ARGV[2]}
for _, l in ipairs(ledgers) do reap(l, now) end
local grow_reserved = reserved - reserved_before
if over(ledgers, charged - charged_before + grow_reserved, grow_reserved, caps_from(14)) then
  return {'FULL', false, 0}
end
redis.call('HSET', KEYS[1], 's' .. part, size, 'p' .. part, ARGV[5], 'c' .. part, ARGV[12],
           'bytes', stored, 'count', count, 'max', max_part, 'charged', charged,
           'reserved', reserved, 'runtil', reserved_until)
if last then redis.call('HSET', KEYS[1], 'last', part) end
redis.call('PEXPIRE', KEYS[1], ttl)
for _, l in ipairs(ledgers) do set(l, id, charged, reserved, now + ttl, reserved_until) end
return {'OK', old, tonumber(old_size or '0')}
"""

# KEYS: file. ARGV: file_id, global ledger. Returns the removed hash (HGETALL) or {}.
_DELETE = _LEDGER_LUA + """
local all = redis.call('HGETALL', KEYS[1])
if #all == 0 then return all end
remove(ARGV[2], ARGV[1])
for _, name in ipairs({'ledger', 'cledger'}) do
  local ledger = redis.call('HGET', KEYS[1], name)
  if ledger then remove(ledger, ARGV[1]) end
end
redis.call('DEL', KEYS[1])
return all
"""

# ARGV: a ledger. Returns {charged, reserved} after reaping.
_USAGE = _LEDGER_LUA + """
reap(ARGV[1], now_ms())
refresh(ARGV[1])
return {sum(ARGV[1], 'charged'), sum(ARGV[1], 'reserved')}
"""

# What over() answers, as StoreFull messages.
_REFUSALS = {
    b"bytes1": "this identity's file storage quota is used up",
    b"bytes2": "this client's file storage quota is used up",
    b"bytes3": "the relay's file storage is full",
    b"reserved1": "this identity has too many uploads open",
    b"reserved2": "this client has too many uploads open",
    b"reserved3": "the relay has too many uploads open",
}


def _caps(caps: FileCaps) -> list[int]:
    return [caps.sender_bytes, caps.client_bytes, caps.total_bytes, caps.sender_reserved,
            caps.client_reserved, caps.total_reserved]


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
            file_size=int(fields[b"size"]), expires_at=float(fields[b"expires"]),
            client=fields.get(b"client", b"").decode(), max_charge=_int(fields.get(b"maxc")),
            reserved=_int(fields.get(b"reserved")),
            reserved_until=_int(fields.get(b"runtil")) / 1000,
            charged=_int(fields.get(b"charged")), bytes_stored=_int(fields.get(b"bytes")),
            part_count=_int(fields.get(b"count")), max_part=_int(fields.get(b"max"), -1),
            last_part=None if last is None else int(last), parts=parts)
    except (KeyError, TypeError, ValueError) as e:
        raise StoreUnavailable(f"a stored file record is corrupt: {e}") from None


def _pairs(flat: list) -> dict[bytes, bytes]:
    return dict(zip(flat[::2], flat[1::2], strict=True))


class RedisFileStore:
    def __init__(self, backend: RedisBackend) -> None:
        self._backend = backend
        self._everyone = backend.key("fl", "all")
        self.chunks = RedisChunkStore(backend)

    def _file_key(self, file_id: bytes) -> str:
        return self._backend.key("file", file_id)

    def _sender_ledger(self, sender: bytes) -> str:
        return self._backend.key("fl", "s", sender)

    def _client_ledger(self, client: str) -> str:
        # Client keys hold ":" (IPv6): as bytes they are base64url-encoded into the key.
        return self._backend.key("fl", "c", client.encode())

    async def create(self, record: FileRecord, ttl: float, stall_ttl: float,
                     caps: FileCaps) -> tuple[FileRecord, bool]:
        ledger = self._sender_ledger(record.sender)
        client_ledger = self._client_ledger(record.client)
        fields = [b"sender", record.sender, b"recipient", record.recipient,
                  b"client", record.client.encode(), b"size", record.file_size,
                  b"expires", repr(record.expires_at), b"maxc", record.max_charge,
                  b"charged", 0, b"bytes", 0, b"count", 0, b"max", -1,
                  b"ledger", ledger, b"cledger", client_ledger]
        outcome = await self._backend.script(
            _CREATE, [self._file_key(record.file_id)],
            [record.file_id, self._everyone, ledger, client_ledger, ttl_ms(ttl),
             ttl_ms(stall_ttl), *_caps(caps), record.reserved, *fields], replicate=True)
        if isinstance(outcome, bytes):
            raise StoreFull(_REFUSALS.get(outcome, "the relay's file storage is full"))
        if outcome == 1:
            created = await self.get(record.file_id)
            if created is not None:
                return created, True
        existing = await self.get(record.file_id)
        if existing is None:  # it expired in between: a rare race; try once more
            return await self.create(record, ttl, stall_ttl, caps)
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
             ttl_ms(request.ttl), ttl_ms(request.complete_ttl), ttl_ms(request.stall_ttl),
             request.charge, request.caps.window, *_caps(request.caps),
             request.part_overhead], replicate=True)
        outcome = outcome.decode() if isinstance(outcome, bytes) else outcome
        replaced = None
        if isinstance(old, bytes) and len(old) >= BLOB_BYTES:
            replaced = PartInfo(old_size, old[BLOB_BYTES:], old[:BLOB_BYTES])
        return outcome, replaced

    async def delete(self, file_id: bytes) -> FileRecord | None:
        flat = await self._backend.script(_DELETE, [self._file_key(file_id)],
                                          [file_id, self._everyone])
        return _record(file_id, _pairs(flat)) if flat else None

    async def _sums(self, sender: bytes | None, client: str | None) -> tuple[int, int]:
        if sender is not None and client is not None:
            raise ValueError("usage of a sender or of a client, not both")
        ledger = self._everyone if sender is None and client is None else \
            self._sender_ledger(sender) if sender is not None else \
            self._client_ledger(client)  # type: ignore[arg-type]
        charged, reserved = await self._backend.script(_USAGE, [], [ledger])
        return int(charged), int(reserved)

    async def usage(self, sender: bytes | None = None, client: str | None = None) -> int:
        return sum(await self._sums(sender, client))

    async def reserved(self, sender: bytes | None = None, client: str | None = None) -> int:
        return (await self._sums(sender, client))[1]


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
            "SET", key, data, "PX", ttl_ms(ttl)), replicate=True)

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
