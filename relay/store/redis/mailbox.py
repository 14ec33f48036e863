"""Mailboxes and message quotas in Redis: every script touches one owner's keys (one Redis
Cluster hash slot), and work that spans owners runs one script per owner, in order.

An identity's mailbox (relay.store.redis.keys, all in `{i.<hpk>}`), five keys expiring when
its longest-lived message does:
    ...:mbox:order    ZSET msg_id -> upload sequence (download order, oldest first)
    ...:mbox:expiry   ZSET msg_id -> deadline, ms on Redis's clock
    ...:mbox:records  HASH msg_id -> record (opaque bytes)
    ...:mbox:tokens   HASH msg_id -> "<token>\\n<sender>\\n<client>": the message's storage
                      token and the owners of the accounts it is charged to (base64url; either
                      owner may be empty)
    ...:mbox:size     STRING bytes charged to the mailbox
Expired messages are purged by the next script touching the mailbox, before it counts, reads
or checks the caps.

Quota accounts (relay.store.quota), one per sender identity (in its slot, `{i.<sender>}`)
and per client network (`{c.<client>}`), two keys each, expiring with their last charge:
    ...:acct:expiry   ZSET member -> deadline; member: "<recipient>:<msg_id>", the message
    ...:acct:sizes    HASH member -> bytes charged, and "total" -> their sum
A charge for a message already charged to the account replaces it (a re-upload pays only
the difference). Charges lapse at their deadline (trimmed by the next check: no sweeper).
Upload rate: the client's `...:rate` HASH {w: window number, n: bytes}, PX = window.

An upload, as a /command or not: first, in one round trip, the sender's script (the
command's session check and nonce claim, then the sender's charge) and the client's (rate
and charge); then the recipient's mailbox script, with messageStatus's token pointer
(`relay:token:<token>` -> "<recipient>\\n<msg_id>", PX = TTL) written behind it. A refusal
undoes the charges made before it (restoring what a re-upload replaced); a message removed
by a delete or a replacement releases its charges afterwards. A relay that dies in between
leaves a charge behind until its deadline (the message's own), never a message uncharged.

At maxmemory (noeviction) Redis refuses only a script's first write that could grow memory
(it cannot stop a script half-way), so a script refused there has changed nothing.
"""

from __future__ import annotations

from base64 import urlsafe_b64decode
from collections import defaultdict
from typing import Any

import attrs
from twisted.logger import Logger

from relay.store.errors import StoreError, StoreFull, StoreRateLimited
from relay.store.interfaces.mailbox import (
    CountOp,
    DeleteOp,
    MailboxOp,
    MessageTTLOp,
    ReadOp,
    StoreMessageOp,
)
from relay.store.interfaces.sessions import Claim
from relay.store.quota import (
    CLIENT_FULL,
    CLIENT_RATE,
    MAILBOX_BYTES,
    MAILBOX_FULL,
    MESSAGE_OVERHEAD,
    SENDER_FULL,
    MessageQuota,
    as_quota,
)
from relay.store.redis import RedisBackend
from relay.store.redis.keys import KeyNames, b64
from relay.store.redis.scripting import PRELUDE
from relay.store.redis.sessions import ttl_ms

log = Logger(namespace="relay.store")

OVERHEAD = MESSAGE_OVERHEAD

# What a script returns first: done, a claim that failed (sessions_lua), or a refusal.
DONE = 0
MAILBOX_IS_FULL, MAILBOX_BYTES_USED, SENDER_USED, CLIENT_USED, RATE_USED = 11, 12, 13, 14, 15

_REFUSALS: dict[int, tuple[type[StoreError], str]] = {
    MAILBOX_IS_FULL: (StoreFull, MAILBOX_FULL),
    MAILBOX_BYTES_USED: (StoreFull, MAILBOX_BYTES),
    SENDER_USED: (StoreFull, SENDER_FULL),
    CLIENT_USED: (StoreFull, CLIENT_FULL),
    RATE_USED: (StoreRateLimited, CLIENT_RATE),
}

