"""Mailboxes in process memory, capped per mailbox and in total bytes."""

from __future__ import annotations

from collections.abc import Callable

import attrs

from relay.store.errors import StoreFull
from relay.store.memory.budget import ByteBudget

# Per-message bookkeeping beyond the record itself, counted against the byte budget.
_OVERHEAD = 200


@attrs.define
class _Message:
    record: bytes
    token: bytes
    deadline: float

    @property
    def size(self) -> int:
        return len(self.record) + _OVERHEAD


@attrs.define
class _Mailbox:
    # Insertion order is upload order: download returns oldest first.
    messages: dict[bytes, _Message] = attrs.field(factory=dict)
    earliest_deadline: float = float("inf")


class MemoryMailboxStore:
    def __init__(self, seconds: Callable[[], float], budget: ByteBudget) -> None:
        self._seconds = seconds
        self._budget = budget
        self._mailboxes: dict[bytes, _Mailbox] = {}
        self._tokens: dict[bytes, tuple[bytes, bytes]] = {}

    def _remove(self, hpk: bytes, mailbox: _Mailbox, msg_id: bytes) -> None:
        message = mailbox.messages.pop(msg_id)
        self._budget.release(message.size)
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

    async def store_message(self, hpk: bytes, msg_id: bytes, record: bytes,
                            token: bytes, ttl: float, max_messages: int) -> None:
        mailbox = self._live(hpk) or _Mailbox()
        replaced = mailbox.messages.get(msg_id)
        if replaced is None and len(mailbox.messages) >= max_messages:
            raise StoreFull("the mailbox is full")
        message = _Message(record, token, self._seconds() + ttl)
        self._budget.reserve(message.size)
        if replaced is not None:
            self._remove(hpk, mailbox, msg_id)
        mailbox.messages[msg_id] = message
        mailbox.earliest_deadline = min(mailbox.earliest_deadline, message.deadline)
        self._mailboxes[hpk] = mailbox
        self._tokens[token] = (hpk, msg_id)

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
