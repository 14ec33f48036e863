"""Keep megabyte buffers in the C heap (glibc): for `twistd relay` and the `relay` command.

Both allocate and free buffers of hundreds of KiB to a few MiB over and over: the relay a
680 KB body and answer per file chunk, the client a few 1 MiB buffers per record (file
blocks, ciphertext, plaintext). glibc serves allocations that big with a fresh mmap each
time and trims the heap on free, so every one paid page faults and zeroing again: measured
here, about 1.3 CPU seconds of kernel time per GiB on the sender, and about 2 CPU seconds
per GB of chunks in the relay. Raising the mmap threshold and the trim threshold makes the
freed buffers be reused instead. The heap then keeps at most the peak of buffers in flight.

Process-wide, so only the entry points call it (relay.tap.makeService and the command's
main), never the library.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 8 * 1024 * 1024  # above the largest record (4 MiB) and its ciphertext
TRIM_THRESHOLD = 64 * 1024 * 1024


def keep_big_buffers() -> bool:
    """Tune glibc's malloc as above; False (and nothing changed) on other C libraries."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # noqa: B018 - only glibc has it (musl has no mallopt knobs)
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) \
        and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
