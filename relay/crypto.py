"""The primitives of the Zax wire format: h2, strict base64, timestamped nonces, proof of work."""

from __future__ import annotations

import binascii
import hashlib
import os
import struct

NONCE_LEN = 24
KEY_LEN = 32
TOKEN_LEN = 32
_ZERO_BLOCK = bytes(64)


class EncodingError(ValueError):
    """A field is not strict base64 of the expected length."""


def h2(data: bytes) -> bytes:
    """sha256(sha256(64 zero bytes || data)): the hash every Zax client uses."""
    return hashlib.sha256(hashlib.sha256(_ZERO_BLOCK + data).digest()).digest()


def b64encode(data: bytes) -> str:
    return binascii.b2a_base64(data, newline=False).decode("ascii")


def b64decode(text: str | bytes, length: int | None = None) -> bytes:
    """Strict standard base64 with padding; optionally of an exact decoded length."""
    if isinstance(text, str):
        try:
            raw = text.encode("ascii")
        except UnicodeEncodeError:
            raise EncodingError("not ascii") from None
    else:
        raw = text
    if len(raw) % 4:
        raise EncodingError("base64 length is not a multiple of 4")
    try:
        data = binascii.a2b_base64(raw, strict_mode=True)
    except binascii.Error as e:
        raise EncodingError(str(e)) from None
    if length is not None and len(data) != length:
        raise EncodingError(f"expected {length} bytes, got {len(data)}")
    return data


def b64_len(n: int) -> int:
    """Length of the padded base64 text of n bytes."""
    return 4 * ((n + 2) // 3)


def make_nonce(now: float) -> bytes:
    """A 24-byte nonce: 8 bytes of big-endian Unix seconds, then 16 random bytes."""
    return struct.pack(">Q", int(now)) + os.urandom(NONCE_LEN - 8)


def nonce_timestamp(nonce: bytes) -> int:
    """Seconds from a nonce. Zax reads bytes 1-7 only, so byte 0 is ignored as it does."""
    return int.from_bytes(nonce[1:8], "big")


def nonce_is_fresh(nonce: bytes, now: float, max_diff: float) -> bool:
    return len(nonce) == NONCE_LEN and abs(now - nonce_timestamp(nonce)) <= max_diff


def meets_difficulty(digest: bytes, difficulty: int) -> bool:
    """Bytes 0..k-1 zero and the low r bits of byte k zero, where difficulty = 8k + r."""
    if difficulty <= 0:
        return True
    whole, rest = divmod(difficulty, 8)
    if whole > len(digest) or (whole == len(digest) and rest):
        return False
    if any(digest[:whole]):
        return False
    return rest == 0 or digest[whole] & ((1 << rest) - 1) == 0


def solve_pow(client_token: bytes, relay_token: bytes, difficulty: int) -> bytes:
    """Find a 32-byte nonce meeting the difficulty (client side; used by tests and the client)."""
    prefix = client_token + relay_token
    while True:
        candidate = os.urandom(32)
        if meets_difficulty(h2(prefix + candidate), difficulty):
            return candidate
