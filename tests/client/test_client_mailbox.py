"""The mailbox client against the relay's own resource (in memory; what goes over the wire is
recorded where a test needs it), and against hostile answers (errors, hangs, oversize)."""

from __future__ import annotations

import os
from typing import Any

import pytest
import pytest_twisted
import treq
from nacl.public import PrivateKey
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from relay.app import build_relay
from relay.client.errors import FileNotFoundOnRelay, RelayError, RelayTimeout
from relay.client.mailbox.client import MailboxClient
from relay.config import load_config
from relay.crypto import b64encode, h2
from tests.client.helpers import RecordingStubTreq, make_client, wall_clock


def relay_root(clock, **overrides):
    return build_relay(load_config(overrides=overrides), clock).root


def message_payload() -> tuple[bytes, dict]:
    msg_id = os.urandom(24)
    return msg_id, {"nonce": b64encode(msg_id), "ctext": b64encode(b"opaque to the relay")}


@pytest_twisted.ensureDeferred
async def test_handshake_and_message_commands_against_the_relay():
    clock = wall_clock()
    root = relay_root(clock)
    alice, bob = make_client(root, clock), make_client(root, clock)
    assert await alice.connect() == 0
    msg_id, payload = message_payload()
    token = await alice.upload(bob.hpk, payload)
    assert token == h2((b64encode(bob.hpk) + payload["nonce"]).encode("ascii"))
    assert 0 < await alice.message_status(token) <= 5 * 24 * 3600
    # bob's first command makes the handshake itself
    assert await bob.count() == 1
    (message,) = await bob.download()
    assert message["from"] == b64encode(alice.hpk)
    assert message["nonce"] == payload["nonce"]
    assert message["data"] == payload["ctext"] and message["kind"] == "message"
    assert await bob.download(start=1) == []
    assert await bob.delete([msg_id]) == 0
    assert await alice.message_status(token) == -2
    assert len(await alice.get_entropy(48)) == 48


@pytest_twisted.ensureDeferred
async def test_rehandshakes_once_when_the_relay_forgot_the_session():
    clock = wall_clock()
    root = relay_root(clock)
    # A client that does not refresh early, so the relay's 20-minute expiry shows as a 401.
    client = make_client(root, clock, session_lifetime=10 ** 9)
    await client.connect()
    first_session = client._session
    clock.advance(21 * 60)
    assert await client.count() == 0
    assert client._session is not first_session


@pytest_twisted.ensureDeferred
async def test_refreshes_the_session_before_the_relay_expires_it():
    clock = wall_clock()
    wire = RecordingStubTreq(relay_root(clock))
    client = make_client(None, clock, http=wire)
    await client.count()
    clock.advance(19 * 60 + 45)
    await client.count()
    assert wire.count(b"/prove") == 2
    # no 401 was needed: one handshake per session, one command each
    assert wire.count(b"/start_session") == 2 and wire.count(b"/command") == 2


@pytest_twisted.ensureDeferred
async def test_concurrent_commands_share_one_handshake():
    clock = wall_clock()
    wire = RecordingStubTreq(relay_root(clock))
    client = make_client(None, clock, http=wire)
    from twisted.internet.defer import Deferred, gatherResults
    await gatherResults([Deferred.fromCoroutine(client.count()) for _ in range(5)])
    assert wire.count(b"/prove") == 1


@pytest_twisted.ensureDeferred
async def test_proof_of_work_runs_in_a_thread_and_meets_the_difficulty():
    clock = wall_clock()
    # 10 bits: ~1000 hashes, quick, but a real search
    root = relay_root(clock, mailbox={"difficulty": 10})
    client = make_client(root, clock, reactor=reactor)
    assert await client.connect() == 0
    assert await client.count() == 0


@pytest_twisted.ensureDeferred
async def test_proof_of_work_timeout_stops_the_search():
    clock = wall_clock()
    root = relay_root(clock, mailbox={"difficulty": 64})  # never found
    client = make_client(root, clock, reactor=reactor, pow_timeout=5)
    from twisted.internet.defer import Deferred
    d = Deferred.fromCoroutine(client.connect())
    clock.advance(6)
    with pytest.raises(RelayTimeout, match="proof of work"):
        await d


