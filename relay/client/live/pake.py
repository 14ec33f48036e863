"""The client side of the rendezvous key exchange: SPAKE2 with role-bound key confirmation.

- The password is the whole code phrase `<channel>-<word>-<word>-<word>`; the channel is
  also bound into both SPAKE2 identities.
- Keys: HKDF-SHA256 over the SPAKE2 key, salted with a transcript hash of (channel, x, y).
- hh_k is the recipient's tag, h_k the sender's, each an HMAC over its own role label and the
  transcript, so a tag reflected back to its author never verifies.
- One traffic key per direction.
"""

from __future__ import annotations

import hashlib
import hmac

import attrs
from spake2 import SPAKE2_A, SPAKE2_B

from relay.client.errors import CodeError, WrongCode

PROTOCOL = b"relay-rendezvous-v1"
SENDER, RECIPIENT = "sender", "recipient"
KEY_LEN = 32
# The fewest words after the channel (the words themselves: relay/client/codes.py).
MIN_WORDS = 3


def hkdf(ikm: bytes, salt: bytes, info: bytes, length: int = KEY_LEN) -> bytes:
    """HKDF-SHA256 (RFC 5869)."""
    prk = hmac.new(salt, ikm, hashlib.sha256).digest()
    out, block, counter = b"", b"", 1
    while len(out) < length:
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        out += block
        counter += 1
    return out[:length]


def _lp(data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + data


def transcript_hash(channel: str, x: bytes, y: bytes) -> bytes:
    return hashlib.sha256(_lp(PROTOCOL) + _lp(channel.encode()) + _lp(x) + _lp(y)).digest()


def channel_of(code: str) -> str:
    """The channel named by a code phrase; CodeError if the phrase is too weak or malformed."""
    parts = code.strip().lower().split("-")
    if len(parts) < 1 + MIN_WORDS or not all(parts) or not parts[0].isalnum():
        raise CodeError("a code looks like <channel>-<word>-<word>-<word>")
    return parts[0]


def _normalise(code: str) -> bytes:
    return code.strip().lower().encode("utf-8")


@attrs.frozen
class TrafficKeys:
    """The keys of one side: send_key encrypts what this side sends, receive_key what the
    peer sends (the peer's send_key)."""

    send_key: bytes
    receive_key: bytes


class Exchange:
    """One side's PAKE run; message() first, then the role's confirm step."""

    def __init__(self, role: str, code: str) -> None:
        if role not in (SENDER, RECIPIENT):
            raise ValueError("role must be sender or recipient")
        self.role = role
        self.channel = channel_of(code)
        ids = {"idA": PROTOCOL + b" sender " + self.channel.encode(),
               "idB": PROTOCOL + b" recipient " + self.channel.encode()}
        password = _normalise(code)
        self._spake = (SPAKE2_A if role == SENDER else SPAKE2_B)(password, **ids)
        self._message = self._spake.start()
        self._keys: dict[str, bytes] | None = None

    def message(self) -> bytes:
        """x for the sender, y for the recipient (33 bytes)."""
        return self._message

    def finish(self, peer_message: bytes) -> None:
        """Derive the confirmation and traffic keys from the peer's message."""
        try:
            key = self._spake.finish(peer_message)
        except Exception:  # spake2 raises several types for a malformed element
            raise WrongCode("the peer's PAKE message is malformed") from None
        x, y = ((self._message, peer_message) if self.role == SENDER
                else (peer_message, self._message))
        salt = transcript_hash(self.channel, x, y)
        confirm = hkdf(key, salt, PROTOCOL + b" confirm")
        self._keys = {
            "transcript": salt,
            "recipient_tag": hmac.new(confirm, b"recipient" + salt, hashlib.sha256).digest(),
            "sender_tag": hmac.new(confirm, b"sender" + salt, hashlib.sha256).digest(),
            "s2r": hkdf(key, salt, PROTOCOL + b" sender to recipient"),
            "r2s": hkdf(key, salt, PROTOCOL + b" recipient to sender"),
        }

    def _get(self, name: str) -> bytes:
        if self._keys is None:
            raise RuntimeError("finish() first")
        return self._keys[name]

    def own_tag(self) -> bytes:
        """hh_k for the recipient, h_k for the sender."""
        return self._get("recipient_tag" if self.role == RECIPIENT else "sender_tag")

    def check_peer_tag(self, tag: bytes) -> None:
        expected = self._get("sender_tag" if self.role == RECIPIENT else "recipient_tag")
        if not hmac.compare_digest(expected, tag):
            raise WrongCode("key confirmation failed: the code is wrong")

    def traffic_keys(self) -> TrafficKeys:
        s2r, r2s = self._get("s2r"), self._get("r2s")
        if self.role == SENDER:
            return TrafficKeys(send_key=s2r, receive_key=r2s)
        return TrafficKeys(send_key=r2s, receive_key=s2r)
