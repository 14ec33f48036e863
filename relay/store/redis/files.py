"""File metadata (and, for chunk_store = "store", chunks) in Redis.

Keys (every one with a TTL), each in its owner's hash slot (relay.store.redis.keys):
    relay:{f.<file_id>}:file   HASH, expiring with the file. Fields: sender, recipient,
                              client, size, expires (Unix s), maxc (max_charge), charged,
                              reserved, runtil (when the reservation lapses, ms on Redis's
                              clock), bytes, count, max, last (once known), gen (a random
                              id of this incarnation of the file) and ver (bumped by every
                              part stored), and per part n: s<n> (chunk size), c<n> (its
                              charge) and p<n> (8-byte blob id + chunk nonce).
    relay:{f.<file_id>}:chunk:<part>:<blob>   STRING, a chunk, expiring with its file at
                              the latest (so one file's chunks go in one multi-key DEL).
    relay:{i.<sender>}:fl:{exp,rexp,amt,sum}  the ledger of a sender identity
    relay:{c.<client>}:fl:{exp,rexp,amt,sum}  the ledger of a client network
    relay:{all}:fl:{exp,rexp,amt,sum}         the relay-wide ledger
A ledger holds an entry per file (member "f"<file_id>: its charge c, its reservation r and
its "gen:ver", absolute amounts, and the file's expiry in exp, its reservation's deadline
in rexp), holds (member "h"<token>: growth set aside for one part while it is stored, with
a deadline in rexp) and the sums of both (charged, reserved) that the caps are checked
against. A script touching a ledger first reaps what has expired, so an expired file's
charge, a lapsed reservation and a hold left behind by a crash are released without any
background job; the ledger keys expire with their last deadline.

The file's record is the truth; ledgers follow it, one script per owner (Redis Cluster runs
nothing else), in order, each undone when a later one refuses:
- create: the three ledgers take the file's entry (caps checked; one round trip for the
  three), then the record is created; if a ledger refused or the record exists, the
  entries just taken are removed again (2 round trips, 3 when undone).
- put_part: the record checks the part and, if the file's charged + reserved (or its
  reservation) does not grow, stores it at once; else it answers the growth, the three
  ledgers hold it (caps checked), and the record stores the part if the growth still fits
  what is held (parts of one file racing each other: held again otherwise). Then the
  ledgers are set to the record's absolute amounts, newer versions only, releasing the
  holds (2 round trips, 4 when the file grows). A ledger so never counts less than the
  records until a crash between two steps, and a refused part changes nothing.
- delete: the record is deleted (and returned), then its entries leave its ledgers.
Deadlines are computed once, by the step that sets them, and handed on as absolute times,
so a ledger releases a charge exactly when the record expires.

At maxmemory (noeviction) Redis refuses only a script's first write that could grow memory
(it cannot stop a script half-way), so a script refused there has changed nothing; the
scripts that release (undo, settle, delete, usage) start with a write that cannot be
refused (a PEXPIRE to the TTL the key has), so they run on a full Redis too.
"""

from __future__ import annotations

import os
from base64 import urlsafe_b64decode
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from twisted.internet.defer import Deferred, gatherResults
from twisted.logger import Logger
from twisted.python.failure import Failure

from relay.store.errors import StoreError, StoreFull, StoreUnavailable
from relay.store.interfaces.files import (
    FileCaps,
    FileRecord,
    PartInfo,
    PutRequest,
)
from relay.store.redis import RedisBackend
from relay.store.redis.keys import KeyNames, b64
from relay.store.redis.scripting import PRELUDE
from relay.store.redis.sessions import ttl_ms

log = Logger(namespace="relay.store.redis")

BLOB_BYTES = 8
_SUMMARY_FIELDS = [b"sender", b"recipient", b"client", b"size", b"expires", b"maxc",
                   b"charged", b"reserved", b"runtil", b"bytes", b"count", b"max", b"last"]
