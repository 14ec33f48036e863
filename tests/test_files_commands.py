"""The five file commands over loopback HTTP, on the memory and the Redis store: happy paths,
every error path, resume, caps and a full disk, and fair storage: one client filling as fast
as it can (with identities, which are free) leaves room for everyone else. Clients on
127.0.0.1 and on 127.0.0.2 are two client networks ([http] ipv4_prefix = 32)."""

from __future__ import annotations

import errno
import json
import os

import pytest
import pytest_twisted

import relay.files.disk
from relay.crypto import b64decode, b64encode
from relay.files.ids import file_id
from relay.files.limits import part_charge
from tests.test_files_support import (
    CHUNK,
    AsyncZax,
    LoopbackRelay,
    SealedFile,
    relay_config,
)


async def _relay(kind: str, request, tmp_path, **files) -> LoopbackRelay:
    if kind == "memory":
        url = "memory"
    else:
        server = request.getfixturevalue("redis_server")
        server.flush()
        url = server.url
    relay = LoopbackRelay(relay_config(url, str(tmp_path / "chunks"), **files))
    await relay.start()
    return relay


@pytest.fixture(params=["memory", "redis"])
def kind(request) -> str:
    return request.param


@pytest_twisted.async_yield_fixture
async def make_relay(kind, request, tmp_path):
    relays = []

    async def make(**files) -> LoopbackRelay:
        relay = await _relay(kind, request, tmp_path, **files)
        relays.append(relay)
        return relay

    try:
        yield make
    finally:
        for relay in relays:
            await relay.stop()


async def started_file(relay: LoopbackRelay, size: int = 3500, chunk_size: int = 1000):
    alice, bob = await relay.client(), await relay.client()
    sealed = SealedFile(os.urandom(size), chunk_size)
    answer = await alice.start_upload(bob, size)
    return alice, bob, sealed, answer["uploadID"]


def chunk_dirs(tmp_path) -> list[str]:
    root = tmp_path / "chunks"
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


# -- happy paths --------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk_store", ["disk", "store"])
@pytest_twisted.ensureDeferred
async def test_upload_download_delete(make_relay, tmp_path, chunk_store):
    relay = await make_relay(chunk_store=chunk_store)
    alice, bob = await relay.client(), await relay.client()
    sealed = SealedFile(os.urandom(3500), 1000)
    meta_nonce = os.urandom(24)
    answer = await alice.start_upload(bob, 3500, meta_nonce)
    assert set(answer) == {"uploadID", "max_chunk_size", "storage_token"}
    assert answer["max_chunk_size"] == 512000
    upload_id = answer["uploadID"]
    assert len(b64decode(upload_id, 32)) == 32
    # The recipient finds a kind "file" message whose data is the JSON *string* glow parses.
    messages = await bob.enc({"cmd": "download"})
    assert len(messages) == 1
    message = messages[0]
    assert message["kind"] == "file" and message["nonce"] == b64encode(meta_nonce)
    assert message["from"] == b64encode(alice.hpk)
    assert json.loads(message["data"]) == {"ctext": b64encode(b"encrypted metadata"),
                                           "nonce": b64encode(meta_nonce),
                                           "uploadID": upload_id}
    status, body = await alice.command({"cmd": "messageStatus",
                                        "token": answer["storage_token"]})
    assert status == 200 and int(body) > 6 * 24 * 3600
    assert (await bob.enc({"cmd": "fileStatus", "uploadID": upload_id}))["status"] == "START"
    stored = 0
    for part in range(sealed.parts):
        command, chunk = sealed.command(upload_id, part)
        assert await alice.enc(command, chunk) == {"status": "OK"}
        stored += len(b64decode(chunk))
        info = await bob.enc({"cmd": "fileStatus", "uploadID": upload_id})
        assert info["status"] == ("COMPLETE" if part == sealed.parts - 1 else "UPLOADING")
        assert info["bytes_stored"] == stored and info["total_chunks"] == part + 1
    assert info == {"status": "COMPLETE", "file_size": 3500, "bytes_stored": 3500 + 4 * 16,
                    "total_chunks": 4, "hpk_from": b64encode(alice.hpk),
                    "hpk_to": b64encode(bob.hpk)}
    data = b"".join([await bob.download_chunk(upload_id, p, sealed.key) for p in range(4)])
    assert data == sealed.data
    # The sender may read it back too.
    assert await alice.download_chunk(upload_id, 0, sealed.key) == sealed.data[:1000]
    if chunk_store == "disk":
        assert chunk_dirs(tmp_path) == [file_id(b64decode(upload_id)).hex()]
    assert await bob.enc({"cmd": "deleteFile", "uploadID": upload_id}) == {"status": "OK"}
    assert (await alice.enc({"cmd": "fileStatus", "uploadID": upload_id}))["status"] == \
        "NOT_FOUND"
    assert await bob.enc({"cmd": "deleteFile", "uploadID": upload_id}) == \
        {"status": "NOT_FOUND"}
    assert chunk_dirs(tmp_path) == []
    assert await relay.app.store.files.usage() == 0


