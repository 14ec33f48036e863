"""The file store contract on every store kind (memory, Redis), and the disk chunk store.

Runs once per kind through `store_factory` (tests/conftest.py). The charging model (see
relay.store.interfaces.files): a file is charged its stored parts (block-rounded) plus an
open reservation of at most one window; the caps bound, per sender, per client and in all,
both charged + reserved and the open reservations; a reservation lapses after a stall.
A hypothesis test runs random uploads on both stores against a model of these rules.
"""

from __future__ import annotations

import os
import time

import attrs
import pytest
import pytest_twisted
from hypothesis import event
from hypothesis import strategies as st

from relay.files.disk import DiskChunkStore
from relay.files.limits import part_charge
from relay.store.errors import StoreFull
from relay.store.interfaces.files import (
    COMPLETE,
    START,
    UPLOADING,
    FileCaps,
    FileRecord,
    PartInfo,
    PutOutcome,
    PutRequest,
)
from tests.store_models import model_test

LONG = 3600.0
SHORT = 0.3
PAST_SHORT = 0.45
BLOCK = 4096
UNLIMITED = 10**12
CLIENT = "192.0.2.1/32"


def caps(**limits: int) -> FileCaps:
    values = dict(sender_bytes=UNLIMITED, client_bytes=UNLIMITED, total_bytes=UNLIMITED,
                  sender_reserved=UNLIMITED, client_reserved=UNLIMITED,
                  total_reserved=UNLIMITED, window=UNLIMITED)
    return FileCaps(**{**values, **limits})


OPEN = caps()


def new_record(reserved: int = 10_000, sender: bytes | None = None, client: str = CLIENT,
               max_charge: int | None = None) -> FileRecord:
    return FileRecord(file_id=os.urandom(32), sender=sender or os.urandom(32),
                      recipient=os.urandom(32), file_size=9_000, client=client,
                      max_charge=reserved if max_charge is None else max_charge,
                      reserved=reserved, expires_at=time.time() + LONG)


def put(part: int, size: int = 100, last: bool = False, max_parts: int = 10,
        max_bytes: int = 10_000, ttl: float = LONG, complete_ttl: float = LONG,
        stall_ttl: float = LONG, charge: int | None = None,
        limits: FileCaps = OPEN, part_overhead: int = 0) -> PutRequest:
    info = PartInfo(size, os.urandom(24), os.urandom(8))
    return PutRequest(part, info, size if charge is None else charge, last, max_parts,
                      max_bytes, ttl, complete_ttl, stall_ttl, limits, part_overhead)


@pytest_twisted.ensureDeferred
async def test_create_get_delete(store_factory):
    files = store_factory.files
    record = new_record()
    created, is_new = await files.create(record, LONG, LONG, OPEN)
    assert is_new and created.file_id == record.file_id and created.status == START
    assert (created.reserved, created.charged, created.client) == (10_000, 0, CLIENT)
    assert created.reserved_until == pytest.approx(time.time() + LONG, abs=5)
    again, is_new = await files.create(record, LONG, LONG, OPEN)
    assert not is_new and again.file_size == record.file_size
    got = await files.get(record.file_id)
    assert (got.sender, got.recipient, got.file_size, got.client, got.max_charge) == \
        (record.sender, record.recipient, record.file_size, CLIENT, record.max_charge)
    assert got.expires_at == pytest.approx(record.expires_at)
    for scope in ({}, {"sender": record.sender}, {"client": CLIENT}):
        assert await files.usage(**scope) == 10_000
        assert await files.reserved(**scope) == 10_000
    assert await files.usage(client="198.51.100.0/24") == 0
    removed = await files.delete(record.file_id)
    assert removed.file_id == record.file_id
    assert await files.get(record.file_id) is None
    assert await files.delete(record.file_id) is None
    for scope in ({}, {"sender": record.sender}, {"client": CLIENT}):
        assert await files.usage(**scope) == 0 and await files.reserved(**scope) == 0


