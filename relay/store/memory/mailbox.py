"""Mailboxes in process memory, capped per mailbox, per sender, per client and in total bytes.

Every message is charged to its mailbox, its sender's account and its client's account (see
relay.store.quota); the charges go when the message is removed: deleted, replaced, or
purged once expired: when its mailbox is next touched, when its sender's or client's account
is next checked (each keeps a heap of its messages' deadlines), or by the periodic sweep.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable

import attrs

from relay.store.errors import StoreFull, StoreRateLimited
from relay.store.memory.budget import ByteBudget
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

# Account keys: ("sender", hpk) or ("client", client key).
_AccountKey = tuple[str, bytes | str]


@attrs.define
class _Message:
    record: bytes
    token: bytes
    deadline: float
    sender: bytes
    client: str

    @property
    def size(self) -> int:
        return len(self.record) + MESSAGE_OVERHEAD


@attrs.define
class _Mailbox:
    # Insertion order is upload order: download returns oldest first.
    messages: dict[bytes, _Message] = attrs.field(factory=dict)
    earliest_deadline: float = float("inf")
    size: int = 0


@attrs.define
class _Account:
    size: int = 0
    # (mailbox hpk, msg_id) -> deadline of each message charged here.
    members: dict[tuple[bytes, bytes], float] = attrs.field(factory=dict)
    # (deadline, hpk, msg_id), oldest first; rows of removed messages are skipped.
    deadlines: list[tuple[float, bytes, bytes]] = attrs.field(factory=list)

    @property
    def messages(self) -> int:
        return len(self.members)

    def charge(self, hpk: bytes, msg_id: bytes, message: _Message) -> None:
        self.size += message.size
        self.members[(hpk, msg_id)] = message.deadline
        heapq.heappush(self.deadlines, (message.deadline, hpk, msg_id))
        # Removed messages leave rows behind; rebuild when they dominate.
        if len(self.deadlines) > 2 * len(self.members) + 64:
            self.deadlines = [(d, h, i) for (h, i), d in self.members.items()]
            heapq.heapify(self.deadlines)


@attrs.define
class _Rate:
    length: float
    window: int  # which window of `length` seconds (now // length)
    size: int

    def current(self, now: float) -> bool:
        return self.window == int(now // self.length)


def _accounts_of(sender: bytes, client: str) -> list[_AccountKey]:
    keys: list[_AccountKey] = []
    if sender:
        keys.append(("sender", sender))
    if client:
        keys.append(("client", client))
    return keys


class MemoryMailboxStore:
    def __init__(self, seconds: Callable[[], float], budget: ByteBudget) -> None:
        self._seconds = seconds
        self._budget = budget
        self._mailboxes: dict[bytes, _Mailbox] = {}
        self._tokens: dict[bytes, tuple[bytes, bytes]] = {}
        self._accounts: dict[_AccountKey, _Account] = {}
        self._rates: dict[str, _Rate] = {}
        self.messages = 0
        self.size = 0

    def _remove(self, hpk: bytes, mailbox: _Mailbox, msg_id: bytes) -> None:
        message = mailbox.messages.pop(msg_id)
        self._budget.release(message.size)
        mailbox.size -= message.size
        self.messages -= 1
        self.size -= message.size
        for key in _accounts_of(message.sender, message.client):
            account = self._accounts[key]
            account.size -= message.size
            del account.members[(hpk, msg_id)]
            if not account.members:
                del self._accounts[key]
        self._tokens.pop(message.token, None)

    def _live(self, hpk: bytes) -> _Mailbox | None:
        """The mailbox with expired messages purged (a full scan only when one has expired)."""
        mailbox = self._mailboxes.get(hpk)
        if mailbox is None:
            return None
        now = self._seconds()
        if mailbox.earliest_deadline <= now:
            for msg_id in [i for i, m in mailbox.messages.items() if m.deadline <= now]:
                self._remove(hpk, mailbox, msg_id)
            mailbox.earliest_deadline = min(
                (m.deadline for m in mailbox.messages.values()), default=float("inf"))
        if not mailbox.messages:
            del self._mailboxes[hpk]
            return None
        return mailbox

    def _check_rate(self, client: str, size: int, quota: MessageQuota, now: float) -> None:
        if not client or not quota.client_upload_bytes:
            return
        rate = self._rates.get(client)
        used = rate.size if rate is not None and rate.length == quota.client_upload_window \
            and rate.current(now) else 0
        if used + size > quota.client_upload_bytes:
            raise StoreRateLimited(CLIENT_RATE)

    def _charge_rate(self, client: str, size: int, quota: MessageQuota, now: float) -> None:
        if not client or not quota.client_upload_bytes:
            return
        length = quota.client_upload_window
        rate = self._rates.get(client)
        if rate is None or rate.length != length or not rate.current(now):
            self._rates[client] = _Rate(length, int(now // length), size)
        else:
            rate.size += size

    def _trim(self, key: _AccountKey, now: float) -> None:
        """Purge the expired messages charged to this account from their mailboxes."""
        account = self._accounts.get(key)
        while account is not None and account.deadlines and account.deadlines[0][0] <= now:
            deadline, hpk, msg_id = heapq.heappop(account.deadlines)
            if account.members.get((hpk, msg_id)) == deadline:
                self._live(hpk)  # removes it, releasing this charge

    def _check_account(self, key: _AccountKey, size: int, replaced: _Message | None,
                       max_messages: int, max_size: int, refusal: str, now: float) -> None:
        self._trim(key, now)
        account = self._accounts.get(key) or _Account()
        messages, used = account.messages + 1, account.size + size
        if replaced is not None and key in _accounts_of(replaced.sender, replaced.client):
            messages, used = messages - 1, used - replaced.size
        if (max_messages and messages > max_messages) or (max_size and used > max_size):
            raise StoreFull(refusal)

    async def store_message(self, hpk: bytes, msg_id: bytes, record: bytes,
                            token: bytes, ttl: float, quota: MessageQuota | int,
                            sender: bytes = b"", client: str = "") -> None:
        quota = as_quota(quota)
        now = self._seconds()
        message = _Message(record, token, now + ttl, sender, client)
        self._check_rate(client, len(record), quota, now)
        mailbox = self._live(hpk) or _Mailbox()
        replaced = mailbox.messages.get(msg_id)
        freed = replaced.size if replaced is not None else 0
        if replaced is None and quota.max_messages and len(mailbox.messages) >= quota.max_messages:
            raise StoreFull(MAILBOX_FULL)
        if quota.mailbox_max_bytes and mailbox.size - freed + message.size > quota.mailbox_max_bytes:
            raise StoreFull(MAILBOX_BYTES)
        if sender:
            self._check_account(("sender", sender), message.size, replaced,
                                quota.sender_max_messages, quota.sender_max_bytes, SENDER_FULL,
                                now)
        if client:
            self._check_account(("client", client), message.size, replaced,
                                quota.client_max_messages, quota.client_max_bytes, CLIENT_FULL,
                                now)
        self._budget.reserve(message.size, freeing=freed)
        # Every check passed: from here on nothing refuses.
        if replaced is not None:
            self._remove(hpk, mailbox, msg_id)
        mailbox.messages[msg_id] = message
        mailbox.size += message.size
        mailbox.earliest_deadline = min(mailbox.earliest_deadline, message.deadline)
        self._mailboxes[hpk] = mailbox
        self._tokens[token] = (hpk, msg_id)
        self.messages += 1
        self.size += message.size
        for key in _accounts_of(sender, client):
            self._accounts.setdefault(key, _Account()).charge(hpk, msg_id, message)
        self._charge_rate(client, len(record), quota, now)

    async def count(self, hpk: bytes) -> int:
        mailbox = self._live(hpk)
        return len(mailbox.messages) if mailbox else 0

    async def read(self, hpk: bytes, start: int, count: int) -> list[bytes]:
        mailbox = self._live(hpk)
        if mailbox is None or count <= 0:
            return []
        records = []
        for index, message in enumerate(mailbox.messages.values()):
            if index >= start + count:
                break
            if index >= start:
                records.append(message.record)
        return records

    async def delete(self, hpk: bytes, msg_ids: list[bytes]) -> int:
        mailbox = self._live(hpk)
        if mailbox is None:
            return 0
        for msg_id in msg_ids:
            if msg_id in mailbox.messages:
                self._remove(hpk, mailbox, msg_id)
        left = len(mailbox.messages)
        if not left:
            del self._mailboxes[hpk]
        return left

    async def message_ttl(self, token: bytes) -> int:
        where = self._tokens.get(token)
        if where is None:
            return -2
        mailbox = self._live(where[0])
        message = mailbox.messages.get(where[1]) if mailbox else None
        if message is None or message.token != token:
            return -2
        return max(0, int(message.deadline - self._seconds()))

    def sweep(self) -> None:
        now = self._seconds()
        for hpk in [h for h, m in self._mailboxes.items() if m.earliest_deadline <= now]:
            self._live(hpk)
        # Rate counters: only the current window's matter.
        for client in [c for c, r in self._rates.items() if not r.current(now)]:
            del self._rates[client]
