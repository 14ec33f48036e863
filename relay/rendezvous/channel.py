"""The channel state machine: pure functions over an immutable Channel, clock passed in.

A channel is created by its sender, joined once by a recipient, carries the write-once PAKE
slots (x, then y with hh_k, then h_k), is marked stapled by the staple listener and closed by
either peer. Every refusal is a ChannelError naming why (relay.rendezvous.errors); a refused
operation returns no new state, so nothing is stored.
"""

from __future__ import annotations

import hmac
import json
import os
from typing import Any

import attrs

from relay.crypto import b64decode, b64encode
from relay.rendezvous.errors import (
    NotOwner,
    NotPermitted,
    OutOfTurn,
    UnknownChannel,
    WrongUUID,
)

CURVE = "ed25519"
SENDER = "sender"
RECIPIENT = "recipient"
ROLES = (SENDER, RECIPIENT)
UUID_LEN = 32
# SPAKE2 on Ed25519 (python-spake2): one side byte and a 32-byte group element.
PAKE_MESSAGE_LEN = 33
# HMAC-SHA256 key-confirmation tags.
TAG_LEN = 32
# A closed channel lingers this long (never past its expiry) so that a peer long-polling it
# learns "closed" instead of "unknown", and its name cannot be taken over at once.
CLOSED_GRACE = 60.0
# The seed's rule: never more than two client addresses on one channel.
MAX_ADDRESSES = 2
# Relay-chosen names: 8 symbols of a 32-letter alphabet without look-alikes (40 bits).
NAME_ALPHABET = "23456789abcdefghijkmnpqrstuvwxyz"
NAME_LENGTH = 8
# Names a sender may choose: lowercase letters and digits, no '-' (it separates the code's
# words), so a name is always the first component of a code phrase.
NAME_MIN, NAME_MAX = 4, 64
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789")


def valid_name(name: Any) -> bool:
    return (isinstance(name, str) and NAME_MIN <= len(name) <= NAME_MAX
            and all(c in _NAME_CHARS for c in name))


def random_name() -> str:
    return "".join(NAME_ALPHABET[b % len(NAME_ALPHABET)] for b in os.urandom(NAME_LENGTH))


@attrs.frozen
class Channel:
    name: str
    curve: str
    expires_at: float
    # The node whose staple listener owns the channel, and the address clients dial there.
    owner: str
    staple: str
    sender_uuid: bytes
    recipient_uuid: bytes | None = None
    addresses: tuple[str, ...] = ()
    x: bytes | None = None
    y: bytes | None = None
    hh_k: bytes | None = None
    h_k: bytes | None = None
    stapled: bool = False
    closed: bool = False
    # Set by the store on load; bumped by every stored change (the long-poll baseline).
    version: int = 0

    def expired(self, now: float) -> bool:
        return now >= self.expires_at

    def ttl(self, now: float) -> float:
        return max(0.0, self.expires_at - now)

    # -- serialisation (the store holds opaque bytes) ------------------------------------
    def to_record(self) -> bytes:
        """Compact JSON; fields at their default (empty slots, false flags) are left out."""
        out = {}
        for field in attrs.fields(Channel):
            value = getattr(self, field.name)
            if field.name == "version" or (field.default is not attrs.NOTHING
                                           and value == field.default):
                continue
            if isinstance(value, bytes):
                value = b64encode(value)
            elif isinstance(value, tuple):
                value = list(value)
            out[field.name] = value
        return json.dumps(out, separators=(",", ":")).encode()

    @classmethod
    def from_record(cls, record: bytes, version: int) -> Channel:
        data = json.loads(record)
        for key in ("sender_uuid", "recipient_uuid", "x", "y", "hh_k", "h_k"):
            if data.get(key) is not None:
                data[key] = b64decode(data[key])
        data["addresses"] = tuple(data.get("addresses", ()))
        return cls(version=version, **data)

    def public_state(self) -> dict[str, Any]:
        """What /channel answers: the slots, the flags and the version for long-polls."""
        def enc(value: bytes | None) -> str | None:
            return None if value is None else b64encode(value)
        return {"curve": self.curve, "x": enc(self.x), "y": enc(self.y),
                "hh_k": enc(self.hh_k), "h_k": enc(self.h_k), "stapled": self.stapled,
                "closed": self.closed, "version": self.version}


def new_channel(name: str, curve: str, owner: str, staple: str, sender_uuid: bytes,
                address: str, now: float, ttl: float) -> Channel:
    return Channel(name=name, curve=curve, expires_at=now + ttl, owner=owner, staple=staple,
                   sender_uuid=sender_uuid, addresses=(address,))


def _admit(channel: Channel, address: str) -> tuple[str, ...]:
    """The channel's addresses with this one; a third distinct address is refused."""
    if address in channel.addresses:
        return channel.addresses
    if len(channel.addresses) >= MAX_ADDRESSES:
        raise NotPermitted("channel is full: two client addresses already use it")
    return channel.addresses + (address,)