# How often put_part holds again when parts of the same file keep changing its growth.
MAX_HOLDS = 8
# Files whose ledgers a node remembers (to hold a part's growth before asking the record).
FILES_REMEMBERED = 4096

# -- ledgers: KEYS exp, rexp, amt, sum of ONE ledger -------------------------------------

_LEDGER_LUA = PRELUDE + """
local EXP, REXP, AMT, SUM = KEYS[1], KEYS[2], KEYS[3], KEYS[4]

local function sum(field)
  return tonumber(redis.call('HGET', SUM, field) or '0')
end

local function amount(field)
  return tonumber(redis.call('HGET', AMT, field) or '0')
end

local function adjust(charged, reserved)
  if charged ~= 0 then redis.call('HINCRBY', SUM, 'charged', charged) end
  if reserved ~= 0 then redis.call('HINCRBY', SUM, 'reserved', reserved) end
end

-- At maxmemory Redis refuses only a script's first write that may grow memory: this one
-- cannot (the TTL the key has, or none on an absent key), so what follows runs.
local function first_write_is_free()
  local ttl = redis.call('PTTL', SUM)
  if ttl == -2 then redis.call('PEXPIRE', SUM, 1)
  elseif ttl == -1 then redis.call('PERSIST', SUM)
  else redis.call('PEXPIRE', SUM, ttl) end
end

-- Release an entry ("f"<file_id>) or a hold ("h"<token>) entirely.
local function forget(m)
  adjust(-amount('c' .. m), -amount('r' .. m))
  redis.call('HDEL', AMT, 'c' .. m, 'r' .. m, 'g' .. m)
  redis.call('ZREM', EXP, m)
  redis.call('ZREM', REXP, m)
end

-- A deadline in rexp passed: a file's reservation lapses, a hold goes.
local function lapse(m)
  if string.sub(m, 1, 1) == 'h' then return forget(m) end
  adjust(0, -amount('r' .. m))
  redis.call('HDEL', AMT, 'r' .. m)
  redis.call('ZREM', REXP, m)
end

local function reap(now)
  local gone = redis.call('ZRANGEBYSCORE', EXP, '-inf', now, 'LIMIT', 0, 1000)
  for _, m in ipairs(gone) do forget(m) end
  local lapsed = redis.call('ZRANGEBYSCORE', REXP, '-inf', now, 'LIMIT', 0, 1000)
  for _, m in ipairs(lapsed) do lapse(m) end
end

-- Every key lives until the ledger's last deadline; an empty ledger goes.
local function refresh()
  local last = 0
  for _, key in ipairs({EXP, REXP}) do
    local top = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
    if #top > 0 and tonumber(top[2]) > last then last = tonumber(top[2]) end
  end
  if last == 0 then
    redis.call('DEL', EXP, REXP, AMT, SUM)
    return
  end
  for _, key in ipairs(KEYS) do redis.call('PEXPIREAT', key, last) end
end

-- Why growing this ledger by `grow` (charged + reserved) and `grow_reserved` is refused
-- ('bytes' or 'reserved'), or false.
local function over(grow, grow_reserved, byte_cap, reserved_cap)
  if grow > 0 and sum('charged') + sum('reserved') + grow > byte_cap then
    return 'bytes'
  end
  if grow_reserved > 0 and sum('reserved') + grow_reserved > reserved_cap then
    return 'reserved'
  end
  return false
end

-- Set a file's entry to absolute amounts and deadlines (a past reservation: none).
local function set(m, charged, reserved, expiry, reserved_until, version, now)
  if reserved_until <= now then reserved = 0 end
  adjust(charged - amount('c' .. m), reserved - amount('r' .. m))
  redis.call('HSET', AMT, 'c' .. m, charged, 'g' .. m, version)
  redis.call('ZADD', EXP, expiry, m)
  if reserved > 0 then
    redis.call('HSET', AMT, 'r' .. m, reserved)
    redis.call('ZADD', REXP, reserved_until, m)
  else
    redis.call('HDEL', AMT, 'r' .. m)
    redis.call('ZREM', REXP, m)
  end
end

local function split(version)
  local gen, ver = string.match(version or '', '^(.*):(%d+)$')
  return gen, tonumber(ver or '0')
end
"""