@pytest_twisted.ensureDeferred
async def test_full_size_chunks(make_relay):
    relay = await make_relay()
    alice, bob = await relay.client(), await relay.client()
    # 500 KiB of ciphertext per chunk is the most a chunk may be.
    sealed = SealedFile(os.urandom(2 * (CHUNK - 16)), CHUNK - 16)
    upload_id = (await alice.start_upload(bob, len(sealed.data)))["uploadID"]
    for part in range(2):
        assert await alice.enc(*sealed.command(upload_id, part)) == {"status": "OK"}
    data = b"".join([await bob.download_chunk(upload_id, p, sealed.key) for p in range(2)])
    assert data == sealed.data


@pytest_twisted.ensureDeferred
async def test_resend_replaces_and_restart_is_idempotent(make_relay, tmp_path):
    relay = await make_relay()
    alice, bob = await relay.client(), await relay.client()
    sealed = SealedFile(os.urandom(2500), 1000)
    meta_nonce = os.urandom(24)
    upload_id = (await alice.start_upload(bob, 2500, meta_nonce))["uploadID"]
    for part in (0, 1):
        await alice.enc(*sealed.command(upload_id, part))
    before = await bob.enc({"cmd": "fileStatus", "uploadID": upload_id})
    # The upload is interrupted; the client starts over with the same start command.
    again = await alice.start_upload(bob, 2500, meta_nonce)
    assert again["uploadID"] == upload_id
    assert await bob.enc({"cmd": "fileStatus", "uploadID": upload_id}) == before
    with pytest.raises(AssertionError):  # same nonce, another size: refused
        await alice.start_upload(bob, 9999, meta_nonce)
    # ... and re-sends part 1 (a new nonce and ciphertext) before going on.
    await alice.enc(*sealed.command(upload_id, 1))
    await alice.enc(*sealed.command(upload_id, 2))
    info = await bob.enc({"cmd": "fileStatus", "uploadID": upload_id})
    assert info["status"] == "COMPLETE" and info["bytes_stored"] == 2500 + 3 * 16
    assert info["total_chunks"] == 3
    data = b"".join([await bob.download_chunk(upload_id, p, sealed.key) for p in range(3)])
    assert data == sealed.data
    # The replaced chunk is gone from disk: one chunk file per part.
    file_dir = tmp_path / "chunks" / file_id(b64decode(upload_id)).hex()
    assert len(list(file_dir.iterdir())) == 3
    assert len(await bob.enc({"cmd": "download"})) == 1  # one message, not two


@pytest_twisted.ensureDeferred
async def test_out_of_order_parts(make_relay):
    relay = await make_relay()
    alice, bob, sealed, upload_id = await started_file(relay)
    await alice.enc(*sealed.command(upload_id, 3))  # the last part first
    info = await bob.enc({"cmd": "fileStatus", "uploadID": upload_id})
    assert info["status"] == "UPLOADING" and info["total_chunks"] == 1
    for part in (1, 0):
        await alice.enc(*sealed.command(upload_id, part))
    assert (await bob.enc({"cmd": "fileStatus", "uploadID": upload_id}))["status"] == \
        "UPLOADING"
    await alice.enc(*sealed.command(upload_id, 2))
    assert (await bob.enc({"cmd": "fileStatus", "uploadID": upload_id}))["status"] == \
        "COMPLETE"