async def file_round_trip(alice, bob) -> tuple[Any, bytes]:
    """Start a file, upload its one chunk, check its status and notice, download it, delete
    it: the same steps against the stand-in and the real relay. (started, chunk nonce)."""
    meta_nonce, chunk_nonce = os.urandom(24), os.urandom(24)
    started = await alice.start_file_upload(
        bob.hpk, 10, {"ctext": b64encode(b"boxed metadata"), "nonce": b64encode(meta_nonce)})
    assert (await alice.file_status(started.upload_id))["status"] == "START"
    await alice.upload_file_chunk(started.upload_id, 0, chunk_nonce, b"\x00secret\xff", True)
    status = await bob.file_status(started.upload_id)
    assert status["status"] == "COMPLETE" and status["total_chunks"] == 1
    (message,) = await bob.download()
    assert message["kind"] == "file" and message["nonce"] == b64encode(meta_nonce)
    assert await bob.download_file_chunk(started.upload_id, 0) == (chunk_nonce,
                                                                   b"\x00secret\xff")
    assert await bob.delete_file(started.upload_id) is True
    assert await bob.delete_file(started.upload_id) is False
    with pytest.raises(FileNotFoundOnRelay):
        await bob.download_file_chunk(started.upload_id, 0)
    return started, chunk_nonce


@pytest_twisted.ensureDeferred
async def test_file_commands_on_the_wire(tmp_path):
    clock = wall_clock()
    wire = RecordingStubTreq(relay_root(clock, files={"directory": str(tmp_path)}))
    alice, bob = make_client(None, clock, http=wire), make_client(None, clock, http=wire)
    started, chunk_nonce = await file_round_trip(alice, bob)
    assert started.max_chunk_size > 0 and len(started.storage_token) == 32
    with pytest.raises(RelayError):  # deleted: the relay knows it no more
        await alice.upload_file_chunk(started.upload_id, 1, chunk_nonce, b"x", True)
    # the chunk travels as the 4th line, outside the boxed command
    upload_bodies = [body for path, body in wire.requests if path == b"/command"
                     and body.count(b"\r\n") == 3]
    assert upload_bodies and upload_bodies[-1].endswith(b64encode(b"x").encode())


@pytest_twisted.ensureDeferred
async def test_a_relay_that_never_answers_times_out():
    clock = wall_clock()
    client = make_client(_Hanging(), clock, request_timeout=7)
    from twisted.internet.defer import Deferred
    d = Deferred.fromCoroutine(client.connect())
    clock.advance(8)
    with pytest.raises(RelayTimeout, match="start_session"):
        await d


class _Hanging(Resource):
    isLeaf = True

    def render_POST(self, request):
        return NOT_DONE_YET


class _Fixed(Resource):
    isLeaf = True

    def __init__(self, code: int, body: bytes, details: bytes = b"") -> None:
        super().__init__()
        self.code, self.body, self.details = code, body, details

    def render_POST(self, request):
        request.setResponseCode(self.code)
        if self.details:
            request.setHeader(b"X-Error-Details", self.details)
        return self.body


@pytest_twisted.ensureDeferred
async def test_http_errors_carry_status_and_printable_details():
    client = make_client(_Fixed(503, b"", b"closed \x1b[31mred"), wall_clock())
    with pytest.raises(RelayError) as caught:
        await client.connect()
    assert caught.value.status == 503
    assert "\x1b" not in str(caught.value) and "closed" in str(caught.value)


@pytest_twisted.ensureDeferred
async def test_oversized_and_malformed_responses_are_relay_errors():
    client = make_client(_Fixed(200, b"A" * 5000), wall_clock(), max_response_bytes=4096)
    with pytest.raises(RelayError, match="over 4096 bytes"):
        await client.connect()
    client = make_client(_Fixed(200, b"not base64\r\n0"), wall_clock())
    with pytest.raises(RelayError, match="start_session"):
        await client.connect()


@pytest_twisted.ensureDeferred
async def test_unreachable_relay_is_a_clear_error():
    # A port that was free a moment ago: bind, note it, close it.
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
        Factory.forProtocol(Protocol))
    number = port.getHost().port
    await port.stopListening()
    client = MailboxClient(f"http://127.0.0.1:{number}", PrivateKey.generate(), http=treq,
                           request_timeout=5)
    with pytest.raises(RelayError, match="cannot reach the relay"):
        await client.connect()


def test_refuses_bad_arguments_before_sending():
    clock = wall_clock()
    client = make_client(relay_root(clock), clock)
    with pytest.raises(ValueError):
        client.delete([os.urandom(24)] * 101).send(None)


@pytest_twisted.ensureDeferred
async def test_file_commands_against_the_relay(tmp_path):
    clock = wall_clock()
    root = relay_root(clock, files={"directory": str(tmp_path)})
    alice, bob = make_client(root, clock), make_client(root, clock)
    await file_round_trip(alice, bob)
