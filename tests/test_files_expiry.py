"""Expiry and the cleanup service, on an injected clock (the in-memory relay harness)."""

from __future__ import annotations

import os
import time

from twisted.internet.defer import Deferred

from relay.crypto import b64decode, b64encode, make_nonce
from relay.files.cleanup import ORPHAN_GRACE, FileCleanup
from relay.files.ids import file_id
from tests.mailbox_harness import MemoryRelay
from tests.test_files_support import SealedFile

FILE_TTL = 10_000.0
INCOMPLETE_TTL = 1_000.0
# The reservation of an upload that stores no new part lapses this much sooner.
STALL_TTL = 300.0
INTERVAL = 600.0


def make_relay(tmp_path) -> MemoryRelay:
    return MemoryRelay(files={"directory": str(tmp_path / "chunks"), "file_ttl": FILE_TTL,
                              "incomplete_upload_ttl": INCOMPLETE_TTL,
                              "stalled_upload_ttl": STALL_TTL,
                              "cleanup_interval": INTERVAL})


def cleanup_of(relay: MemoryRelay) -> tuple[object, FileCleanup]:
    service = next(s for s in relay.app.services if s.name == "file-cleanup")
    return service, service.call[0].__self__


def enc(client, command, extra=None):
    status, body = client.command(command, extra)
    assert status == 200, (command["cmd"], status)
    return client.open(body)


def start(relay, alice, bob, size=2500):
    answer = enc(alice, {"cmd": "startFileUpload", "to": b64encode(bob.hpk), "file_size": size,
                         "metadata": {"nonce": b64encode(make_nonce(relay.clock.seconds())),
                                      "ctext": "aGVsbG8="}})
    return answer["uploadID"]


def status_of(client, upload_id):
    return enc(client, {"cmd": "fileStatus", "uploadID": upload_id})["status"]


def reconnect(*clients):
    for client in clients:  # sessions last 20 minutes; the tests jump days ahead
        client.connect()


def test_complete_file_expires_after_file_ttl(tmp_path):
    relay = make_relay(tmp_path)
    alice, bob = relay.connected(), relay.connected()
    upload_id = start(relay, alice, bob)
    sealed = SealedFile(os.urandom(2500))
    for part in range(3):
        enc(alice, *sealed.command(upload_id, part))
    chunk_dir = tmp_path / "chunks" / file_id(b64decode(upload_id)).hex()
    # Complete files wait for the recipient the whole file_ttl, well past the stalled ttl.
    relay.clock.advance(FILE_TTL - 10)
    reconnect(alice, bob)
    assert status_of(bob, upload_id) == "COMPLETE"
    assert enc(bob, {"cmd": "count"}) == 1
    relay.clock.advance(20)
    reconnect(alice, bob)
    assert status_of(bob, upload_id) == "NOT_FOUND"
    assert enc(bob, {"cmd": "count"}) == 0  # the file message went with it
    assert _usage(relay) == 0
    _, cleanup = cleanup_of(relay)
    assert chunk_dir.exists()
    removed = _run(cleanup)
    assert removed == 3 and not chunk_dir.exists()


def test_stalled_upload_expires_early_and_frees_quota(tmp_path):
    relay = make_relay(tmp_path)
    alice, bob = relay.connected(), relay.connected()
    upload_id = start(relay, alice, bob)
    sealed = SealedFile(os.urandom(2500))
    enc(alice, *sealed.command(upload_id, 0))
    relay.clock.advance(INCOMPLETE_TTL - 10)
    reconnect(alice, bob)
    enc(alice, *sealed.command(upload_id, 1))  # a chunk keeps it going
    relay.clock.advance(INCOMPLETE_TTL - 10)
    reconnect(alice, bob)
    assert status_of(bob, upload_id) == "UPLOADING"
    relay.clock.advance(20)
    reconnect(alice, bob)
    assert status_of(bob, upload_id) == "NOT_FOUND"
    assert _usage(relay) == 0
    # Its chunks are orphans now: the cleanup removes them once the grace has passed.
    _, cleanup = cleanup_of(relay)
    relay.clock.advance(ORPHAN_GRACE)
    assert _run(cleanup) == 2
    assert list((tmp_path / "chunks").iterdir()) == []


def test_stalled_upload_releases_its_reservation_then_reserves_again(tmp_path):
    relay = make_relay(tmp_path)
    alice, bob = relay.connected(), relay.connected()
    upload_id = start(relay, alice, bob, size=30_000)
    sealed = SealedFile(os.urandom(30_000))
    enc(alice, *sealed.command(upload_id, 0))
    block = relay.config.files.charge_block_size
    # One part stored (1016 bytes: one block), and a reservation for the rest.
    assert _reserved(relay) > 0
    assert _usage(relay) == block + _reserved(relay)
    relay.clock.advance(STALL_TTL - 10)
    reconnect(alice, bob)
    # Re-sending a part is no progress: it does not keep the reservation open.
    enc(alice, *sealed.command(upload_id, 0))
    relay.clock.advance(20)
    reconnect(alice, bob)
    assert _reserved(relay) == 0 and _usage(relay) == block
    assert status_of(bob, upload_id) == "UPLOADING"  # what it stored stays
    # The next new part reserves again.
    enc(alice, *sealed.command(upload_id, 1))
    assert _reserved(relay) > 0
    for part in range(2, sealed.parts):
        enc(alice, *sealed.command(upload_id, part))
    assert status_of(bob, upload_id) == "COMPLETE"
    assert _reserved(relay) == 0 and _usage(relay) == sealed.parts * block
    relay.clock.advance(INCOMPLETE_TTL * 2)  # a complete file keeps its file_ttl
    reconnect(alice, bob)
    assert status_of(bob, upload_id) == "COMPLETE"


