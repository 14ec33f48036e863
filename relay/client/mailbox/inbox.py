"""What is waiting in a mailbox, read and opened: texts, live offers, drops and file notices.

Messages are boxed between the two identity keys, as glow.ts boxes them (crypto_box, the
message id is the nonce). A message's `from` is only the sender's hpk, so a message can be
opened only when its sender's public key is known (a contact, or a drop code's derived
sender); the rest are listed as from unknown senders and left alone.

Our client puts JSON in some messages: a live offer (`relay-offer`, the code phrase of a
transfer waiting right now) and a drop manifest (`relay-drop`, the entries of a dead drop
and the uploadIDs of its files). Any other text is a plain message, so glow.ts users'
messages read naturally. File notices (kind "file") carry the paper's metadata (section
3.4.1): name, orig_size, skey, md5, created, modified, attrs; ours add sha256 and the drop id.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import attrs
from nacl.exceptions import CryptoError
from nacl.public import Box, PrivateKey, PublicKey

from relay.client.errors import RelayError
from relay.client.mailbox.client import MailboxClient
from relay.crypto import KEY_LEN, EncodingError, b64decode, b64encode, h2, make_nonce

OFFER_TYPE = "relay-offer"
DROP_TYPE = "relay-drop"
FORMAT_VERSION = 1
DOWNLOAD_PAGE = 100
# A mailbox holds at most max_messages (1000 by default); never page forever.
MAX_PAGES = 100

SenderKeys = Callable[[bytes], bytes | None]  # hpk -> identity public key, if known


@attrs.frozen
class Item:
    """One message in the mailbox, opened as far as possible."""

    msg_id: bytes
    sender_hpk: bytes
    time: float
    kind: str  # text, offer, drop, file, unreadable, unknown_sender
    text: str | None = None  # text: the message
    value: dict[str, Any] | None = None  # offer / drop: the JSON; file: the metadata
    upload_id: str | None = None  # file: the relay's uploadID
    encrypted: bool = True  # text: False when it came unencrypted (glow's plaintext upload)


def box_text(sender: PrivateKey, recipient_pk: bytes, text: str,
             now: float) -> dict[str, str]:
    """The upload payload of a message boxed to recipient_pk ({nonce, ctext}, as glow.ts)."""
    nonce = make_nonce(now)
    ctext = Box(sender, PublicKey(recipient_pk)).encrypt(text.encode("utf-8"), nonce).ciphertext
    return {"nonce": b64encode(nonce), "ctext": b64encode(ctext)}


async def send_json(client: MailboxClient, sender: PrivateKey, recipient_pk: bytes,
                    value: dict[str, Any], now: float) -> bytes:
    """Box a JSON message to recipient_pk; its message id."""
    payload = box_text(sender, recipient_pk, json.dumps(value, separators=(",", ":")), now)
    await client.upload(h2(recipient_pk), payload)
    return b64decode(payload["nonce"])


async def read_all(client: MailboxClient) -> list[dict[str, Any]]:
    """Every message in the mailbox, oldest first (paged; bounded)."""
    messages: list[dict[str, Any]] = []
    for _ in range(MAX_PAGES):
        page = await client.download(start=len(messages), count=DOWNLOAD_PAGE)
        messages += page
        if len(page) < DOWNLOAD_PAGE:
            return messages
    return messages


def open_items(messages: list[dict[str, Any]], me: PrivateKey,
               sender_keys: SenderKeys) -> list[Item]:
    return [open_item(m, me, sender_keys) for m in messages]


def open_item(message: dict[str, Any], me: PrivateKey, sender_keys: SenderKeys) -> Item:
    try:
        msg_id = b64decode(message["nonce"])
        sender_hpk = b64decode(message["from"], KEY_LEN)
    except (EncodingError, KeyError, TypeError):
        raise RelayError("download: a message with a malformed id or sender") from None
    sent = message.get("time")
    sent = float(sent) if isinstance(sent, int | float) and not isinstance(sent, bool) else 0.0
    base = {"msg_id": msg_id, "sender_hpk": sender_hpk, "time": sent}
    sender_pk = sender_keys(sender_hpk)
    if sender_pk is None:
        return Item(kind="unknown_sender", **base)
    box = Box(me, PublicKey(sender_pk))
    data = message.get("data")
    if message.get("kind") == "file":
        return _open_file_notice(data, box, base)
    if not isinstance(data, str):
        return Item(kind="unreadable", **base)
    try:
        plain = box.decrypt(b64decode(data), msg_id).decode("utf-8")
    except (EncodingError, CryptoError, UnicodeDecodeError, ValueError):
        # glow.ts can upload a plaintext message; show it, marked as not encrypted.
        return Item(kind="text", text=data, encrypted=False, **base)
    value = _json_object(plain)
    if value is not None and value.get("version") == FORMAT_VERSION:
        if value.get("type") == OFFER_TYPE:
            return Item(kind="offer", value=value, **base)
        if value.get("type") == DROP_TYPE:
            return Item(kind="drop", value=value, **base)
    return Item(kind="text", text=plain, **base)


def _open_file_notice(data: Any, box: Box, base: dict[str, Any]) -> Item:
    notice = _json_object(data) if isinstance(data, str) else None
    if notice is None or not all(isinstance(notice.get(k), str)
                                 for k in ("ctext", "nonce", "uploadID")):
        return Item(kind="unreadable", **base)
    try:
        plain = box.decrypt(b64decode(notice["ctext"]), b64decode(notice["nonce"]))
        metadata = _json_object(plain.decode("utf-8"))
    except (EncodingError, CryptoError, UnicodeDecodeError, ValueError):
        metadata = None
    if metadata is None:
        return Item(kind="unreadable", **base)
    return Item(kind="file", value=metadata, upload_id=notice["uploadID"], **base)


def _json_object(text: str) -> dict[str, Any] | None:
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