# -- errors -----------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_start_errors_store_nothing(make_relay):
    relay = await make_relay(max_file_size=10_000)
    alice, bob = await relay.client(), await relay.client()
    good = {"cmd": "startFileUpload", "to": b64encode(bob.hpk), "file_size": 100,
            "metadata": {"nonce": b64encode(os.urandom(24)), "ctext": "aGVsbG8="}}
    bad_values = [("to", "short"), ("to", b64encode(b"x" * 31)), ("to", None),
                  ("file_size", 0), ("file_size", -5), ("file_size", 10_001),
                  ("file_size", 1.5), ("file_size", True), ("file_size", "100"),
                  ("metadata", None), ("metadata", "text"), ("metadata", []),
                  ("metadata", {"nonce": "!!!", "ctext": "aGVsbG8="}),
                  ("metadata", {"ctext": "aGVsbG8="}),
                  ("metadata", {"nonce": b64encode(os.urandom(24))}),
                  ("metadata", {"nonce": b64encode(os.urandom(24)), "ctext": "not base64"}),
                  ("metadata", {"nonce": b64encode(os.urandom(24)), "ctext": 7})]
    for name, value in bad_values:
        command = dict(good)
        if value is None:
            del command[name]
        else:
            command[name] = value
        status, body = await alice.command(command)
        assert (status, body) == (400, b""), (name, value, status)
    too_big = dict(good, metadata={"nonce": b64encode(os.urandom(24)),
                                   "ctext": b64encode(os.urandom(300_000))})
    assert (await alice.command(too_big))[0] == 413
    assert await bob.enc({"cmd": "count"}) == 0
    assert await relay.app.store.files.usage() == 0


@pytest_twisted.ensureDeferred
async def test_unknown_upload_id(make_relay):
    relay = await make_relay()
    alice = await relay.client()
    unknown = b64encode(os.urandom(32))
    not_found = {"status": "NOT_FOUND"}
    assert (await alice.enc({"cmd": "fileStatus", "uploadID": unknown}))["status"] == \
        "NOT_FOUND"
    assert await alice.enc({"cmd": "downloadFileChunk", "uploadID": unknown, "part": 0}) == \
        not_found
    assert await alice.enc({"cmd": "deleteFile", "uploadID": unknown}) == not_found
    command, chunk = SealedFile(b"abc").command(unknown, 0)
    assert await alice.enc(command, chunk) == not_found
    for bad in ["", "abc", b64encode(os.urandom(31)), 5, None, [unknown]]:
        for cmd in ("fileStatus", "deleteFile"):
            status, _ = await alice.command({"cmd": cmd, "uploadID": bad})
            assert status == 400, (cmd, bad)


@pytest_twisted.ensureDeferred
async def test_upload_chunk_errors(make_relay):
    relay = await make_relay(max_chunk_size=2000)
    alice, bob, sealed, upload_id = await started_file(relay, size=3500)
    command, chunk = sealed.command(upload_id, 0)
    cases = [
        (dict(command, part=-1), chunk, 400),
        (dict(command, part=2**40), chunk, 400),
        (dict(command, part=3500), chunk, 400),  # 3500 bytes allow parts 0..3499
        (dict(command, part="0"), chunk, 400),
        (dict(command, part=None), chunk, 400),
        (dict(command, nonce="%%%"), chunk, 400),
        (dict(command, last_chunk="yes"), chunk, 400),
        (command, None, 400),                    # no chunk line
        (command, b"not base64!", 400),
        (command, b64encode(os.urandom(2016)).encode(), 200),  # plaintext of 2000 + MAC
        (command, b"QUJD", 200),                 # well-formed: accepted (replaces part 0)
        (command, b64encode(os.urandom(2017)).encode(), 413),
        (command, b"A" * 20000, 413),
    ]
    for sent, line, expected in cases:
        status, body = await alice.command(sent, line)
        assert status == expected, (sent, line and line[:20], status)
    # More bytes than the declared size allows (3500 + per-part overhead).
    assert (await alice.command(dict(command, part=1),
                                b64encode(os.urandom(2000)).encode()))[0] == 200
    assert (await alice.command(dict(command, part=2),
                                b64encode(os.urandom(1700)).encode()))[0] == 400
    # The recipient may not upload.
    assert (await bob.command(*sealed.command(upload_id, 2)))[0] == 400
    info = await bob.enc({"cmd": "fileStatus", "uploadID": upload_id})
    assert (info["bytes_stored"], info["total_chunks"]) == (2003, 2)
    # Other commands take no 4th line.
    status, _ = await alice.command({"cmd": "fileStatus", "uploadID": upload_id}, b"QUJD")
    assert status == 400


