"""Identity creation, storage and fingerprints; the contact book."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.client.errors import ContactError, IdentityError
from relay.client.local.contacts import ContactBook, check_name
from relay.client.local.home import relay_home
from relay.client.local.identity import (
    IDENTITY_FILE,
    fingerprint,
    load_identity,
    load_or_create_identity,
)
from relay.crypto import b64encode, h2


def test_home_comes_from_the_environment_or_the_config_dir(tmp_path):
    assert relay_home({"RELAY_HOME": str(tmp_path)}) == tmp_path
    assert relay_home({"XDG_CONFIG_HOME": "/x"}) == Path("/x/relay")
    assert relay_home({}) == Path.home() / ".config" / "relay"


def test_identity_is_created_once_with_private_modes(tmp_path):
    home = tmp_path / "new" / "home"
    identity, created = load_or_create_identity(home)
    assert created
    assert stat.S_IMODE(os.stat(home).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(home / IDENTITY_FILE).st_mode) == 0o600
    again, created_again = load_or_create_identity(home)
    assert not created_again and again.public_key == identity.public_key
    assert identity.hpk == h2(identity.public_key)
    assert len(identity.public_key_b64) == 44
    assert [name for name in os.listdir(home)] == [IDENTITY_FILE]  # no temp files left


def test_identity_readable_by_others_is_refused(tmp_path):
    load_or_create_identity(tmp_path)
    os.chmod(tmp_path / IDENTITY_FILE, 0o644)
    with pytest.raises(IdentityError, match="chmod 600"):
        load_identity(tmp_path)
    with pytest.raises(IdentityError):
        load_or_create_identity(tmp_path)  # never silently replaced


@pytest.mark.parametrize("content", [b"", b"{}", b"[1]", b'{"version": 1, "secret_key": "x"}',
                                     b"\xff" * 10, b"{" * 5000])
def test_damaged_identity_file_is_a_clear_error_and_is_kept(tmp_path, content):
    path = tmp_path / IDENTITY_FILE
    path.write_bytes(content)
    os.chmod(path, 0o600)
    with pytest.raises(IdentityError):
        load_or_create_identity(tmp_path)
    assert path.read_bytes() == content


def test_fingerprint_is_six_groups_of_five_digits_and_stable():
    key = bytes(range(32))
    text = fingerprint(key)
    groups = text.split(" ")
    assert len(groups) == 6 and all(len(g) == 5 and g.isdigit() for g in groups)
    assert fingerprint(key) == text and fingerprint(bytes(32)) != text


def test_contacts_add_list_remove(tmp_path):
    book = ContactBook(tmp_path)
    assert book.list() == []
    key = os.urandom(32)
    book.add("Alice", b64encode(key), now=5.0)
    book.add("bob.example", os.urandom(32))
    assert [c.name for c in book.list()] == ["Alice", "bob.example"]
    assert book.get("alice").public_key == key
    assert book.find_by_hpk(h2(key)).name == "Alice"
    assert stat.S_IMODE(os.stat(tmp_path / "contacts.json").st_mode) == 0o600
    with pytest.raises(ContactError, match="already"):
        book.add("ALICE", os.urandom(32))
    book.add("alice", os.urandom(32), replace=True)
    assert book.get("Alice").public_key != key
    book.remove("ALICE")
    with pytest.raises(ContactError, match="no contact"):
        book.get("alice")
    with pytest.raises(ContactError, match="no contact"):
        book.remove("alice")
    assert [c.name for c in ContactBook(tmp_path).list()] == ["bob.example"]


@pytest.mark.parametrize("key", ["", "abc", b64encode(bytes(32)), b64encode(os.urandom(31)),
                                 b64encode(os.urandom(32))[:-1] + "!"])
def test_bad_public_keys_are_refused(tmp_path, key):
    with pytest.raises(ContactError):
        ContactBook(tmp_path).add("x", key)


def test_damaged_contacts_file_is_a_clear_error(tmp_path):
    path = tmp_path / "contacts.json"
    path.write_text(json.dumps({"version": 1, "contacts": {"../x": {"public_key": "a",
                                                                    "added": 1}}}))
    os.chmod(path, 0o600)
    with pytest.raises(ContactError, match="not a relay contacts file"):
        ContactBook(tmp_path).list()


@given(st.text(max_size=80))
def test_contact_names_are_short_and_printable(name):
    try:
        check_name(name)
    except ContactError:
        return
    assert 1 <= len(name) <= 64 and name.isascii() and name.isprintable()
    assert "/" not in name and " " not in name and not name.startswith((".", "-"))


def test_a_home_others_can_enter_is_tightened(tmp_path):
    home = tmp_path / "home"
    home.mkdir(mode=0o755)
    os.chmod(home, 0o755)
    load_or_create_identity(home)
    assert home.stat().st_mode & 0o777 == 0o700