@pytest_twisted.ensureDeferred
async def test_parts_status_and_replacement(store_factory):
    files = store_factory.files
    record = new_record()
    await files.create(record, LONG, LONG, OPEN)
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
    await files.create(record, LONG, LONG, OPEN)
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
async def test_bytes_bound_grows_with_the_parts_stored(store_factory):
    """max_bytes + part_overhead per part stored after the write (a part's MAC)."""
    files = store_factory.files
    record = new_record()
    await files.create(record, LONG, LONG, OPEN)

    def request(part: int, size: int) -> PutRequest:
        return put(part, size, max_bytes=100, part_overhead=16)

    assert (await files.put_part(record.file_id, request(0, 117)))[0] == \
        PutOutcome.TOO_MANY_BYTES
    assert (await files.put_part(record.file_id, request(0, 116)))[0] == PutOutcome.OK
    assert (await files.put_part(record.file_id, request(1, 17)))[0] == \
        PutOutcome.TOO_MANY_BYTES
    assert (await files.put_part(record.file_id, request(1, 16)))[0] == PutOutcome.OK
    # Replacing a part counts it once: 50 + 16 + 2 * 16 <= 100 + 2 * 16.
    assert (await files.put_part(record.file_id, request(0, 50)))[0] == PutOutcome.OK
    got = await files.get(record.file_id)
    assert (got.bytes_stored, got.part_count) == (66, 2)


@pytest_twisted.ensureDeferred
async def test_part_count_cap(store_factory):
    """At most max_parts parts, whatever their numbers (what free part numbering will
    rely on); re-sending a stored part is always fine."""
    files = store_factory.files
    record = new_record()
    await files.create(record, LONG, LONG, OPEN)
    for part in (5, 6, 7):
        assert (await files.put_part(record.file_id, put(part)))[0] == PutOutcome.OK
    assert (await files.put_part(record.file_id, put(0, max_parts=3)))[0] == \
        PutOutcome.BAD_PART
    assert (await files.put_part(record.file_id, put(6, max_parts=8)))[0] == PutOutcome.OK
    assert (await files.get(record.file_id)).part_count == 3


@pytest_twisted.ensureDeferred
async def test_tiny_parts_are_charged_whole_blocks(store_factory):
    files = store_factory.files
    record = new_record(reserved=0, max_charge=0)
    await files.create(record, LONG, LONG, OPEN)
    for part in range(5):
        request = put(part, 1, charge=part_charge(1, BLOCK))
        assert (await files.put_part(record.file_id, request))[0] == PutOutcome.OK
    got = await files.get(record.file_id)
    assert (got.bytes_stored, got.charged) == (5, 5 * BLOCK)
    assert await files.usage() == 5 * BLOCK
    # A cap that 5 bytes would fit but 6 blocks do not: refused, nothing changed.
    tight = caps(sender_bytes=5 * BLOCK + 100)
    request = put(5, 1, charge=BLOCK, limits=tight)
    assert await files.put_part(record.file_id, request) == (PutOutcome.FULL, None)
    got = await files.get(record.file_id)
    assert (got.bytes_stored, got.charged, got.part_count) == (5, 5 * BLOCK, 5)
    # Re-sending a part at the same charge needs no room.
    request = put(4, 1, charge=BLOCK, limits=tight)
    assert (await files.put_part(record.file_id, request))[0] == PutOutcome.OK
    assert await files.usage() == 5 * BLOCK


@pytest_twisted.ensureDeferred
async def test_charge_is_stored_plus_a_window(store_factory):
    files = store_factory.files
    window = caps(window=10_000)
    # Declared to take up to 30_000: it reserves one window, not all of it.
    record = new_record(reserved=10_000, max_charge=30_000)
    await files.create(record, LONG, LONG, window)
    assert (await files.usage(), await files.reserved()) == (10_000, 10_000)
    for part, expected_reserved in ((0, 10_000), (1, 10_000), (2, 10_000), (3, 6_000)):
        request = put(part, 100, charge=6_000, limits=window, max_bytes=10**6)
        assert (await files.put_part(record.file_id, request))[0] == PutOutcome.OK
        charged = 6_000 * (part + 1)
        assert await files.reserved() == expected_reserved, part
        assert await files.usage() == charged + expected_reserved
    # The last part completes it: no reservation left, only what is stored is charged.
    request = put(4, 100, last=True, charge=6_000, limits=window, max_bytes=10**6)
    assert (await files.put_part(record.file_id, request))[0] == PutOutcome.OK
    got = await files.get(record.file_id)
    assert got.status == COMPLETE and got.reserved == 0 and got.charged == 30_000
    assert (await files.usage(), await files.reserved()) == (30_000, 0)
    await files.delete(record.file_id)
    assert (await files.usage(), await files.reserved()) == (0, 0)


