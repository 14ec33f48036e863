"""The message commands: count, upload, download, messageStatus, delete, getEntropy."""

from __future__ import annotations

import functools
import json
import os

from relay.config import MailboxConfig
from relay.crypto import b64encode, h2, make_nonce
from relay.mailbox.commands import CommandContext, CommandProcessor, json_bytes
from relay.mailbox.fields import b64_field, b64_value, int_field
from relay.store import Store
from relay.store.errors import StoreRateLimited
from relay.store.quota import MessageQuota
from relay.web.errors import HTTPError, bad_request

# Message ids are the clients' nonces (24 bytes from every known client); allow some slack.
MAX_ID_BYTES = 64


def storage_token(to_b64: str, msg_id: bytes) -> bytes:
    """Zax's token for messageStatus: h2 of the ascii base64 of recipient and message id."""
    return h2((to_b64 + b64encode(msg_id)).encode("ascii"))


def message_record(data: object, sent_at: float, sender: bytes, msg_id: bytes,
                   kind: str = "message") -> bytes:
    """The object /download returns for a message, encoded once at upload time."""
    return json_bytes({"data": data, "time": sent_at, "from": b64encode(sender),
                       "nonce": b64encode(msg_id), "kind": kind})


class MessageCommands:
    def __init__(self, config: MailboxConfig, store: Store) -> None:
        self.config = config
        self.store = store
        self.quota = MessageQuota.from_config(config)

    def register(self, processor: CommandProcessor) -> None:
        # Each handler's first store call is on ctx.mailbox: it carries the nonce claim.
        register = functools.partial(processor.register, claims_with_mailbox=True)
        register("count", self.count)
        register("upload", self.upload)
        register("download", self.download)
        register("messageStatus", self.message_status)
        register("message_status", self.message_status)  # Zax's older name
        register("delete", self.delete)
        register("getEntropy", self.get_entropy)

    async def count(self, ctx: CommandContext) -> list[str]:
        return ctx.encrypted(await ctx.mailbox.count(ctx.hpk))

    async def upload(self, ctx: CommandContext) -> list[str]:
        recipient = b64_field(ctx.data, "to", 32)
        msg_id, data = self._payload(ctx)
        record = message_record(data, ctx.clock.seconds(), ctx.hpk, msg_id)
        if len(record) > self.config.max_message_size:
            raise HTTPError(413, "message too large")
        token = storage_token(b64encode(recipient), msg_id)
        try:
            await ctx.mailbox.store_message(
                recipient, msg_id, record, token, self.config.message_ttl, self.quota,
                sender=ctx.hpk, client=ctx.client)
        except StoreRateLimited as e:
            raise HTTPError(429, str(e)) from None
        return [b64encode(token)]

    @staticmethod
    def _payload(ctx: CommandContext) -> tuple[bytes, str]:
        """(message id, data) of an upload's payload: a string (the relay makes the id), or
        {nonce, ctext} with both strings (the nonce is the id), as Zax takes it. Anything
        else would reach the recipient as something no client can read."""
        payload = ctx.data.get("payload")
        if isinstance(payload, str):
            return make_nonce(ctx.clock.seconds()), payload
        if not isinstance(payload, dict):
            raise bad_request("payload must be a string or an object with nonce and ctext")
        ctext = payload.get("ctext")
        if not isinstance(ctext, str):
            raise bad_request("payload.ctext must be a string")
        msg_id = b64_value(payload.get("nonce"), "payload.nonce", max_length=MAX_ID_BYTES)
        return msg_id, ctext

    async def download(self, ctx: CommandContext) -> list[str]:
        start = int_field(ctx.data, "start", minimum=0, maximum=2**31, default=0)
        page = self.config.download_page
        count = int_field(ctx.data, "count", minimum=0, maximum=2**31, default=page)
        records = await ctx.mailbox.read(ctx.hpk, start, min(count, page))
        return ctx.encrypted(b"[" + b",".join(records) + b"]")

    async def message_status(self, ctx: CommandContext) -> list[str]:
        token = b64_field(ctx.data, "token", 32)
        return [str(await ctx.mailbox.message_ttl(token))]

    async def delete(self, ctx: CommandContext) -> list[str]:
        ids = ctx.data.get("payload")
        if not isinstance(ids, list):
            raise bad_request("payload must be a list of message ids")
        if len(ids) > self.config.max_delete_ids:
            raise bad_request(f"at most {self.config.max_delete_ids} ids per delete")
        msg_ids = [b64_value(i, "message id", max_length=MAX_ID_BYTES) for i in ids]
        return [str(await ctx.mailbox.delete(ctx.hpk, msg_ids))]

    async def get_entropy(self, ctx: CommandContext) -> list[str]:
        size = int_field(ctx.data, "size", minimum=1, maximum=self.config.max_entropy)
        entropy = json.dumps({"entropy": b64encode(os.urandom(size))})
        return [b64encode(entropy.encode())]
