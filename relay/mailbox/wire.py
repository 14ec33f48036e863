"""Parsing and formatting of mailbox API bodies: CRLF-joined base64 lines."""

from __future__ import annotations

from relay.crypto import EncodingError, b64decode
from relay.web.errors import bad_request


def split_lines(body: bytes) -> list[bytes]:
    """Lines joined by CRLF (or by LF when the body has no CRLF); trailing empty lines dropped."""
    separator = b"\r\n" if b"\r\n" in body else b"\n"
    lines = body.split(separator)
    while lines and not lines[-1]:
        lines.pop()
    return lines


def decode_field(line: bytes, length: int | None, what: str) -> bytes:
    try:
        return b64decode(line, length)
    except EncodingError as e:
        raise bad_request(f"{what}: {e}") from None


def join_lines(*lines: str | bytes) -> bytes:
    """The response body: lines joined by CRLF with no trailing CRLF (clients count lines)."""
    return b"\r\n".join(line.encode("ascii") if isinstance(line, str) else line for line in lines)
