"""The checks Zax makes on /command, on the memory and the Redis store over loopback HTTP:
nonce errors are 400 (401 is for an unknown session), JSON nested too deep is 400, an
upload's payload is a string or {nonce, ctext} of strings, a file's metadata nonce has 32
or more characters. Every refusal stores nothing."""

from __future__ import annotations

import os

import pytest
import pytest_twisted
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relay.crypto import b64encode, make_nonce
from tests.mailbox_harness import MemoryRelay
from tests.test_files_support import AsyncZax, LoopbackRelay, relay_config
from tests.zax import crlf


@pytest_twisted.async_yield_fixture(params=["memory", "redis"])
async def relay(request, tmp_path):
    if request.param == "memory":
        url = "memory"
    else:
        server = request.getfixturevalue("redis_server")
        server.flush()
        url = server.url
    relay = LoopbackRelay(relay_config(url, str(tmp_path / "chunks")))
    await relay.start()
    try:
        yield relay
    finally:
        await relay.stop()


async def nothing_stored(relay: LoopbackRelay, bob: AsyncZax) -> None:
    assert await bob.enc({"cmd": "count"}) == 0
    assert await relay.app.store.files.usage() == 0


def raw_body(client: AsyncZax, plain: bytes, nonce: bytes | None = None) -> bytes:
    nonce = nonce or make_nonce(client.z.now())
    ctext = client.z.box.encrypt(plain, nonce).ciphertext
    return crlf(b64encode(client.hpk), b64encode(nonce), b64encode(ctext))


@pytest_twisted.ensureDeferred
async def test_nonce_errors_are_400_and_unknown_sessions_401(relay):
    alice = await relay.client()
    body = alice.z.command_body({"cmd": "count"})
    assert (await alice.post("command", body))[0] == 200
    assert await alice.post("command", body) == (400, b"")
    stale = alice.z.command_body({"cmd": "count"}, nonce=make_nonce(alice.z.now() - 120))
    assert await alice.post("command", stale) == (400, b"")
    stranger = AsyncZax(relay.poster())
    stranger.z.relay_pk = os.urandom(32)
    assert (await stranger.command({"cmd": "count"}))[0] == 401


@pytest_twisted.ensureDeferred
async def test_deep_json_is_400(relay):
    alice, bob = await relay.client(), await relay.client()
    deep = b'{"cmd":"upload","to":"' + b64encode(bob.hpk).encode() + b'","payload":' + \
        b"[" * 50_000 + b"]" * 50_000 + b"}"
    assert await alice.post("command", raw_body(alice, deep)) == (400, b"")
    await nothing_stored(relay, bob)


BAD_PAYLOADS = [None, 5, 1.5, True, [], ["a"], {}, {"nonce": "NONCE"}, {"ctext": "aGk="},
                {"nonce": "NONCE", "ctext": 5}, {"nonce": "NONCE", "ctext": None},
                {"nonce": "NONCE", "ctext": ["aGk="]}, {"nonce": "NONCE", "ctext": {}},
                {"nonce": 5, "ctext": "aGk="}, {"nonce": "not base64!", "ctext": "aGk="}]


@pytest_twisted.ensureDeferred
async def test_upload_payload_shapes(relay):
    alice, bob = await relay.client(), await relay.client()
    nonce = b64encode(os.urandom(24))
    for payload in BAD_PAYLOADS:
        if isinstance(payload, dict) and payload.get("nonce") == "NONCE":
            payload = dict(payload, nonce=nonce)
        command = {"cmd": "upload", "to": b64encode(bob.hpk)}
        if payload is not None:
            command["payload"] = payload
        assert await alice.command(command) == (400, b""), payload
    await nothing_stored(relay, bob)
    # What Zax takes: a string (any, even empty), or {nonce, ctext} with both strings.
    for payload in ["hi", "", {"nonce": nonce, "ctext": "aGk="},
                    {"nonce": b64encode(os.urandom(24)), "ctext": "", "extra": 1}]:
        status, _ = await alice.command({"cmd": "upload", "to": b64encode(bob.hpk),
                                         "payload": payload})
        assert status == 200, payload
    data = [m["data"] for m in await bob.enc({"cmd": "download"})]
    assert data == ["hi", "", "aGk=", ""]


@pytest_twisted.ensureDeferred
async def test_start_file_upload_metadata_nonce_has_32_characters(relay):
    alice, bob = await relay.client(), await relay.client()

    def start(nonce) -> dict:
        return {"cmd": "startFileUpload", "to": b64encode(bob.hpk), "file_size": 100,
                "metadata": {"nonce": nonce, "ctext": "aGVsbG8="}}

    for nonce in ["AAAA", b64encode(os.urandom(21)), b64encode(os.urandom(15)),
                  None, 24, ["A" * 32], "A" * 31]:
        assert await alice.command(start(nonce)) == (400, b""), nonce
    await nothing_stored(relay, bob)
    for nonce in [b64encode(os.urandom(22)), b64encode(os.urandom(24)),
                  b64encode(os.urandom(48))]:
        assert len(nonce) >= 32
        assert set(await alice.enc(start(nonce))) == \
            {"uploadID", "max_chunk_size", "storage_token"}
    assert await bob.enc({"cmd": "count"}) == 3


# -- every payload shape (memory store, in process: fast enough for hypothesis) --------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(["nonce", "ctext", "x"]), inner, max_size=3),
    max_leaves=6)
NONCES = st.sampled_from([b64encode(bytes(24)), b64encode(bytes(64)), b64encode(bytes(65)), ""])
payloads = json_values | st.fixed_dictionaries(
    {"nonce": NONCES | json_values, "ctext": st.text(max_size=8) | json_values})


def accepted(payload) -> bool:
    if isinstance(payload, str):
        return True
    return isinstance(payload, dict) and isinstance(payload.get("ctext"), str) and \
        payload.get("nonce") in (b64encode(bytes(24)), b64encode(bytes(64)))


@pytest.fixture(scope="module")
def memory_pair():
    relay = MemoryRelay()
    return relay.connected(), relay.connected()


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payload=payloads)
def test_any_payload_is_stored_exactly_when_zax_takes_it(memory_pair, payload):
    alice, bob = memory_pair
    status, body = alice.command({"cmd": "upload", "to": b64encode(bob.hpk),
                                  "payload": payload})
    messages = bob.open(bob.command({"cmd": "download"})[1])
    bob.command({"cmd": "delete", "payload": [m["nonce"] for m in messages]})
    if accepted(payload):
        assert status == 200
        (message,) = messages
        assert message["data"] == (payload if isinstance(payload, str) else payload["ctext"])
    else:
        assert (status, body, messages) == (400, b"", [])