@pytest_twisted.ensureDeferred
async def test_byte_caps_per_sender_client_and_total(store_factory):
    files = store_factory.files
    limits = caps(sender_bytes=1000, client_bytes=1500, total_bytes=2000)
    sender = os.urandom(32)
    await files.create(new_record(600, sender), LONG, LONG, limits)
    with pytest.raises(StoreFull):
        await files.create(new_record(500, sender), LONG, LONG, limits)  # sender's cap
    await files.create(new_record(400, sender), LONG, LONG, limits)
    with pytest.raises(StoreFull):
        await files.create(new_record(600), LONG, LONG, limits)  # the client's cap
    await files.create(new_record(500), LONG, LONG, limits)
    with pytest.raises(StoreFull):
        await files.create(new_record(600, client="198.51.100.7/32"), LONG, LONG,
                           limits)  # the relay's cap
    await files.create(new_record(500, client="198.51.100.7/32"), LONG, LONG, limits)
    assert await files.usage() == 2000 and await files.usage(sender) == 1000
    assert await files.usage(client=CLIENT) == 1500


@pytest_twisted.ensureDeferred
async def test_reservation_caps_per_sender_client_and_total(store_factory):
    files = store_factory.files
    limits = caps(sender_reserved=1000, client_reserved=1500, total_reserved=2000)
    sender = os.urandom(32)
    first = new_record(600, sender)
    await files.create(first, LONG, LONG, limits)
    with pytest.raises(StoreFull):
        await files.create(new_record(500, sender), LONG, LONG, limits)
    await files.create(new_record(500), LONG, LONG, limits)
    with pytest.raises(StoreFull):
        await files.create(new_record(500), LONG, LONG, limits)  # the client's
    await files.create(new_record(400, client="198.51.100.7/32"), LONG, LONG, limits)
    with pytest.raises(StoreFull):  # the relay's
        await files.create(new_record(600, client="203.0.113.9/32"), LONG, LONG, limits)
    assert await files.reserved() == 1500 and await files.reserved(client=CLIENT) == 1100
    # Writing turns a reservation into stored bytes, which no reservation cap limits:
    # once complete, the file reserves nothing and the sender may reserve again.
    request = put(0, 100, last=True, charge=600, limits=limits)
    assert (await files.put_part(first.file_id, request))[0] == PutOutcome.OK
    assert await files.reserved(sender) == 0 and await files.usage(sender) == 600
    await files.create(new_record(1000, sender, client="203.0.113.9/32"), LONG, LONG,
                       caps(sender_reserved=1000, total_reserved=2000))


@pytest_twisted.ensureDeferred
async def test_refused_part_changes_nothing(store_factory):
    files = store_factory.files
    sender = os.urandom(32)
    record = new_record(1000, sender, max_charge=5000)
    await files.create(record, LONG, LONG, caps(window=1000))
    before = await files.get(record.file_id, all_parts=True)
    limits = caps(window=1000, client_bytes=1500)
    # Stored 800 plus a renewed window of 1000 > 1500: refused.
    request = put(0, 100, charge=800, limits=limits)
    assert await files.put_part(record.file_id, request) == (PutOutcome.FULL, None)
    assert await files.get(record.file_id, all_parts=True) == before
    assert (await files.usage(), await files.reserved()) == (1000, 1000)
    request = put(0, 100, charge=500, limits=limits)
    assert (await files.put_part(record.file_id, request))[0] == PutOutcome.OK
    assert (await files.usage(sender), await files.reserved(sender)) == (1500, 1000)


@pytest_twisted.ensureDeferred
async def test_expiry_releases_quota(store_factory, store_sleep):
    files = store_factory.files
    sender = os.urandom(32)
    limits = caps(sender_bytes=1000)
    short = new_record(600, sender)
    await files.create(short, SHORT, LONG, limits)
    await files.create(new_record(300, sender), LONG, LONG, limits)
    with pytest.raises(StoreFull):
        await files.create(new_record(600, sender), LONG, LONG, limits)
    await store_sleep(PAST_SHORT)
    assert await files.get(short.file_id) is None
    assert await files.usage(sender) == 300 and await files.usage(client=CLIENT) == 300
    await files.create(new_record(600, sender), LONG, LONG, limits)


