"""The limits one message upload is checked against, the same for every store kind.

A stored message is charged to three accounts: its mailbox (the recipient), its sender (the
uploading identity's hpk, across every mailbox) and its client (the uploader's network,
`HTTPConfig.client_key`, across every identity). Each account has a byte and a message cap;
the client also has an upload rate. A limit of 0 means "no limit" (the int shorthand of
`MailboxStore.store_message`, used where only the mailbox's message cap applies).

Charges last as long as the message: they are released when it is deleted, replaced or
expires. Replacing a message (same mailbox, same msg_id) charges only the difference.
"""

from __future__ import annotations

import attrs

from relay.config import MailboxConfig


@attrs.frozen
class MessageQuota:
    # Per mailbox (recipient hpk).
    max_messages: int = 0
    mailbox_max_bytes: int = 0
    # Per sender identity (hpk), over every mailbox it wrote to.
    sender_max_messages: int = 0
    sender_max_bytes: int = 0
    # Per client network (CommandContext.client), over every identity it used.
    client_max_messages: int = 0
    client_max_bytes: int = 0
    # Record bytes a client may upload per window of client_upload_window seconds (429 beyond).
    client_upload_bytes: int = 0
    client_upload_window: float = 60.0

    @classmethod
    def only_messages(cls, max_messages: int) -> MessageQuota:
        """The mailbox's message cap and nothing else."""
        return cls(max_messages=max_messages)

    @classmethod
    def from_config(cls, config: MailboxConfig) -> MessageQuota:
        return cls(
            max_messages=config.max_messages,
            mailbox_max_bytes=config.mailbox_max_bytes,
            sender_max_messages=config.sender_max_messages,
            sender_max_bytes=config.sender_max_bytes,
            client_max_messages=config.client_max_messages,
            client_max_bytes=config.client_max_bytes,
            client_upload_bytes=config.client_upload_bytes,
            client_upload_window=config.client_upload_window,
        )


def as_quota(quota: MessageQuota | int) -> MessageQuota:
    return quota if isinstance(quota, MessageQuota) else MessageQuota.only_messages(quota)


# Bookkeeping charged per message on top of its record (to the budget and every quota), so
# that empty records are not free. Both stores charge the same.
MESSAGE_OVERHEAD = 200

# Refusal messages, shared so both stores say the same thing (they reach X-Error-Details).
MAILBOX_FULL = "the mailbox is full"
MAILBOX_BYTES = "the mailbox's storage quota is used up"
SENDER_FULL = "this identity's message storage quota is used up"
CLIENT_FULL = "this network's message storage quota is used up"
CLIENT_RATE = "this network uploads too fast; try again later"
