"""WriteBehind's direct writes (O_DIRECT through an aligned staging buffer): every byte
lands in order whatever the block sizes, a cut write keeps what it staged, and a file
system that refuses O_DIRECT gets ordinary writes."""

from __future__ import annotations

import errno
import fcntl
import os

import pytest
import pytest_twisted
from twisted.internet import reactor

from relay.client.live import file_io
from relay.client.live.file_io import NO_HASH, FileWorkers, WriteBehind


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
