"""WriteBehind's direct writes (O_DIRECT through an aligned staging buffer, or straight from
a lent aligned buffer): every byte lands in order whatever the block sizes, a cut write
keeps what it staged, a file system that refuses O_DIRECT gets ordinary writes, and every
lent buffer comes back once written and hashed."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os

import pytest
import pytest_twisted
from twisted.internet import reactor

from relay.client.live import file_io
from relay.client.live.file_io import (
    NO_HASH,
    AlignedBuffers,
    BackgroundHash,
    FileWorkers,
    WriteBehind,
)


@pytest.fixture
def workers():
    started = FileWorkers.start(reactor, "test")
    yield started
    started.stop()


async def _write(path, blocks, workers, *, flush=True):
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        writer = WriteBehind(workers.disk, fd, NO_HASH, direct=True)
        for block in blocks:
            await writer.write(block)
        if flush:
            await writer.flush()
        else:
            await writer.settle()
        return writer
    finally:
        os.close(fd)


@pytest.mark.parametrize("sizes", [
    [1], [4096], [4095, 1, 4097], [1024 * 1024] * 5 + [12_345],
    [3 * 1024 * 1024 + 7, 2 * 1024 * 1024, 5],
])
@pytest_twisted.ensureDeferred
async def test_every_byte_lands_in_order(tmp_path, workers, sizes):
    blocks = [os.urandom(size) for size in sizes]
    await _write(tmp_path / "f", blocks, workers)
    assert (tmp_path / "f").read_bytes() == b"".join(blocks)


@pytest_twisted.ensureDeferred
async def test_a_cut_write_keeps_what_it_staged(tmp_path, workers):
    blocks = [os.urandom(300_001), os.urandom(5)]
    await _write(tmp_path / "f", blocks, workers, flush=False)  # settle(), as on a failure
    assert (tmp_path / "f").read_bytes() == b"".join(blocks)


@pytest_twisted.ensureDeferred
async def test_a_refused_direct_write_falls_back_to_ordinary_writes(tmp_path, workers,
                                                                   monkeypatch):
    real_write = os.write
    refused = []

    def write(fd, data):
        if file_io._O_DIRECT and fcntl.fcntl(fd, fcntl.F_GETFL) & file_io._O_DIRECT:
            refused.append(len(data))
            raise OSError(errno.EINVAL, "no O_DIRECT here")
        return real_write(fd, data)

    monkeypatch.setattr(file_io.os, "write", write)
    blocks = [os.urandom(5 * 1024 * 1024 + 3), os.urandom(1000)]
    writer = await _write(tmp_path / "f", blocks, workers)
    assert (tmp_path / "f").read_bytes() == b"".join(blocks)
    assert writer._stage is None  # gave up on direct writes
    assert refused or not file_io._O_DIRECT


@pytest_twisted.ensureDeferred
async def test_the_file_grows_as_blocks_come_less_an_unaligned_rest(tmp_path, workers):
    path = tmp_path / "f"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        writer = WriteBehind(workers.disk, fd, NO_HASH, direct=True)
        await writer.write(os.urandom(10_000))
        while writer.pending:
            await writer.pending.popleft()
        assert path.stat().st_size == (8192 if writer._stage is not None else 10_000)
        await writer.flush()
        assert path.stat().st_size == 10_000
    finally:
        os.close(fd)


async def _write_lent(path, blocks, workers, buffers, hashing=NO_HASH, direct=True):
    """Write blocks, each lent by buffers where it fits (as the recipient's records are)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        writer = WriteBehind(workers.disk, fd, hashing, direct=direct, buffers=buffers)
        for block in blocks:
            view = buffers.take(len(block))
            if view is None:
                await writer.write(block)
                continue
            view[:] = block
            await writer.write(view)
        await writer.flush()
        return writer
    finally:
        os.close(fd)


@pytest.mark.parametrize("sizes", [
    [65_536] * 4, [65_536, 100, 65_536, 8192, 4096 * 3 + 1], [5, 65_536, 70_000, 65_536],
])
@pytest.mark.parametrize("direct", [True, False])
@pytest_twisted.ensureDeferred
async def test_lent_blocks_land_in_order_and_their_buffers_come_back(tmp_path, workers,
                                                                    sizes, direct):
    buffers = AlignedBuffers(65_536, keep=2)
    blocks = [os.urandom(size) for size in sizes]
    await _write_lent(tmp_path / "f", blocks, workers, buffers, direct=direct)
    assert (tmp_path / "f").read_bytes() == b"".join(blocks)
    assert not buffers._lent and 1 <= len(buffers._free) <= 2


@pytest_twisted.ensureDeferred
async def test_a_lent_block_stays_lent_until_it_is_hashed_too(tmp_path, workers):
    buffers = AlignedBuffers(4096)
    blocks = [os.urandom(4096) for _ in range(50)]
    hashing = BackgroundHash(workers.hash, hashlib.sha256())
    await _write_lent(tmp_path / "f", blocks, workers, buffers, hashing, direct=False)
    # Each buffer was lent again (and overwritten) only after its block was hashed.
    assert await hashing.hexdigest() == hashlib.sha256(b"".join(blocks)).hexdigest()
    assert not buffers._lent


@pytest_twisted.ensureDeferred
async def test_a_refused_direct_write_of_a_lent_block_falls_back(tmp_path, workers,
                                                                 monkeypatch):
    real_write = os.write

    def write(fd, data):
        if file_io._O_DIRECT and fcntl.fcntl(fd, fcntl.F_GETFL) & file_io._O_DIRECT:
            raise OSError(errno.EINVAL, "no O_DIRECT here")
        return real_write(fd, data)

    monkeypatch.setattr(file_io.os, "write", write)
    buffers = AlignedBuffers(65_536)
    blocks = [os.urandom(65_536), os.urandom(65_536), os.urandom(10)]
    writer = await _write_lent(tmp_path / "f", blocks, workers, buffers)
    assert (tmp_path / "f").read_bytes() == b"".join(blocks)
    assert writer._stage is None


def test_aligned_buffers_lend_exact_views_and_keep_a_few():
    buffers = AlignedBuffers(8192, keep=1)
    assert buffers.take(0) is None and buffers.take(8193) is None
    a, b = buffers.take(8192), buffers.take(10)
    assert len(a) == 8192 and len(b) == 10 and buffers.lent(a) and buffers.lent(b)
    assert not buffers.lent(memoryview(bytearray(10))) and not buffers.lent(bytes(a))
    buffers.give_back(a)
    buffers.give_back(b)
    buffers.give_back(b)  # twice: ignored
    assert not buffers.lent(a) and len(buffers._free) == 1 and len(b) == 10
    assert buffers.take(100).obj is a.obj  # the kept buffer is lent again
