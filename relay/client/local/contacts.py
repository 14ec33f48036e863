"""Named contacts: a name and an identity public key each, kept 0600 as JSON in the home.

Names are short and printable (letters, digits, '.', '_', '-'; starting with a letter or a
digit) so they are safe on a terminal and in messages; they are unique regardless of case.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import attrs

from relay.client.errors import ContactError
from relay.client.local.home import ensure_home, read_private_json, write_private_file
from relay.client.local.identity import fingerprint
from relay.crypto import KEY_LEN, EncodingError, b64decode, b64encode, h2

CONTACTS_FILE = "contacts.json"
MAX_CONTACTS = 10000
_MAX_FILE = 4 * 1024 * 1024
_FORMAT_VERSION = 1
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ContactError("a contact name is 1 to 64 letters, digits, '.', '_' or '-', "
                           "starting with a letter or a digit")
    return name


def parse_public_key(text: str) -> bytes:
    try:
        key = b64decode(text.strip(), KEY_LEN)
    except EncodingError:
        raise ContactError("a public key is 44 characters of base64 (as `relay id` shows)") \
            from None
    if not any(key):
        raise ContactError("that public key is all zeros")
    return key


@attrs.frozen
class Contact:
    name: str
    public_key: bytes
    added: float

    @property
    def hpk(self) -> bytes:
        return h2(self.public_key)

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.public_key)


class ContactBook:
    def __init__(self, home: Path) -> None:
        self.home = home
        self.path = home / CONTACTS_FILE

    def _load(self) -> dict[str, Contact]:
        try:
            fields = read_private_json(self.path, _MAX_FILE, _FORMAT_VERSION, ContactError,
                                   "contacts")
        except FileNotFoundError:
            return {}
        try:
            contacts = {}
            for name, entry in fields["contacts"].items():
                contact = Contact(check_name(name), b64decode(entry["public_key"], KEY_LEN),
                                  float(entry["added"]))
                contacts[name.casefold()] = contact
        except (ValueError, KeyError, TypeError, AttributeError, EncodingError, ContactError):
            raise ContactError(f"{self.path} is not a relay contacts file") from None
        return contacts

    def _save(self, contacts: dict[str, Contact]) -> None:
        data = {"version": _FORMAT_VERSION, "contacts": {
            c.name: {"public_key": b64encode(c.public_key), "added": c.added}
            for c in sorted(contacts.values(), key=lambda c: c.name.casefold())}}
        try:
            ensure_home(self.home)
            write_private_file(self.path, json.dumps(data, indent=1).encode("ascii"))
        except OSError as e:
            raise ContactError(f"cannot save {self.path}: {e.strerror}") from None

    def list(self) -> list[Contact]:
        return sorted(self._load().values(), key=lambda c: c.name.casefold())

    def get(self, name: str) -> Contact:
        contact = self._load().get(check_name(name).casefold())
        if contact is None:
            raise ContactError(f"no contact named {name}")
        return contact

    def find_by_hpk(self, hpk: bytes) -> Contact | None:
        for contact in self._load().values():
            if contact.hpk == hpk:
                return contact
        return None

    def add(self, name: str, public_key: bytes | str, *, replace: bool = False,
            now: float | None = None) -> Contact:
        check_name(name)
        key = parse_public_key(public_key) if isinstance(public_key, str) else public_key
        if len(key) != KEY_LEN:
            raise ContactError("a public key is 32 bytes")
        contacts = self._load()
        if name.casefold() in contacts and not replace:
            raise ContactError(f"there is already a contact named "
                               f"{contacts[name.casefold()].name}")
        if name.casefold() not in contacts and len(contacts) >= MAX_CONTACTS:
            raise ContactError(f"at most {MAX_CONTACTS} contacts")
        contact = Contact(name, key, time.time() if now is None else now)
        contacts[name.casefold()] = contact
        self._save(contacts)
        return contact

    def remove(self, name: str) -> Contact:
        contacts = self._load()
        contact = contacts.pop(check_name(name).casefold(), None)
        if contact is None:
            raise ContactError(f"no contact named {name}")
        self._save(contacts)
        return contact
