"""Mailboxes in Redis, every change one Lua script so a mailbox is never seen half-updated.

Per mailbox (hpk) five keys, all expiring when the mailbox's longest-lived message does:
    mailbox:<hpk>:order    ZSET msg_id -> upload sequence (download order, oldest first)
    mailbox:<hpk>:expiry   ZSET msg_id -> deadline, ms on Redis's clock
    mailbox:<hpk>:records  HASH msg_id -> record (opaque bytes)
    mailbox:<hpk>:tokens   HASH msg_id -> "<token key>\\n<sender account>\\n<client account>":
                           the name of the message's token key and the key prefixes of the
                           accounts it is charged to (either may be empty)
    mailbox:<hpk>:size     STRING bytes charged to the mailbox
and per message a token key, token:<token> (PX = the message's TTL), that messageStatus reads
with PTTL. Expired messages are purged by the next script touching the mailbox, before it
counts, reads or checks the caps.

Quota accounts (relay.store.quota): per sender hpk (account:sender:<hpk>) and per client key
(account:client:<key>), two keys each, expiring with the account's longest-lived message:
    <account>:expiry  ZSET member -> deadline (member: the mailbox's order key name + msg_id)
    <account>:sizes   HASH member -> bytes charged, and "total" -> their sum (members start
                      with "relay:", so never collide with it)
A charge is released when its message is removed from its mailbox (delete, replace, purge)
or, whichever comes first, when the account is next checked and the member's deadline has
passed (trimmed by score), so expiry releases charges without any sweeper; releasing is
idempotent (ZREM decides). Upload rates: rate:upload:<key>:<window> counters, PX = window.

At maxmemory (noeviction) Redis refuses only a script's first write that could grow memory
(it cannot stop a script half-way), so a script refused there has changed nothing.

Account and token keys are named inside the scripts (not in KEYS), so this layout needs a
single Redis, not Redis Cluster.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs

from relay.store.errors import StoreFull, StoreRateLimited
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
from relay.store.redis.scripting import PRELUDE
from relay.store.redis.sessions import ttl_ms

OVERHEAD = MESSAGE_OVERHEAD

# KEYS[1..5] are always the mailbox's order, expiry, records, tokens and size keys.
_MAILBOX_LUA = PRELUDE + f"local OVERHEAD = {OVERHEAD}\n" + """
-- Quota accounts --------------------------------------------------------------------------
local function account_expire_at(prefix, deadline)
  redis.call('PEXPIREAT', prefix .. ':expiry', deadline)
  redis.call('PEXPIREAT', prefix .. ':sizes', deadline)
end

-- The account's keys live as long as its longest-lived charge; none when it has none.
local function account_refresh(prefix)
  local last = redis.call('ZRANGE', prefix .. ':expiry', -1, -1, 'WITHSCORES')
  if #last == 0 then
    redis.call('DEL', prefix .. ':expiry', prefix .. ':sizes')
  else
    account_expire_at(prefix, last[2])
  end
end

-- Release one charge (nothing if it is already released); the caller refreshes the TTLs.
local function account_release(prefix, member)
  if redis.call('ZREM', prefix .. ':expiry', member) == 0 then return end
  local sizes = prefix .. ':sizes'
  local size = tonumber(redis.call('HGET', sizes, member) or '0')
  redis.call('HDEL', sizes, member)
  redis.call('HINCRBY', sizes, 'total', -size)
end

-- Release the charges of expired messages.
local function account_trim(prefix, now)
  local first = redis.call('ZRANGE', prefix .. ':expiry', 0, 0, 'WITHSCORES')
  if #first == 0 or tonumber(first[2]) > now then return end
  for _, member in ipairs(redis.call('ZRANGEBYSCORE', prefix .. ':expiry', '-inf', now)) do
    account_release(prefix, member)
  end
  account_refresh(prefix)
end