@pytest_twisted.ensureDeferred
async def test_stalled_reservation_lapses(store_factory, store_sleep):
    files = store_factory.files
    record = new_record(5000, max_charge=50_000)
    limits = caps(window=5000, sender_reserved=5000)
    await files.create(record, LONG, SHORT, limits)
    assert await files.reserved() == 5000
    await store_sleep(PAST_SHORT)
    # No progress: the reservation is gone, the file is not.
    assert await files.reserved() == 0 and await files.usage() == 0
    assert (await files.get(record.file_id)).status == START
    # A new part reserves again (and restarts the stall clock).
    request = put(0, 100, charge=BLOCK, stall_ttl=SHORT, limits=limits, max_bytes=10**6)
    assert (await files.put_part(record.file_id, request))[0] == PutOutcome.OK
    assert (await files.usage(), await files.reserved()) == (BLOCK + 5000, 5000)
    # Re-sending a stored part is no progress: the reservation still lapses on time.
    await store_sleep(SHORT / 2)
    request = put(0, 100, charge=BLOCK, stall_ttl=LONG, limits=limits, max_bytes=10**6)
    assert (await files.put_part(record.file_id, request))[0] == PutOutcome.OK
    await store_sleep(PAST_SHORT - SHORT / 2)
    assert (await files.usage(), await files.reserved()) == (BLOCK, 0)
    # Lapsed, the sender may reserve for another file.
    await files.create(new_record(5000, record.sender), LONG, LONG, limits)


@pytest_twisted.ensureDeferred
async def test_incomplete_then_complete_ttl(store_factory, store_sleep):
    files = store_factory.files
    record = new_record()
    await files.create(record, LONG, LONG, OPEN)
    # An incomplete upload lives `ttl` after its last chunk; a complete one `complete_ttl`.
    await files.put_part(record.file_id, put(0, ttl=SHORT, complete_ttl=LONG))
    await store_sleep(PAST_SHORT)
    assert await files.get(record.file_id) is None
    assert await files.usage() == 0 and await files.reserved() == 0
    record = new_record()
    await files.create(record, LONG, LONG, OPEN)
    await files.put_part(record.file_id, put(0, last=True, ttl=SHORT, complete_ttl=LONG))
    await store_sleep(PAST_SHORT)
    assert (await files.get(record.file_id)).status == COMPLETE
    assert await files.usage() == 100


@pytest_twisted.ensureDeferred
async def test_one_client_filling_leaves_room_for_another(store_factory):
    """Fresh identities from one client reserve until that client's cap; a sender from
    another client still starts and completes a file."""
    files = store_factory.files
    limits = caps(sender_bytes=4 * BLOCK, client_bytes=8 * BLOCK, total_bytes=20 * BLOCK,
                  sender_reserved=2 * BLOCK, client_reserved=4 * BLOCK,
                  total_reserved=10 * BLOCK, window=2 * BLOCK)
    started = 0
    with pytest.raises(StoreFull):
        for _ in range(100):
            await files.create(new_record(2 * BLOCK, max_charge=1000 * BLOCK), LONG, LONG,
                               limits)
            started += 1
    assert started == 2 and await files.reserved(client=CLIENT) == 4 * BLOCK
    record = new_record(BLOCK, client="198.51.100.7/32")
    await files.create(record, LONG, LONG, limits)
    request = put(0, 100, last=True, charge=BLOCK, limits=limits)
    assert (await files.put_part(record.file_id, request))[0] == PutOutcome.OK
    assert (await files.get(record.file_id)).status == COMPLETE


@pytest.mark.parametrize("store_kind", ["redis"])
@pytest_twisted.ensureDeferred
async def test_redis_file_keys_all_expire(store_factory, redis_server, store_sleep):
    """Every key (record, ledgers) has a TTL no longer than its file's; once the files are
    gone, so are the ledgers."""
    files = store_factory.files
    limits = caps(window=5000)
    records = [new_record(5000, max_charge=50_000, client=client)
               for client in ("192.0.2.1/32", "2001:db8:1:2::/64")]
    for record in records:
        await files.create(record, LONG, SHORT, limits)
        request = put(0, 100, charge=BLOCK, stall_ttl=SHORT, limits=limits, max_bytes=10**6)
        assert (await files.put_part(record.file_id, request))[0] == PutOutcome.OK
    await store_sleep(PAST_SHORT)  # the reservations lapse
    assert (await files.usage(), await files.reserved()) == (2 * BLOCK, 0)
    keys = redis_server.keys()
    # Two records; five ledgers (two senders, two clients, the relay) of three or four keys
    # (a ledger's reservation ZSET goes once it is reaped empty).
    assert 2 + 5 * 3 <= len(keys) <= 2 + 5 * 4
    for key in keys:
        assert 0 < redis_server.command("PTTL", key) <= LONG * 1000, key
    for record in records:
        await files.delete(record.file_id)
    assert redis_server.keys() == []


