"""File I/O off the reactor thread: order, bounds, short files, failures, and the heap knob."""

from __future__ import annotations

import hashlib
import os

import pytest
import pytest_twisted
from twisted.internet import reactor

from relay.client.errors import TransferError
from relay.client.live.file_io import (
    NO_HASH,
    BackgroundHash,
    FileWorkers,
    ReadAhead,
    WriteBehind,
)
from relay.heap import keep_big_buffers


@pytest.fixture
def workers():
    started = FileWorkers.start(reactor, "test")
    yield started
    started.stop()


@pytest_twisted.ensureDeferred
async def test_read_ahead_gives_every_block_in_order_and_hashes_them(tmp_path, workers):
    data = os.urandom(100_003)
    path = tmp_path / "f"
    path.write_bytes(data)
    digest = hashlib.sha256()
    hashing = BackgroundHash(workers.hash, digest)
    with open(path, "rb", buffering=0) as f:
        f.seek(3)
        blocks = ReadAhead(f, hashing, 3, len(data), 4096, depth=3)
        got = []
        while (block := await blocks.next()) is not None:
            got.append(block)
            # The kernel was asked to read ahead, no further than depth blocks.
            assert blocks._advised == min(len(data), 3 + (len(got) + 3) * 4096)
    assert b"".join(got) == data[3:] and {len(b) for b in got[:-1]} == {4096}
    assert await hashing.hexdigest() == hashlib.sha256(data[3:]).hexdigest()


@pytest_twisted.ensureDeferred
async def test_read_ahead_without_a_hash_reuses_one_buffer(tmp_path):
    data = os.urandom(3 * 4096 + 5)
    path = tmp_path / "f"
    path.write_bytes(data)
    with open(path, "rb", buffering=0) as f:
        blocks = ReadAhead(f, NO_HASH, 0, len(data), 4096)
        got, buffers = [], set()
        while (block := await blocks.next()) is not None:
            got.append(bytes(block))  # valid until the next call
            buffers.add(id(block.obj))
    assert b"".join(got) == data and len(buffers) == 1


@pytest_twisted.ensureDeferred
async def test_read_ahead_notices_a_file_that_shrank(tmp_path, workers):
    path = tmp_path / "f"
    path.write_bytes(bytes(10_000))
    hashing = BackgroundHash(workers.hash, hashlib.sha256())
    with open(path, "rb", buffering=0) as f:
        blocks = ReadAhead(f, hashing, 0, 20_000, 4096, name="f")
        with pytest.raises(TransferError, match="shrank"):
            while await blocks.next() is not None:
                pass
    with open(path, "rb", buffering=0) as f:
        blocks = ReadAhead(f, NO_HASH, 0, 20_000, 4096, name="f")
        with pytest.raises(TransferError, match="shrank"):
            while await blocks.next() is not None:
                pass


@pytest_twisted.ensureDeferred
async def test_write_behind_writes_in_order_within_its_bound(tmp_path, workers):
    path = tmp_path / "out"
    blocks = [os.urandom(size) for size in (1, 70_000, 5, 65_536, 3)]
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        hashing = BackgroundHash(workers.hash, hashlib.sha256())
        writer = WriteBehind(workers.disk, fd, hashing, depth=2)
        for block in blocks:
            await writer.write(block)
            assert len(writer.pending) < 2
        await writer.flush()
        assert not writer.pending
    finally:
        os.close(fd)
    assert path.read_bytes() == b"".join(blocks)
    assert await hashing.hexdigest() == hashlib.sha256(b"".join(blocks)).hexdigest()


@pytest_twisted.ensureDeferred
async def test_a_failed_write_is_raised_and_the_rest_settle(tmp_path, workers):
    path = tmp_path / "read-only"
    path.write_bytes(b"")
    fd = os.open(path, os.O_RDONLY)  # every write fails (EBADF)
    try:
        writer = WriteBehind(workers.disk, fd, BackgroundHash(workers.hash, hashlib.sha256()),
                             depth=4)
        with pytest.raises(OSError):
            for _ in range(10):
                await writer.write(b"x" * 1000)
            await writer.flush()
        await writer.settle()
        assert not writer.pending
    finally:
        os.close(fd)


def test_the_heap_knob_is_harmless():
    assert keep_big_buffers() in (True, False)
    big = [bytearray(2 * 1024 * 1024) for _ in range(3)]  # still allocates as usual
    assert sum(len(b) for b in big) == 6 * 1024 * 1024