local function account_charge(prefix, member, deadline, size)
  local sizes = prefix .. ':sizes'
  redis.call('ZADD', prefix .. ':expiry', deadline, member)
  redis.call('HSET', sizes, member, size)
  redis.call('HINCRBY', sizes, 'total', size)
  local last = redis.call('ZRANGE', prefix .. ':expiry', -1, -1, 'WITHSCORES')
  if tonumber(last[2]) <= deadline then account_expire_at(prefix, deadline) end
end

-- Mailboxes -------------------------------------------------------------------------------
-- The message's token key and the accounts it is charged to (nil if there is no such id).
local function where_is(id)
  local entry = redis.call('HGET', KEYS[4], id)
  if not entry then return nil end
  local token_key, sender, client = string.match(entry, '^([^\\n]*)\\n([^\\n]*)\\n(.*)$')
  if not token_key then return entry, '', '' end  -- written before accounts existed
  return token_key, sender, client
end

local function remove(id)
  if redis.call('ZREM', KEYS[1], id) == 0 then return 0 end
  redis.call('ZREM', KEYS[2], id)
  redis.call('DECRBY', KEYS[5], redis.call('HSTRLEN', KEYS[3], id) + OVERHEAD)
  redis.call('HDEL', KEYS[3], id)
  local token_key, sender, client = where_is(id)
  if token_key then
    redis.call('HDEL', KEYS[4], id)
    if token_key ~= '' then redis.call('DEL', token_key) end
    for _, prefix in ipairs({sender, client}) do
      if prefix ~= '' then
        account_release(prefix, KEYS[1] .. id)
        account_refresh(prefix)
      end
    end
  end
  return 1
end

-- Every mailbox key lives as long as the mailbox's longest-lived message; none when empty.
local function refresh_ttl()
  local last = redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')
  if #last == 0 then
    redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5])
    return
  end
  for i = 1, 5 do redis.call('PEXPIREAT', KEYS[i], last[2]) end
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

# What _STORE returns.
STORED, MAILBOX_IS_FULL, MAILBOX_BYTES_USED, SENDER_USED, CLIENT_USED, RATE_USED = range(6)

# KEYS[6]: the new message's token key. ARGV: msg_id, record, ttl_ms, then the limits (0: none)
# max_messages, mailbox_max_bytes, then the sender account's prefix (empty: none),
# sender_max_messages, sender_max_bytes, the client account's prefix, client_max_messages,
# client_max_bytes, then the client's rate key prefix, bytes per window, window in ms.
# Returns STORED or which limit refused (then nothing changed but expired entries purged).
_STORE_BODY = """
local now = now_ms()
local id, record = ARGV[1], ARGV[2]
local size = #record + OVERHEAD
local sender, client = ARGV[6], ARGV[9]

local rate_key = nil
if ARGV[12] ~= '' and tonumber(ARGV[13]) > 0 then
  local window = tonumber(ARGV[14])
  rate_key = ARGV[12] .. ':' .. math.floor(now / window)
  if tonumber(redis.call('GET', rate_key) or '0') + #record > tonumber(ARGV[13]) then
    return 5
  end
end

if purge(now) then refresh_ttl() end
local replacing = redis.call('ZSCORE', KEYS[1], id)
local freed, old_sender, old_client = 0, nil, nil
if replacing then
  freed = redis.call('HSTRLEN', KEYS[3], id) + OVERHEAD
  local _
  _, old_sender, old_client = where_is(id)
elseif tonumber(ARGV[4]) > 0 and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[4]) then
  return 1
end
local max_bytes = tonumber(ARGV[5])
if max_bytes > 0 and tonumber(redis.call('GET', KEYS[5]) or '0') - freed + size > max_bytes then
  return 2
end

local function fits(prefix, same_owner, max_messages, max_size)
  if prefix == '' then return true end
  account_trim(prefix, now)
  local messages = redis.call('ZCARD', prefix .. ':expiry') + 1
  local used = tonumber(redis.call('HGET', prefix .. ':sizes', 'total') or '0') + size
  if same_owner then messages, used = messages - 1, used - freed end
  return not ((max_messages > 0 and messages > max_messages) or
              (max_size > 0 and used > max_size))
end
if not fits(sender, sender == old_sender, tonumber(ARGV[7]), tonumber(ARGV[8])) then
  return 3
end
if not fits(client, client == old_client, tonumber(ARGV[10]), tonumber(ARGV[11])) then
  return 4
end

-- Every check passed: from here on nothing refuses. A replaced message moves to the end.
if replacing then remove(id) end
local newest = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
local sequence = 1
if #newest > 0 then sequence = tonumber(newest[2]) + 1 end
local deadline = now + tonumber(ARGV[3])
redis.call('ZADD', KEYS[1], sequence, id)
redis.call('ZADD', KEYS[2], deadline, id)
redis.call('HSET', KEYS[3], id, record)
redis.call('HSET', KEYS[4], id, KEYS[6] .. '\\n' .. sender .. '\\n' .. client)
redis.call('INCRBY', KEYS[5], size)
redis.call('SET', KEYS[6], '1', 'PX', ARGV[3])
refresh_ttl()
for _, prefix in ipairs({sender, client}) do
  if prefix ~= '' then account_charge(prefix, KEYS[1] .. id, deadline, size) end
end
if rate_key then
  if not redis.call('SET', rate_key, #record, 'PX', ARGV[14], 'NX') then
    redis.call('INCRBY', rate_key, #record)
  end
end
return 0
"""