# A new file's entry, unless the ledger has one (a live file: create changes nothing).
# ARGV: file_id, gen, reserved, ttl ms, stall ms, byte cap, reservation cap.
# Returns {1, expiry, reservation deadline} (set), {0} (there is one), or {why refused}.
_LEDGER_CREATE = _LEDGER_LUA + """
local now = now_ms()
reap(now)
local m = 'f' .. ARGV[1]
if redis.call('ZSCORE', EXP, m) then
  refresh()
  return {0}
end
local reserved = tonumber(ARGV[3])
local refused = over(reserved, reserved, tonumber(ARGV[6]), tonumber(ARGV[7]))
if refused then
  refresh()
  return {refused}
end
local ttl = tonumber(ARGV[4])
local expiry, reserved_until = now + ttl, now + math.min(tonumber(ARGV[5]), ttl)
set(m, 0, reserved, expiry, reserved_until, ARGV[2] .. ':1', now)
refresh()
return {1, expiry, reserved_until}
"""

# Undo _LEDGER_CREATE, or delete: remove the file's entry if it is of this gen (any: "").
# ARGV: file_id, gen.
_LEDGER_REMOVE = _LEDGER_LUA + """
first_write_is_free()
reap(now_ms())
local m = 'f' .. ARGV[1]
local gen = split(redis.call('HGET', AMT, 'g' .. m))
if ARGV[2] == '' or gen == ARGV[2] then forget(m) end
refresh()
return 1
"""

# Set aside growth for a part about to be stored (caps checked).
# ARGV: token, growth of charged + reserved, growth of reserved, lifetime ms, byte cap,
# reservation cap. Returns 'OK' or why refused.
_LEDGER_HOLD = _LEDGER_LUA + """
local now = now_ms()
reap(now)
local grow, grow_reserved = tonumber(ARGV[2]), tonumber(ARGV[3])
local refused = over(grow, grow_reserved, tonumber(ARGV[5]), tonumber(ARGV[6]))
if refused then
  refresh()
  return refused
end
local m = 'h' .. ARGV[1]
adjust(grow - grow_reserved, grow_reserved)
redis.call('HSET', AMT, 'c' .. m, grow - grow_reserved, 'r' .. m, grow_reserved)
redis.call('ZADD', REXP, now + tonumber(ARGV[4]), m)
refresh()
return 'OK'
"""

# Follow the record: set the file's entry to its amounts if this is a newer version of the
# same gen (or, with force, unless the entry has this gen at this version or newer), and
# release the holds named. ARGV: file_id, gen, ver, charged, reserved, expiry, reservation
# deadline, force (0/1), the holds' tokens.
_LEDGER_SETTLE = _LEDGER_LUA + """
first_write_is_free()
local now = now_ms()
reap(now)
for i = 9, #ARGV do
  local h = 'h' .. ARGV[i]
  if redis.call('ZSCORE', REXP, h) then forget(h) end
end
local m = 'f' .. ARGV[1]
local gen, ver = split(redis.call('HGET', AMT, 'g' .. m))
local new_ver = tonumber(ARGV[3])
local newer = gen == ARGV[2] and ver < new_ver
if ARGV[8] == '1' then newer = gen ~= ARGV[2] or ver < new_ver end
if newer and tonumber(ARGV[6]) > now then
  set(m, tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7]),
      ARGV[2] .. ':' .. ARGV[3], now)
end
refresh()
return 1
"""

# Returns the ledger's {charged, reserved} after reaping.
_USAGE = _LEDGER_LUA + """
first_write_is_free()
reap(now_ms())
refresh()
return {sum('charged'), sum('reserved')}
"""

# -- records: KEYS the file's record --------------------------------------------------------