@pytest_twisted.ensureDeferred
async def test_download_errors(make_relay):
    relay = await make_relay()
    alice, bob, sealed, upload_id = await started_file(relay)
    await alice.enc(*sealed.command(upload_id, 0))
    for part in (1, 3):  # not uploaded
        status, body = await bob.command({"cmd": "downloadFileChunk", "uploadID": upload_id,
                                          "part": part})
        assert (status, body) == (400, b"")
    for part in (-1, 2**40, "0", None, 1.0):
        status, _ = await bob.command({"cmd": "downloadFileChunk", "uploadID": upload_id,
                                       "part": part})
        assert status == 400, part
    assert await bob.download_chunk(upload_id, 0, sealed.key) == sealed.data[:1000]


@pytest_twisted.ensureDeferred
async def test_third_identity_sees_nothing(make_relay):
    relay = await make_relay()
    alice, bob, sealed, upload_id = await started_file(relay)
    await alice.enc(*sealed.command(upload_id, 0))
    eve = await relay.client()
    not_found = {"status": "NOT_FOUND"}
    assert (await eve.enc({"cmd": "fileStatus", "uploadID": upload_id}))["status"] == \
        "NOT_FOUND"
    assert await eve.enc({"cmd": "downloadFileChunk", "uploadID": upload_id, "part": 0}) == \
        not_found
    assert await eve.enc(*sealed.command(upload_id, 1)) == not_found
    assert await eve.enc({"cmd": "deleteFile", "uploadID": upload_id}) == not_found
    info = await bob.enc({"cmd": "fileStatus", "uploadID": upload_id})
    assert info["status"] == "UPLOADING" and info["total_chunks"] == 1
    assert await bob.download_chunk(upload_id, 0, sealed.key) == sealed.data[:1000]


# -- caps and a full disk ---------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_caps_refuse_start_with_507(make_relay):
    # A 3500-byte file reserves 3500 + 4 * 40 bytes rounded up to a 4096-byte block; a
    # sender may hold 5000, the relay 9000.
    relay = await make_relay(mailbox_max_bytes=5000, total_max_bytes=9000)
    alice, bob = await relay.client(), await relay.client()
    first = await alice.start_upload(bob, 3500)
    status, _ = await alice.command({"cmd": "startFileUpload", "to": b64encode(bob.hpk),
                                     "file_size": 3500, "metadata": {
                                         "nonce": b64encode(os.urandom(24)),
                                         "ctext": "aGVsbG8="}})
    assert status == 507
    assert await bob.enc({"cmd": "count"}) == 1  # no message for the refused file
    carol = await relay.client()
    await carol.start_upload(bob, 3500)
    dave = await relay.client()
    status, _ = await dave.command({"cmd": "startFileUpload", "to": b64encode(bob.hpk),
                                    "file_size": 1000, "metadata": {
                                        "nonce": b64encode(os.urandom(24)),
                                        "ctext": "aGVsbG8="}})
    assert status == 507  # the relay's total
    await bob.enc({"cmd": "deleteFile", "uploadID": first["uploadID"]})
    await dave.start_upload(bob, 1000)  # released by the delete


