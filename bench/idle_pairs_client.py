"""What an idle connected pair costs a server: resident memory and descriptors per pair.

    result = hold_pairs(open_pair, 5000, server_pid)

Opens `count` pairs one after another from this thread (see bench/stream_pairs.py), checks
that a sample of them really is connected (a byte each way), reads the server's RSS and
descriptor count, holds them `hold` seconds, reads again, closes them all. Use a fresh
server process per count, so the RSS delta is not memory reused from an earlier run. Kernel
socket buffers are not in RSS. Needs two descriptors per pair here and at the server: the
caller raises RLIMIT_NOFILE (`raise_fd_limit`).
"""

from __future__ import annotations

import resource
import socket
import time
from collections.abc import Callable
from typing import Any

from bench.proc_stats import fd_count, rss_kib, tree_cpu_seconds

# Let a just-started server settle (imports done, first allocations made) before the baseline.
SETTLE = 0.5


def raise_fd_limit() -> int:
    """Soft RLIMIT_NOFILE up to the hard limit (inherited by processes started later)."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def _snapshot(pid: int) -> dict[str, Any]:
    return {"rss_kib": rss_kib(pid), "fds": fd_count(pid), "cpu_s": tree_cpu_seconds(pid)}


def _connected(a: socket.socket, b: socket.socket) -> bool:
    a.sendall(b"x")
    if b.recv(1) != b"x":
        return False
    b.sendall(b"y")
    return a.recv(1) == b"y"


def hold_pairs(open_pair: Callable[[], tuple[socket.socket, socket.socket]], count: int,
               server_pid: int, *, check: int = 100, hold: float = 2.0) -> dict[str, Any]:
    time.sleep(SETTLE)
    before = _snapshot(server_pid)
    pairs: list[tuple[socket.socket, socket.socket]] = []
    error = None
    start = time.monotonic()
    try:
        for _ in range(count):
            pairs.append(open_pair())
    except Exception as e:  # how far it got (descriptor limits, ephemeral ports...)
        error = f"{type(e).__name__} after {len(pairs)} pairs: {e}"
    setup = time.monotonic() - start
    established = len(pairs)
    sample = pairs[::max(1, established // check)] if check else pairs
    checked = sum(_connected(a, b) for a, b in sample)
    time.sleep(hold)
    holding = _snapshot(server_pid)
    for a, b in pairs:
        a.close()
        b.close()
    result: dict[str, Any] = {
        "requested": count, "established": established, "error": error,
        "setup_seconds": setup, "pairs_per_second": established / setup if setup else None,
        "checked": len(sample), "connected": checked,
        "before": before, "holding": holding,
    }
    if established:
        result["rss_kib_per_pair"] = (holding["rss_kib"] - before["rss_kib"]) / established
        result["fds_per_pair"] = (holding["fds"] - before["fds"]) / established
        result["server_cpu_ms_per_pair"] = (
            1000 * (holding["cpu_s"] - before["cpu_s"]) / established)
    return result
