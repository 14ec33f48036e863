"""The file store contract (metadata and chunks in the store) on every store kind, and the
disk chunk store. Runs once per kind through `store_factory` (tests/conftest.py)."""

from __future__ import annotations

import os
import time

import pytest
import pytest_twisted

from relay.files.disk import DiskChunkStore
from relay.store.errors import StoreFull
from relay.store.interfaces.files import (
    COMPLETE,
    START,
    UPLOADING,
    FileRecord,
    PartInfo,
    PutOutcome,
    PutRequest,
)

LONG = 3600.0
SHORT = 0.3
PAST_SHORT = 0.45


def new_record(charge: int = 10_000, sender: bytes | None = None) -> FileRecord:
    return FileRecord(file_id=os.urandom(32), sender=sender or os.urandom(32),
                      recipient=os.urandom(32), file_size=charge - 100, charge=charge,
                      expires_at=time.time() + LONG)


def put(part: int, size: int = 100, last: bool = False, max_parts: int = 10,
        max_bytes: int = 10_000, ttl: float = LONG, complete_ttl: float = LONG) -> PutRequest:
    info = PartInfo(size, os.urandom(24), os.urandom(8))
    return PutRequest(part, info, last, max_parts, max_bytes, ttl, complete_ttl)


@pytest_twisted.ensureDeferred
async def test_create_get_delete(store_factory):
    files = store_factory.files
    record = new_record()
    created, is_new = await files.create(record, LONG, 10**9, 10**9)
    assert is_new and created.file_id == record.file_id and created.status == START
    again, is_new = await files.create(record, LONG, 10**9, 10**9)
    assert not is_new and again.file_size == record.file_size
    got = await files.get(record.file_id)
    assert (got.sender, got.recipient, got.file_size, got.charge) == \
        (record.sender, record.recipient, record.file_size, record.charge)
    assert got.expires_at == pytest.approx(record.expires_at)
    assert await files.usage() == record.charge
    assert await files.usage(record.sender) == record.charge
    removed = await files.delete(record.file_id)
    assert removed.file_id == record.file_id
    assert await files.get(record.file_id) is None
    assert await files.delete(record.file_id) is None
    assert await files.usage() == 0 and await files.usage(record.sender) == 0


@pytest_twisted.ensureDeferred
async def test_parts_status_and_replacement(store_factory):
    files = store_factory.files
    record = new_record()
    await files.create(record, LONG, 10**9, 10**9)
    first = put(0, 100)
    assert await files.put_part(record.file_id, first) == (PutOutcome.OK, None)
    assert (await files.get(record.file_id)).status == UPLOADING
    # The last part may come before the ones in between: COMPLETE only once all are there.
    assert (await files.put_part(record.file_id, put(2, 50, last=True)))[0] == PutOutcome.OK
    assert (await files.get(record.file_id)).status == UPLOADING
    assert (await files.put_part(record.file_id, put(1, 100)))[0] == PutOutcome.OK
    got = await files.get(record.file_id, part=0)
    assert got.status == COMPLETE
    assert (got.bytes_stored, got.part_count, got.max_part, got.last_part) == (250, 3, 2, 2)
    assert got.parts == {0: first.info}
    # Re-sending a part replaces it and hands back the old one.
    second = put(0, 80)
    outcome, replaced = await files.put_part(record.file_id, second)
    assert outcome == PutOutcome.OK and replaced == first.info
    got = await files.get(record.file_id, all_parts=True)
    assert got.bytes_stored == 230 and got.part_count == 3 and got.parts[0] == second.info
    assert set(got.parts) == {0, 1, 2}


@pytest_twisted.ensureDeferred
async def test_part_bounds_change_nothing(store_factory):
    files = store_factory.files
    record = new_record()
    await files.create(record, LONG, 10**9, 10**9)
    assert (await files.put_part(record.file_id, put(10)))[0] == PutOutcome.BAD_PART
    assert (await files.put_part(record.file_id, put(0, 10_001)))[0] == \
        PutOutcome.TOO_MANY_BYTES
    assert (await files.put_part(record.file_id, put(3)))[0] == PutOutcome.OK
    # A last part below a stored part, a part beyond the last, a second different last.
    assert (await files.put_part(record.file_id, put(2, last=True)))[0] == PutOutcome.BAD_PART
    assert (await files.put_part(record.file_id, put(4, last=True)))[0] == PutOutcome.OK
    assert (await files.put_part(record.file_id, put(5)))[0] == PutOutcome.BAD_PART
    assert (await files.put_part(record.file_id, put(3, last=True)))[0] == PutOutcome.BAD_PART
    got = await files.get(record.file_id, all_parts=True)
    assert (got.bytes_stored, got.part_count, got.last_part) == (200, 2, 4)
    assert (await files.put_part(os.urandom(32), put(0)))[0] == PutOutcome.NOT_FOUND


