"""The message commands over /command: happy paths and every error code."""

from __future__ import annotations

import base64
import json
import os

import pytest

from relay.crypto import b64decode, b64encode, make_nonce
from tests.mailbox_harness import MemoryRelay
from tests.zax import crlf


@pytest.fixture
def relay() -> MemoryRelay:
    return MemoryRelay()


@pytest.fixture
def pair(relay):
    return relay.connected(), relay.connected()


def test_upload_count_download_delete(relay, pair):
    alice, bob = pair
    status, token, msg_id = alice.upload(bob, b"ciphertext")
    assert status == 200 and len(b64decode(token, 32)) == 32
    status, body = bob.command({"cmd": "count"})
    assert status == 200 and bob.open(body) == 1
    status, body = bob.command({"cmd": "download"})
    (message,) = bob.open(body)
    assert message["data"] == b64encode(b"ciphertext")
    assert message["from"] == b64encode(alice.hpk)
    assert message["nonce"] == b64encode(msg_id)
    assert message["kind"] == "message"
    assert abs(message["time"] - relay.clock.seconds()) < 1
    status, body = alice.command({"cmd": "messageStatus", "token": token.decode()})
    assert status == 200 and int(body) == int(relay.config.mailbox.message_ttl)
    status, body = bob.command({"cmd": "delete", "payload": [message["nonce"]]})
    assert (status, body) == (200, b"0")
    assert alice.command({"cmd": "messageStatus", "token": token.decode()}) == (200, b"-2")


def test_plain_string_payload_gets_relay_made_id(pair):
    alice, bob = pair
    status, _ = alice.command({"cmd": "upload", "to": b64encode(bob.hpk), "payload": "hi"})
    assert status == 200
    (message,) = bob.open(bob.command({"cmd": "download"})[1])
    assert message["data"] == "hi" and len(b64decode(message["nonce"])) == 24


def test_download_paging_oldest_first(relay, pair):
    alice, bob = pair
    for i in range(5):
        alice.upload(bob, bytes([i]))
    status, body = bob.command({"cmd": "download", "start": 1, "count": 2})
    assert [b64decode(m["data"]) for m in bob.open(body)] == [b"\x01", b"\x02"]


def test_download_page_is_capped():
    relay = MemoryRelay(mailbox={"download_page": 3})
    alice, bob = relay.connected(), relay.connected()
    for _ in range(5):
        alice.upload(bob)
    assert len(bob.open(bob.command({"cmd": "download", "count": 50})[1])) == 3


def test_reupload_same_id_replaces(pair):
    alice, bob = pair
    msg_id = os.urandom(24)
    alice.upload(bob, b"one", msg_id)
    alice.upload(bob, b"two", msg_id)
    (message,) = bob.open(bob.command({"cmd": "download"})[1])
    assert b64decode(message["data"]) == b"two"


def test_full_mailbox_is_507_and_stores_nothing():
    relay = MemoryRelay(mailbox={"max_messages": 2})
    alice, bob = relay.connected(), relay.connected()
    assert alice.upload(bob)[0] == 200
    assert alice.upload(bob)[0] == 200
    assert alice.upload(bob)[0] == 507
    assert bob.open(bob.command({"cmd": "count"})[1]) == 2


def test_memory_budget_is_507():
    relay = MemoryRelay(store={"memory_max_bytes": 2000})
    alice, bob = relay.connected(), relay.connected()
    results = [alice.upload(bob, os.urandom(500))[0] for _ in range(5)]
    assert results[0] == 200 and results[-1] == 507


def test_oversized_message_is_413():
    relay = MemoryRelay(mailbox={"max_message_size": 1000})
    alice, bob = relay.connected(), relay.connected()
    assert alice.upload(bob, os.urandom(1000))[0] == 413
    assert bob.open(bob.command({"cmd": "count"})[1]) == 0


def test_messages_expire(relay, pair):
    alice, bob = pair
    alice.upload(bob)
    relay.clock.advance(relay.config.mailbox.message_ttl + 1)
    bob.connect()  # the old session has expired by now too
    assert bob.open(bob.command({"cmd": "count"})[1]) == 0


def test_delete_ignores_unknown_ids_and_accepts_empty(pair):
    alice, bob = pair
    alice.upload(bob)
    assert bob.command({"cmd": "delete", "payload": []}) == (200, b"1")
    assert bob.command({"cmd": "delete", "payload": [b64encode(os.urandom(24))]}) == (200, b"1")


def test_delete_only_touches_own_mailbox(pair):
    alice, bob = pair
    _, _, msg_id = alice.upload(bob)
    assert alice.command({"cmd": "delete", "payload": [b64encode(msg_id)]}) == (200, b"0")
    assert bob.open(bob.command({"cmd": "count"})[1]) == 1


def test_get_entropy(pair):
    alice, _ = pair
    status, body = alice.command({"cmd": "getEntropy", "size": 40})
    assert status == 200
    assert len(b64decode(json.loads(base64.b64decode(body))["entropy"])) == 40