@pytest_twisted.ensureDeferred
async def test_full_disk_leaves_nothing_partial(make_relay, tmp_path, monkeypatch):
    relay = await make_relay()
    alice, bob, sealed, upload_id = await started_file(relay)
    await alice.enc(*sealed.command(upload_id, 0))
    real_open = open

    class FullDisk:
        """An open() whose files take a few bytes and then report ENOSPC, like a full disk."""

        def __call__(self, path, mode="r", *args, **kwargs):
            handle = real_open(path, mode, *args, **kwargs)
            if "w" not in mode:
                return handle
            original_write = handle.write

            def write(data):
                original_write(data[:10])
                raise OSError(errno.ENOSPC, "No space left on device")

            handle.write = write
            return handle

    monkeypatch.setattr(relay_files_disk, "open", FullDisk(), raising=False)
    status, _ = await alice.command(*sealed.command(upload_id, 1))
    assert status == 507
    monkeypatch.undo()
    info = await bob.enc({"cmd": "fileStatus", "uploadID": upload_id})
    assert info["status"] == "UPLOADING" and info["total_chunks"] == 1
    status, _ = await bob.command({"cmd": "downloadFileChunk", "uploadID": upload_id,
                                   "part": 1})
    assert status == 400
    file_dir = tmp_path / "chunks" / file_id(b64decode(upload_id)).hex()
    assert len(list(file_dir.iterdir())) == 1  # no temporary file left behind
    for part in range(1, 4):  # space again: the upload goes on
        await alice.enc(*sealed.command(upload_id, part))
    data = b"".join([await bob.download_chunk(upload_id, p, sealed.key) for p in range(4)])
    assert data == sealed.data


relay_files_disk = relay.files.disk


@pytest_twisted.ensureDeferred
async def test_disabled_file_api_answers_405(make_relay):
    relay = await make_relay(enabled=False)
    alice = await relay.client()
    for command in ({"cmd": "startFileUpload"}, {"cmd": "fileStatus"},
                    {"cmd": "downloadFileChunk"}, {"cmd": "deleteFile"}):
        assert (await alice.command(command))[0] == 405
    assert (await alice.command({"cmd": "uploadFileChunk"}, b"QUJD"))[0] == 405


@pytest_twisted.ensureDeferred
async def test_full_recipient_mailbox_refuses_start_and_keeps_no_quota(make_relay):
    relay = await make_relay(mailbox={"max_messages": 5})
    alice, bob = await relay.client(), await relay.client()
    await alice.start_upload(bob, 2000)
    charged = await relay.app.store.files.usage()
    # Fill bob's mailbox to its cap with plain messages.
    for _ in range(relay.config.mailbox.max_messages - 1):
        status, _, _ = await _upload_message(alice, bob)
        assert status == 200
    status, _ = await alice.command({"cmd": "startFileUpload", "to": b64encode(bob.hpk),
                                     "file_size": 2000, "metadata": {
                                         "nonce": b64encode(os.urandom(24)),
                                         "ctext": "aGVsbG8="}})
    assert status == 507
    assert await relay.app.store.files.usage() == charged


async def _upload_message(sender, recipient):
    msg_id = os.urandom(24)
    status, body = await sender.command({"cmd": "upload", "to": b64encode(recipient.hpk),
                                         "payload": {"nonce": b64encode(msg_id),
                                                     "ctext": "aGk="}})
    return status, body, msg_id


# -- fair storage ------------------------------------------------------------------------------

ATTACKER = "127.0.0.1/32"
OTHER_ADDRESS = "127.0.0.2"


async def start_status(client: AsyncZax, to: AsyncZax, size: int) -> tuple[int, str | None]:
    """(HTTP status, uploadID if it started)."""
    status, body = await client.command({
        "cmd": "startFileUpload", "to": b64encode(to.hpk), "file_size": size,
        "metadata": {"nonce": b64encode(os.urandom(24)), "ctext": "aGVsbG8="}})
    return status, client.open(body)["uploadID"] if status == 200 else None


