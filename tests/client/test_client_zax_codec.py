"""The client's Zax encodings, byte by byte, and its response parsers under random input."""

from __future__ import annotations

import json
import os

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from nacl.public import Box, PrivateKey

from relay.client.errors import RelayError
from relay.client.mailbox import codec
from relay.crypto import b64decode, b64encode, h2


def test_prove_body_has_the_fixed_shape_and_opens_to_the_identity_proof():
    client_token, relay_token = os.urandom(32), os.urandom(32)
    relay_sk, session_sk, identity = (PrivateKey.generate() for _ in range(3))
    body = codec.prove_body(client_token=client_token, relay_token=relay_token,
                            relay_session_pk=relay_sk.public_key, client_session_sk=session_sk,
                            identity_sk=identity, now=1_700_000_000)
    lines = body.split(b"\r\n")
    assert [len(x) for x in lines] == [44, 44, 32, 256]
    assert b64decode(lines[0]) == h2(client_token)
    outer_nonce = b64decode(lines[2], 24)
    assert int.from_bytes(outer_nonce[:8], "big") == 1_700_000_000
    proof = Box(relay_sk, session_sk.public_key).decrypt(b64decode(lines[3]), outer_nonce)
    assert len(proof) == 176 and b" " not in proof
    fields = json.loads(proof)
    assert list(fields) == ["pub_key", "nonce", "ctext"]
    assert b64decode(fields["pub_key"]) == bytes(identity.public_key)
    inner = Box(relay_sk, identity.public_key).decrypt(b64decode(fields["ctext"]),
                                                       b64decode(fields["nonce"]))
    assert inner == h2(bytes(session_sk.public_key) + relay_token + client_token)


def test_handshake_bodies():
    token = bytes(range(32))
    assert codec.start_session_body(token) == b64encode(token).encode()
    proof = codec.session_proof(token, token, 0, None)
    assert proof == h2(token + token)
    assert codec.verify_session_body(token, proof) == \
        f"{b64encode(h2(token))}\r\n{b64encode(proof)}".encode()
    with pytest.raises(ValueError):
        codec.session_proof(token, token, 3, None)


def test_command_body_is_three_lines_and_a_fourth_for_a_chunk():
    a, b = PrivateKey.generate(), PrivateKey.generate()
    hpk = os.urandom(32)
    body = codec.command_body(hpk=hpk, command={"cmd": "count"}, session_box=Box(a, b.public_key),
                              now=5, extra_line=b"chunk")
    lines = body.split(b"\r\n")
    assert len(lines) == 4 and len(body.split(b"\r\n", 2)[0]) + 2 + 32 + 2 == 80
    assert b64decode(lines[3]) == b"chunk"
    opened = Box(b, a.public_key).decrypt(b64decode(lines[2]), b64decode(lines[1]))
    assert opened == b'{"cmd":"count"}'


def test_parse_start_session():
    token = os.urandom(32)
    assert codec.parse_start_session(f"{b64encode(token)}\r\n17".encode()) == (token, 17)
    for bad in [b"", b"x", f"{b64encode(token)}\r\n-1".encode(),
                f"{b64encode(token)}\r\n17\r\n".encode(), f"{b64encode(token)}\r\n999".encode(),
                f"{b64encode(token[:31])}\r\n0".encode()]:
        with pytest.raises(RelayError):
            codec.parse_start_session(bad)


@given(st.binary(max_size=200))
def test_random_responses_are_relay_errors_never_crashes(body):
    box = Box(PrivateKey.generate(), PrivateKey.generate().public_key)
    for parse in (codec.parse_start_session, codec.parse_verify_session,
                  lambda b: codec.parse_count_line(b, "prove"),
                  lambda b: codec.open_encrypted(codec.split_response(b, 2, "x"), box, "x")):
        try:
            parse(body)
        except RelayError:
            pass


@given(st.text(max_size=30))
@example("²")
@example("٣")
def test_parse_int_only_accepts_whole_numbers(text):
    try:
        value = codec.parse_int(text, "x")
    except RelayError:
        return
    assert str(value) == text or text.lstrip("-").lstrip("0") == str(abs(value))
