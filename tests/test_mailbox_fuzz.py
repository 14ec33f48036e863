"""Property tests of every mailbox body parser: bad input is a 4xx and changes nothing."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relay.crypto import b64encode, make_nonce
from tests.mailbox_harness import MemoryRelay
from tests.zax import crlf

SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


def snapshot(relay: MemoryRelay) -> tuple:
    """Everything a request could change in the memory store.

    The replay cache is left out on purpose: an authenticated command burns its nonce even
    when its fields are refused, so that the same request cannot be replayed.
    """
    mailbox = relay.app.store.mailbox
    sessions = relay.app.store.sessions
    boxes = {hpk: [(i, m.record) for i, m in box.messages.items()]
             for hpk, box in mailbox._mailboxes.items()}
    return boxes, len(sessions.handshakes), len(sessions.sessions)


def mutations(valid: bytes) -> st.SearchStrategy[bytes]:
    """Bodies near a valid one: truncated, extended, with bytes flipped or lines shuffled."""
    def flip(data: bytes, index: int, value: int) -> bytes:
        if not data:
            return bytes([value])
        index %= len(data)
        return data[:index] + bytes([value]) + data[index + 1:]

    lines = valid.split(b"\r\n")
    return st.one_of(
        st.binary(max_size=600),
        st.integers(0, len(valid)).map(lambda n: valid[:n]),
        st.binary(min_size=1, max_size=50).map(lambda tail: valid + tail),
        st.tuples(st.integers(0, 10**6), st.integers(0, 255)).map(lambda t: flip(valid, *t)),
        st.permutations(lines).map(lambda ls: b"\r\n".join(ls)),
        st.lists(st.sampled_from(lines), max_size=6).map(lambda ls: b"\n".join(ls)),
        st.just(valid.replace(b"\r\n", b"\n")),
    )


RELAY = MemoryRelay()
ALICE, BOB = RELAY.connected(), RELAY.connected()
ALICE.upload(BOB)
HANDSHAKING = RELAY.client()
HANDSHAKING.start(), HANDSHAKING.verify()


def check(path: str, body: bytes) -> None:
    before = snapshot(RELAY)
    status, _ = RELAY.post(path, body)
    assert status != 500 and status < 600
    if status != 200:
        assert snapshot(RELAY) == before, (path, status)


@SETTINGS
@given(mutations(RELAY.client().start_body()))
def test_start_session_bodies(body):
    check("start_session", body)


@SETTINGS
@given(mutations(HANDSHAKING.verify_body()))
def test_verify_session_bodies(body):
    check("verify_session", body)


@SETTINGS
@given(mutations(HANDSHAKING.prove_body()))
def test_prove_bodies(body):
    check("prove", body)


@SETTINGS
@given(mutations(ALICE.command_body({"cmd": "upload", "to": b64encode(BOB.hpk),
                                     "payload": "hello"})))
def test_command_bodies(body):
    check("command", body)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=4),
    max_leaves=12)
COMMANDS = ["count", "upload", "download", "messageStatus", "message_status", "delete",
            "getEntropy", "startFileUpload", "uploadFileChunk", "fileStatus",
            "downloadFileChunk", "deleteFile", "unknown"]
FIELDS = ["to", "payload", "start", "count", "token", "size", "uploadID", "part", "nonce",
          "last_chunk", "file_size", "metadata"]


@SETTINGS
@given(st.sampled_from(COMMANDS),
       st.dictionaries(st.sampled_from(FIELDS), json_values | st.sampled_from(
           [b64encode(BOB.hpk), b64encode(bytes(24)), -1, 0, 2**40, [], {}]), max_size=5),
       st.one_of(st.none(), st.binary(max_size=40).map(lambda b: b64encode(b).encode())))
def test_command_fields(name, fields, extra):
    """Well-encrypted commands with arbitrary fields: never a 500; a refusal stores nothing."""
    command = {"cmd": name, **fields}
    nonce = make_nonce(RELAY.clock.seconds())
    ctext = ALICE.box.encrypt(json.dumps(command).encode(), nonce).ciphertext
    lines = [b64encode(ALICE.hpk), b64encode(nonce), b64encode(ctext)]
    if extra is not None:
        lines.append(extra)
    check("command", crlf(*lines))