async def round_trip(relay: LoopbackRelay, size: int = 10_000) -> None:
    """A sender and a recipient on another network exchange a file."""
    carol = await relay.client(OTHER_ADDRESS)
    dave = await relay.client(OTHER_ADDRESS)
    sealed = SealedFile(os.urandom(size), 4000)
    upload_id = (await carol.start_upload(dave, size))["uploadID"]
    for part in range(sealed.parts):
        assert await carol.enc(*sealed.command(upload_id, part)) == {"status": "OK"}
    info = await dave.enc({"cmd": "fileStatus", "uploadID": upload_id})
    assert info["status"] == "COMPLETE"
    data = b"".join([await dave.download_chunk(upload_id, p, sealed.key)
                     for p in range(sealed.parts)])
    assert data == sealed.data


@pytest_twisted.ensureDeferred
async def test_free_identities_cannot_reserve_the_relay(make_relay):
    """The measured attack, on the default settings: fresh identities start 1 GiB files
    and write nothing. Each start reserves one window (64 MiB), an identity at most
    256 MiB, the client at most 1 GiB: then 507, for that client only."""
    relay = await make_relay()
    files_config = relay.config.files
    bob = await relay.client()
    started = 0
    for _ in range(20):  # identities, until a fresh one cannot start anything
        mallory = await relay.client()
        by_identity = 0
        while (await start_status(mallory, bob, files_config.max_file_size))[0] == 200:
            by_identity += 1
        assert by_identity <= files_config.max_open_reservation_per_sender // \
            files_config.reservation_window
        if not by_identity:
            break
        started += by_identity
    per_client = files_config.max_open_reservation_per_client
    assert started == per_client // files_config.reservation_window
    files = relay.app.store.files
    assert await files.usage(client=ATTACKER) == per_client
    assert await files.usage() == per_client < files_config.total_max_bytes
    # The attacker's client cannot start even a 1-byte file; others can, and finish it.
    assert (await start_status(await relay.client(), bob, 1)) == (507, None)
    await round_trip(relay)


@pytest_twisted.ensureDeferred
async def test_one_client_writing_as_fast_as_it_can_leaves_room(make_relay):
    relay = await make_relay(
        max_chunk_size=64_000, mailbox_max_bytes=300_000, client_max_bytes=600_000,
        total_max_bytes=1_000_000, reservation_window=100_000,
        max_open_reservation_per_sender=200_000, max_open_reservation_per_client=400_000,
        max_open_reservation_total=600_000)
    bob = await relay.client()
    chunk = b64encode(os.urandom(64_000)).encode()
    refusals = 0
    for _ in range(6):  # identities, each writing until refused
        mallory = await relay.client()
        status, upload_id = await start_status(mallory, bob, 1_000_000)
        if status != 200:
            refusals += 1
            continue
        for part in range(15):
            status, _ = await mallory.command(
                {"cmd": "uploadFileChunk", "uploadID": upload_id, "part": part,
                 "nonce": b64encode(os.urandom(24)), "last_chunk": False}, chunk)
            if status != 200:
                assert status == 507
                refusals += 1
                break
    assert refusals
    files = relay.app.store.files
    assert await files.usage(client=ATTACKER) <= 600_000
    await round_trip(relay)
    assert await files.usage() <= 1_000_000


@pytest_twisted.ensureDeferred
async def test_tiny_parts_cost_a_block_each_and_are_capped(make_relay):
    relay = await make_relay(max_parts_per_file=64)
    alice, bob = await relay.client(), await relay.client()
    upload_id = (await alice.start_upload(bob, 200_000))["uploadID"]
    one_byte = b64encode(b"x").encode()

    def command(part: int, last: bool = False) -> dict:
        return {"cmd": "uploadFileChunk", "uploadID": upload_id, "part": part,
                "nonce": b64encode(os.urandom(24)), "last_chunk": last}

    # 200_000 bytes would allow 200_000 parts by size: the part cap allows 64.
    assert (await alice.command(command(64), one_byte))[0] == 400
    for part in range(64):
        assert await alice.enc(command(part, last=part == 63), one_byte) == {"status": "OK"}
    info = await bob.enc({"cmd": "fileStatus", "uploadID": upload_id})
    assert (info["status"], info["bytes_stored"], info["total_chunks"]) == ("COMPLETE", 64, 64)
    block = relay.config.files.charge_block_size
    assert await relay.app.store.files.usage() == 64 * part_charge(1, block) == 64 * block
