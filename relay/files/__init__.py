"""File drops (the Zax file API): commands, chunk storage, limits, upload ids, cleanup.

`install_file_api` is what relay.app calls when [files] enabled is true.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import IService

from relay.config import RelayConfig
from relay.files.cleanup import FileCleanup
from relay.files.commands import FileCommands
from relay.files.disk import DiskChunkStore
from relay.mailbox.commands import CommandProcessor
from relay.store import Store
from relay.store.interfaces.files import ChunkStore


def open_chunk_store(config: RelayConfig, store: Store) -> ChunkStore:
    if config.files.chunk_store == "store":
        return store.files.chunks
    return DiskChunkStore(config.files.directory)


def install_file_api(config: RelayConfig, store: Store, processor: CommandProcessor,
                     reactor: Any) -> list[IService]:
    """Register the five file commands; return the cleanup service to run."""
    if store.files is None:
        raise RuntimeError(f"the {store.kind} store has no file table")
    chunks = open_chunk_store(config, store)
    FileCommands(config, store, chunks).register(processor)
    cleanup = FileCleanup(store.files, chunks, reactor, config.files.cleanup_interval)
    return [cleanup.make_service()]