_REFUSALS: dict[int, tuple[type[Exception], str]] = {
    MAILBOX_IS_FULL: (StoreFull, MAILBOX_FULL),
    MAILBOX_BYTES_USED: (StoreFull, MAILBOX_BYTES),
    SENDER_USED: (StoreFull, SENDER_FULL),
    CLIENT_USED: (StoreFull, CLIENT_FULL),
    RATE_USED: (StoreRateLimited, CLIENT_RATE),
}

_COUNT_BODY = """
if purge(now_ms()) then refresh_ttl() end
return redis.call('ZCARD', KEYS[1])
"""

# ARGV: first and last index (0-based, inclusive) in upload order.
_READ_BODY = """
if purge(now_ms()) then refresh_ttl() end
local ids = redis.call('ZRANGE', KEYS[1], ARGV[1], ARGV[2])
local records = {}
for i, id in ipairs(ids) do records[i] = redis.call('HGET', KEYS[3], id) end
return records
"""

# ARGV: the ids to delete. Returns how many messages are left.
_DELETE_BODY = """
local now = now_ms()
purge(now)
for i = 1, ARGC do remove(ARGV[i]) end
refresh_ttl()
return redis.call('ZCARD', KEYS[1])
"""


_MESSAGE_TTL_BODY = """
return redis.call('PTTL', KEYS[1])
"""

# A /command's session check and nonce claim, run before its op in the same script
# (SessionStore.run_command_claiming_nonce). The op's KEYS and ARGV come first (its body
# reads them by position); then KEYS: hpk's session, the nonce; ARGV: the session record
# the command's box opened with, the nonce's TTL in ms. ARGC: how many ARGV are the op's.
_CLAIM_LUA = """
local ARGC = #ARGV - 2
local function claim(first_write_is_free)
  local session_key, nonce_key, ttl = KEYS[#KEYS - 1], KEYS[#KEYS], ARGV[#ARGV]
  if redis.call('GET', session_key) ~= ARGV[#ARGV - 1] then return 1 end
  if redis.call('EXISTS', nonce_key) == 1 then return 2 end
  -- At maxmemory Redis refuses only a script's first write: this PEXPIRE of the absent
  -- key changes nothing but is that first write, so the claim lands and a full Redis still
  -- serves delete and download, which free memory. An upload claims without it: a full
  -- Redis refuses the whole script (507), changing nothing.
  if first_write_is_free then redis.call('PEXPIRE', nonce_key, ttl) end
  redis.call('SET', nonce_key, '1', 'PX', ttl)
  return 0
end
"""

# What a claiming script returns first: the Claim, by number.
CLAIM_RESULTS = {0: Claim.DONE, 1: Claim.NO_SESSION, 2: Claim.REPLAYED}


