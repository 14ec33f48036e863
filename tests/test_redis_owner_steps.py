"""Work that involves several owners (a file and its ledgers; a channel, the relay-wide index
and its client's set) is one script per owner, each undone when a later one refuses: on a
real Redis, a refusal at any step leaves no charge behind, and parts of one file racing each
other keep the ledgers equal to the records."""

from __future__ import annotations

import os
import time

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import deferLater

from relay.store.errors import StoreError, StoreFull
from relay.store.interfaces.channels import ClientChannelsFull
from relay.store.interfaces.files import FileCaps, FileRecord, PartInfo, PutOutcome, PutRequest
from relay.store.redis import files as redis_files

LONG = 3600.0
BLOCK = 4096
UNLIMITED = 10**12


def caps(**limits: int) -> FileCaps:
    values = dict(sender_bytes=UNLIMITED, client_bytes=UNLIMITED, total_bytes=UNLIMITED,
                  sender_reserved=UNLIMITED, client_reserved=UNLIMITED,
                  total_reserved=UNLIMITED, window=2 * BLOCK)
    return FileCaps(**{**values, **limits})


def new_record(reserved: int, client: str, max_charge: int = 100 * BLOCK) -> FileRecord:
    return FileRecord(file_id=os.urandom(32), sender=os.urandom(32), recipient=os.urandom(32),
                      file_size=max_charge, client=client, max_charge=max_charge,
                      reserved=reserved, expires_at=time.time() + LONG)


def put(part: int, limits: FileCaps, last: bool = False) -> PutRequest:
    return PutRequest(part, PartInfo(BLOCK, os.urandom(24), os.urandom(8)), BLOCK, last, 100,
                      100 * BLOCK, LONG, LONG, LONG, limits)


@pytest.fixture
def store(redis_store):
    """The started Redis store (tests/conftest.py), by a shorter name."""
    return redis_store


async def sums(files, record: FileRecord) -> list[tuple[int, int]]:
    """(usage, reserved) of the record's sender, its client, the relay."""
    return [(await files.usage(sender=record.sender), await files.reserved(sender=record.sender)),
            (await files.usage(client=record.client),
             await files.reserved(client=record.client)),
            (await files.usage(), await files.reserved())]


def holds(redis_server) -> list[bytes]:
    """Hold members left in any ledger."""
    found = []
    for key in redis_server.keys():
        if key.endswith(b":fl:rexp"):
            found += [m for m in redis_server.command("ZRANGE", key, 0, -1)
                      if m.startswith(b"h")]
    return found


# -- files ----------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_create_refused_by_a_later_ledger_leaves_no_charge(store, redis_server):
    files = store.files
    first = new_record(2 * BLOCK, "192.0.2.1/32")
    await files.create(first, LONG, LONG, caps(total_reserved=3 * BLOCK))
    # The sender's and the client's ledgers take it; the relay's refuses: both are undone.
    second = new_record(2 * BLOCK, "198.51.100.1/32")
    with pytest.raises(StoreFull, match="the relay has too many uploads open"):
        await files.create(second, LONG, LONG, caps(total_reserved=3 * BLOCK))
    assert await sums(files, second) == [(0, 0), (0, 0), (2 * BLOCK, 2 * BLOCK)]
    names = redis_files.KeyNames()
    gone = (names.identity(second.sender), names.client(second.client))
    assert not [k for k in redis_server.keys() if k.decode().startswith(gone)]
    assert await files.get(second.file_id) is None


@pytest_twisted.ensureDeferred
async def test_create_of_an_existing_file_id_charges_no_one_else(store):
    files = store.files
    record = new_record(2 * BLOCK, "192.0.2.1/32")
    await files.create(record, LONG, LONG, caps())
    # Same file id, another sender and client: their ledgers take it, the record exists.
    other = FileRecord(file_id=record.file_id, sender=os.urandom(32),
                       recipient=record.recipient, file_size=record.file_size,
                       client="198.51.100.1/32", max_charge=record.max_charge,
                       reserved=record.reserved, expires_at=record.expires_at)
    existing, created = await files.create(other, LONG, LONG, caps())
    assert not created and existing.sender == record.sender
    assert (await sums(files, other))[:2] == [(0, 0), (0, 0)]
    assert await sums(files, record) == [(2 * BLOCK, 2 * BLOCK)] * 3


@pytest_twisted.ensureDeferred
async def test_create_whose_record_step_fails_leaves_no_charge(store, redis_server):
    files = store.files
    record = new_record(2 * BLOCK, "192.0.2.1/32")
    key = redis_files.KeyNames().file_record(record.file_id)
    redis_server.command("SET", key, b"not a hash", "PX", 60_000)  # the record step errs
    with pytest.raises(StoreError):
        await files.create(record, LONG, LONG, caps())
    assert await sums(files, record) == [(0, 0)] * 3
    assert [k.decode() for k in redis_server.keys()] == [key]