# -- random uploads against a model ------------------------------------------------------------

MODEL_BLOCK = 64
MODEL_CAPS = caps(sender_bytes=10 * MODEL_BLOCK, client_bytes=14 * MODEL_BLOCK,
                  total_bytes=20 * MODEL_BLOCK, sender_reserved=6 * MODEL_BLOCK,
                  client_reserved=9 * MODEL_BLOCK, total_reserved=12 * MODEL_BLOCK,
                  window=3 * MODEL_BLOCK)
MODEL_MAX_PARTS = 8
# Four file slots: two senders of one client (the first sending two files), one of another.
SENDER_OF = [0, 1, 2, 0]
CLIENT_OF = [0, 0, 1, 0]


@attrs.define
class ModelFile:
    """One file under the charging rules of relay.store.interfaces.files."""

    slot: int
    max_bytes: int
    max_charge: int
    reserved: int
    parts: dict[int, tuple[int, int]] = attrs.field(factory=dict)  # part -> (size, charge)
    last: int | None = None

    @property
    def charged(self) -> int:
        return sum(charge for _, charge in self.parts.values())

    @property
    def stored(self) -> int:
        return sum(size for size, _ in self.parts.values())

    @property
    def complete(self) -> bool:
        return self.last is not None and len(self.parts) == self.last + 1


def model_sums(model: dict[int, ModelFile], slots: set[int]) -> tuple[int, int]:
    files = [f for f in model.values() if f.slot in slots]
    return (sum(f.charged + f.reserved for f in files), sum(f.reserved for f in files))


def model_put(model: dict[int, ModelFile], slot: int, part: int, size: int,
              last: bool) -> str:
    f = model.get(slot)
    if f is None:
        return PutOutcome.NOT_FOUND
    if part >= MODEL_MAX_PARTS:
        return PutOutcome.BAD_PART
    if f.last is not None and (part > f.last or (last and part != f.last)):
        return PutOutcome.BAD_PART
    if last and f.parts and max(f.parts) > part:
        return PutOutcome.BAD_PART
    old = f.parts.get(part)
    if old is None and len(f.parts) >= MODEL_MAX_PARTS:
        return PutOutcome.BAD_PART
    after = attrs.evolve(f, parts={**f.parts, part: (size, part_charge(size, MODEL_BLOCK))},
                         last=part if last else f.last)
    if after.stored > f.max_bytes:
        return PutOutcome.TOO_MANY_BYTES
    room = max(0, f.max_charge - after.charged)
    if after.complete:
        after.reserved = 0
    elif old is None:
        after.reserved = min(MODEL_CAPS.window, room)
    else:
        after.reserved = min(f.reserved, room)
    grow_reserved = after.reserved - f.reserved
    grow = after.charged - f.charged + grow_reserved
    trial = {**model, slot: after}
    for scope, byte_cap, reserved_cap in _model_scopes(slot):
        charged, reserved = model_sums(trial, scope)
        if (grow > 0 and charged > byte_cap) or (grow_reserved > 0 and reserved > reserved_cap):
            return PutOutcome.FULL
    model[slot] = after
    return PutOutcome.OK


def _model_scopes(slot: int) -> list[tuple[set[int], int, int]]:
    """The slots sharing each of slot's ledgers, with the ledger's caps."""
    c = MODEL_CAPS
    senders = {i for i in range(4) if SENDER_OF[i] == SENDER_OF[slot]}
    clients = {i for i in range(4) if CLIENT_OF[i] == CLIENT_OF[slot]}
    return [(senders, c.sender_bytes, c.sender_reserved),
            (clients, c.client_bytes, c.client_reserved),
            (set(range(4)), c.total_bytes, c.total_reserved)]


