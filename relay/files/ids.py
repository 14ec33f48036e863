"""Upload ids bound to this relay, and the relay-side file ids derived from them.

uploadID = h2(hpk_from || hpk_to || metadata_nonce || secret_seed), as Zax makes it: the same
start command gives the same id (a retried startFileUpload is idempotent), and no one
without the seed can predict it. Records and chunks are keyed by file_id = h2(uploadID), so
the upload id itself is never stored.
"""

from __future__ import annotations

import os
from pathlib import Path

from relay.config import FilesConfig
from relay.crypto import h2

SEED_BYTES = 32


class SeedError(RuntimeError):
    """The secret seed file exists but does not hold a usable seed."""


def seed_path(config: FilesConfig) -> Path:
    """The configured seed file, or `<directory>.seed` beside the chunk directory."""
    if config.secret_seed_file:
        return Path(config.secret_seed_file)
    directory = Path(config.directory)
    return directory.with_name(directory.name + ".seed")


def load_or_create_seed(path: Path) -> bytes:
    """The seed in path (hex), creating it if missing. Several processes starting at once
    end up with the same seed: the file appears complete or not at all (link() refuses
    to replace an existing file)."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(os.urandom(SEED_BYTES).hex() + "\n")
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(temporary, path)
            except FileExistsError:
                pass  # another process made it first; use theirs
        finally:
            temporary.unlink(missing_ok=True)
    try:
        seed = bytes.fromhex(path.read_text().strip())
    except ValueError:
        raise SeedError(f"the secret seed file {path} is not hex") from None
    if len(seed) < SEED_BYTES:
        raise SeedError(f"the secret seed in {path} is shorter than {SEED_BYTES} bytes")
    return seed


class UploadIds:
    """Makes upload ids; reads (or creates) the seed on first use, not at start-up, so a
    relay that never sees a file command touches no file."""

    def __init__(self, config: FilesConfig) -> None:
        self._path = seed_path(config)
        self._seed: bytes | None = None

    def upload_id(self, sender: bytes, recipient: bytes, metadata_nonce: bytes) -> bytes:
        if self._seed is None:
            self._seed = load_or_create_seed(self._path)
        return h2(sender + recipient + metadata_nonce + self._seed)


def file_id(upload_id: bytes) -> bytes:
    return h2(upload_id)
