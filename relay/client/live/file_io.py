"""File reads and writes and the file's SHA-256 of a live transfer: ordered, bounded, and
off the reactor thread but for the sender's reads from the page cache.

A live transfer spends most of its CPU on the record crypto, the file's SHA-256 and the
kernel's copies to and from the page cache. hashlib and file I/O release the GIL on large
buffers, so a transfer runs them in two worker threads (`FileWorkers`: one for the disk,
one for the hash), which overlap each other, the network and the record crypto on the
reactor thread:

- `ReadAhead` (sender): the blocks of a file, read on the reactor thread while the kernel
  reads the next ones (the one part not in a worker: see its note); each block is hashed
  as it is handed out.
- `WriteBehind` (recipient): writes the received blocks while the reactor opens the next
  records; at most `depth` blocks wait for the disk, then the caller waits.
- `BackgroundHash`: a digest fed in order on the hash thread; `hexdigest()` waits for it.
- `StreamReadAhead` (sender, stdin): blocks of a pipe-like stream of unknown length, each
  as much as is ready at once (up to the block size), until the stream ends.
- `StreamWriteBehind` (recipient, --stdout): `WriteBehind` to a binary stream, each block
  flushed so that whatever reads our stdout sees it at once.

Each worker is one thread running jobs in submission order (so the hash sees the blocks in
file order). Every disk job's Deferred is awaited, or its failure consumed by `settle()`,
before the file is closed, so a job never touches a closed file. Hash jobs touch only the
digest and immutable bytes.
"""

from __future__ import annotations

import errno
import fcntl
import io
import mmap
import os
import queue
import select
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet.defer import Deferred, DeferredList
from twisted.python.failure import Failure

from relay.client.errors import TransferError

DEFAULT_DEPTH = 4


class SerialWorker:
    """One daemon thread running jobs in submission order; each job's result (or exception)
    arrives on the reactor thread through the Deferred that `submit()` returned."""

    def __init__(self, reactor: Any, name: str = "relay-file-io") -> None:
        self._reactor = reactor
        self._jobs: queue.SimpleQueue[tuple[Deferred[Any], Callable[..., Any], tuple] | None] \
            = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()
        self._stopped = False

    def submit(self, job: Callable[..., Any], *args: Any) -> Deferred[Any]:
        if self._stopped:
            raise RuntimeError("the worker is stopped")
        result: Deferred[Any] = Deferred()
        self._jobs.put((result, job, args))
        return result

    def stop(self) -> None:
        """No more jobs; the thread ends after the ones already submitted."""
        if not self._stopped:
            self._stopped = True
            self._jobs.put(None)

    def _run(self) -> None:
        while (item := self._jobs.get()) is not None:
            result, job, args = item
            try:
                value = job(*args)
            except BaseException:  # noqa: BLE001 - handed to the reactor thread as a Failure
                self._reactor.callFromThread(result.errback, Failure())
            else:
                self._reactor.callFromThread(result.callback, value)


@attrs.frozen
class FileWorkers:
    """The two threads of one transfer: `disk` reads or writes, `hash` hashes."""

    disk: SerialWorker
    hash: SerialWorker

    @classmethod
    def start(cls, reactor: Any, label: str) -> FileWorkers:
        return cls(SerialWorker(reactor, f"relay-{label}-disk"),
                   SerialWorker(reactor, f"relay-{label}-hash"))

    def stop(self) -> None:
        self.disk.stop()
        self.hash.stop()


def _swallow(_failure: Failure) -> None:
    return None


class BackgroundHash:
    """A hashlib digest updated in order on a worker thread."""

    def __init__(self, worker: SerialWorker, digest: Any) -> None:
        self.worker = worker
        self.digest = digest
        self._last: Deferred[Any] | None = None
        self._failure: Failure | None = None

    def update(self, block: bytes | memoryview) -> Deferred[Any]:
        """Hash block after everything given before; block must not change until the
        Deferred returned has fired (it never fails: see hexdigest)."""
        job = self.worker.submit(self.digest.update, block)
        job.addErrback(self._keep_failure)
        self._last = job
        return job

    def _keep_failure(self, failure: Failure) -> None:
        if self._failure is None:
            self._failure = failure

    async def hexdigest(self) -> str:
        if self._last is not None:
            await self._last
        if self._failure is not None:
            self._failure.raiseException()
        return self.digest.hexdigest()


