"""Client-side exceptions. Every error a user can cause or meet carries a readable message, so
the command line prints it instead of a traceback."""

from __future__ import annotations


class ClientError(Exception):
    """Base class of every error the client reports to the user."""


class RelayError(ClientError):
    """The relay answered with an HTTP error or with a response that breaks the wire format.

    `status` is the HTTP status (0 when the response itself was malformed or the request
    timed out), `details` the relay's X-Error-Details header if it sent one.
    """

    def __init__(self, message: str, status: int = 0, details: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.details = details

    def __str__(self) -> str:
        text = super().__str__()
        if self.status:
            text = f"{text} (HTTP {self.status})"
        if self.details:
            text = f"{text}: {self.details}"
        return text


class RelayTimeout(RelayError):
    """A request to the relay did not complete within its timeout."""


class FileNotFoundOnRelay(RelayError):
    """A file command named an uploadID the relay does not know (expired or deleted)."""


class IdentityError(ClientError):
    """The identity key file is missing, unreadable, malformed or too widely readable."""


class ContactError(ClientError):
    """A contact name is invalid, unknown or already taken, or the contacts file is bad."""


class RecordError(ClientError):
    """An encrypted record stream was tampered with, truncated, reordered or over a cap."""


class UnsafePathError(ClientError):
    """A received name or path breaks the receiver's rules (escapes, control characters...)."""


class TransferError(ClientError):
    """The live transfer failed: refused, over a cap, a checksum mismatch, a protocol error."""


class VerificationError(TransferError):
    """Received data failed a check: a SHA-256 or MD5 mismatch, a chunk or box that does not
    open, a size that differs from what was declared."""
