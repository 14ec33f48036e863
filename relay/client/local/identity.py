"""The user's identity: a Curve25519 key pair, created on first use, kept 0600 in the home.

The public key is what contacts exchange (base64); its fingerprint is what two people read
to each other to check they hold the same key: h2(pk) as six groups of five digits (about
100 bits), easy to compare aloud or side by side.
"""

from __future__ import annotations

import json
from pathlib import Path

import attrs
from nacl.public import PrivateKey

from relay.client.errors import IdentityError
from relay.client.local.home import ensure_home, read_private_json, write_private_file
from relay.crypto import KEY_LEN, EncodingError, b64decode, b64encode, h2

IDENTITY_FILE = "identity.json"
_FORMAT_VERSION = 1
_MAX_FILE = 4096
_GROUPS = 6
_GROUP_BYTES = 5


def fingerprint(public_key: bytes) -> str:
    """Six groups of five decimal digits from h2(public_key), e.g. "04213 99120 ..."."""
    digest = h2(public_key)
    groups = []
    for i in range(_GROUPS):
        chunk = digest[i * _GROUP_BYTES:(i + 1) * _GROUP_BYTES]
        groups.append(f"{int.from_bytes(chunk, 'big') % 100000:05d}")
    return " ".join(groups)


@attrs.frozen
class Identity:
    private_key: PrivateKey

    @property
    def public_key(self) -> bytes:
        return bytes(self.private_key.public_key)

    @property
    def public_key_b64(self) -> str:
        return b64encode(self.public_key)

    @property
    def hpk(self) -> bytes:
        """The mailbox address on the relay: h2(public key)."""
        return h2(self.public_key)

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.public_key)


def load_identity(home: Path) -> Identity:
    path = home / IDENTITY_FILE
    try:
        fields = read_private_json(path, _MAX_FILE, _FORMAT_VERSION, IdentityError,
                                   "identity")
    except FileNotFoundError:
        raise IdentityError(f"no identity yet in {home}") from None
    try:
        secret = b64decode(fields["secret_key"], KEY_LEN)
    except (ValueError, KeyError, TypeError, AttributeError, EncodingError):
        raise IdentityError(f"{path} is not a relay identity file") from None
    return Identity(PrivateKey(secret))


def load_or_create_identity(home: Path) -> tuple[Identity, bool]:
    """The identity in home, created (and saved 0600) if there is none; (identity, created)."""
    try:
        return load_identity(home), False
    except IdentityError:
        if (home / IDENTITY_FILE).exists():
            raise
    try:
        ensure_home(home)
    except OSError as e:
        raise IdentityError(f"cannot create {home}: {e.strerror}") from None
    key = PrivateKey.generate()
    data = json.dumps({"version": _FORMAT_VERSION, "secret_key": b64encode(bytes(key))})
    try:
        write_private_file(home / IDENTITY_FILE, data.encode("ascii"), exclusive=True)
    except FileExistsError:
        # Another relay process created it first: use that one.
        return load_identity(home), False
    except OSError as e:
        raise IdentityError(f"cannot save the identity in {home}: {e.strerror}") from None
    return Identity(key), True