class NoHash:
    """Stands in for BackgroundHash where no whole-file hash is wanted: the records'
    authentication already covers every byte sent in this run (see live/protocol.py)."""

    def update(self, block: bytes | memoryview) -> None:
        return None

    async def hexdigest(self) -> None:
        return None


NO_HASH = NoHash()


class _Pipeline:
    """Deferreds of submitted jobs, oldest first."""

    def __init__(self, worker: SerialWorker, depth: int) -> None:
        if depth < 1:
            raise ValueError("depth must be at least 1")
        self.worker = worker
        self.depth = depth
        self.pending: deque[Deferred[Any]] = deque()

    async def settle(self) -> None:
        """Wait for every submitted job, ignoring their failures (the caller is already
        failing): after this the file may be closed."""
        while self.pending:
            job = self.pending.popleft()
            job.addErrback(_swallow)
            await job


class ReadAhead:
    """The blocks of f from its current position (`start`) to `end`, each at most
    block_size bytes, each given to `hash` as it is handed out; TransferError if the file
    is shorter.

    The blocks are read on the caller's (the reactor's) thread, while the kernel reads
    `depth` blocks ahead (posix_fadvise WILLNEED starts those reads and returns), so a
    block usually comes from the page cache: a copy of well under a millisecond per MiB.
    Reading them in a worker thread instead cost the sender about 0.2 CPU-s per GiB more:
    a block written into one core's cache was encrypted from another's, and every block
    took two thread hand-offs. (The cost: on a stalled network file system a read blocks
    the reactor, and Ctrl-C with it, until the read returns.)

    Without a hash (NO_HASH), every block is read into one buffer (a block handed out by
    `next()` stays valid until the following call): a fresh 1 MiB buffer per block cost
    page faults and cache misses. A hash reads its blocks later, on its own thread, so
    with one every block is new bytes."""

    def __init__(self, f: Any, hash: BackgroundHash | NoHash, start: int, end: int,
                 block_size: int, depth: int = DEFAULT_DEPTH, name: str = "the file") -> None:
        if block_size < 1:
            raise ValueError("block_size must be at least 1")
        self.f = f
        self.hash = hash
        self.block_size = block_size
        self.depth = depth
        self.name = name
        self._next = start
        self._end = end
        self._buffer = bytearray(block_size) if isinstance(hash, NoHash) else None
        self._advised = start  # the kernel was asked to read up to here
        _advise(f, start, end - start, "POSIX_FADV_SEQUENTIAL")
        self._read_ahead()

    def _read_ahead(self) -> None:
        wanted = min(self._end, self._next + self.depth * self.block_size)
        if wanted - self._advised >= self.block_size or wanted == self._end > self._advised:
            _advise(self.f, self._advised, wanted - self._advised, "POSIX_FADV_WILLNEED")
            self._advised = wanted

    async def next(self) -> bytes | memoryview | None:
        """The next block (its hashing queued); None after the last."""
        if self._next >= self._end:
            return None
        size = min(self.block_size, self._end - self._next)
        block = self._read_into(size) if self._buffer is not None else self._read(size)
        self._next += size
        self._read_ahead()
        self.hash.update(block)
        return block

    def _read(self, size: int) -> bytes:
        block = self.f.read(size)
        while block is not None and 0 < len(block) < size:  # a short read: keep reading
            more = self.f.read(size - len(block))
            if not more:
                break
            block += more
        if not block or len(block) != size:
            raise TransferError(f"{self.name} shrank while sending")
        return block

    def _read_into(self, size: int) -> memoryview:
        assert self._buffer is not None
        view = memoryview(self._buffer)[:size]
        got = 0
        while got < size:
            count = self.f.readinto(view[got:])
            if not count:
                raise TransferError(f"{self.name} shrank while sending")
            got += count
        return view