# Every script is the prelude, these helpers, then steps that each take their KEYS and ARGV
# in turn (so steps compose), and `return {DONE, result, extra, undo}` or {status}.
_HELPERS = PRELUDE + f"local OVERHEAD = {OVERHEAD}\n" + """
local kpos, apos = 0, 0
local function take_keys(n)
  local t = {}
  for i = 1, n do t[i] = KEYS[kpos + i] end
  kpos = kpos + n
  return t
end
local function take_args(n)
  local t = {}
  for i = 1, n do t[i] = ARGV[apos + i] end
  apos = apos + n
  return t
end
local function take_rest()
  local t = {}
  for i = apos + 1, #ARGV do t[#t + 1] = ARGV[i] end
  apos = #ARGV
  return t
end
local result, extra, undo = false, {}, {}
"""

_ACCOUNT_LUA = """
-- An account is {expiry ZSET, sizes HASH}.
local function account_refresh(A)
  local last = redis.call('ZRANGE', A[1], -1, -1, 'WITHSCORES')
  if #last == 0 then
    redis.call('DEL', A[1], A[2])
  else
    redis.call('PEXPIREAT', A[1], last[2])
    redis.call('PEXPIREAT', A[2], last[2])
  end
end

-- Release one charge (nothing if it is already released); the caller refreshes the TTLs.
local function account_release(A, member)
  if redis.call('ZREM', A[1], member) == 0 then return end
  local size = tonumber(redis.call('HGET', A[2], member) or '0')
  redis.call('HDEL', A[2], member)
  redis.call('HINCRBY', A[2], 'total', -size)
end

local function account_trim(A, now)
  local first = redis.call('ZRANGE', A[1], 0, 0, 'WITHSCORES')
  if #first == 0 or tonumber(first[2]) > now then return end
  for _, member in ipairs(redis.call('ZRANGEBYSCORE', A[1], '-inf', now)) do
    account_release(A, member)
  end
  account_refresh(A)
end

-- Would charging size for member keep the account within its caps (0: none)? A member
-- already charged is replaced, so it pays only the difference.
local function account_fits(A, member, size, max_messages, max_bytes, now)
  account_trim(A, now)
  local old = tonumber(redis.call('HGET', A[2], member) or '0')
  local messages = redis.call('ZCARD', A[1])
  if redis.call('ZSCORE', A[1], member) == false then messages = messages + 1 end
  local used = tonumber(redis.call('HGET', A[2], 'total') or '0') - old + size
  return not ((max_messages > 0 and messages > max_messages) or
              (max_bytes > 0 and used > max_bytes))
end

-- Charge (or re-charge) member; returns what it replaced: {size, deadline} or {false, false}.
local function account_set(A, member, deadline, size)
  local old_size = redis.call('HGET', A[2], member)
  local old_deadline = redis.call('ZSCORE', A[1], member)
  redis.call('ZADD', A[1], deadline, member)
  redis.call('HSET', A[2], member, size)
  redis.call('HINCRBY', A[2], 'total', size - tonumber(old_size or '0'))
  local last = redis.call('ZRANGE', A[1], -1, -1, 'WITHSCORES')
  if tonumber(last[2]) <= deadline then
    redis.call('PEXPIREAT', A[1], deadline)
    redis.call('PEXPIREAT', A[2], deadline)
  end
  return {old_size or false, old_deadline or false}
end
"""

# KEYS: the account's two; ARGV: member, ttl ms, size, max messages, max bytes.
_SENDER_STEP = """
do
  local A, a = take_keys(2), take_args(5)
  local now, size = now_ms(), tonumber(a[3])
  if not account_fits(A, a[1], size, tonumber(a[4]), tonumber(a[5]), now) then
    return {SENDER_USED}
  end
  undo = account_set(A, a[1], now + tonumber(a[2]), size)
end
"""

# KEYS: the client's two account keys, its rate key; ARGV: member, ttl ms, size, max
# messages, max bytes, record bytes, bytes per window (0: none), window ms.
_CLIENT_STEP = """
do
  local A, a = take_keys(3), take_args(8)
  local now, size, limit = now_ms(), tonumber(a[3]), tonumber(a[7])
  local rate_key, window, used = A[3], tonumber(a[8]), 0
  local number = math.floor(now / window)
  if limit > 0 then
    local w = redis.call('HMGET', rate_key, 'w', 'n')
    if tonumber(w[1] or '-1') == number then used = tonumber(w[2] or '0') end
    if used + tonumber(a[6]) > limit then return {RATE_USED} end
  end
  if not account_fits(A, a[1], size, tonumber(a[4]), tonumber(a[5]), now) then
    return {CLIENT_USED}
  end
  undo = account_set(A, a[1], now + tonumber(a[2]), size)
  if limit > 0 then
    redis.call('HSET', rate_key, 'w', number, 'n', used + tonumber(a[6]))
    redis.call('PEXPIRE', rate_key, window)
    undo[3], undo[4] = number, tonumber(a[6])
  end
end
"""

