"""The session handshake: happy paths, proof of work, and every error code."""

from __future__ import annotations

import os

import pytest

from relay.crypto import b64decode, b64encode, h2, make_nonce
from tests.mailbox_harness import MemoryRelay
from tests.zax import crlf


@pytest.fixture
def relay() -> MemoryRelay:
    return MemoryRelay()


def test_full_handshake_returns_message_count(relay):
    sender, recipient = relay.connected(), relay.connected()
    assert sender.upload(recipient)[0] == 200
    fresh = relay.client(identity=recipient.identity)
    assert fresh.connect() == 1


def test_start_session_answers_token_and_difficulty(relay):
    client = relay.client()
    status, body = client.start()
    assert status == 200
    token, difficulty = body.split(b"\r\n")
    assert len(token) == 44 and difficulty == b"0"
    assert not body.endswith(b"\r\n")


@pytest.mark.parametrize("difficulty", [1, 7, 8, 9])
def test_proof_of_work_at_difficulty(difficulty):
    relay = MemoryRelay(mailbox={"difficulty": difficulty})
    client = relay.client()
    client.start()
    assert client.difficulty == difficulty
    assert client.verify()[0] == 200
    assert client.prove()[0] == 200


def test_wrong_proof_of_work_is_401():
    relay = MemoryRelay(mailbox={"difficulty": 8})
    client = relay.client()
    client.start()
    # h2 of the tokens is the difficulty-0 answer; at difficulty 8 the relay wants a nonce
    # whose hash starts with a zero byte. Find one that does not.
    while True:
        proof = os.urandom(32)
        if h2(client.client_token + client.relay_token + proof)[0] != 0:
            break
    body = crlf(b64encode(h2(client.client_token)), b64encode(proof))
    assert relay.post("verify_session", body)[0] == 401


@pytest.mark.parametrize("body, status", [
    (b"", 400),
    (b"not base64 at all", 401),
    (b64encode(os.urandom(31)).encode(), 401),
    (crlf(b64encode(os.urandom(32)), b64encode(os.urandom(32))), 401),
])
def test_start_session_errors(relay, body, status):
    assert relay.post("start_session", body)[0] == status


def test_start_session_accepts_lf_and_trailing_newline(relay):
    client = relay.client()
    assert relay.post("start_session", client.start_body() + b"\n")[0] == 200


def test_verify_unknown_handshake_is_401(relay):
    client = relay.client()
    client.relay_token = os.urandom(32)
    assert relay.post("verify_session", client.verify_body())[0] == 401


def test_verify_wrong_proof_is_401(relay):
    client = relay.client()
    client.start()
    body = crlf(b64encode(h2(client.client_token)), b64encode(os.urandom(32)))
    assert relay.post("verify_session", body)[0] == 401


def test_verify_malformed_is_400(relay):
    assert relay.post("verify_session", b"abc\r\ndef")[0] == 400


def test_verify_is_idempotent(relay):
    client = relay.client()
    client.start()
    first = relay.post("verify_session", client.verify_body())
    second = relay.post("verify_session", client.verify_body())
    assert first == second


def test_handshake_expires_after_token_timeout(relay):
    client = relay.client()
    client.start()
    relay.clock.advance(relay.config.mailbox.token_timeout + 1)
    assert client.verify()[0] == 401


def test_prove_before_verify_is_401(relay):
    client = relay.client()
    client.start()
    client.relay_pk = os.urandom(32)
    assert relay.post("prove", client.prove_body())[0] == 401


def test_prove_wrong_line_lengths_is_400(relay):
    client = relay.client()
    client.start(), client.verify()
    body = client.prove_body()
    assert relay.post("prove", body + b"\r\nextra")[0] == 400
    assert relay.post("prove", body[:-4])[0] == 400


def test_prove_signing_the_wrong_session_is_400(relay):
    client = relay.client()
    client.start(), client.verify()
    assert relay.post("prove", client.prove_body(signed=os.urandom(32)))[0] == 400


def test_prove_with_box_for_another_key_is_400(relay):
    client = relay.client()
    client.start(), client.verify()
    body = client.prove_body()
    lines = body.split(b"\r\n")
    lines[1] = b64encode(os.urandom(32)).encode()  # a session key that did not seal the box
    assert relay.post("prove", crlf(*lines))[0] == 400


def test_prove_stale_nonce_is_400(relay):
    """As in Zax: a nonce error is bad input, not an unknown session."""
    client = relay.client()
    client.start(), client.verify()
    stale = make_nonce(relay.clock.seconds() - 3600)
    assert relay.post("prove", client.prove_body(outer_nonce=stale))[0] == 400


def test_prove_replayed_nonce_is_400(relay):
    first = relay.connected()
    client = relay.client(identity=first.identity)
    client.start(), client.verify()
    # The outer nonce of a command of the same identity, already seen by the relay (nonces
    # are remembered per identity: a box opens only for the identity it was made for).
    body = first.command_body({"cmd": "count"})
    assert relay.post("command", body)[0] == 200
    used = b64decode(body.split(b"\r\n")[1].decode(), 24)
    assert relay.post("prove", client.prove_body(outer_nonce=used))[0] == 400


def test_prove_only_once(relay):
    client = relay.client()
    client.start(), client.verify()
    body = client.prove_body()
    assert relay.post("prove", body)[0] == 200
    assert relay.post("prove", body)[0] == 401


def test_new_prove_replaces_session(relay):
    first = relay.connected()
    again = relay.client(identity=first.identity)
    again.connect()
    assert again.command({"cmd": "count"})[0] == 200
    # The old session key no longer opens: 401 tells the client to handshake again.
    assert first.command({"cmd": "count"})[0] == 401


def test_session_expires(relay):
    client = relay.connected()
    relay.clock.advance(relay.config.mailbox.session_timeout + 1)
    client.now = relay.clock.seconds
    assert client.command({"cmd": "count"})[0] == 401


def test_other_methods_and_paths_are_503(relay):
    from treq.testing import StubTreq
    stub = StubTreq(relay.app.root)
    for method, path in [("GET", "start_session"), ("PUT", "command"), ("POST", "nothing"),
                         ("GET", "")]:
        d = stub.request(method, "http://relay.test/" + path)
        stub.flush()
        responses: list = []
        d.addCallback(responses.append)
        (response,) = responses
        assert response.code == 503, (method, path)
        assert response.headers.getRawHeaders("Access-Control-Allow-Origin") == ["*"]