def _advise(f: Any, offset: int, length: int, advice: str) -> None:
    """posix_fadvise where the system has it; a hint only, so any refusal is ignored."""
    if length <= 0 or not hasattr(os, advice):
        return
    try:
        os.posix_fadvise(f.fileno(), offset, length, getattr(os, advice))
    except (OSError, AttributeError, io.UnsupportedOperation):
        pass


class WriteBehind(_Pipeline):
    """Writes blocks to the file descriptor fd (from its current position) and gives them
    to `hash`, in order, with at most `depth` blocks waiting for the disk. (Starting the
    writeback early with posix_fadvise was tried: slower here, so the kernel decides.)

    With `direct` (a new file, written from offset 0), the bytes go to the disk with
    O_DIRECT where the file system takes it, through a page-aligned staging buffer: the
    kernel's copy into fresh page-cache pages was the receiver's largest cost (1-3 CPU-s
    per GiB on a virtual machine whose new pages fault in the hypervisor, about 0.3
    elsewhere), against about 0.1 for direct writes. The last unaligned bytes are written
    through the page cache at `flush()`; any refusal (EINVAL: a file system without
    O_DIRECT, an odd alignment) falls back to ordinary writes for the rest.

    A block lent by `buffers` (a record opened straight into a page-aligned buffer) is
    written with O_DIRECT as it is, without the staging copy, when nothing is staged and
    its length is a whole number of alignments; it goes back to `buffers` once written
    (and hashed)."""

    def __init__(self, worker: SerialWorker, fd: int, hash: BackgroundHash | NoHash,
                 depth: int = DEFAULT_DEPTH, direct: bool = False,
                 buffers: AlignedBuffers | None = None) -> None:
        super().__init__(worker, depth)
        self.fd = fd
        self.hash = hash
        self.buffers = buffers
        self.queued = 0  # bytes handed to write() so far
        self._stage: mmap.mmap | None = None  # worker thread, once started
        self._staged = 0
        if direct and _set_direct(fd, True):
            self._stage = mmap.mmap(-1, _STAGE)

    async def write(self, block: bytes | memoryview) -> None:
        """Queue block; waits (and raises the first failure) once `depth` are queued. After
        a failure the caller must `settle()` before closing the file."""
        lent = self.buffers is not None and self.buffers.lent(block)
        job = self.worker.submit(self._write, block, lent)
        self.pending.append(job)
        self.queued += len(block)
        hashed = self.hash.update(block)
        if lent:
            assert self.buffers is not None
            self.buffers.give_back_after(block, [job] if hashed is None else [job, hashed])
        while len(self.pending) >= self.depth:
            await self.pending.popleft()

    async def flush(self) -> None:
        """Wait until every queued block is written; raise the first failure."""
        if self._stage is not None:
            self.pending.append(self.worker.submit(self._write_tail))
        while self.pending:
            job = self.pending.popleft()
            try:
                await job
            except BaseException:
                await self.settle()
                raise

    async def settle(self) -> None:
        """As _Pipeline.settle(), and what is staged is written too, so that a cut transfer
        keeps every byte it received for the resume."""
        await super().settle()
        if self._stage is not None:
            job = self.worker.submit(self._write_tail)
            job.addErrback(_swallow)
            await job

    def _write(self, block: bytes | memoryview, aligned: bool = False) -> None:  # worker
        if self._stage is not None:
            if aligned and not self._staged and not len(block) % _ALIGN:
                self._write_direct(memoryview(block))
            else:
                self._stage_block(block)
            return
        _write_all(self.fd, memoryview(block))

    def _write_direct(self, view: memoryview) -> None:  # worker thread
        """An aligned block from an aligned offset, with O_DIRECT as it is."""
        done = self._write_aligned(view)
        if done < len(view):
            self._give_up_direct(0)  # nothing is staged
            _write_all(self.fd, view[done:])

    def _write_aligned(self, view: memoryview) -> int:  # worker thread
        """Write view with O_DIRECT; the bytes written before it was refused (EINVAL), or
        all of them."""
        done = 0
        try:
            while done < len(view):
                done += os.write(self.fd, view[done:])
        except OSError as e:
            if e.errno != errno.EINVAL:
                raise
        return done

    def _stage_block(self, block: bytes) -> None:  # worker thread
        view = memoryview(block)
        while view and self._stage is not None:
            taken = min(_STAGE - self._staged, len(view))
            self._stage[self._staged:self._staged + taken] = view[:taken]
            self._staged += taken
            view = view[taken:]
            if self._staged >= _ALIGN:
                # At once, not when the stage is full: the partial file grows as the
                # bytes come (a cut or slow transfer keeps them), less an unaligned rest.
                self._write_staged()
        if view:  # direct writes were given up on: the rest goes the ordinary way
            _write_all(self.fd, view)

    def _write_staged(self) -> None:  # worker thread
        """Write the whole (aligned) part of the staging buffer; keep the rest staged."""
        assert self._stage is not None
        aligned = self._staged - self._staged % _ALIGN
        with memoryview(self._stage) as whole:
            done = self._write_aligned(whole[:aligned])
        if done < aligned:
            self._give_up_direct(done)
            return
        rest = self._staged - aligned
        if rest:
            self._stage.move(0, aligned, rest)
        self._staged = rest

    def _write_tail(self) -> None:  # worker thread, at flush()
        """The staged bytes that do not fill an aligned block, through the page cache."""
        if self._stage is not None:
            self._write_staged()
        if self._stage is not None:
            self._give_up_direct(0)

    def _give_up_direct(self, start: int) -> None:  # worker thread
        """Ordinary writes from here on, starting with the staged bytes from start."""
        assert self._stage is not None
        stage, self._stage = self._stage, None
        _set_direct(self.fd, False)
        with memoryview(stage) as whole:
            _write_all(self.fd, whole[start:self._staged])
        self._staged = 0  # the staging buffer goes with its last view


