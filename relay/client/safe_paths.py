"""The receiver's rules for names it is sent (docs/rendezvous.md, "Receiver rules").

A sender chooses every name in an offer, so a name is hostile until checked: it must be a
relative POSIX path of plain components (no absolute path, no `..` or `.`, no empty
component, no backslash, no drive letter, no control, bidi or line-separator characters,
bounded length and depth). Writing goes only below the chosen root, never through a symlink
(parent or target), never over an existing file without consent. Names are printed only
through `printable_name`, which escapes anything a terminal could interpret.
"""

from __future__ import annotations

import enum
import os
import re
import stat
import unicodedata
from collections.abc import Callable, Iterable
from pathlib import Path

import attrs

from relay.client.errors import UnsafePathError

KIB = 1024
GIB = 1024 ** 3
# Characters that reorder or hide text on a terminal (Trojan Source style) even though
# Unicode files them under "format" rather than "control".
_BIDI = set("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_DRIVE = re.compile(r"^[A-Za-z]:")


@attrs.frozen
class ReceiveLimits:
    max_files: int = 100_000
    max_total_bytes: int = 64 * GIB
    max_file_bytes: int = 64 * GIB
    max_path_chars: int = 4096
    max_component_bytes: int = 255
    max_depth: int = 64


DEFAULT_LIMITS = ReceiveLimits()


def _is_unsafe_char(char: str) -> bool:
    return char in _BIDI or unicodedata.category(char) in ("Cc", "Zl", "Zp", "Cs", "Co", "Cn")


def check_relative_name(name: object, limits: ReceiveLimits = DEFAULT_LIMITS) -> tuple[str, ...]:
    """The components of a safe relative name; UnsafePathError (with a printable reason)."""
    if not isinstance(name, str) or not name:
        raise UnsafePathError("a name is empty or not text")
    shown = printable_name(name)
    if len(name) > limits.max_path_chars:
        raise UnsafePathError(f"name too long: {shown[:80]}...")
    if any(_is_unsafe_char(c) for c in name):
        raise UnsafePathError(f"name has control or direction characters: {shown}")
    if "\\" in name:
        raise UnsafePathError(f"name has a backslash: {shown}")
    if name.startswith("/"):
        raise UnsafePathError(f"name is an absolute path: {shown}")
    parts = tuple(name.split("/"))
    if len(parts) > limits.max_depth:
        raise UnsafePathError(f"name nested too deep: {shown}")
    for part in parts:
        if part in ("", ".", ".."):
            raise UnsafePathError(f"name has an empty, '.' or '..' component: {shown}")
        if _DRIVE.match(part):
            raise UnsafePathError(f"name has a drive letter: {shown}")
        if len(part.encode("utf-8")) > limits.max_component_bytes:
            raise UnsafePathError(f"name has a component over "
                                  f"{limits.max_component_bytes} bytes: {shown[:80]}")
    return parts


def collision_key(parts: tuple[str, ...]) -> tuple[str, ...]:
    """Names that one file system may treat as the same file (case, Unicode form) collide."""
    return tuple(unicodedata.normalize("NFC", p).casefold() for p in parts)


def check_offer_names(entries: Iterable[tuple[str, bool, int]],
                      limits: ReceiveLimits = DEFAULT_LIMITS) -> list[tuple[str, ...]]:
    """Check every (name, is_dir, size) of an offer and the offer as a whole: caps on count
    and bytes, no two entries that collide, no file that is also another entry's parent.
    Returns the components of each entry, in order."""
    result = []
    seen: dict[tuple[str, ...], bool] = {}
    total = 0
    for count, (name, is_dir, size) in enumerate(entries, 1):
        if count > limits.max_files:
            raise UnsafePathError(f"more than {limits.max_files} files offered")
        parts = check_relative_name(name, limits)
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise UnsafePathError(f"bad size for {printable_name(name)}")
        if size > limits.max_file_bytes:
            raise UnsafePathError(f"{printable_name(name)} is over the size cap")
        total += size
        if total > limits.max_total_bytes:
            raise UnsafePathError(f"the offer is over {limits.max_total_bytes} bytes in all")
        key = collision_key(parts)
        if key in seen:
            raise UnsafePathError(f"two entries would be the same file: {printable_name(name)}")
        seen[key] = is_dir
        result.append(parts)
    for key in seen:
        for depth in range(1, len(key)):
            if seen.get(key[:depth]) is False:
                raise UnsafePathError("an offered file is also used as a folder")
    return result


def target_path(root: Path, parts: tuple[str, ...], *, create_parents: bool) -> Path:
    """root/parts, refusing any symlink on the way (parents and the target itself) and any
    parent that is not a directory. With create_parents, missing folders are made (0700
    until the transfer sets their modes)."""
    current = root
    for part in parts[:-1]:
        current = current / part
        try:
            info = os.lstat(current)
        except FileNotFoundError:
            if not create_parents:
                continue
            try:
                os.mkdir(current, 0o700)
            except FileExistsError:
                pass  # a racing creator: checked just below
            info = os.lstat(current)
        if stat.S_ISLNK(info.st_mode):
            raise UnsafePathError(f"refusing to write through the symlink {current}")
        if not stat.S_ISDIR(info.st_mode):
            raise UnsafePathError(f"{current} exists and is not a folder")
    target = current / parts[-1]
    try:
        if stat.S_ISLNK(os.lstat(target).st_mode):
            raise UnsafePathError(f"refusing to write through the symlink {target}")
    except FileNotFoundError:
        pass
    return target


class Overwrite(enum.Enum):
    NEVER = "never"
    ASK = "ask"
    ALWAYS = "always"


def may_write(target: Path, policy: Overwrite,
              ask: Callable[[str], bool] | None = None) -> bool:
    """Whether to write target: always if it does not exist, else as the policy says."""
    if not os.path.lexists(target):
        return True
    if policy is Overwrite.ALWAYS:
        return True
    if policy is Overwrite.ASK and ask is not None:
        return bool(ask(printable_name(str(target))))
    return False


def printable_name(name: str) -> str:
    """The name with every character a terminal could act on escaped as \\xNN or \\uNNNN
    (control characters, ESC sequences, bidi overrides, line separators, lone surrogates)."""
    out = []
    for char in name:
        if _is_unsafe_char(char) or unicodedata.category(char) == "Cf":
            code = ord(char)
            out.append(f"\\x{code:02x}" if code < 0x100 else
                       f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
        else:
            out.append(char)
    return "".join(out)