# Undo a charge this upload made. KEYS: the account's two (and the rate key); ARGV: member,
# the size and deadline it replaced ('' : none), (the rate's window number and bytes).
_UNDO = _HELPERS + _ACCOUNT_LUA + """
local A, a = take_keys(#KEYS), take_rest()
if a[2] == '' then
  account_release(A, a[1])
else
  account_set(A, a[1], tonumber(a[3]), tonumber(a[2]))
end
account_refresh(A)
if A[3] then
  local w = redis.call('HMGET', A[3], 'w', 'n')
  if tonumber(w[1] or '-1') == tonumber(a[4]) then
    redis.call('HSET', A[3], 'n', math.max(0, tonumber(w[2]) - tonumber(a[5])))
  end
end
return 1
"""

# Release charges of removed messages. KEYS: the account's two; ARGV: the members.
_RELEASE = _HELPERS + _ACCOUNT_LUA + """
local A = take_keys(2)
for _, member in ipairs(take_rest()) do account_release(A, member) end
account_refresh(A)
return 1
"""

_MAILBOX_LUA = """
-- M: the mailbox's order, expiry, records, tokens and size keys.
local M = {}

-- The message's token and the owners charged for it (nil if there is no such id).
local function entry_of(id)
  local entry = redis.call('HGET', M[4], id)
  if not entry then return nil end
  local token, sender, client = string.match(entry, '^([^\\n]*)\\n([^\\n]*)\\n(.*)$')
  if not token then return entry, '', '' end
  return token, sender, client
end

-- Remove a message; returns {id, sender, client, token} or nil if it was not there.
local function remove(id)
  if redis.call('ZREM', M[1], id) == 0 then return nil end
  redis.call('ZREM', M[2], id)
  redis.call('DECRBY', M[5], redis.call('HSTRLEN', M[3], id) + OVERHEAD)
  redis.call('HDEL', M[3], id)
  local token, sender, client = entry_of(id)
  redis.call('HDEL', M[4], id)
  return {id, sender or '', client or '', token or ''}
end

-- Every mailbox key lives as long as the mailbox's longest-lived message; none when empty.
local function refresh_ttl()
  local last = redis.call('ZRANGE', M[2], -1, -1, 'WITHSCORES')
  if #last == 0 then
    redis.call('DEL', M[1], M[2], M[3], M[4], M[5])
    return
  end
  for i = 1, 5 do redis.call('PEXPIREAT', M[i], last[2]) end
end

-- Drop messages whose deadline has passed (their charges lapse on their own); true if any.
local function purge(now)
  local first = redis.call('ZRANGE', M[2], 0, 0, 'WITHSCORES')
  if #first == 0 or tonumber(first[2]) > now then return false end
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', M[2], '-inf', now)) do remove(id) end
  return true
end

-- What a removal leaves to clean up in other slots, flat: id, sender, client (the owners
-- charged) and token (its pointer), each '' when kept (a replacement by the same owner).
local function released(removed, sender_kept, client_kept, token_kept)
  if not removed then return end
  local kept = {'', sender_kept, client_kept, token_kept}
  for i = 2, 4 do
    if removed[i] == kept[i] then removed[i] = '' end
  end
  if removed[2] ~= '' or removed[3] ~= '' or removed[4] ~= '' then
    for i = 1, 4 do table.insert(extra, removed[i]) end
  end
end
"""

