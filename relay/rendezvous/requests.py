"""Parsing /join and /channel bodies: strict JSON objects, known keys, exact sizes.

Anything malformed is a Malformed refusal (HTTP 400) raised before any state is read or written.
"""

from __future__ import annotations

import json
import math
from typing import Any

import attrs

from relay.crypto import EncodingError, b64decode
from relay.rendezvous.channel import (
    CURVE,
    PAKE_MESSAGE_LEN,
    ROLES,
    TAG_LEN,
    UUID_LEN,
    Write,
    valid_name,
)
from relay.rendezvous.errors import Malformed
from relay.web.jsonbody import nesting_ok


@attrs.frozen
class JoinRequest:
    role: str
    channel: str | None
    curve: str


@attrs.frozen
class ChannelRequest:
    channel: str
    uuid: bytes
    write: Write
    wait: float
    # Long-poll until the channel's version exceeds this (default: its version after the write).
    since: int | None


def _bad(message: str) -> Malformed:
    return Malformed(message)


def _object(body: bytes, allowed: frozenset[str]) -> dict[str, Any]:
    if not nesting_ok(body):  # before the parser recurses into it
        raise _bad("body is not a JSON object")
    try:
        data = json.loads(body.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise _bad("body is not a JSON object") from None
    if not isinstance(data, dict):
        raise _bad("body is not a JSON object")
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise _bad(f"unknown field {unknown[0][:32]!r}")
    return data


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _name(data: dict[str, Any], required: bool) -> str | None:
    name = data.get("channel")
    if name is None and not required:
        return None
    if not valid_name(name):
        raise _bad("channel must be 4 to 64 lowercase letters or digits")
    return name


def _bytes(data: dict[str, Any], key: str, length: int) -> bytes | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise _bad(f"{key} must be a base64 string")
    try:
        return b64decode(value, length)
    except EncodingError:
        raise _bad(f"{key} must be base64 of exactly {length} bytes") from None


_JOIN_KEYS = frozenset({"role", "channel", "curve"})
_CHANNEL_KEYS = frozenset({"channel", "uuid", "x", "y", "hh_k", "h_k", "close", "wait", "since"})


def parse_join(body: bytes) -> JoinRequest:
    data = _object(body, _JOIN_KEYS)
    role = data.get("role")
    if role not in ROLES:
        raise _bad("role must be 'sender' or 'recipient'")
    curve = data.get("curve", CURVE)
    if curve != CURVE:
        raise _bad("curve must be 'ed25519'")
    name = _name(data, required=(role != "sender"))
    return JoinRequest(role=role, channel=name, curve=curve)


def parse_channel(body: bytes, max_wait: float) -> ChannelRequest:
    data = _object(body, _CHANNEL_KEYS)
    name = _name(data, required=True)
    assert name is not None
    uuid = _bytes(data, "uuid", UUID_LEN)
    if uuid is None:
        raise _bad("uuid is required")
    x = _bytes(data, "x", PAKE_MESSAGE_LEN)
    y = _bytes(data, "y", PAKE_MESSAGE_LEN)
    hh_k = _bytes(data, "hh_k", TAG_LEN)
    h_k = _bytes(data, "h_k", TAG_LEN)
    close = data.get("close")
    if close is not None and close is not True:
        raise _bad("close must be true")
    if (y is None) != (hh_k is None):
        raise _bad("y and hh_k are written together")
    writes = sum(v is not None for v in (x, y, h_k, close))
    if writes > 1:
        raise _bad("one write per request")
    wait = data.get("wait", 0)
    if (isinstance(wait, bool) or not isinstance(wait, int | float) or not math.isfinite(wait)
            or wait < 0):
        raise _bad("wait must be a number of seconds")
    since = data.get("since")
    if since is not None and (isinstance(since, bool) or not isinstance(since, int)
                              or not 0 <= since < 2**53):
        raise _bad("since must be a version number")
    return ChannelRequest(channel=name, uuid=uuid,
                          write=Write(x=x, y=y, hh_k=hh_k, h_k=h_k, close=bool(close)),
                          wait=min(float(wait), max_wait), since=since)
