"""Validation of command fields: each returns the clean value or raises a 400."""

from __future__ import annotations

from typing import Any

from relay.crypto import EncodingError, b64decode
from relay.web.errors import bad_request

_MISSING = object()


def int_field(data: dict[str, Any], name: str, *, minimum: int, maximum: int,
              default: Any = _MISSING) -> int:
    value = data.get(name, _MISSING)
    if value is _MISSING or (value is None and default is not _MISSING):
        if default is _MISSING:
            raise bad_request(f"{name} is required")
        return default
    # JSON true/false are ints to Python; floats like 2.0 are not whole numbers on the wire.
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad_request(f"{name} must be a whole number")
    if not minimum <= value <= maximum:
        raise bad_request(f"{name} must be between {minimum} and {maximum}")
    return value


def b64_field(data: dict[str, Any], name: str, length: int | None = None, *,
              min_length: int = 1, max_length: int = 64) -> bytes:
    value = data.get(name)
    if not isinstance(value, str):
        raise bad_request(f"{name} must be a base64 string")
    return b64_value(value, name, length, min_length=min_length, max_length=max_length)


def b64_value(value: Any, name: str, length: int | None = None, *,
              min_length: int = 1, max_length: int = 64) -> bytes:
    if not isinstance(value, str):
        raise bad_request(f"{name} must be a base64 string")
    try:
        decoded = b64decode(value, length)
    except EncodingError as e:
        raise bad_request(f"{name}: {e}") from None
    if length is None and not min_length <= len(decoded) <= max_length:
        raise bad_request(f"{name} must be {min_length} to {max_length} bytes")
    return decoded


def bool_field(data: dict[str, Any], name: str, default: bool = False) -> bool:
    value = data.get(name, default)
    if not isinstance(value, bool):
        raise bad_request(f"{name} must be true or false")
    return value