def standalone(body: str, mailbox: bool = True) -> str:
    """The script that runs an op's body alone (KEYS and ARGV all the op's)."""
    return (_MAILBOX_LUA if mailbox else "") + "local ARGC = #ARGV\n" + body


def claiming(body: str, mailbox: bool = True, first_write_is_free: bool = True) -> str:
    """The script that checks the session and claims the nonce, then runs the op's body;
    it returns {claim} or {0, what the body returns}."""
    return ((_MAILBOX_LUA if mailbox else PRELUDE) + _CLAIM_LUA
            + f"local claimed = claim({'true' if first_write_is_free else 'false'})\n"
            + "if claimed ~= 0 then return {claimed} end\n"
            + "local function op()\n" + body + "\nend\nreturn {0, op()}\n")


def prove_script(head: str) -> str:
    """/prove's script (relay.store.redis.sessions): its head, then the count's body."""
    return _MAILBOX_LUA + "local ARGC = #ARGV\n" + head + _COUNT_BODY + "\nend\nreturn {0, op()}\n"


_STORE, _COUNT, _READ, _DELETE, _MESSAGE_TTL = (
    standalone(_STORE_BODY), standalone(_COUNT_BODY), standalone(_READ_BODY),
    standalone(_DELETE_BODY), standalone(_MESSAGE_TTL_BODY, mailbox=False))
_CLAIMING = {
    "store": claiming(_STORE_BODY, first_write_is_free=False),
    "count": claiming(_COUNT_BODY),
    "read": claiming(_READ_BODY),
    "delete": claiming(_DELETE_BODY),
    "message_ttl": claiming(_MESSAGE_TTL_BODY, mailbox=False),
    "none": claiming("return nil", mailbox=False),
}


@attrs.frozen
class Plan:
    """One mailbox op as a script call: which script (a _CLAIMING name), its KEYS and ARGV,
    and what turns the script's answer into the op's result."""

    name: str
    keys: list[str]
    args: list[Any]
    finish: Callable[[Any], Any]
    # Wait for replicas (redis_wait_replicas) before answering: an acknowledged write.
    replicate: bool = False


def _same(result: Any) -> Any:
    return result


# Key names remembered per mailbox, sender and client (building one costs microseconds,
# an upload names nine); forgotten all at once when this many are kept.
KEYS_REMEMBERED = 16_384