# KEYS: the mailbox's five; ARGV: msg_id, record, ttl ms, max messages, max bytes (0: none),
# token, sender, client (base64url; may be empty). A replaced message's owners other than
# this upload's go to `extra` (released afterwards).
_STORE_STEP = """
do
  M = take_keys(5)
  local a = take_args(8)
  local now, id, record = now_ms(), a[1], a[2]
  local size = #record + OVERHEAD
  if purge(now) then refresh_ttl() end
  local replacing = redis.call('ZSCORE', M[1], id)
  local freed = 0
  if replacing then
    freed = redis.call('HSTRLEN', M[3], id) + OVERHEAD
  elseif tonumber(a[4]) > 0 and redis.call('ZCARD', M[1]) >= tonumber(a[4]) then
    return {MAILBOX_IS_FULL}
  end
  local max_bytes = tonumber(a[5])
  if max_bytes > 0 and tonumber(redis.call('GET', M[5]) or '0') - freed + size > max_bytes then
    return {MAILBOX_BYTES_USED}
  end
  -- Every check passed: from here on nothing refuses. A replaced message moves to the end.
  if replacing then released(remove(id), a[7], a[8], a[6]) end
  local newest = redis.call('ZRANGE', M[1], -1, -1, 'WITHSCORES')
  local sequence = 1
  if #newest > 0 then sequence = tonumber(newest[2]) + 1 end
  redis.call('ZADD', M[1], sequence, id)
  redis.call('ZADD', M[2], now + tonumber(a[3]), id)
  redis.call('HSET', M[3], id, record)
  redis.call('HSET', M[4], id, a[6] .. '\\n' .. a[7] .. '\\n' .. a[8])
  redis.call('INCRBY', M[5], size)
  refresh_ttl()
end
"""

_COUNT_STEP = """
M = take_keys(5)
if purge(now_ms()) then refresh_ttl() end
result = redis.call('ZCARD', M[1])
"""

# ARGV: first and last index (0-based, inclusive) in upload order.
_READ_STEP = """
M = take_keys(5)
local a = take_args(2)
if purge(now_ms()) then refresh_ttl() end
local records = {}
for i, id in ipairs(redis.call('ZRANGE', M[1], a[1], a[2])) do
  records[i] = redis.call('HGET', M[3], id)
end
result = records
"""

# ARGV: the ids to delete (the rest). Result: how many messages are left.
_DELETE_STEP = """
M = take_keys(5)
purge(now_ms())
for _, id in ipairs(take_rest()) do released(remove(id), '', '', '') end
refresh_ttl()
result = redis.call('ZCARD', M[1])
"""

# messageStatus, once the pointer named the mailbox. KEYS: expiry, tokens; ARGV: msg_id,
# token. Result: ms left, or -2 if the message is gone or was replaced under another token.
_STATUS = PRELUDE + """
local entry = redis.call('HGET', KEYS[2], ARGV[1])
if not entry or string.sub(entry, 1, #ARGV[2] + 1) ~= ARGV[2] .. '\\n' then return -2 end
local deadline = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not deadline then return -2 end
local left = tonumber(deadline) - now_ms()
if left <= 0 then return -2 end
return left
"""

# A /command's session check and nonce claim (KEYS: hpk's session, the nonce; ARGV: the
# session record the command's box opened with, the nonce's TTL in ms): 0 (claimed), 1 (no
# such session) or 2 (the nonce was seen).
CLAIM_LUA = """
local function claim(first_write_is_free)
  local k, a = take_keys(2), take_args(2)
  if redis.call('GET', k[1]) ~= a[1] then return 1 end
  if redis.call('EXISTS', k[2]) == 1 then return 2 end
  -- At maxmemory Redis refuses only a script's first write: this PEXPIRE of the absent
  -- key changes nothing but is that first write, so the claim lands and a full Redis still
  -- serves delete and download, which free memory. An upload claims without it: a full
  -- Redis refuses the whole script (507), changing nothing.
  if first_write_is_free then redis.call('PEXPIRE', k[2], a[2]) end
  redis.call('SET', k[2], '1', 'PX', a[2])
  return 0
end
"""

CLAIM_RESULTS = {DONE: Claim.DONE, 1: Claim.NO_SESSION, 2: Claim.REPLAYED}

_GET = "return redis.call('GET', KEYS[1])"
_SET_PX = "return redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])"


def compose(*steps: str, mailbox: bool = False, account: bool = False) -> str:
    """A script running steps in order; the first that refuses returns its status."""
    codes = "".join(f"local {name} = {value}\n" for name, value in (
        ("SENDER_USED", SENDER_USED), ("CLIENT_USED", CLIENT_USED), ("RATE_USED", RATE_USED),
        ("MAILBOX_IS_FULL", MAILBOX_IS_FULL), ("MAILBOX_BYTES_USED", MAILBOX_BYTES_USED)))
    return (_HELPERS + codes + (_ACCOUNT_LUA if account else "")
            + (_MAILBOX_LUA if mailbox else "") + "".join(steps)
            + "\nreturn {0, result, extra, undo}\n")


