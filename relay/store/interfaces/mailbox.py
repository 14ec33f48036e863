"""Per-identity mailboxes of opaque message records."""

from __future__ import annotations

from typing import Protocol

import attrs

from relay.store.quota import MessageQuota


class MailboxStore(Protocol):
    """Mailboxes keyed by hpk. A message is an opaque record (the JSON object /download
    returns, pre-encoded), its id (the message nonce) and a storage token."""

    async def store_message(self, hpk: bytes, msg_id: bytes, record: bytes,
                            token: bytes, ttl: float, quota: MessageQuota | int,
                            sender: bytes = b"", client: str = "") -> None:
        """Add (or replace, for the same msg_id) a message for ttl seconds.

        The message is charged to the mailbox, to `sender` (an hpk) and to `client` (a
        client key) as `quota` says (relay.store.quota; an int is the mailbox's message cap
        alone; an empty sender or client is charged nothing). Replacing charges only the
        difference; charges end when the message is deleted, replaced or expires.

        Raises StoreRateLimited if the client's upload rate is used up, StoreFull if a cap
        would be exceeded (the mailbox's messages or bytes, the sender's or client's stored
        messages or bytes, the store's byte budget); either way nothing is changed.
        """

    async def count(self, hpk: bytes) -> int:
        """Messages in hpk's mailbox that have not expired."""

    async def read(self, hpk: bytes, start: int, count: int) -> list[bytes]:
        """Up to count records, oldest first, skipping the first start."""

    async def delete(self, hpk: bytes, msg_ids: list[bytes]) -> int:
        """Delete these messages (unknown ids are ignored); return how many are left."""

    async def message_ttl(self, token: bytes) -> int:
        """Whole seconds a message has left to live, by storage token; -2 if it is gone."""


# One mailbox operation, to run in the same step as a /command's session check and nonce
# claim (SessionStore.run_command_claiming_nonce): each is the MailboxStore method of the
# same name with these arguments.


@attrs.frozen
class CountOp:
    hpk: bytes


@attrs.frozen
class ReadOp:
    hpk: bytes
    start: int
    count: int


@attrs.frozen
class DeleteOp:
    hpk: bytes
    msg_ids: list[bytes]


@attrs.frozen
class StoreMessageOp:
    hpk: bytes
    msg_id: bytes
    record: bytes
    token: bytes
    ttl: float
    quota: MessageQuota | int
    sender: bytes = b""
    client: str = ""


@attrs.frozen
class MessageTTLOp:
    token: bytes


MailboxOp = CountOp | ReadOp | DeleteOp | StoreMessageOp | MessageTTLOp