_RECORD_LUA = PRELUDE + """
local SUMMARY = {'sender', 'recipient', 'client', 'size', 'expires', 'maxc', 'charged',
                 'reserved', 'runtil', 'bytes', 'count', 'max', 'last'}
local function summary(first)
  local out = {first}
  local values = redis.call('HMGET', KEYS[1], unpack(SUMMARY))
  for i = 1, #SUMMARY do table.insert(out, values[i]) end
  return out
end
"""

# ARGV: gen, ttl ms, stall ms, the latest expiry and reservation deadline the ledgers took
# (0: none), reserved, then field/value pairs. Returns {1 (created) or 0 (it exists), the
# record's expiry (ms on Redis's clock), the summary fields (_SUMMARY_FIELDS)}.
_CREATE = _RECORD_LUA + """
if redis.call('EXISTS', KEYS[1]) == 1 then
  local found = summary(0)
  table.insert(found, 2, now_ms() + redis.call('PTTL', KEYS[1]))
  return found
end
local now = now_ms()
local ttl = tonumber(ARGV[2])
local expiry, reserved_until = now + ttl, now + math.min(tonumber(ARGV[3]), ttl)
if tonumber(ARGV[4]) > 0 then expiry = math.min(expiry, tonumber(ARGV[4])) end
if tonumber(ARGV[5]) > 0 then reserved_until = math.min(reserved_until, tonumber(ARGV[5])) end
local fields = {}
for i = 7, #ARGV do table.insert(fields, ARGV[i]) end
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('HSET', KEYS[1], 'reserved', ARGV[6], 'runtil', reserved_until, 'gen', ARGV[1],
           'ver', 1)
redis.call('PEXPIREAT', KEYS[1], expiry)
local created = summary(1)
table.insert(created, 2, expiry)
return created
"""

# ARGV: part, size, blob+nonce, last (0/1), max_parts, max_bytes, ttl ms, complete ttl ms,
# stall ms, the part's charge, window, part_overhead, growth held (charged + reserved),
# reservation growth held.
# Returns {'OK', replaced blob+nonce or false, replaced size, charged, reserved, expiry,
# reservation deadline, gen, ver, sender, client} (stored), {'HOLD', growth, reservation
# growth, sender, client} (not stored: it grows beyond what is held) or {outcome}.
_PUT_PART = _RECORD_LUA + """
if redis.call('EXISTS', KEYS[1]) == 0 then return {'NOT_FOUND'} end
local now = now_ms()
local part, size, last = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[4] == '1'
local max_parts = tonumber(ARGV[5])
local f = redis.call('HMGET', KEYS[1], 'bytes', 'count', 'max', 'last', 'sender', 'client',
                     'charged', 'maxc', 'reserved', 'runtil', 'gen', 'ver')
local stored, count, max_part = tonumber(f[1]), tonumber(f[2]), tonumber(f[3])
local last_part = f[4] and tonumber(f[4])
if part >= max_parts then return {'BAD_PART'} end
if last_part and (part > last_part or (last and part ~= last_part)) then
  return {'BAD_PART'}
end
if last and max_part > part then return {'BAD_PART'} end
local old_size = redis.call('HGET', KEYS[1], 's' .. part)
if not old_size and count >= max_parts then return {'BAD_PART'} end
local old, old_charge = false, 0
if old_size then
  old = redis.call('HGET', KEYS[1], 'p' .. part)
  old_charge = tonumber(redis.call('HGET', KEYS[1], 'c' .. part) or '0')
end
stored = stored - tonumber(old_size or '0') + size
if not old_size then count = count + 1 end
if stored > tonumber(ARGV[6]) + tonumber(ARGV[12]) * count then
  return {'TOO_MANY_BYTES'}
end
local charged_before = tonumber(f[7] or '0')
local charged = charged_before - old_charge + tonumber(ARGV[10])
if part > max_part then max_part = part end
if last then last_part = part end
local complete = last_part and count == last_part + 1
local ttl = tonumber(ARGV[7])
if complete then ttl = tonumber(ARGV[8]) end
-- A new part (progress) renews the reservation; a re-sent one only shrinks it.
local reserved_until = tonumber(f[10] or '0')
local reserved_before = 0
if reserved_until > now then reserved_before = tonumber(f[9] or '0') end
local room = math.max(0, tonumber(f[8] or '0') - charged)
local reserved = math.min(reserved_before, room)
if complete then
  reserved = 0
elseif not old_size then
  reserved = math.min(tonumber(ARGV[11]), room)
  reserved_until = now + math.min(tonumber(ARGV[9]), ttl)
end
if reserved == 0 then reserved_until = 0 end
local grow_reserved = math.max(0, reserved - reserved_before)
local grow = math.max(0, charged + reserved - charged_before - reserved_before)
if grow > tonumber(ARGV[13]) or grow_reserved > tonumber(ARGV[14]) then
  return {'HOLD', grow, grow_reserved, f[5], f[6]}
end
local ver = tonumber(f[12] or '0') + 1
redis.call('HSET', KEYS[1], 's' .. part, size, 'p' .. part, ARGV[3], 'c' .. part, ARGV[10],
           'bytes', stored, 'count', count, 'max', max_part, 'charged', charged,
           'reserved', reserved, 'runtil', reserved_until, 'ver', ver)
if last then redis.call('HSET', KEYS[1], 'last', part) end
local expiry = now + ttl
redis.call('PEXPIREAT', KEYS[1], expiry)
return {'OK', old, tonumber(old_size or '0'), charged, reserved, expiry, reserved_until,
        f[11] or '', ver, f[5], f[6]}
"""

