"""How many parts and bytes a file of a declared size may take, and what it is charged.

file_size is the original file's size (what glow.ts declares); each chunk is that plus
the secretbox overhead. Bounding the part index by the declared size ties the number of
chunks (files on disk, metadata entries) to the bytes charged against the quotas: at worst
one part per MIN_BYTES_PER_PART declared, as deployed Zax does.
"""

from __future__ import annotations

MIN_BYTES_PER_PART = 1024
# Per-chunk bytes beyond the plaintext: secretbox's 16-byte tag, plus room for a client that
# also carries its nonce in the chunk.
PART_OVERHEAD = 40


def max_parts(file_size: int) -> int:
    return max(1, -(-file_size // MIN_BYTES_PER_PART))


def max_stored_bytes(file_size: int) -> int:
    """The most chunk bytes a file may hold; also what it is charged against the quotas."""
    return file_size + max_parts(file_size) * PART_OVERHEAD
