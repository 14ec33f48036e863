"""Client-numbered file parts, as Zax has them, over loopback HTTP on the memory and the
Redis store: the client cuts the file as it likes (any chunk up to max_chunk_size), numbers
the parts 0..N and marks N with last_chunk; the file is COMPLETE once all of 0..N are
stored, whatever the order. Bounded all the same: at most min(file_size,
max_parts_per_file) parts, and bytes stored <= file_size + PART_OVERHEAD per stored part."""

from __future__ import annotations

import os
from typing import Any

import pytest
import pytest_twisted
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nacl.secret import SecretBox

from relay.crypto import b64encode
from relay.files.limits import PART_OVERHEAD, max_parts
from tests.test_files_support import AsyncZax, LoopbackRelay, relay_config


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


@pytest_twisted.async_yield_fixture
async def make_relay(request, tmp_path):
    relays = []

    async def make(kind: str, **files) -> LoopbackRelay:
        relay = await _relay(kind, request, tmp_path, **files)
        relays.append(relay)
        return relay

    try:
        yield make
    finally:
        for relay in relays:
            await relay.stop()


def cut(data: bytes, sizes: list[int]) -> list[bytes]:
    """data cut in chunks of these sizes, taken in turn until the data is all cut."""
    chunks, at, n = [], 0, 0
    while at < len(data):
        size = sizes[n % len(sizes)]
        chunks.append(data[at:at + size])
        at, n = at + size, n + 1
    return chunks


class CutFile:
    """A file cut in chunks of any sizes, each sealed with one secretbox key."""

    def __init__(self, data: bytes, sizes: list[int]) -> None:
        self.data = data
        self.plain = cut(data, sizes)
        self.key = os.urandom(32)

    @property
    def parts(self) -> int:
        return len(self.plain)

    def command(self, upload_id: str, part: int, last: bool | None = None
                ) -> tuple[dict[str, Any], bytes]:
        nonce = os.urandom(24)
        ctext = SecretBox(self.key).encrypt(self.plain[part], nonce).ciphertext
        last = part == self.parts - 1 if last is None else last
        return ({"cmd": "uploadFileChunk", "uploadID": upload_id, "part": part,
                 "nonce": b64encode(nonce), "last_chunk": last}, b64encode(ctext).encode())


async def status(client: AsyncZax, upload_id: str) -> dict[str, Any]:
    return await client.enc({"cmd": "fileStatus", "uploadID": upload_id})


async def download_all(client: AsyncZax, upload_id: str, parts: int, key: bytes) -> bytes:
    return b"".join([await client.download_chunk(upload_id, p, key) for p in range(parts)])


@pytest.mark.parametrize("chunk_store", ["disk", "store"])
@pytest.mark.parametrize("kind", ["memory", "redis"])
@pytest_twisted.ensureDeferred
async def test_918_bytes_in_small_chunks(make_relay, kind, chunk_store):
    """A 918-byte file in chunks of 50-300 bytes, its chunks on disk or in the store."""
    relay = await make_relay(kind, chunk_store=chunk_store)
    alice, bob = await relay.client(), await relay.client()
    sealed = CutFile(os.urandom(918), [50, 300, 120, 77, 251, 120])
    assert sealed.parts == 6
    upload_id = (await alice.start_upload(bob, 918))["uploadID"]
    stored = 0
    for part in range(sealed.parts):
        assert await alice.enc(*sealed.command(upload_id, part)) == {"status": "OK"}
        stored += len(sealed.plain[part]) + 16
        info = await status(bob, upload_id)
        assert info["status"] == ("COMPLETE" if part == sealed.parts - 1 else "UPLOADING")
        assert (info["file_size"], info["bytes_stored"], info["total_chunks"]) == \
            (918, stored, part + 1)
    assert await download_all(bob, upload_id, 6, sealed.key) == sealed.data
    # Beyond the last part: refused, and the file stays as it was.
    command, chunk = sealed.command(upload_id, 5)
    assert (await alice.command(dict(command, part=6, last_chunk=False), chunk))[0] == 400
    assert (await status(bob, upload_id))["total_chunks"] == 6