# Returns the removed hash (HGETALL) or {}. DEL first: it runs on a full Redis too.
_DELETE = """
local all = redis.call('HGETALL', KEYS[1])
redis.call('DEL', KEYS[1])
return all
"""

# What the ledgers answer, as StoreFull messages: byte caps first, then reservations, each
# in the order sender, client, relay.
_REFUSALS = {
    (b"bytes", 0): "this identity's file storage quota is used up",
    (b"bytes", 1): "this client's file storage quota is used up",
    (b"bytes", 2): "the relay's file storage is full",
    (b"reserved", 0): "this identity has too many uploads open",
    (b"reserved", 1): "this client has too many uploads open",
    (b"reserved", 2): "the relay has too many uploads open",
}


def _caps(caps: FileCaps) -> list[tuple[int, int]]:
    """Per ledger (sender, client, relay): the byte cap and the reservation cap."""
    return [(caps.sender_bytes, caps.sender_reserved), (caps.client_bytes, caps.client_reserved),
            (caps.total_bytes, caps.total_reserved)]


def _refusal(results: Sequence[Any]) -> StoreError | None:
    """The error to raise for the ledgers' answers (a refusal by caps, or Redis's)."""
    for error in results:
        if isinstance(error, StoreError):
            return error
    for kind in (b"bytes", b"reserved"):
        for i, result in enumerate(results):
            why = result[0] if isinstance(result, list) else result
            if why == kind:
                return StoreFull(_REFUSALS[(kind, i)])
    return None


def _int(value: bytes | None, default: int = 0) -> int:
    return default if value is None else int(value)


def _token() -> str:
    return b64(os.urandom(9))


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


def _summary(file_id: bytes, values: Sequence[Any]) -> FileRecord | None:
    fields = {name: value for name, value in zip(_SUMMARY_FIELDS, values, strict=True)
              if value is not None}
    return _record(file_id, fields) if b"sender" in fields else None