class AlignedBuffers:
    """Page-aligned buffers (anonymous mmaps) of one size, lent as views of an exact size and
    given back to be lent again: the recipient opens each file record straight into one
    (RecordStream.open_into), and WriteBehind writes it to the disk with O_DIRECT as it is.
    Against a new bytes object per record that saves cryptography's zero-filling of it and
    the copy into the staging buffer (together about 10 % of the recipient's CPU). At most
    `keep` free buffers are kept; the ones in use are bounded by the records queued and
    the writes waiting (RecordStream's max_queued, WriteBehind's depth). Reactor thread
    only; a view not given back (a failed transfer) is simply freed with the pool."""

    def __init__(self, size: int, keep: int = 16) -> None:
        self.size = size
        self.keep = keep
        self._free: list[mmap.mmap] = []
        self._lent: dict[int, memoryview] = {}

    def take(self, size: int) -> memoryview | None:
        """A view of size bytes at the start of a free buffer (None if size does not fit)."""
        if not 0 < size <= self.size:
            return None
        buffer = self._free.pop() if self._free else mmap.mmap(-1, self.size)
        view = memoryview(buffer)[:size]
        self._lent[id(view)] = view
        return view

    def lent(self, block: object) -> bool:
        """Whether block is a view this pool lent and did not get back yet."""
        return self._lent.get(id(block)) is block

    def give_back(self, view: memoryview) -> None:
        """The view's buffer may be lent again (the view itself stays usable, for len)."""
        if self._lent.pop(id(view), None) is view and len(self._free) < self.keep:
            self._free.append(view.obj)  # type: ignore[arg-type]

    def give_back_after(self, view: memoryview, jobs: list[Deferred[Any]]) -> None:
        """give_back(view) once every job has ended, whatever its outcome (each job's own
        result and failure go on to whoever awaits it)."""
        DeferredList(jobs).addCallback(lambda _: self.give_back(view))


# O_DIRECT's buffer address, file offset and length alignment (the largest logical block
# size in common use), and the staging buffer (a whole number of alignments).
_ALIGN = 4096
_STAGE = 4 * 1024 * 1024
_O_DIRECT = getattr(os, "O_DIRECT", 0)


def _set_direct(fd: int, on: bool) -> bool:
    """Turn O_DIRECT on or off for fd; whether that worked (never where it does not exist,
    nor for a file whose position is not aligned)."""
    if not _O_DIRECT:
        return False
    try:
        if on and os.lseek(fd, 0, os.SEEK_CUR) % _ALIGN:
            return False
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        fcntl.fcntl(fd, fcntl.F_SETFL, flags | _O_DIRECT if on else flags & ~_O_DIRECT)
    except OSError:
        return False
    return True