@pytest_twisted.ensureDeferred
async def test_part_refused_by_a_later_ledger_holds_nothing(store, redis_server):
    files = store.files
    limits = caps(total_bytes=4 * BLOCK + BLOCK // 2)
    record = new_record(2 * BLOCK, "192.0.2.1/32")
    await files.create(record, LONG, LONG, limits)
    other = new_record(2 * BLOCK, "198.51.100.1/32")
    await files.create(other, LONG, LONG, limits)
    before = await sums(files, record)
    # Part 0 grows the file by a block (its charge) beyond what the relay allows.
    assert await files.put_part(record.file_id, put(0, limits)) == (PutOutcome.FULL, None)
    assert await sums(files, record) == before
    assert holds(redis_server) == []
    stored = await files.get(record.file_id)
    assert (stored.part_count, stored.charged, stored.reserved) == (0, 0, 2 * BLOCK)


@pytest_twisted.ensureDeferred
async def test_racing_parts_of_one_file_keep_the_ledgers_equal_to_the_record(store,
                                                                            redis_server):
    files = store.files
    limits = caps()
    record = new_record(2 * BLOCK, "192.0.2.1/32")
    await files.create(record, LONG, LONG, limits)
    outcomes = await gatherResults([
        Deferred.fromCoroutine(files.put_part(record.file_id, put(part, limits)))
        for part in range(24)])
    assert all(outcome == PutOutcome.OK for outcome, _ in outcomes)
    stored = await files.get(record.file_id)
    assert (stored.part_count, stored.charged, stored.reserved) == (24, 24 * BLOCK, 2 * BLOCK)
    expected = (stored.charged + stored.reserved, stored.reserved)
    assert await sums(files, record) == [expected] * 3
    assert holds(redis_server) == []


@pytest_twisted.ensureDeferred
async def test_racing_parts_never_take_a_ledger_past_its_cap(store, redis_server):
    files = store.files
    limits = caps(client_bytes=20 * BLOCK)
    records = [new_record(2 * BLOCK, "192.0.2.1/32") for _ in range(3)]
    for record in records:
        await files.create(record, LONG, LONG, limits)
    results = await gatherResults([
        Deferred.fromCoroutine(files.put_part(record.file_id, put(part, limits)))
        for part in range(10) for record in records])
    stored = [await files.get(record.file_id) for record in records]
    charged = sum(s.charged + s.reserved for s in stored)
    assert charged <= 20 * BLOCK
    assert sum(outcome == PutOutcome.OK for outcome, _ in results) == \
        sum(s.part_count for s in stored)
    assert any(outcome == PutOutcome.FULL for outcome, _ in results)
    assert await files.usage(client="192.0.2.1/32") == charged
    assert await files.reserved(client="192.0.2.1/32") == sum(s.reserved for s in stored)
    assert holds(redis_server) == []


@pytest_twisted.ensureDeferred
async def test_a_hold_left_by_a_crash_lapses(store, redis_server):
    files = store.files
    backend = store.files._backend
    keys = redis_files.ledger_keys(redis_files.KeyNames().everyone_ledger)
    assert await backend.script(redis_files._LEDGER_HOLD, keys,
                                ["crashed", 3 * BLOCK, BLOCK, 200, UNLIMITED, UNLIMITED]) == b"OK"
    assert (await files.usage(), await files.reserved()) == (3 * BLOCK, BLOCK)
    await deferLater(reactor, 0.3, lambda: None)
    assert (await files.usage(), await files.reserved()) == (0, 0)
    assert redis_server.keys() == []


@pytest_twisted.ensureDeferred
async def test_delete_releases_every_ledger_and_a_late_settle_brings_nothing_back(
        store, redis_server):
    files = store.files
    record = new_record(2 * BLOCK, "192.0.2.1/32")
    await files.create(record, LONG, LONG, caps())
    assert (await files.put_part(record.file_id, put(0, caps())))[0] == PutOutcome.OK
    removed = await files.delete(record.file_id)
    assert removed.part_count == 1
    # A part's settle arriving after the delete (a slow node) finds no entry to update.
    ledgers = files._ledgers(record.sender, record.client)
    await files._settle(record.file_id, ledgers, ["gen", 9, BLOCK, 0, 10**15, 0],
                        force=False, tokens=[])
    assert await sums(files, record) == [(0, 0)] * 3
    assert redis_server.keys() == []


@pytest_twisted.ensureDeferred
async def test_chunks_live_in_their_files_slot_and_sweep_parses_them(store):
    chunks = store.files.chunks
    file_id, blob = os.urandom(32), os.urandom(8)
    key = chunks._key(file_id, 3, blob)
    assert key.startswith(redis_files.KeyNames().file(file_id) + ":chunk:")
    assert chunks._parse(key.encode()) == (file_id, 3, blob)
    with pytest.raises(ValueError):
        chunks._parse(redis_files.KeyNames().file_record(file_id).encode())


# -- channels -------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_channel_refused_by_the_index_is_not_counted_for_its_client(store):
    channels = store.channels
    assert await channels.create("full0001", b"r", LONG, 1, "192.0.2.9/32", 2)
    # The client's set counts it, the index refuses: the client's share is untouched.
    for _ in range(3):
        with pytest.raises(StoreFull):
            await channels.create("full0002", b"r", LONG, 1, "192.0.2.9/32", 2)
    assert await channels.create("full0003", b"r", LONG, 100, "192.0.2.9/32", 2)
    with pytest.raises(ClientChannelsFull):
        await channels.create("full0004", b"r", LONG, 100, "192.0.2.9/32", 2)


@pytest_twisted.ensureDeferred
async def test_channel_existing_without_its_counts_is_taken_and_uncounted(store,
                                                                         redis_server):
    channels = store.channels
    # A channel whose counts lapsed or were never made (a crash between the steps).
    redis_server.command("HSET", channels.names.channel("left0001"), "v", 1, "d", b"r")
    redis_server.command("PEXPIRE", channels.names.channel("left0001"), 60_000)
    assert not await channels.create("left0001", b"r", LONG, 100, "192.0.2.9/32", 1)
    assert redis_server.command("ZCARD", channels.index) == 0
    assert redis_server.command("ZCARD", channels.names.client_channels("192.0.2.9/32")) == 0
    assert await channels.create("left0002", b"r", LONG, 100, "192.0.2.9/32", 1)