class RedisFileStore:
    def __init__(self, backend: RedisBackend) -> None:
        self._backend = backend
        self._names = KeyNames()
        self.chunks = RedisChunkStore(backend, self._names)
        # file_id -> its ledgers' keys, from the last part stored (see put_part).
        self._file_ledgers: dict[bytes, list[list[str]]] = {}
        # Ledger settles behind stored parts' answers (put_part).
        self._settling: set[Deferred] = set()

    def _ledgers(self, sender: bytes, client: str) -> list[list[str]]:
        """The keys of the file's ledgers: its sender's, its client's, the relay's."""
        names = self._names
        return [ledger_keys(prefix) for prefix in (
            names.sender_ledger(sender), names.client_ledger(client), names.everyone_ledger)]

    async def create(self, record: FileRecord, ttl: float, stall_ttl: float,
                     caps: FileCaps) -> tuple[FileRecord, bool]:
        file_id, gen = record.file_id, _token()
        ledgers = self._ledgers(record.sender, record.client)
        taken = await self._backend.scripts([
            (_LEDGER_CREATE, keys, [file_id, gen, record.reserved, ttl_ms(ttl),
                                    ttl_ms(stall_ttl), byte_cap, reserved_cap])
            for keys, (byte_cap, reserved_cap) in zip(ledgers, _caps(caps), strict=True)])
        mine = [keys for keys, result in zip(ledgers, taken, strict=True)
                if isinstance(result, list) and result[0] == 1]
        refused = _refusal(taken)
        if refused is not None:
            await self._undo_create(file_id, gen, mine)
            raise refused
        latest_expiry = min((r[1] for r in taken if r[0] == 1), default=0)
        latest_reservation = min((r[2] for r in taken if r[0] == 1), default=0)
        fields = [b"sender", record.sender, b"recipient", record.recipient,
                  b"client", record.client.encode(), b"size", record.file_size,
                  b"expires", repr(record.expires_at), b"maxc", record.max_charge,
                  b"charged", 0, b"bytes", 0, b"count", 0, b"max", -1]
        try:
            created, expiry, *values = await self._backend.script(
                _CREATE, [self._names.file_record(file_id)],
                [gen, ttl_ms(ttl), ttl_ms(stall_ttl), latest_expiry, latest_reservation,
                 record.reserved, *fields], replicate=True)
        except StoreError:
            await self._undo_create(file_id, gen, mine)
            raise
        stored = _summary(file_id, values)
        if stored is None:
            raise StoreUnavailable("a stored file record is corrupt: no sender")
        if not created:
            await self._undo_create(file_id, gen, mine)
            return stored, False
        if len(mine) < len(ledgers):
            # A ledger had an entry for this file id (a create that crashed, or raced this
            # one and lost): it now follows this record.
            others = [keys for keys in ledgers if keys not in mine]
            await self._settle(file_id, others, [gen, 1, 0, stored.reserved, expiry,
                                                 round(stored.reserved_until * 1000)],
                               force=True, tokens=[])
        return stored, True

    async def _undo_create(self, file_id: bytes, gen: str, ledgers: list[list[str]]) -> None:
        if ledgers:
            await self._backend.scripts([(_LEDGER_REMOVE, keys, [file_id, gen])
                                         for keys in ledgers])

    async def _settle(self, file_id: bytes, ledgers: list[list[str]], state: list[Any],
                      force: bool, tokens: list[str]) -> None:
        """Set the ledgers' entries to the record's state [gen, ver, charged, reserved,
        expiry, reservation deadline] and release the holds. A failure is logged only: the
        record is stored; the holds lapse, and the next part settles again."""
        if not ledgers:
            return
        try:
            results = await self._backend.scripts([
                (_LEDGER_SETTLE, keys, [file_id, *state, 1 if force else 0, *tokens])
                for keys in ledgers])
        except StoreError as e:
            results = [e]
        for result in results:
            if isinstance(result, StoreError):
                log.warn("could not update a file ledger: {error}", error=result)

    def _settle_done(self, result: Any, settling: Deferred) -> None:
        self._settling.discard(settling)
        if isinstance(result, Failure):  # _settle logs store errors; anything else here
            log.failure("settling a file's ledgers failed", result)

    async def _settled(self) -> None:
        """Wait for the ledger settles this node has under way."""
        if self._settling:
            await gatherResults(list(self._settling))

    async def _release(self, ledgers: list[list[str]], tokens: list[str]) -> None:
        if tokens:
            await self._settle(b"", ledgers, ["", 0, 0, 0, 0, 0], False, tokens)

    async def get(self, file_id: bytes, part: int | None = None,
                  all_parts: bool = False) -> FileRecord | None:
        key = self._names.file_record(file_id)
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
        args = [request.part, info.size, info.blob + info.nonce, 1 if request.last else 0,
                request.max_parts, request.max_bytes, ttl_ms(request.ttl),
                ttl_ms(request.complete_ttl), ttl_ms(request.stall_ttl), request.charge,
                request.caps.window, request.part_overhead]
        key = self._names.file_record(file_id)
        held, held_reserved = 0, 0
        tokens: list[str] = []
        ledgers: list[list[str]] = self._file_ledgers.get(file_id) or []
        if ledgers and request.charge > 0:
            # A file seen before: hold what a new part usually grows it by (its charge) in
            # the same round trip as nothing else, rather than ask the record first: one
            # round trip fewer per part. If it is not enough the record says HOLD (below);
            # if the ledgers refuse the guess, the record is asked as for a first part.
            token = _token()
            answers = await self._hold(ledgers, token, request.charge, 0, request)
            tokens.append(token)
            if _refusal(answers) is None:
                held = request.charge
            else:
                await self._release(ledgers, tokens)
                tokens = []
        for _ in range(MAX_HOLDS):
            try:
                result = await self._backend.script(
                    _PUT_PART, [key], [*args, held, held_reserved], replicate=True)
            except StoreError:
                await self._release(ledgers, tokens)
                raise
            outcome = result[0].decode() if isinstance(result[0], bytes) else result[0]
            if outcome == "HOLD":
                _, grow, grow_reserved, sender, client = result
                ledgers = self._ledgers(sender, client.decode())
                token = _token()
                extra, extra_reserved = max(0, grow - held), max(0, grow_reserved - held_reserved)
                answers = await self._hold(ledgers, token, extra, extra_reserved, request)
                tokens.append(token)
                refused = _refusal(answers)
                if refused is not None:
                    await self._release(ledgers, tokens)
                    if any(isinstance(answer, StoreError) for answer in answers):
                        raise refused  # Redis refused (at maxmemory, say)
                    return "FULL", None
                held, held_reserved = held + extra, held_reserved + extra_reserved
                continue
            if outcome != "OK":
                await self._release(ledgers, tokens)
                return outcome, None
            (_, old, old_size, charged, reserved, expiry, reserved_until, gen, ver,
             sender, client) = result
            ledgers = self._ledgers(sender, client.decode())
            if len(self._file_ledgers) >= FILES_REMEMBERED:
                self._file_ledgers.clear()
            self._file_ledgers[file_id] = ledgers
            # The part is stored: answer now and settle the ledgers behind the answer (one
            # round trip less to wait for). Until then the holds count in the ledgers, at
            # least what the settled entry will, so every cap still holds; this node's own
            # ledger reads and deletes wait for its settles (_settled).
            settling = Deferred.fromCoroutine(self._settle(
                file_id, ledgers, [gen, ver, charged, reserved, expiry, reserved_until],
                force=False, tokens=tokens))
            if not settling.called:
                self._settling.add(settling)
                settling.addBoth(self._settle_done, settling)
            replaced = None
            if isinstance(old, bytes) and len(old) >= BLOB_BYTES:
                replaced = PartInfo(old_size, old[BLOB_BYTES:], old[:BLOB_BYTES])
            return outcome, replaced
        await self._release(ledgers, tokens)
        raise StoreUnavailable("the parts of this file kept changing while one was stored")

    async def _hold(self, ledgers: list[list[str]], token: str, extra: int,
                    extra_reserved: int, request: PutRequest) -> list[Any]:
        """Hold growth in the file's three ledgers (caps checked), one round trip."""
        return await self._backend.scripts([
            (_LEDGER_HOLD, keys, [token, extra, extra_reserved,
                                  ttl_ms(min(request.stall_ttl, request.ttl)),
                                  byte_cap, reserved_cap])
            for keys, (byte_cap, reserved_cap) in zip(ledgers, _caps(request.caps),
                                                      strict=True)])

    async def delete(self, file_id: bytes) -> FileRecord | None:
        self._file_ledgers.pop(file_id, None)
        await self._settled()
        flat = await self._backend.script(_DELETE, [self._names.file_record(file_id)], [])
        if not flat:
            return None
        fields = _pairs(flat)
        record = _record(file_id, fields)
        gen = fields.get(b"gen", b"")
        results = await self._backend.scripts([(_LEDGER_REMOVE, keys, [file_id, gen])
                                               for keys in self._ledgers(record.sender,
                                                                         record.client)])
        for result in results:
            if isinstance(result, StoreError):
                log.warn("could not release a deleted file's charge: {error}", error=result)
        return record

    async def _sums(self, sender: bytes | None, client: str | None) -> tuple[int, int]:
        await self._settled()
        if sender is not None and client is not None:
            raise ValueError("usage of a sender or of a client, not both")
        names = self._names
        prefix = names.everyone_ledger if sender is None and client is None else \
            names.sender_ledger(sender) if sender is not None else \
            names.client_ledger(client)  # type: ignore[arg-type]
        charged, reserved = await self._backend.script(_USAGE, ledger_keys(prefix), [])
        return int(charged), int(reserved)

    async def usage(self, sender: bytes | None = None, client: str | None = None) -> int:
        return sum(await self._sums(sender, client))

    async def reserved(self, sender: bytes | None = None, client: str | None = None) -> int:
        return (await self._sums(sender, client))[1]


