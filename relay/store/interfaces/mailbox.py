"""Per-identity mailboxes of opaque message records."""

from __future__ import annotations

from typing import Protocol


class MailboxStore(Protocol):
    """Mailboxes keyed by hpk. A message is an opaque record (the JSON object /download
    returns, pre-encoded), its id (the message nonce) and a storage token."""

    async def store_message(self, hpk: bytes, msg_id: bytes, record: bytes,
                            token: bytes, ttl: float, max_messages: int) -> None:
        """Add (or replace, for the same msg_id) a message for ttl seconds.

        Raises StoreFull, storing nothing, if the mailbox already holds max_messages
        other messages or the store's byte budget would be exceeded.
        """

    async def count(self, hpk: bytes) -> int:
        """Messages in hpk's mailbox that have not expired."""

    async def read(self, hpk: bytes, start: int, count: int) -> list[bytes]:
        """Up to count records, oldest first, skipping the first start."""

    async def delete(self, hpk: bytes, msg_ids: list[bytes]) -> int:
        """Delete these messages (unknown ids are ignored); return how many are left."""

    async def message_ttl(self, token: bytes) -> int:
        """Whole seconds a message has left to live, by storage token; -2 if it is gone."""
