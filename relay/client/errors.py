"""Every error the client reports, and the exit code each one ends `relay` with.

Every error a user can cause or meet carries a readable message, so the command line prints
it instead of a traceback, and its class says the exit code (`exit_code`, see EXIT_* and
docs/client.md): `exit_code_for(error)` needs nothing else.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_RELAY = 3
EXIT_VERIFY = 4
EXIT_WRONG_CODE = 5
EXIT_PEER_CANCELLED = 6
EXIT_INTERRUPTED = 130


class ClientError(Exception):
    """Base class of every error the client reports to the user."""

    exit_code = EXIT_FAILED


# ---- usage (2) -----------------------------------------------------------------------------

class UsageError(ClientError):
    """The command line, the config file or a named thing (contact, path) is wrong."""

    exit_code = EXIT_USAGE


class BadCode(ClientError):
    """A code phrase or drop code that is malformed (nothing was sent to the relay)."""

    exit_code = EXIT_USAGE


class CodeError(ClientError):
    """The code phrase is malformed (for the key exchange)."""

    exit_code = EXIT_USAGE


class IdentityError(ClientError):
    """The identity key file is missing, unreadable, malformed or too widely readable."""

    exit_code = EXIT_USAGE


class ContactError(ClientError):
    """A contact name is invalid, unknown or already taken, or the contacts file is bad."""

    exit_code = EXIT_USAGE


# ---- the relay (3) -------------------------------------------------------------------------

class RelayError(ClientError):
    """The relay answered with an HTTP error or with a response that breaks the wire format.

    `status` is the HTTP status (0 when the response itself was malformed or the request
    timed out), `details` the relay's X-Error-Details header if it sent one.
    """

    exit_code = EXIT_RELAY

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


# ---- wrong code (5) ------------------------------------------------------------------------

class WrongCode(ClientError):
    """The peer's key confirmation failed: the codes differ (or someone guessed)."""

    exit_code = EXIT_WRONG_CODE


class WrongCodeError(ClientError):
    """The code did not lead to the sender (mistyped, already used or expired)."""

    exit_code = EXIT_WRONG_CODE


# ---- the transfer (1, 4) -------------------------------------------------------------------

class ChannelClosed(ClientError):
    """The peer (or the relay) closed the channel before the exchange finished."""


class RecordError(ClientError):
    """An encrypted record stream was tampered with, truncated, reordered or over a cap."""


class RecordTimeout(RecordError):
    """No record arrived within the read timeout."""


class UnsafePathError(ClientError):
    """A received name or path breaks the receiver's rules (escapes, control characters...)."""


class TransferError(ClientError):
    """The live transfer failed: refused, over a cap, a checksum mismatch, a protocol error."""


class Refused(TransferError):
    """This receiver refused the offer before anything was written (declined at the prompt,
    a name that exists, nobody to ask); the sender is told the reason."""


class NobodyCame(TransferError):
    """No recipient completed the exchange within the sender's wait."""


class StreamCapExceeded(TransferError):
    """A stream went past the recipient's byte cap."""


class OutputClosed(TransferError):
    """The output stream (stdout) was closed by its reader."""


class VerificationError(TransferError):
    """Received data failed a check: a SHA-256 or MD5 mismatch, a chunk or box that does not
    open, a size that differs from what was declared."""

    exit_code = EXIT_VERIFY


# ---- interruption (6, 130) -----------------------------------------------------------------

class PeerCancelled(TransferError):
    """The other side was interrupted (Ctrl-C) and said so before it went away."""

    exit_code = EXIT_PEER_CANCELLED


class Interrupted(ClientError):
    """This side was interrupted (Ctrl-C, SIGTERM)."""

    exit_code = EXIT_INTERRUPTED


def exit_code_for(error: BaseException) -> int:
    """The exit code `relay` ends with after this error."""
    return getattr(error, "exit_code", EXIT_FAILED) if isinstance(error, ClientError) \
        else EXIT_FAILED
