"""Chunks as files: `<directory>/<file_id hex>/<part>.<blob hex>`, every name relay-made.

A chunk is written to a temporary file in the same directory and renamed into place, so a
chunk file is either complete or absent. Writes are synchronous: a 500 KiB chunk lands in
the page cache in well under a millisecond, less than a thread hop would cost. They are not
fsynced: a killed relay loses nothing (the kernel keeps the pages); a power cut may lose
recent chunks, which the uploader then re-sends after fileStatus.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path

from twisted.logger import Logger

from relay.store.errors import StoreFull, StoreUnavailable
from relay.store.interfaces.files import FileRecord

log = Logger(namespace="relay.files")

_FILE_DIR = re.compile(r"[0-9a-f]{64}")
_CHUNK = re.compile(r"(\d{1,10})\.([0-9a-f]{16})")
_TEMPORARY_PREFIX = ".tmp."
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class DiskChunkStore:
    def __init__(self, directory: str | Path) -> None:
        self.root = Path(directory)

    def _file_dir(self, file_id: bytes) -> Path:
        return self.root / file_id.hex()

    def _chunk_path(self, file_id: bytes, part: int, blob: bytes) -> Path:
        return self._file_dir(file_id) / f"{part}.{blob.hex()}"

    async def write(self, file_id: bytes, part: int, blob: bytes, data: bytes,
                    ttl: float) -> None:
        final = self._chunk_path(file_id, part, blob)
        temporary = final.with_name(_TEMPORARY_PREFIX + final.name)
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            with open(temporary, "wb") as f:
                f.write(data)
            os.replace(temporary, final)
        except OSError as e:
            temporary.unlink(missing_ok=True)
            if e.errno in _NO_SPACE:
                raise StoreFull("no space left for file chunks") from None
            raise StoreUnavailable(f"cannot write a file chunk: {e.strerror}") from None

    async def read(self, file_id: bytes, part: int, blob: bytes) -> bytes | None:
        try:
            with open(self._chunk_path(file_id, part, blob), "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise StoreUnavailable(f"cannot read a file chunk: {e.strerror}") from None

    async def remove(self, file_id: bytes, part: int, blob: bytes) -> None:
        try:
            self._chunk_path(file_id, part, blob).unlink(missing_ok=True)
        except OSError as e:
            log.warn("cannot remove a file chunk: {error}", error=e.strerror)

    async def remove_file(self, file_id: bytes, record: FileRecord | None) -> None:
        shutil.rmtree(self._file_dir(file_id), ignore_errors=True)

    async def sweep(self, lookup: Callable[[bytes], Awaitable[FileRecord | None]],
                    older_than: float) -> int:
        """Remove what no live record refers to: the directories of expired or deleted
        files, chunks replaced by a re-sent part, temporary files of interrupted writes.
        Anything written after older_than is left alone: its record may not be written yet.
        Names this store did not make are never touched."""
        try:
            entries = list(os.scandir(self.root))
        except FileNotFoundError:
            return 0
        removed = 0
        for entry in entries:
            if not _FILE_DIR.fullmatch(entry.name) or not entry.is_dir(follow_symlinks=False):
                continue
            record = await lookup(bytes.fromhex(entry.name))
            removed += self._sweep_file_dir(Path(entry.path), record, older_than)
        return removed

    def _sweep_file_dir(self, directory: Path, record: FileRecord | None,
                        older_than: float) -> int:
        live = {f"{part}.{info.blob.hex()}" for part, info in record.parts.items()} \
            if record else set()
        removed = 0
        try:
            chunks = list(os.scandir(directory))
        except FileNotFoundError:
            return 0
        for chunk in chunks:
            name = chunk.name
            ours = _CHUNK.fullmatch(name) or (name.startswith(_TEMPORARY_PREFIX) and
                                             _CHUNK.fullmatch(name[len(_TEMPORARY_PREFIX):]))
            if not ours or name in live:
                continue
            try:
                if chunk.stat(follow_symlinks=False).st_mtime < older_than:
                    os.unlink(chunk.path)
                    removed += 1
            except FileNotFoundError:
                pass
        if record is None:
            try:
                directory.rmdir()  # only once empty: a chunk written meanwhile keeps it
            except OSError:
                pass
        return removed