def test_upload_without_parts_goes_with_its_reservation(tmp_path):
    relay = make_relay(tmp_path)
    alice, bob = relay.connected(), relay.connected()
    upload_id = start(relay, alice, bob)
    assert _usage(relay) == _reserved(relay) > 0
    relay.clock.advance(STALL_TTL + 1)
    reconnect(alice, bob)
    assert status_of(bob, upload_id) == "NOT_FOUND"
    assert _usage(relay) == 0


def test_a_file_never_outlives_file_ttl(tmp_path):
    relay = make_relay(tmp_path)
    alice, bob = relay.connected(), relay.connected()
    upload_id = start(relay, alice, bob, size=30_000)
    sealed = SealedFile(os.urandom(30_000))
    # Steady uploading keeps a file alive, but not past file_ttl from its start.
    assert enc(alice, *sealed.command(upload_id, 0)) == {"status": "OK"}
    for part in range(1, 12):  # 11 * 900 s < FILE_TTL
        relay.clock.advance(INCOMPLETE_TTL - 100)
        reconnect(alice)
        assert enc(alice, *sealed.command(upload_id, part)) == {"status": "OK"}
    relay.clock.advance(INCOMPLETE_TTL - 100)
    reconnect(alice)
    assert enc(alice, *sealed.command(upload_id, 12)) == {"status": "NOT_FOUND"}
    assert status_of(alice, upload_id) == "NOT_FOUND"


def test_cleanup_runs_at_start_every_interval_and_survives_errors(tmp_path):
    relay = make_relay(tmp_path)
    service, cleanup = cleanup_of(relay)
    service.startService()
    try:
        assert cleanup.rounds == 1  # at start-up
        relay.clock.advance(INTERVAL)
        assert cleanup.rounds == 2
        real_sweep = cleanup.chunks.sweep

        async def broken(*args):
            raise OSError("disk on fire")

        cleanup.chunks.sweep = broken
        relay.clock.advance(INTERVAL)
        assert (cleanup.rounds, cleanup.failures) == (2, 1)
        cleanup.chunks.sweep = real_sweep
        relay.clock.advance(INTERVAL)
        assert (cleanup.rounds, cleanup.failures) == (3, 1)  # still scheduled
    finally:
        service.stopService()


def test_orphans_of_a_live_file(tmp_path):
    relay = make_relay(tmp_path)
    alice, bob = relay.connected(), relay.connected()
    upload_id = start(relay, alice, bob)
    sealed = SealedFile(os.urandom(2500))
    enc(alice, *sealed.command(upload_id, 0))
    chunk_dir = tmp_path / "chunks" / file_id(b64decode(upload_id)).hex()
    kept = sorted(chunk_dir.iterdir())
    # What a kill -9 can leave: a temporary file, and a chunk written but never recorded.
    (chunk_dir / f".tmp.1.{os.urandom(8).hex()}").write_bytes(b"half")
    (chunk_dir / f"1.{os.urandom(8).hex()}").write_bytes(b"unrecorded")
    _, cleanup = cleanup_of(relay)
    assert _run(cleanup) == 0  # too fresh to tell from a write in progress
    relay.clock.advance(ORPHAN_GRACE + 1)
    reconnect(alice, bob)
    assert _run(cleanup) == 2
    assert sorted(chunk_dir.iterdir()) == kept
    assert status_of(bob, upload_id) == "UPLOADING"


def _run(cleanup: FileCleanup) -> int:
    """Run one cleanup round to completion (the memory store answers synchronously)."""
    results: list = []
    Deferred.fromCoroutine(cleanup.run_once()).addBoth(results.append)
    assert results and isinstance(results[0], int), results
    return results[0]


def _usage(relay: MemoryRelay) -> int:
    results: list = []
    Deferred.fromCoroutine(relay.app.store.files.usage()).addBoth(results.append)
    return results[0]


def _reserved(relay: MemoryRelay) -> int:
    results: list = []
    Deferred.fromCoroutine(relay.app.store.files.reserved()).addBoth(results.append)
    return results[0]


def test_wall_clock_matches_harness_clock():
    # The orphan grace compares file mtimes with the relay clock; the harness starts it at
    # the wall clock, which these tests rely on.
    relay = MemoryRelay()
    assert abs(relay.clock.seconds() - time.time()) < 60
