"""How many parts and bytes a file of a declared size may take, and what it is charged.

file_size is the original file's size (what glow.ts declares); each chunk is that plus
the secretbox overhead. Bounding the part index by the declared size (and by
max_parts_per_file) ties the number of chunks (files on disk, metadata entries) to the
bytes charged: at worst one part per MIN_BYTES_PER_PART declared, as deployed Zax does.

What a file is charged (see relay.store.interfaces.files): each stored part its size
rounded up to whole blocks (`part_charge`), plus an open reservation for what the file may
still write, at most one reservation window (`initial_reservation`).
"""

from __future__ import annotations

MIN_BYTES_PER_PART = 1024
# Per-chunk bytes beyond the plaintext: secretbox's 16-byte tag, plus room for a client that
# also carries its nonce in the chunk.
PART_OVERHEAD = 40


def max_parts(file_size: int, max_parts_per_file: int | None = None) -> int:
    parts = max(1, -(-file_size // MIN_BYTES_PER_PART))
    return parts if max_parts_per_file is None else min(parts, max_parts_per_file)


def max_stored_bytes(file_size: int) -> int:
    """The most chunk bytes a file may hold."""
    return file_size + max_parts(file_size) * PART_OVERHEAD


def part_charge(size: int, block_size: int) -> int:
    """What a stored part of size bytes is charged: whole blocks, at least one."""
    return max(1, -(-size // block_size)) * block_size


def max_charge(file_size: int, block_size: int) -> int:
    """What a file written in the fewest, fullest parts is charged: the most its
    reservation ever covers (more, smaller parts are charged as they come)."""
    return part_charge(max_stored_bytes(file_size), block_size)


def initial_reservation(file_size: int, block_size: int, window: int) -> int:
    return min(max_charge(file_size, block_size), window)