def _claim_step(first_write_is_free: bool) -> str:
    return (f"do local c = claim({'true' if first_write_is_free else 'false'}) "
            "if c ~= 0 then return {c} end end\n")


_CLAIM_STRICT, _CLAIM_FREE = _claim_step(False), _claim_step(True)

# Scripts by name (test_redis_keys audits every one by this table).
SCRIPTS = {
    "claim": compose(CLAIM_LUA, _CLAIM_FREE),
    "claim_sender": compose(CLAIM_LUA, _CLAIM_STRICT, _SENDER_STEP, account=True),
    "sender": compose(_SENDER_STEP, account=True),
    "client": compose(_CLIENT_STEP, account=True),
    "store": compose(_STORE_STEP, mailbox=True),
    "count": compose(_COUNT_STEP, mailbox=True),
    "read": compose(_READ_STEP, mailbox=True),
    "delete": compose(_DELETE_STEP, mailbox=True),
    "claim_count": compose(CLAIM_LUA, _CLAIM_FREE, _COUNT_STEP, mailbox=True),
    "claim_read": compose(CLAIM_LUA, _CLAIM_FREE, _READ_STEP, mailbox=True),
    "claim_delete": compose(CLAIM_LUA, _CLAIM_FREE, _DELETE_STEP, mailbox=True),
    "undo": _UNDO,
    "release": _RELEASE,
    "status": _STATUS,
    "get": _GET,
    "set_px": _SET_PX,
    "delete_key": "return redis.call('DEL', KEYS[1])",
}


def prove_script(prove_step: str) -> str:
    """/prove's identity script (relay.store.redis.sessions): its step, then the count."""
    return compose(prove_step, _COUNT_STEP, mailbox=True)


@attrs.frozen
class ClaimArgs:
    """A /command's session check and nonce claim, run with its first mailbox call: the
    session key, the nonce key (both in the identity's slot), the session record the
    command's box opened with, and the nonce's TTL."""

    session_key: str
    nonce_key: str
    session_record: bytes
    nonce_ttl: float

    def keys_and_args(self) -> tuple[list[str], list[Any]]:
        return [self.session_key, self.nonce_key], [self.session_record,
                                                     ttl_ms(self.nonce_ttl)]


def _status(reply: Any) -> int:
    return reply[0] if isinstance(reply, list) else -1