@pytest_twisted.ensureDeferred
async def test_caps(store_factory):
    files = store_factory.files
    sender = os.urandom(32)
    await files.create(new_record(600, sender), LONG, 1000, 1500)
    with pytest.raises(StoreFull):
        await files.create(new_record(500, sender), LONG, 1000, 1500)  # sender's cap
    await files.create(new_record(400, sender), LONG, 1000, 1500)
    with pytest.raises(StoreFull):
        await files.create(new_record(600), LONG, 1000, 1500)  # the relay's cap
    assert await files.usage() == 1000 and await files.usage(sender) == 1000


@pytest_twisted.ensureDeferred
async def test_expiry_releases_quota(store_factory, store_sleep):
    files = store_factory.files
    sender = os.urandom(32)
    short = new_record(600, sender)
    await files.create(short, SHORT, 1000, 10**9)
    await files.create(new_record(300, sender), LONG, 1000, 10**9)
    with pytest.raises(StoreFull):
        await files.create(new_record(600, sender), LONG, 1000, 10**9)
    await store_sleep(PAST_SHORT)
    assert await files.get(short.file_id) is None
    assert await files.usage(sender) == 300
    await files.create(new_record(600, sender), LONG, 1000, 10**9)


@pytest_twisted.ensureDeferred
async def test_stalled_then_complete_ttl(store_factory, store_sleep):
    files = store_factory.files
    record = new_record()
    await files.create(record, LONG, 10**9, 10**9)
    # An incomplete upload lives `ttl` after its last chunk; a complete one `complete_ttl`.
    await files.put_part(record.file_id, put(0, ttl=SHORT, complete_ttl=LONG))
    await store_sleep(PAST_SHORT)
    assert await files.get(record.file_id) is None
    assert await files.usage() == 0
    record = new_record()
    await files.create(record, LONG, 10**9, 10**9)
    await files.put_part(record.file_id, put(0, last=True, ttl=SHORT, complete_ttl=LONG))
    await store_sleep(PAST_SHORT)
    assert (await files.get(record.file_id)).status == COMPLETE


@pytest_twisted.ensureDeferred
async def test_store_chunks_roundtrip_and_sweep(store_factory):
    files = store_factory.files
    chunks = files.chunks
    record = new_record()
    await files.create(record, LONG, 10**9, 10**9)
    request = put(0, 5)
    await chunks.write(record.file_id, 0, request.info.blob, b"12345", LONG)
    await files.put_part(record.file_id, request)
    assert await chunks.read(record.file_id, 0, request.info.blob) == b"12345"
    orphan_blob = os.urandom(8)
    await chunks.write(record.file_id, 1, orphan_blob, b"orphan", LONG)

    async def lookup(file_id):
        return await files.get(file_id, all_parts=True)

    # Written just now: not an orphan yet (its record may be on the way).
    assert await chunks.sweep(lookup, time.time() - 900) == 0
    assert await chunks.sweep(lookup, time.time() + 1) == 1
    assert await chunks.read(record.file_id, 1, orphan_blob) is None
    assert await chunks.read(record.file_id, 0, request.info.blob) == b"12345"
    removed = await files.delete(record.file_id)
    await chunks.remove_file(record.file_id, removed)
    assert await chunks.read(record.file_id, 0, request.info.blob) is None


@pytest_twisted.ensureDeferred
async def test_disk_chunks(tmp_path, store_factory):
    files = store_factory.files
    chunks = DiskChunkStore(tmp_path / "chunks")
    record = new_record()
    await files.create(record, LONG, 10**9, 10**9)
    request = put(7, 3)
    await chunks.write(record.file_id, 7, request.info.blob, b"abc", LONG)
    await files.put_part(record.file_id, request)
    assert await chunks.read(record.file_id, 7, request.info.blob) == b"abc"
    assert await chunks.read(record.file_id, 7, os.urandom(8)) is None
    file_dir = tmp_path / "chunks" / record.file_id.hex()
    assert [p.name for p in file_dir.iterdir()] == [f"7.{request.info.blob.hex()}"]
    # Leftovers: a replaced chunk, an interrupted write, an expired file, a foreign file.
    stale = file_dir / f"7.{os.urandom(8).hex()}"
    stale.write_bytes(b"old")
    (file_dir / f".tmp.8.{os.urandom(8).hex()}").write_bytes(b"partial")
    gone = tmp_path / "chunks" / os.urandom(32).hex()
    gone.mkdir()
    (gone / f"0.{os.urandom(8).hex()}").write_bytes(b"x")
    foreign = tmp_path / "chunks" / "README"
    foreign.write_text("not ours")

    async def lookup(file_id):
        return await files.get(file_id, all_parts=True)

    assert await chunks.sweep(lookup, time.time() - 900) == 0
    assert await chunks.sweep(lookup, time.time() + 1) == 3
    assert not gone.exists() and foreign.exists()
    assert [p.name for p in file_dir.iterdir()] == [f"7.{request.info.blob.hex()}"]
    await chunks.remove_file(record.file_id, None)
    assert not file_dir.exists()
