"""Where the client keeps its files: $RELAY_HOME, else the platform's config directory.

Files under it hold secrets (the identity key) or private data (contacts), so the directory
is created 0700 and every file is written 0600, atomically (a temporary file, then a rename),
so a crash never leaves half a key behind.
"""

from __future__ import annotations

import json
import os
import stat
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

ENV_HOME = "RELAY_HOME"


def relay_home(environ: Mapping[str, str] | None = None) -> Path:
    """$RELAY_HOME, or $XDG_CONFIG_HOME/relay, or ~/.config/relay."""
    environ = os.environ if environ is None else environ
    if environ.get(ENV_HOME):
        return Path(environ[ENV_HOME]).expanduser()
    if environ.get("XDG_CONFIG_HOME"):
        return Path(environ["XDG_CONFIG_HOME"]).expanduser() / "relay"
    return Path.home() / ".config" / "relay"


def ensure_home(home: Path) -> Path:
    """Create the directory (0700) if missing; an existing one that others can read or
    enter (0755, made by hand) is tightened to 0700 when it is ours: it holds the secret
    key, and the contacts are nobody else's business either."""
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = os.stat(home)
    if info.st_mode & 0o077 and info.st_uid == os.getuid():
        os.chmod(home, stat.S_IMODE(info.st_mode) & 0o700)
    return home


def write_private_file(path: Path, data: bytes, *, exclusive: bool = False) -> None:
    """Write data to path with mode 0600, atomically. With exclusive, FileExistsError if path
    already exists (the first of two racing writers wins; the loser reads its file)."""
    fd, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if exclusive:
            os.link(temp_name, path)
        else:
            os.replace(temp_name, path)
    finally:
        try:
            os.unlink(temp_name)
        except FileNotFoundError:
            pass


def read_private_json(path: Path, max_bytes: int, version: int,
                      error: type[Exception], what: str) -> dict[str, Any]:
    """The JSON object of a file the client wrote (private, small, of this format version).

    FileNotFoundError passes through (callers decide what a missing file means); any other
    problem raises `error` with a message for the user.
    """
    try:
        data = read_private_file(path, max_bytes)
    except FileNotFoundError:
        raise
    except (PermissionError, ValueError) as e:
        raise error(str(e)) from None
    except OSError as e:
        raise error(f"cannot read {path}: {e.strerror}") from None
    try:
        fields = json.loads(data)
    except ValueError:
        fields = None
    if not isinstance(fields, dict) or fields.get("version") != version:
        raise error(f"{path} is not a relay {what} file")
    return fields


def read_private_file(path: Path, max_bytes: int) -> bytes:
    """Read a file the client wrote, refusing one that others can read or that is too big."""
    with open(path, "rb") as f:
        mode = os.fstat(f.fileno()).st_mode
        if mode & 0o077:
            raise PermissionError(f"{path} can be read by other users; "
                                  f"run: chmod 600 {path}")
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ValueError(f"{path} is over {max_bytes} bytes")
    return data