_model_operations = st.builds(
    lambda sizes, rest: [("create", slot, size) for slot, size in enumerate(sizes)] + rest,
    st.lists(st.integers(1, 3000), min_size=4, max_size=4),
    st.lists(st.one_of(
        st.tuples(st.just("create"), st.integers(0, 3), st.integers(1, 3000)),
        st.tuples(st.just("put"), st.integers(0, 3), st.integers(0, MODEL_MAX_PARTS),
                  st.integers(1, 1000), st.booleans()),
        st.tuples(st.just("put"), st.integers(0, 3), st.integers(0, MODEL_MAX_PARTS),
                  st.integers(1, 1000), st.booleans()),
        st.tuples(st.just("delete"), st.integers(0, 3)),
    ), max_size=30))


async def check_files_against_model(files, operations) -> None:
    """Hypothesis runs many examples on one store: each uses identities and clients of
    its own, and deletes its files at the end so the relay-wide sums start from zero."""
    ids = [os.urandom(32) for _ in range(4)]
    senders = [os.urandom(32) for _ in range(3)]
    clients = [f"10.{os.urandom(1)[0]}.{os.urandom(1)[0]}.{n}/32" for n in range(2)]
    model: dict[int, ModelFile] = {}
    try:
        await _run_model(files, operations, ids, [senders[i] for i in SENDER_OF],
                         [clients[i] for i in CLIENT_OF], model)
    finally:
        for file_id in ids:
            await files.delete(file_id)


async def _run_model(files, operations, ids, senders, clients, model) -> None:
    for operation in operations:
        slot = operation[1]
        if operation[0] == "create":
            max_bytes = operation[2]
            max_charge = part_charge(max_bytes, MODEL_BLOCK)
            reserved = min(MODEL_CAPS.window, max_charge)
            record = FileRecord(file_id=ids[slot], sender=senders[slot],
                                recipient=os.urandom(32), file_size=max_bytes,
                                client=clients[slot], max_charge=max_charge,
                                reserved=reserved, expires_at=time.time() + LONG)
            trial = {**model, slot: ModelFile(slot, max_bytes, max_charge, reserved)}
            fits = slot in model or all(
                model_sums(trial, scope)[0] <= byte_cap and
                model_sums(trial, scope)[1] <= reserved_cap
                for scope, byte_cap, reserved_cap in _model_scopes(slot))
            try:
                _, created = await files.create(record, LONG, LONG, MODEL_CAPS)
            except StoreFull:
                assert not fits, operation
                event("create: full")
            else:
                assert fits and created == (slot not in model), operation
                model.setdefault(slot, ModelFile(slot, max_bytes, max_charge, reserved))
        elif operation[0] == "put":
            _, _, part, size, last = operation
            f = model.get(slot)
            request = put(part, size, last=last, max_parts=MODEL_MAX_PARTS,
                          max_bytes=f.max_bytes if f else 0,
                          charge=part_charge(size, MODEL_BLOCK), limits=MODEL_CAPS)
            expected = model_put(model, slot, part, size, last)
            outcome, _ = await files.put_part(ids[slot], request)
            assert outcome == expected, operation
            event(f"put: {outcome}")
        else:
            removed = await files.delete(ids[slot])
            assert (removed is not None) == (model.pop(slot, None) is not None)
        for slot, f in model.items():
            got = await files.get(ids[slot])
            assert (got.bytes_stored, got.charged, got.part_count, got.status == COMPLETE) \
                == (f.stored, f.charged, len(f.parts), f.complete), slot
        for slot in range(4):
            sender_scope, client_scope, _ = (scope for scope, _, _ in _model_scopes(slot))
            assert (await files.usage(senders[slot]), await files.reserved(senders[slot])) \
                == model_sums(model, sender_scope)
            assert (await files.usage(client=clients[slot]),
                    await files.reserved(client=clients[slot])) == \
                model_sums(model, client_scope)
        assert (await files.usage(), await files.reserved()) == model_sums(model, set(range(4)))


test_memory_files_match_the_model = model_test("memory", _model_operations,
                                               check_files_against_model, "files")
test_redis_files_match_the_model = model_test("redis", _model_operations,
                                              check_files_against_model, "files")


@pytest_twisted.ensureDeferred
async def test_store_chunks_roundtrip_and_sweep(store_factory):
    files = store_factory.files
    chunks = files.chunks
    record = new_record()
    await files.create(record, LONG, LONG, OPEN)
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
    await files.create(record, LONG, LONG, OPEN)
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