class RedisMailboxStore:
    def __init__(self, backend: RedisBackend, names: KeyNames | None = None) -> None:
        self._backend = backend
        self.names = names or KeyNames()

    # -- the MailboxStore interface ---------------------------------------------------------

    async def store_message(self, hpk: bytes, msg_id: bytes, record: bytes,
                            token: bytes, ttl: float, quota: MessageQuota | int,
                            sender: bytes = b"", client: str = "") -> None:
        await self.run(StoreMessageOp(hpk, msg_id, record, token, ttl, quota, sender, client))

    async def count(self, hpk: bytes) -> int:
        return (await self.run(CountOp(hpk)))[1]

    async def read(self, hpk: bytes, start: int, count: int) -> list[bytes]:
        if count <= 0 or start + count - 1 < max(start, 0):
            return []
        return (await self.run(ReadOp(hpk, start, count)))[1]

    async def delete(self, hpk: bytes, msg_ids: list[bytes]) -> int:
        return (await self.run(DeleteOp(hpk, msg_ids)))[1]

    async def message_ttl(self, token: bytes) -> int:
        return (await self.run(MessageTTLOp(token)))[1]

    # -- ops, with or without a command's claim ---------------------------------------------

    async def run(self, op: MailboxOp | None, claim: ClaimArgs | None = None
                  ) -> tuple[Claim, Any]:
        """Run op (and first, in the same call, claim's session check and nonce claim)."""
        match op:
            case None:
                assert claim is not None
                keys, args = claim.keys_and_args()
                reply = await self._backend.script(SCRIPTS["claim"], keys, args)
                return CLAIM_RESULTS.get(_status(reply), Claim.DONE), None
            case StoreMessageOp():
                return await self._store(op, claim)
            case MessageTTLOp(token):
                return await self._message_ttl(token, claim)
            case CountOp(hpk):
                return await self._own(claim, "count", hpk, [])
            case ReadOp(hpk, start, count):
                # Indexes start..start+count-1 that exist; a negative start only shortens
                # the page. An empty page still runs (it purges, as the count would).
                first, last = max(start, 0), start + count - 1
                if count <= 0 or last < first:
                    first, last = 1, 0
                claimed, records = await self._own(claim, "read", hpk, [first, last])
                return claimed, None if records is None else _records(records)
            case DeleteOp(hpk, msg_ids):
                return await self._own(claim, "delete", hpk, list(msg_ids))
        raise TypeError(f"not a mailbox op: {op!r}")

    async def _own(self, claim: ClaimArgs | None, name: str, hpk: bytes,
                   args: list[Any]) -> tuple[Claim, Any]:
        """An op on hpk's own mailbox: one script in hpk's slot (the claim's too)."""
        keys = self.names.mailbox(hpk)
        if claim is not None:
            claim_keys, claim_args = claim.keys_and_args()
            name, keys, args = "claim_" + name, [*claim_keys, *keys], [*claim_args, *args]
        reply = await self._backend.script(SCRIPTS[name], keys, args)
        if reply[0] != DONE:
            return CLAIM_RESULTS[reply[0]], None
        if reply[2]:
            await self._release(hpk, reply[2])
        return Claim.DONE, reply[1]

    def _member(self, hpk: bytes, msg_id: bytes) -> bytes:
        return b64(hpk).encode() + b":" + msg_id

    async def _store(self, op: StoreMessageOp, claim: ClaimArgs | None) -> tuple[Claim, None]:
        quota = as_quota(op.quota)
        record = op.record
        size = len(record) + OVERHEAD
        # Redis's own memory first: refused while it is nearly full (relay.store.redis.memory).
        self._backend.memory.check(size)
        names, sender, client = self.names, op.sender, op.client
        member, ttl = self._member(op.hpk, op.msg_id), ttl_ms(op.ttl)
        # First round trip: the sender's slot (claim, charge) and the client's. `accounts`
        # names, per script, the account it charges (None: none), to undo the charge.
        calls: list[tuple[str, list[Any], list[Any]]] = []
        accounts: list[list[str] | None] = []
        sender_args = [member, ttl, size, quota.sender_max_messages, quota.sender_max_bytes]
        sender_charged = False
        if claim is not None:
            claim_keys, claim_args = claim.keys_and_args()
            if sender and names.session(sender) == claim.session_key:
                account = names.sender_account(sender)
                calls.append((SCRIPTS["claim_sender"], claim_keys + account,
                              claim_args + sender_args))
                accounts.append(account)
                sender_charged = True
            else:
                calls.append((SCRIPTS["claim"], claim_keys, claim_args))
                accounts.append(None)
        if sender and not sender_charged:
            account = names.sender_account(sender)
            calls.append((SCRIPTS["sender"], account, sender_args))
            accounts.append(account)
        if client:
            account = names.client_account(client) + [names.client_rate(client)]
            calls.append((SCRIPTS["client"], account,
                          [member, ttl, size, quota.client_max_messages,
                           quota.client_max_bytes, len(record), quota.client_upload_bytes,
                           ttl_ms(quota.client_upload_window)]))
            accounts.append(account)
        charges: list[tuple[list[str], list[Any]]] = []
        claimed, refusal = Claim.DONE, None
        if calls:
            for account, reply in zip(accounts, await self._backend.scripts(calls),
                                      strict=True):
                if type(reply) is not list:
                    refusal = refusal or reply
                elif reply[0] == DONE:
                    if account is not None:
                        charges.append((account, reply[3]))
                elif reply[0] in CLAIM_RESULTS:
                    claimed = CLAIM_RESULTS[reply[0]]
                else:
                    refusal = refusal or _refusal(reply[0])
            if claimed is not Claim.DONE or refusal is not None:
                if charges:
                    await self._undo(member, charges)
                if claimed is not Claim.DONE:
                    return claimed, None
                raise refusal  # type: ignore[misc]
        # Then the recipient's mailbox, with the token pointer behind it.
        stored, _ = await self._backend.scripts([
            (SCRIPTS["store"], names.mailbox(op.hpk),
             [op.msg_id, record, ttl, quota.max_messages, quota.mailbox_max_bytes,
              b64(op.token), b64(sender) if sender else "", client]),
            (SCRIPTS["set_px"], [names.token(op.token)],
             [b64(op.hpk).encode() + b"\n" + op.msg_id, ttl])], replicate=True)
        if type(stored) is not list or stored[0] != DONE:
            if charges:
                await self._undo(member, charges)
            raise stored if isinstance(stored, StoreError) else _refusal(stored[0])
        self._backend.memory.written(size)
        if stored[2]:
            await self._release(op.hpk, stored[2])
        return Claim.DONE, None

    async def _message_ttl(self, token: bytes, claim: ClaimArgs | None) -> tuple[Claim, int]:
        calls = [(SCRIPTS["get"], [self.names.token(token)], [])]
        if claim is not None:
            calls.insert(0, (SCRIPTS["claim"], *claim.keys_and_args()))
        replies = await self._backend.scripts(calls)
        for reply in replies:
            if isinstance(reply, StoreError):
                raise reply
        if claim is not None and _status(replies[0]) != DONE:
            return CLAIM_RESULTS[replies[0][0]], None  # type: ignore[return-value]
        pointer = replies[-1]
        if not isinstance(pointer, bytes) or b"\n" not in pointer:
            return Claim.DONE, -2
        owner, msg_id = pointer.split(b"\n", 1)
        hpk = _unb64(owner)
        mailbox = self.names.mailbox(hpk)
        left = await self._backend.script(SCRIPTS["status"], [mailbox[1], mailbox[3]],
                                          [msg_id, b64(token)])
        return Claim.DONE, -2 if left < 0 else left // 1000

    # -- undoing and releasing charges ------------------------------------------------------

    async def _undo(self, member: bytes, charges: list[tuple[list[str], list[Any]]]) -> None:
        """Undo an upload's charges (account keys, what its script returned: the size and
        deadline it replaced, then the rate's window and bytes) after a later step refused;
        best effort: a charge left behind lapses at its deadline."""
        calls = []
        for keys, replaced in charges:
            size, deadline = replaced[0], replaced[1]
            args = [member, b"" if size is None else size, b"" if deadline is None else deadline]
            calls.append((SCRIPTS["undo"], keys, args + replaced[2:4]))
        await self._best_effort(calls, "undo an upload's charges")

    async def _release(self, hpk: bytes, removed: list[Any]) -> None:
        """Clean up after messages removed from hpk's mailbox: release their charges and
        delete their token pointers. removed: flat (id, sender, client, token) quadruples,
        owners and token base64url (the client as given), '' for nothing to do."""
        if not removed:
            return
        members: dict[tuple[str, bytes], list[bytes]] = defaultdict(list)
        calls = []
        for i in range(0, len(removed) - 3, 4):
            msg_id, sender, client, token = removed[i:i + 4]
            member = self._member(hpk, msg_id)
            if sender:
                members[("sender", sender)].append(member)
            if client:
                members[("client", client)].append(member)
            if token:
                calls.append((SCRIPTS["delete_key"], [self.names.token(_unb64(token))], []))
        for (kind, owner), owned in members.items():
            keys = (self.names.sender_account(_unb64(owner)) if kind == "sender"
                    else self.names.client_account(owner.decode()))
            calls.append((SCRIPTS["release"], keys, owned))
        await self._best_effort(calls, "release removed messages' charges")

    async def _best_effort(self, calls: list[tuple[str, list[Any], list[Any]]],
                           what: str) -> None:
        try:
            replies = await self._backend.scripts(calls)
        except StoreError as e:
            log.warn("could not {what} ({error}); they lapse with their messages", what=what,
                     error=e)
            return
        failed = [reply for reply in replies if isinstance(reply, StoreError)]
        if failed:
            log.warn("could not {what} ({error}); they lapse with their messages", what=what,
                     error=failed[0])


def _unb64(text: bytes) -> bytes:
    return urlsafe_b64decode(text + b"=" * (-len(text) % 4))


def _refusal(status: int) -> StoreError:
    error, message = _REFUSALS.get(status, (StoreFull, "refused"))
    return error(message)


def _records(records: list[Any]) -> list[bytes]:
    # A record is missing only if the mailbox was damaged outside the relay; skip it.
    return [record for record in records if isinstance(record, bytes)]
