"""Parsing and formatting of mailbox API bodies: CRLF-joined base64 lines."""

from __future__ import annotations

from relay.crypto import EncodingError, b64decode
from relay.web.errors import bad_request


def split_lines(body: bytes, max_lines: int) -> list[bytes]:
    """Lines joined by CRLF (or by LF when the body has no CRLF); trailing empty lines dropped.

    At most max_lines: the split stops there, so a 700 KB file chunk on the last line is not
    scanned again, and a body with more lines is refused.
    """
    separator = b"\r\n" if b"\r\n" in body else b"\n"
    lines = body.rstrip(b"\r\n").split(separator, max_lines)
    if len(lines) > max_lines:
        raise bad_request(f"at most {max_lines} lines")
    return lines if lines != [b""] else []


def decode_field(line: bytes, length: int | None, what: str) -> bytes:
    try:
        return b64decode(line, length)
    except EncodingError as e:
        raise bad_request(f"{what}: {e}") from None


def join_lines(*lines: str | bytes) -> bytes:
    """The response body: lines joined by CRLF with no trailing CRLF (clients count lines)."""
    return b"\r\n".join(line.encode("ascii") if isinstance(line, str) else line for line in lines)
