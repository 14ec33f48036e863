"""Byte encodings of the session-store records kept in Redis.

A record is a version byte, then each field as a 2-byte big-endian length and its bytes;
length 0xFFFF stands for None. Decoding is strict: anything else is CorruptRecord.
A handshake with a difficulty is version 2 (version 1's fields plus the difficulty, one
byte); one without (difficulty None) is written as version 1, the format of relays that kept
no difficulty, so such nodes and these read each other's records.
"""

from __future__ import annotations

import struct

from relay.store.interfaces.sessions import Handshake, Session

_VERSION = 1
_HANDSHAKE_VERSION = 2
_NONE = 0xFFFF
_LENGTH = struct.Struct(">H")


class CorruptRecord(ValueError):
    """A stored record does not decode (written by something else, or damaged)."""


def pack_fields(*fields: bytes | None, version: int = _VERSION) -> bytes:
    out = bytearray([version])
    for field in fields:
        if field is None:
            out += _LENGTH.pack(_NONE)
        else:
            if len(field) >= _NONE:
                raise ValueError("field too long for a session record")
            out += _LENGTH.pack(len(field)) + field
    return bytes(out)


def unpack_fields(data: bytes, count: int, version: int = _VERSION) -> list[bytes | None]:
    if not data or data[0] != version:
        raise CorruptRecord("unknown record version")
    fields: list[bytes | None] = []
    offset = 1
    for _ in range(count):
        if offset + 2 > len(data):
            raise CorruptRecord("record truncated")
        (length,) = _LENGTH.unpack_from(data, offset)
        offset += 2
        if length == _NONE:
            fields.append(None)
            continue
        if offset + length > len(data):
            raise CorruptRecord("record truncated")
        fields.append(data[offset:offset + length])
        offset += length
    if offset != len(data):
        raise CorruptRecord("trailing bytes in record")
    return fields


def encode_handshake(handshake: Handshake) -> bytes:
    fields = (handshake.client_token, handshake.relay_token, handshake.session_sk)
    if handshake.difficulty is None:
        return pack_fields(*fields)
    return pack_fields(*fields, bytes([handshake.difficulty]), version=_HANDSHAKE_VERSION)


def decode_handshake(data: bytes) -> Handshake:
    if data[:1] == bytes([_VERSION]):
        client_token, relay_token, session_sk = unpack_fields(data, 3)
        difficulty = None
    else:
        client_token, relay_token, session_sk, difficulty_field = unpack_fields(
            data, 4, _HANDSHAKE_VERSION)
        if difficulty_field is None or len(difficulty_field) != 1:
            raise CorruptRecord("handshake difficulty is not one byte")
        difficulty = difficulty_field[0]
    if client_token is None or relay_token is None:
        raise CorruptRecord("handshake without tokens")
    return Handshake(client_token, relay_token, session_sk, difficulty)


def encode_session(session: Session) -> bytes:
    return pack_fields(session.relay_sk, session.client_pk)


def decode_session(data: bytes) -> Session:
    relay_sk, client_pk = unpack_fields(data, 2)
    if relay_sk is None or client_pk is None:
        raise CorruptRecord("session without keys")
    return Session(relay_sk, client_pk)
