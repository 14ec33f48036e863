"""Why a channel operation was refused, in the rendezvous's own terms.

The state machine, the registry and the waits raise these; nothing changes when they do. Each
edge says them its own way: the HTTP resources map the kind to a status code
(relay.rendezvous.http.HTTP_STATUS), the staple listener writes the message on its line and
closes. Keeping HTTP out of here lets the same rules serve both without either knowing the
other's wire.
"""

from __future__ import annotations


class ChannelError(Exception):
    """A refused channel operation; `message` is safe to show the client."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Malformed(ChannelError):
    """The request is not what the protocol allows (a missing or ill-formed field)."""


class WrongUUID(ChannelError):
    """The uuid does not prove the role it claims."""


class NotPermitted(ChannelError):
    """Not this client's to do: a third address, an address that never joined, the wrong
    role writing a slot."""


class UnknownChannel(ChannelError):
    """No such channel (never existed, expired or closed)."""


class OutOfTurn(ChannelError):
    """The channel is not in the state this step needs (a slot written twice or too early, a
    role already taken, already stapled)."""


class NotOwner(ChannelError):
    """Another relay node's staple listener owns the channel."""


class TooMany(ChannelError):
    """This client (network) is over one of its limits; it may try again later."""


class Busy(ChannelError):
    """The relay as a whole is over a limit or missing a part; anyone may try again later."""