@pytest.mark.parametrize("kind", ["memory", "redis"])
@pytest_twisted.ensureDeferred
async def test_resume_and_resend_with_small_parts(make_relay, kind):
    relay = await make_relay(kind)
    alice, bob = await relay.client(), await relay.client()
    sealed = CutFile(os.urandom(2000), [100] * 20)
    meta_nonce = os.urandom(24)
    upload_id = (await alice.start_upload(bob, 2000, meta_nonce))["uploadID"]
    for part in (0, 1, 2, 5):
        await alice.enc(*sealed.command(upload_id, part))
    # Interrupted: the client starts over with the same start command and asks how far it got.
    again = await alice.start_upload(bob, 2000, meta_nonce)
    assert again["uploadID"] == upload_id
    info = await status(alice, upload_id)
    assert (info["status"], info["total_chunks"], info["bytes_stored"]) == \
        ("UPLOADING", 4, 4 * 116)
    # Re-sending every part (the stored ones too) is idempotent.
    for part in range(sealed.parts):
        assert await alice.enc(*sealed.command(upload_id, part)) == {"status": "OK"}
    info = await status(bob, upload_id)
    assert (info["status"], info["total_chunks"], info["bytes_stored"]) == \
        ("COMPLETE", 20, 2000 + 20 * 16)
    assert await alice.enc(*sealed.command(upload_id, 3)) == {"status": "OK"}
    assert (await status(bob, upload_id))["bytes_stored"] == 2000 + 20 * 16
    assert await download_all(bob, upload_id, 20, sealed.key) == sealed.data


@pytest.mark.parametrize("kind", ["memory", "redis"])
@pytest_twisted.ensureDeferred
async def test_parts_and_bytes_stay_bounded(make_relay, kind):
    relay = await make_relay(kind, max_parts_per_file=50)
    alice, bob = await relay.client(), await relay.client()

    def chunk(size: int) -> bytes:
        return b64encode(os.urandom(size)).encode()

    def command(upload_id: str, part: int, last: bool = False) -> dict[str, Any]:
        return {"cmd": "uploadFileChunk", "uploadID": upload_id, "part": part,
                "nonce": b64encode(os.urandom(24)), "last_chunk": last}

    # A 10-byte file has at most 10 parts: parts 0..9.
    small = (await alice.start_upload(bob, 10))["uploadID"]
    assert max_parts(10, 50) == 10
    assert (await alice.command(command(small, 10), chunk(17)))[0] == 400
    for part in range(10):
        assert (await alice.command(command(small, part), chunk(17)))[0] == 200
    # 10 + 10 * PART_OVERHEAD bytes at most: all of it is stored, one more byte is refused.
    assert (await status(bob, small))["bytes_stored"] == 170
    room = 10 + 10 * PART_OVERHEAD - 170
    assert (await alice.command(command(small, 0), chunk(17 + room + 1)))[0] == 400
    assert (await alice.command(command(small, 0), chunk(17 + room)))[0] == 200
    assert (await status(bob, small))["bytes_stored"] == 10 + 10 * PART_OVERHEAD
    # A large file has at most max_parts_per_file parts.
    large = (await alice.start_upload(bob, 100_000))["uploadID"]
    assert (await alice.command(command(large, 50), chunk(100)))[0] == 400
    assert (await alice.command(command(large, 49, last=True), chunk(100)))[0] == 200
    info = await status(bob, large)
    assert (info["status"], info["total_chunks"], info["bytes_stored"]) == ("UPLOADING", 1, 100)


SETTINGS = settings(max_examples=15, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])


@st.composite
def uploads(draw) -> tuple[bytes, list[int], list[int], list[int]]:
    """(file, chunk sizes summing to it, the order parts are sent in, parts sent twice)."""
    sizes = draw(st.lists(st.integers(min_value=1, max_value=1000), min_size=1, max_size=10))
    order = draw(st.permutations(range(len(sizes))))
    again = draw(st.lists(st.integers(min_value=0, max_value=len(sizes) - 1), max_size=3))
    return os.urandom(sum(sizes)), sizes, list(order), again


def parts_property_test(kind: str):
    """One function object per store kind (see tests/store_models.py)."""

    @pytest.mark.parametrize("kind", [kind])
    @SETTINGS
    @given(upload=uploads())
    @pytest_twisted.ensureDeferred
    async def test(make_relay, kind, upload) -> None:
        data, sizes, order, again = upload
        relays = getattr(make_relay, "relays", None)
        if relays is None:
            # One relay and two clients for all examples; each example is a new file.
            relay = await make_relay(kind, max_chunk_size=1000)
            make_relay.relays = relays = (relay, await relay.client(), await relay.client())
        relay, alice, bob = relays
        sealed = CutFile(data, sizes)
        assert sealed.parts == len(sizes)
        upload_id = (await alice.start_upload(bob, len(data)))["uploadID"]
        for n, part in enumerate(order + again):
            assert await alice.enc(*sealed.command(upload_id, part)) == {"status": "OK"}
            info = await status(bob, upload_id)
            done = len(set((order + again)[:n + 1]))
            assert info["status"] == ("COMPLETE" if done == sealed.parts else "UPLOADING")
            assert info["total_chunks"] == done
        assert info["bytes_stored"] == len(data) + 16 * sealed.parts
        assert await download_all(bob, upload_id, sealed.parts, sealed.key) == data
        assert await bob.enc({"cmd": "deleteFile", "uploadID": upload_id}) == {"status": "OK"}

    return test


test_any_cut_any_order_memory = parts_property_test("memory")
test_any_cut_any_order_redis = parts_property_test("redis")