@pytest.mark.parametrize("command", [
    {"cmd": "nope"},
    {"cmd": "upload", "to": "short", "payload": "x"},
    {"cmd": "upload", "to": b64encode(os.urandom(32))},
    {"cmd": "upload", "to": b64encode(os.urandom(32)), "payload": {"nonce": "!!", "ctext": "x"}},
    {"cmd": "download", "start": -1},
    {"cmd": "download", "count": "ten"},
    {"cmd": "download", "start": 1.5},
    {"cmd": "messageStatus", "token": "abc"},
    {"cmd": "messageStatus"},
    {"cmd": "delete", "payload": "not a list"},
    {"cmd": "delete", "payload": [b64encode(os.urandom(24))] * 101},
    {"cmd": "delete", "payload": [17]},
    {"cmd": "getEntropy", "size": 0},
    {"cmd": "getEntropy", "size": 10**9},
    {"cmd": "getEntropy", "size": True},
    {"no": "cmd"},
])
def test_bad_commands_are_400(pair, command):
    alice, _ = pair
    assert alice.command(command)[0] == 400


def test_command_not_json_is_400(relay, pair):
    alice, _ = pair
    nonce = make_nonce(relay.clock.seconds())
    ctext = alice.box.encrypt(b"{not json", nonce).ciphertext
    body = crlf(b64encode(alice.hpk), b64encode(nonce), b64encode(ctext))
    assert relay.post("command", body)[0] == 400


def raw_command(relay, client, plain: bytes, extra: bytes | None = None) -> tuple[int, bytes]:
    nonce = make_nonce(relay.clock.seconds())
    ctext = client.box.encrypt(plain, nonce).ciphertext
    lines = [b64encode(client.hpk), b64encode(nonce), b64encode(ctext)]
    return relay.post("command", crlf(*lines, *([extra] if extra else [])))


@pytest.mark.parametrize("plain", [
    b"[" * 50_000 + b"]" * 50_000,
    b'{"cmd":"upload","to":"%s","payload":' + b"[" * 50_000 + b"]" * 50_000 + b"}",
    b'{"cmd":"count","x":' + b'{"a":' * 40 + b"1" + b"}" * 40 + b"}",
    b'{"cmd":"count","x":NaN}',
    b'{"cmd":"count"}'.decode().encode("utf-16"),
])
def test_deep_or_not_quite_json_commands_are_400(relay, pair, plain):
    """Refused before parsing (Python's parser would recurse 50,000 deep), nothing stored."""
    alice, bob = pair
    plain = plain.replace(b"%s", b64encode(bob.hpk).encode())
    assert raw_command(relay, alice, plain) == (400, b"")
    assert bob.open(bob.command({"cmd": "count"})[1]) == 0


def test_deep_file_command_is_400(relay, pair):
    alice, _ = pair
    plain = b'{"cmd":"uploadFileChunk","uploadID":' + b"[" * 50_000 + b"]" * 50_000 + b"}"
    assert raw_command(relay, alice, plain, extra=b"QUJD") == (400, b"")


def test_command_without_session_is_401(relay):
    stranger = relay.client()
    stranger.relay_pk = os.urandom(32)
    assert stranger.command({"cmd": "count"})[0] == 401


def test_command_replayed_nonce_is_400(relay, pair):
    """As in Zax: a nonce error is bad input (401 would make clients handshake again)."""
    alice, _ = pair
    body = alice.command_body({"cmd": "count"})
    assert relay.post("command", body)[0] == 200
    assert relay.post("command", body) == (400, b"")
    # The session is still good.
    assert alice.command({"cmd": "count"})[0] == 200


def test_command_stale_nonce_is_400(relay, pair):
    alice, _ = pair
    for offset in (-61, 61, -3600):
        nonce = make_nonce(relay.clock.seconds() + offset)
        body = alice.command_body({"cmd": "count"}, nonce=nonce)
        assert relay.post("command", body) == (400, b""), offset


def test_fourth_line_on_message_command_is_400(pair):
    alice, _ = pair
    assert alice.command({"cmd": "count"}, extra=b"AAAA")[0] == 400


def test_file_commands_disabled_are_405():
    relay = MemoryRelay(files={"enabled": False})
    alice = relay.connected()
    assert alice.command({"cmd": "fileStatus", "uploadID": "x"})[0] == 405


def test_oversized_body_is_413(relay, pair):
    alice, _ = pair
    huge = b"A" * (relay.config.http.max_command_body + 10)
    assert relay.post("command", huge)[0] == 413
    assert relay.post("start_session", b"A" * 5000)[0] == 413


def test_responses_have_no_trailing_crlf_and_allow_any_origin(relay, pair):
    alice, _ = pair
    status, body = alice.command({"cmd": "count"})
    assert len(body.split(b"\r\n")) == 2 and not body.endswith(b"\n")


def test_low_order_session_key_in_prove_is_400(relay):
    client = relay.client()
    client.start(), client.verify()
    lines = client.prove_body().split(b"\r\n")
    lines[1] = b64encode(bytes(32)).encode()
    assert relay.post("prove", crlf(*lines))[0] == 400
