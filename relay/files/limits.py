"""How many parts and bytes a file of a declared size may take, and what it is charged.

The client numbers the parts (0, 1, ...) and cuts them as it likes, each chunk up to
max_chunk_size; `last_chunk` on part N says the file has parts 0..N. The relay bounds what
one file may hold without knowing how it is cut:

- parts: at most `max_parts` = min(file_size, max_parts_per_file). Every honest part
  carries at least one byte of the file; the cap bounds the records and chunk files one
  file makes (each part is charged at least one block besides, see `part_charge`);
- bytes: after every write, bytes stored <= file_size + PART_OVERHEAD per stored part
  (file_size is the original file's size, as glow.ts declares it; each chunk is that
  plus the secretbox overhead).

What a file is charged (see relay.store.interfaces.files): each stored part its size
rounded up to whole blocks (`part_charge`), plus an open reservation for what the file may
still write, at most one reservation window (`initial_reservation`).
"""

from __future__ import annotations

# Per-chunk bytes beyond the plaintext: secretbox's 16-byte tag, plus room for a client that
# also carries its nonce in the chunk.
PART_OVERHEAD = 40
# A file cut in the fewest, fullest parts still has one per this many bytes at most (what
# the reservation ceiling assumes; smaller parts are charged as they come).
RESERVATION_BYTES_PER_PART = 1024


def max_parts(file_size: int, max_parts_per_file: int) -> int:
    """The most parts a file may have; part numbers run 0..max_parts-1."""
    return max(1, min(file_size, max_parts_per_file))


def max_stored_bytes(file_size: int, parts: int) -> int:
    """The most chunk bytes a file may hold in that many parts."""
    return file_size + parts * PART_OVERHEAD


def part_charge(size: int, block_size: int) -> int:
    """What a stored part of size bytes is charged: whole blocks, at least one."""
    return max(1, -(-size // block_size)) * block_size


def max_charge(file_size: int, block_size: int) -> int:
    """What a file written in few, full parts is charged: the most its reservation ever
    covers (more, smaller parts are charged as they come)."""
    parts = max(1, -(-file_size // RESERVATION_BYTES_PER_PART))
    return part_charge(max_stored_bytes(file_size, parts), block_size)


def initial_reservation(file_size: int, block_size: int, window: int) -> int:
    return min(max_charge(file_size, block_size), window)