def _write_all(fd: int, view: memoryview) -> None:
    while view:
        view = view[os.write(fd, view):]


def _read_some(f: Any, size: int) -> bytes:  # worker thread
    """Up to size bytes, blocking only until some are there (one raw read at most)."""
    read1 = getattr(f, "read1", None)
    block = read1(size) if read1 is not None else f.read(size)
    return block or b""


def _more_ready(f: Any) -> bool:  # worker thread
    """Whether a read of f would return at once (always, for what select cannot watch)."""
    try:
        fd = f.fileno()
    except (AttributeError, OSError, io.UnsupportedOperation):
        return True
    try:
        return bool(select.select([fd], [], [], 0)[0])
    except (OSError, ValueError):
        return True


class StreamReadAhead(_Pipeline):
    """The blocks of a stream of unknown length (stdin) until its end, each given to `hash`
    as it is handed out. A block is what is ready at once, up to block_size: a fast producer
    fills whole blocks, a slow one's bytes go out as they come instead of waiting for a
    full block. At most `depth` reads are queued.

    A read of a pipe may block for as long as its writer likes, so a failing caller calls
    `abandon()` rather than `settle()`: the stream is not ours to close, and a read still
    blocked on it touches nothing that is freed."""

    def __init__(self, worker: SerialWorker, f: Any, hash: BackgroundHash | NoHash,
                 block_size: int,
                 depth: int = DEFAULT_DEPTH) -> None:
        super().__init__(worker, depth)
        if block_size < 1:
            raise ValueError("block_size must be at least 1")
        self.f = f
        self.hash = hash
        self.block_size = block_size
        self._eof_read = False  # worker thread: the stream ended; later reads return b""
        self._ended = False  # reactor thread: the end was handed out
        self._fill()

    def _fill(self) -> None:
        while len(self.pending) < self.depth and not self._ended:
            self.pending.append(self.worker.submit(self._read))

    def _read(self) -> bytes:  # worker thread
        if self._eof_read:
            return b""
        first = _read_some(self.f, self.block_size)
        if not first:
            self._eof_read = True
            return b""
        parts, got = [first], len(first)
        while got < self.block_size and _more_ready(self.f):
            more = _read_some(self.f, self.block_size - got)
            if not more:
                self._eof_read = True
                break
            parts.append(more)
            got += len(more)
        return first if len(parts) == 1 else b"".join(parts)

    def next_read(self) -> Deferred[bytes] | None:
        """The oldest queued read (None after the end); pass its result to `take()`."""
        if self._ended or not self.pending:
            return None
        job = self.pending.popleft()
        self._fill()  # keep reading while this block is sealed and sent
        return job

    def take(self, block: bytes) -> bytes | None:
        """The block a read returned, its hashing queued; None at the end of the stream."""
        if not block:
            self._ended = True
            return None
        self.hash.update(block)
        return block

    async def next(self) -> bytes | None:
        """The next block; None at the end of the stream."""
        job = self.next_read()
        return None if job is None else self.take(await job)

    def abandon(self) -> None:
        """Stop: queued reads finish on their own; their results and failures are dropped."""
        self._ended = True
        while self.pending:
            self.pending.popleft().addErrback(_swallow)


class StreamWriteBehind(WriteBehind):
    """WriteBehind to a binary stream (stdout), each block written whole and flushed so that
    a reader downstream gets it at once. A closed pipe fails the write (BrokenPipeError):
    Python ignores SIGPIPE, so the process is not killed by it."""

    def __init__(self, worker: SerialWorker, out: Any, hash: BackgroundHash | NoHash,
                 depth: int = DEFAULT_DEPTH, buffers: AlignedBuffers | None = None) -> None:
        super().__init__(worker, -1, hash, depth, buffers=buffers)
        self.out = out

    def _write(self, block: bytes | memoryview, aligned: bool = False) -> None:  # worker
        self.out.write(block)
        self.out.flush()
