"""The bytes of the Zax mailbox API, client side (docs/zax-wire.md), with no I/O.

Request bodies are base64 lines joined by CRLF; responses are CRLF-joined lines with no
trailing CRLF. Commands travel as crypto_box between the client's and the relay's session
keys; the /prove body carries the identity proof inside a second box. Kept apart from the
HTTP client so that every encoding can be tested byte by byte.
"""

from __future__ import annotations

import json
import re
from typing import Any

from nacl.exceptions import CryptoError
from nacl.public import Box, PrivateKey, PublicKey

from relay.client.errors import RelayError
from relay.crypto import KEY_LEN, NONCE_LEN, TOKEN_LEN, EncodingError, b64decode, b64encode, h2
from relay.crypto import make_nonce as _make_nonce

# Lines of each response shape: ENC is nonce + ciphertext, PLAIN a single line, and
# downloadFileChunk adds the chunk as a third line.
ENC_LINES = 2
PLAIN_LINES = 1
CHUNK_LINES = 3
# ASCII digits only: str.isdigit() would let "²" through to int().
_WHOLE_NUMBER = re.compile(r"-?[0-9]{1,18}")
_DIFFICULTY = re.compile(r"[0-9]{1,3}")


def compact_json(value: Any) -> bytes:
    """JSON as JavaScript's JSON.stringify writes it: no spaces (glow.ts interoperability)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def join_lines(lines: list[str]) -> bytes:
    return "\r\n".join(lines).encode("ascii")


def split_response(body: bytes, expected_lines: int, what: str) -> list[str]:
    """The lines of a successful response; RelayError if the count or charset is wrong."""
    try:
        text = body.decode("ascii")
    except UnicodeDecodeError:
        raise RelayError(f"{what}: the relay's response is not ASCII") from None
    lines = text.split("\r\n")
    if not text or len(lines) != expected_lines:
        raise RelayError(f"{what}: expected {expected_lines} response line(s), "
                         f"got {len(lines) if text else 0}")
    return lines


def decode_field(text: str, length: int | None, what: str) -> bytes:
    try:
        return b64decode(text, length)
    except EncodingError as e:
        raise RelayError(f"{what}: bad base64 from the relay ({e})") from None


def make_nonce(now: float) -> bytes:
    return _make_nonce(now)


# ---- handshake ---------------------------------------------------------------------------

def start_session_body(client_token: bytes) -> bytes:
    return join_lines([b64encode(client_token)])


def parse_start_session(body: bytes) -> tuple[bytes, int]:
    """(relay_token, difficulty) from the /start_session response."""
    token_line, difficulty_line = split_response(body, 2, "start_session")
    relay_token = decode_field(token_line, TOKEN_LEN, "start_session")
    if not _DIFFICULTY.fullmatch(difficulty_line):
        raise RelayError("start_session: the difficulty is not a small whole number")
    difficulty = int(difficulty_line)
    if difficulty > 8 * 32:
        raise RelayError("start_session: the difficulty is impossible to meet")
    return relay_token, difficulty


def session_proof(client_token: bytes, relay_token: bytes, difficulty: int,
                  pow_nonce: bytes | None) -> bytes:
    """X for /verify_session: h2(client_token || relay_token) at difficulty 0, else the
    32-byte proof-of-work nonce (found elsewhere: it may take a while)."""
    if difficulty == 0:
        return h2(client_token + relay_token)
    if pow_nonce is None or len(pow_nonce) != 32:
        raise ValueError("a 32-byte proof-of-work nonce is needed at this difficulty")
    return pow_nonce


def verify_session_body(client_token: bytes, proof: bytes) -> bytes:
    return join_lines([b64encode(h2(client_token)), b64encode(proof)])


def parse_verify_session(body: bytes) -> PublicKey:
    (line,) = split_response(body, 1, "verify_session")
    return PublicKey(decode_field(line, KEY_LEN, "verify_session"))


def prove_body(*, client_token: bytes, relay_token: bytes, relay_session_pk: PublicKey,
               client_session_sk: PrivateKey, identity_sk: PrivateKey, now: float) -> bytes:
    """The four lines of /prove (44, 44, 32 and 256 characters)."""
    client_session_pk = bytes(client_session_sk.public_key)
    signature = h2(client_session_pk + relay_token + client_token)
    inner_nonce = make_nonce(now)
    inner = Box(identity_sk, relay_session_pk).encrypt(signature, inner_nonce).ciphertext
    # Key order matters only for byte-compatibility with glow.ts; the length is fixed (176).
    proof_json = compact_json({
        "pub_key": b64encode(bytes(identity_sk.public_key)),
        "nonce": b64encode(inner_nonce),
        "ctext": b64encode(inner),
    })
    outer_nonce = make_nonce(now)
    outer = Box(client_session_sk, relay_session_pk).encrypt(proof_json, outer_nonce).ciphertext
    return join_lines([b64encode(h2(client_token)), b64encode(client_session_pk),
                       b64encode(outer_nonce), b64encode(outer)])


def parse_count_line(body: bytes, what: str) -> int:
    (line,) = split_response(body, 1, what)
    return parse_int(line, what)


def parse_int(text: str, what: str) -> int:
    if not _WHOLE_NUMBER.fullmatch(text):
        raise RelayError(f"{what}: expected a whole number from the relay")
    return int(text)


# ---- commands ----------------------------------------------------------------------------

def command_body(*, hpk: bytes, command: dict[str, Any], session_box: Box, now: float,
                 extra_line: bytes | None = None) -> bytes:
    """hpk, nonce and the boxed JSON command; the optional 4th line is a file chunk."""
    nonce = make_nonce(now)
    ctext = session_box.encrypt(compact_json(command), nonce).ciphertext
    lines = [b64encode(hpk), b64encode(nonce), b64encode(ctext)]
    if extra_line is not None:
        lines.append(b64encode(extra_line))
    return join_lines(lines)


def open_encrypted(lines: list[str], session_box: Box, what: str) -> Any:
    """The JSON value of an ENC response (nonce line, ciphertext line)."""
    nonce = decode_field(lines[0], NONCE_LEN, what)
    ctext = decode_field(lines[1], None, what)
    try:
        plain = session_box.decrypt(ctext, nonce)
    except CryptoError:
        raise RelayError(f"{what}: the relay's response does not decrypt") from None
    return parse_json(plain, what)


def parse_json(data: bytes, what: str) -> Any:
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise RelayError(f"{what}: the relay's response is not JSON") from None


def storage_token(to_hpk: bytes, msg_id: bytes) -> bytes:
    """The token /upload returns: h2 of the ASCII of b64(to) + b64(nonce)."""
    return h2((b64encode(to_hpk) + b64encode(msg_id)).encode("ascii"))