def live(channel: Channel | None, now: float) -> Channel:
    if channel is None or channel.expired(now):
        raise UnknownChannel("unknown channel")
    return channel


def join_recipient(channel: Channel | None, uuid: bytes, address: str, now: float) -> Channel:
    channel = live(channel, now)
    if channel.closed:
        raise UnknownChannel("unknown channel")
    addresses = _admit(channel, address)
    if channel.recipient_uuid is not None:
        raise OutOfTurn("the recipient role is already taken")
    return attrs.evolve(channel, recipient_uuid=uuid, addresses=addresses)


def authenticate(channel: Channel | None, uuid: bytes, address: str, now: float) -> str:
    """The role whose uuid this is; checks the address first (a third address never learns
    anything, not even whether its uuid is right)."""
    channel = live(channel, now)
    if address not in channel.addresses:
        raise NotPermitted("this address has not joined the channel")
    # Both comparisons always run, in constant time.
    is_sender = hmac.compare_digest(uuid, channel.sender_uuid)
    is_recipient = hmac.compare_digest(uuid, channel.recipient_uuid or bytes(UUID_LEN))
    if is_sender:
        return SENDER
    if is_recipient and channel.recipient_uuid is not None:
        return RECIPIENT
    raise WrongUUID("wrong uuid")


@attrs.frozen
class Write:
    """One write of a /channel request (already size-checked by the parser)."""

    x: bytes | None = None
    y: bytes | None = None
    hh_k: bytes | None = None
    h_k: bytes | None = None
    close: bool = False

    @property
    def empty(self) -> bool:
        return self == Write()


def apply_write(channel: Channel, role: str, write: Write, now: float) -> Channel | None:
    """The new state after the write, or None when nothing changes (an empty write, or a
    repeated close). Raises ChannelError (nothing changes) for a write out of turn."""
    if write.empty:
        return None
    if write.close:
        if channel.closed:
            return None
        return attrs.evolve(channel, closed=True,
                            expires_at=min(channel.expires_at, now + CLOSED_GRACE))
    if channel.closed:
        raise OutOfTurn("channel is closed")
    if write.x is not None:
        if role != SENDER:
            raise NotPermitted("only the sender writes x")
        if channel.x is not None:
            raise OutOfTurn("x is already written")
        return attrs.evolve(channel, x=write.x)
    if write.y is not None:
        if role != RECIPIENT:
            raise NotPermitted("only the recipient writes y and hh_k")
        if channel.x is None:
            raise OutOfTurn("x is not written yet")
        if channel.y is not None:
            raise OutOfTurn("y is already written")
        return attrs.evolve(channel, y=write.y, hh_k=write.hh_k)
    assert write.h_k is not None
    if role != SENDER:
        raise NotPermitted("only the sender writes h_k")
    if channel.y is None:
        raise OutOfTurn("y is not written yet")
    if channel.h_k is not None:
        raise OutOfTurn("h_k is already written")
    return attrs.evolve(channel, h_k=write.h_k)


def staple_check(channel: Channel | None, role: str, uuid: bytes, address: str,
                 owner: str, now: float) -> Channel:
    """May this TCP connection staple as role? (uuid, address, owner node, state)."""
    channel = live(channel, now)
    if channel.closed:
        raise UnknownChannel("channel is closed")
    if authenticate(channel, uuid, address, now) != role:
        raise WrongUUID("wrong uuid")
    if channel.owner != owner:
        raise NotOwner("another node owns this channel")
    if channel.stapled:
        raise OutOfTurn("channel is already stapled")
    return channel


def mark_stapled(channel: Channel | None, now: float, lease: float | None = None) -> Channel:
    """Stapled. The PAKE slots are dropped: both peers have read them before connecting (a
    peer staples only after its key confirmation), and a stapled pair may last hours, so its
    record keeps only what `stapled`, `closed` and authentication need.

    With a lease, the channel now lives `lease` seconds from now (instead of its creation
    TTL): the node holding the pair renews it while the pair lives (`renew_lease`), so a live
    pair keeps counting as an open channel, and a crashed node's channels still expire."""
    channel = live(channel, now)
    if channel.closed:
        raise UnknownChannel("channel is closed")
    if channel.stapled:
        raise OutOfTurn("channel is already stapled")
    expires_at = channel.expires_at if lease is None else now + lease
    return attrs.evolve(channel, stapled=True, x=None, y=None, hh_k=None, h_k=None,
                        expires_at=expires_at)


def renew_lease(channel: Channel | None, now: float, lease: float) -> Channel | None:
    """A stapled, open channel living `lease` more seconds; None (no change) otherwise."""
    if channel is None or channel.expired(now) or channel.closed or not channel.stapled:
        return None
    if channel.expires_at >= now + lease:
        return None
    return attrs.evolve(channel, expires_at=now + lease)