class RedisMailboxStore:
    def __init__(self, backend: RedisBackend) -> None:
        self._backend = backend
        self._names: dict[tuple[str, bytes | str], Any] = {}

    def _named(self, kind: str, owner: bytes | str) -> Any:
        """The key names (or prefix) of kind for owner: "mailbox" (the five keys of hpk's
        mailbox), "sender" or "client" (an account's prefix), "rate" (a client's)."""
        names = self._names.get((kind, owner))
        if names is None:
            if len(self._names) >= KEYS_REMEMBERED:
                self._names.clear()
            key = self._backend.key
            encoded = owner.encode() if isinstance(owner, str) else owner
            if kind == "mailbox":
                names = [key("mailbox", encoded, part)
                         for part in ("order", "expiry", "records", "tokens", "size")]
            elif kind == "rate":
                names = key("rate", "upload", encoded)
            else:
                names = key("account", kind, encoded)
            self._names[(kind, owner)] = names
        return names

    def _keys(self, hpk: bytes) -> list[str]:
        return self._named("mailbox", hpk)

    def _token_key(self, token: bytes) -> str:
        return self._backend.key("token", token)

    async def _run(self, plan: Plan) -> Any:
        script = {"store": _STORE, "count": _COUNT, "read": _READ, "delete": _DELETE,
                  "message_ttl": _MESSAGE_TTL}[plan.name]
        return plan.finish(await self._backend.script(script, plan.keys, plan.args,
                                                      replicate=plan.replicate))

    async def run_claiming(self, plan: Plan | None, session_key: str, nonce_key: str,
                           session_record: bytes, nonce_ttl: float) -> tuple[Claim, Any]:
        """Check the session, claim the nonce and run the plan, in one script call."""
        if plan is None:
            plan = Plan("none", [], [], _same)
        reply = await self._backend.script(
            _CLAIMING[plan.name], [*plan.keys, session_key, nonce_key],
            [*plan.args, session_record, ttl_ms(nonce_ttl)], replicate=plan.replicate)
        claim = CLAIM_RESULTS[reply[0]]
        if claim is not Claim.DONE:
            return claim, None
        return claim, plan.finish(reply[1] if len(reply) > 1 else None)

    def plan(self, op: MailboxOp) -> Plan:
        """The script call for op (raising what its method raises before any call)."""
        match op:
            case CountOp(hpk):
                return Plan("count", self._keys(hpk), [], _same)
            case ReadOp(hpk, start, count):
                # Indexes start..start+count-1 that exist; a negative start only shortens
                # the page. An empty page still runs (it purges, as the count would).
                first, last = max(start, 0), start + count - 1
                if count <= 0 or last < first:
                    first, last = 1, 0
                return Plan("read", self._keys(hpk), [first, last], _records)
            case DeleteOp(hpk, msg_ids):
                return Plan("delete", self._keys(hpk), list(msg_ids), _same)
            case StoreMessageOp():
                return self._plan_store(op)
            case MessageTTLOp(token):
                return Plan("message_ttl", [self._token_key(token)], [], _seconds_left)
        raise TypeError(f"not a mailbox op: {op!r}")

    def _plan_store(self, op: StoreMessageOp) -> Plan:
        quota = as_quota(op.quota)
        size = len(op.record) + OVERHEAD
        # Redis's own memory first: refused while it is nearly full (relay.store.redis.memory).
        self._backend.memory.check(size)
        client = op.client
        sender_prefix = self._named("sender", op.sender) if op.sender else ""
        client_prefix = self._named("client", client) if client else ""
        rate_prefix = self._named("rate", client) if client else ""

        def finish(result: Any) -> None:
            if result != STORED:
                error, message = _REFUSALS.get(result, (StoreFull, "refused"))
                raise error(message)
            self._backend.memory.written(size)

        return Plan(
            "store", [*self._keys(op.hpk), self._token_key(op.token)],
            [op.msg_id, op.record, ttl_ms(op.ttl), quota.max_messages, quota.mailbox_max_bytes,
             sender_prefix, quota.sender_max_messages, quota.sender_max_bytes,
             client_prefix, quota.client_max_messages, quota.client_max_bytes,
             rate_prefix, quota.client_upload_bytes, ttl_ms(quota.client_upload_window)],
            finish, replicate=True)

    async def store_message(self, hpk: bytes, msg_id: bytes, record: bytes,
                            token: bytes, ttl: float, quota: MessageQuota | int,
                            sender: bytes = b"", client: str = "") -> None:
        await self._run(self.plan(StoreMessageOp(hpk, msg_id, record, token, ttl, quota,
                                                 sender, client)))

    async def count(self, hpk: bytes) -> int:
        return await self._run(self.plan(CountOp(hpk)))

    async def read(self, hpk: bytes, start: int, count: int) -> list[bytes]:
        if count <= 0 or start + count - 1 < max(start, 0):
            return []
        return await self._run(self.plan(ReadOp(hpk, start, count)))

    async def delete(self, hpk: bytes, msg_ids: list[bytes]) -> int:
        return await self._run(self.plan(DeleteOp(hpk, msg_ids)))

    async def message_ttl(self, token: bytes) -> int:
        return await self._run(self.plan(MessageTTLOp(token)))


def _records(records: list[Any]) -> list[bytes]:
    # A record is missing only if the mailbox was damaged outside the relay; skip it.
    return [record for record in records if isinstance(record, bytes)]


def _seconds_left(left_ms: int) -> int:
    # -2: no such key; -1 (a key without TTL) cannot happen here, and reads as gone.
    if left_ms < 0:
        return -2
    return left_ms // 1000