def ledger_keys(prefix: str) -> list[str]:
    return [f"{prefix}:{part}" for part in ("exp", "rexp", "amt", "sum")]


class RedisChunkStore:
    """Chunks as Redis strings, for relay nodes that share Redis but no file system."""

    # Chunks deleted per DEL command when a file goes.
    BATCH = 256

    def __init__(self, backend: RedisBackend, names: KeyNames | None = None) -> None:
        self._backend = backend
        self._names = names or KeyNames()
        # Braces are not special in SCAN patterns.
        self._pattern = f"{self._names.file(b'')[:-1]}*}}:chunk:*"

    def _key(self, file_id: bytes, part: int, blob: bytes) -> str:
        return self._names.chunk(file_id, part, blob)

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
        # One file's chunks share its slot: a multi-key DEL works on Redis Cluster too.
        for start in range(0, len(keys), self.BATCH):
            batch = keys[start:start + self.BATCH]
            await self._backend.run(lambda redis, b=batch: redis.execute_command("DEL", *b))

    async def remove_file(self, file_id: bytes, record: FileRecord | None) -> None:
        if record is not None:
            await self._delete([self._key(file_id, p, i.blob) for p, i in record.parts.items()])
        # Chunks of writes the record never got to point at expire on their own TTL.

    @staticmethod
    def _parse(key: bytes) -> tuple[bytes, int, bytes]:
        """relay:{f.<file_id>}:chunk:<part>:<blob> -> (file_id, part, blob)."""
        _, tag, kind, part_text, blob_text = key.decode().split(":")
        if kind != "chunk" or not (tag.startswith("{f.") and tag.endswith("}")):
            raise ValueError("not a chunk key")
        fid_text = tag[3:-1]
        fid = urlsafe_b64decode(fid_text + "=" * (-len(fid_text) % 4))
        blob = urlsafe_b64decode(blob_text + "=" * (-len(blob_text) % 4))
        return fid, int(part_text), blob

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
                    fid, part, blob = self._parse(key)
                except ValueError:  # binascii.Error and UnicodeDecodeError too
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
